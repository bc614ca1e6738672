"""The Forget set page's "Suggest latents" panel: automated selection (unlearn_core.selection.suggest) as one click."""

from __future__ import annotations

from typing import Any

import streamlit as st

from unlearn_core.ablation.gating import DEFAULT_GATE_QUANTILE
from unlearn_core.ablation.interventions import Intervention
from unlearn_core.data.texts import BUILTIN_TEXTS, selection_split, texts_from_bytes
from unlearn_core.errors import UnlearnError
from unlearn_core.forget_set import check_model_matches, merge_feature_list
from unlearn_core.selection.rules import DEFAULT_TOP, METHODS
from unlearn_core.selection.stats import DEFAULT_STATS_TOKENS
from unlearn_core.selection.suggest import (
    DEFAULT_INTERVENTION,
    SelectConfig,
    suggest,
    suggested_feature_list,
)

from . import shell, state, uploads
from .safe_text import md_escape

UPLOAD = "a text file (upload)…"
METHOD_HELP = {
    "ratio": "ratio (this tool's): p_f·ln(p_f/p_r), latents common on forget text and rare on retain text",
    "frequency": "frequency (SAEBench): drop latents firing on >= threshold of retain tokens, rank by forget rate",
    "attribution": "attribution: latents the model uses to answer the dev HP quiz and cloze (gradient x activation), "
                   "minus their use on the dev retain quizzes (a few minutes more)",
}
TOKEN_CHOICES = (20_000, 50_000, 100_000, 200_000)
_SELECTABLE = [name for name in BUILTIN_TEXTS if selection_split(name) != name or name.endswith(("-select", "-train"))]


def use_recommended_intervention(recommended: dict[str, Any]) -> None:
    """Button callback (runs before the sidebar is drawn, so it may set the sidebar's widgets)."""
    state.set_widget(state.Key.MODE, recommended["mode"])
    if recommended["mode"] in ("clamp", "scale") and recommended.get("value") is not None:
        state.set_widget(state.Key.strength(recommended["mode"]), float(recommended["value"]))
    state.set_widget(state.Key.CLAMP_RELATIVE, bool(recommended.get("relative", False)))
    state.set_widget(state.Key.HOOK_SITE, recommended.get("hook_site", "trained"))
    gate = recommended.get("gate")
    state.set_widget(state.Key.GATE, gate is not None)
    if gate is not None:  # recalibrated in Compare for the forget set as it is then
        state.set_widget(state.Key.GATE_QUANTILE, float(gate.get("quantile", DEFAULT_GATE_QUANTILE)))


def _text_choice(label: str, default: str, key: str) -> tuple[str, tuple[str, ...] | None]:
    """A built-in text set (its selection split is used) or an uploaded file's paragraphs."""
    options = [*_SELECTABLE, UPLOAD]
    choice = st.selectbox(label, options, index=options.index(default), key=key,
                          format_func=lambda n: n if n == UPLOAD else f"{n} → {selection_split(n)}")
    if choice != UPLOAD:
        return choice, None
    upload = st.file_uploader(f"{label} file (UTF-8 .txt, paragraphs separated by blank lines)", type=["txt"],
                              key=f"{key}_file")
    if upload is None:
        return choice, None
    text_set = uploads.decoded(upload, "text", texts_from_bytes)  # size-checked, decoded once per content
    return text_set.name, text_set.texts


def render(ws: state.Workspace) -> None:
    family = ws.preset.family(ws.family_name)
    st.markdown(
        "Rank every latent of the sidebar's SAEs by how much more it fires on **forget** text than on **retain** "
        "text, and add the best ones to this forget set, each with the numbers that chose it. Built-in sets are "
        "split: latents are chosen on one part (`→` name) and Compare/evaluate measure on the held-out part. "
        f"Layers: **{', '.join(map(str, ws.layers)) or 'none'}** ({family.name})."
    )
    c1, c2 = st.columns(2)
    try:
        with c1:
            forget_name, forget_texts = _text_choice("Forget text", "hp-fanwiki", "suggest_forget")
        with c2:
            retain_name, retain_texts = _text_choice("Retain text", "wikitext2", "suggest_retain")
    except UnlearnError as exc:
        st.error(f"That file cannot be used: {md_escape(exc)}")
        return
    c1, c2, c3 = st.columns(3)
    method = c1.selectbox("Rule", list(METHODS), key="suggest_method", format_func=lambda m: METHOD_HELP[m])
    top = int(c2.number_input("Latents per layer", min_value=1, max_value=family.width, value=DEFAULT_TOP,
                              key="suggest_top"))
    tokens = c3.select_slider("Tokens of each text", TOKEN_CHOICES, value=DEFAULT_STATS_TOKENS
                              if DEFAULT_STATS_TOKENS in TOKEN_CHOICES else TOKEN_CHOICES[2], key="suggest_tokens",
                              help="Statistics are cached on disk: only the first run on a text costs time "
                                   "(about 4 minutes per 100k tokens on 2 CPU cores).")
    waiting = (forget_name == UPLOAD and forget_texts is None) or (retain_name == UPLOAD and retain_texts is None)
    if st.button("Suggest latents", type="primary", disabled=not ws.layers or waiting):
        _run(ws, SelectConfig(forget=forget_name, retain=retain_name, method=method, top=top, stats_tokens=tokens),
             forget_texts, retain_texts)
    recommended, source = DEFAULT_INTERVENTION.to_dict(), "the best point of the committed sweep"
    listed = state.forget_set().intervention  # validated when the list was loaded
    if listed is not None:
        recommended, source = listed.to_dict(), "this list"
    st.caption(f"Recommended intervention: {Intervention.from_dict(recommended, 'recommended').describe()} "
               f"(from {source}; docs/selection.md).")
    st.button("Use the recommended intervention", on_click=use_recommended_intervention, args=(recommended,),
              key="suggest_use_recommended")


def _run(ws: state.Workspace, config: SelectConfig, forget_texts: tuple[str, ...] | None,
         retain_texts: tuple[str, ...] | None) -> None:
    fl = state.forget_set()
    try:
        check_model_matches(fl, ws.preset.model_id, "the current forget set")
    except UnlearnError as exc:
        st.error(f"{md_escape(exc)}. Start a new forget set for {ws.preset.model_id} first.")
        return
    if ws.lm is None:
        shell.load_workspace(ws)
    if ws.error or ws.lm is None:
        st.error(md_escape(ws.error or "the model is not loaded"))
        return
    bar = st.progress(0.0, text="Computing activation statistics…")

    def progress(stage: str, done: int, total: int) -> None:
        bar.progress(min(done / max(total, 1), 1.0), text=f"{stage}: {done:,} of {total:,} tokens")

    try:
        chosen = suggest(ws.lm, ws.saes, config, progress, forget_texts, retain_texts)
    except UnlearnError as exc:
        bar.empty()
        st.error(f"No suggestion: {md_escape(exc)}")
        return
    except Exception as exc:  # noqa: BLE001 - e.g. out of memory: a message, and the forget set stays as it was
        bar.empty()
        st.error(f"No suggestion: {type(exc).__name__}: {md_escape(exc)}. The forget set is unchanged.")
        return
    bar.empty()
    try:
        # the CLI's builder (notes, stats, selection record with the preset, intervention), merged into the list
        total = merge_feature_list(fl, suggested_feature_list(ws.lm, ws.saes, chosen, config))
    except UnlearnError as exc:
        st.error(f"No suggestion: {md_escape(exc)}")
        return
    state.bump_version()
    state.flash(f"Added {total} suggested latent(s) ({config.method} rule, {config.top} per layer). "
                "Press 'Use the recommended intervention', then compare on the Compare page.")
    st.rerun()
