"""Explore: which latents fire on your prompts; tick them to add them to the forget set."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app_support import explore_panels, shell, state, views
from app_support.forget_ops import chosen_ids
from app_support.resources import get_dashboards
from app_support.safe_text import md_escape
from app_support.state import PERSIST, Key
from unlearn_core.errors import UnlearnError
from unlearn_core.explain.explore import RANKINGS, ExploreResult, explore, prepare_prompts, split_prompts, study_prompts
from unlearn_core.explain.ranking import DENSE_FREQUENCY, dense_latents


def _keep() -> None:
    """Tabs and expanders track their state only with a callback; there is nothing else to do on a change."""


ws = shell.page_setup(needs_model=True)
st.title("Explore")
st.caption(
    "Paste prompts (one per line). For each layer's SAE: the latents most specific to them (firing on the prompts "
    "but rarely on general text; BOS excluded), what they mean, and where they fire. Search any latent below the "
    "table. Tick **forget** to add a latent to the forget set."
)
if ws.error:
    st.error(md_escape(ws.error))
    st.stop()
if ws.lm is None or not ws.saes:
    st.info("Choose at least one layer in the sidebar.")
    st.stop()

state.widget_default(Key.EXPLORE_PROMPTS, "\n".join(study_prompts()))
left, right = st.columns([4, 1])
prompts_text = left.text_area("Prompts, one per line", key=Key.EXPLORE_PROMPTS, height=170, persist_state=PERSIST)
right.button("Load the study's 7 prompts", width="stretch",
             on_click=lambda: state.set_widget(Key.EXPLORE_PROMPTS, "\n".join(study_prompts())))
right.button("Clear", on_click=lambda: state.set_widget(Key.EXPLORE_PROMPTS, ""), width="stretch")
with st.expander("Contrast prompts (optional): rank what separates the prompts above from these"):
    contrast_text = st.text_area("Contrast prompts, one per line", key=Key.EXPLORE_CONTRAST, height=100,
                                 persist_state=PERSIST,
                                 help="A latent that fires as often on these as on the prompts above is not specific "
                                      "to them; leave empty to rank against general text only.")

try:
    prepared = prepare_prompts(ws.lm, split_prompts(prompts_text))
except UnlearnError as exc:
    st.warning(md_escape(exc))
    st.stop()
for notice in prepared.notices:
    st.info(md_escape(notice))  # notices may quote the prompts

run_key = (ws.preset.name, ws.device, ws.dtype, tuple(s.ref for s in ws.saes), prepared.token_ids)
app = state.session()
if app.explore is None or app.explore.key != run_key:
    with st.spinner("Running the model once for all layers…"):
        try:
            computed: ExploreResult = explore(ws.lm, ws.saes, prepared)
        except UnlearnError as exc:
            st.error(md_escape(exc))
            st.stop()
    app.explore = state.ExploreRun(run_key, computed)  # the Forget set page shows it too
result = app.explore.result
contrast: ExploreResult | None = None
if split_prompts(contrast_text):
    try:
        contrast_prepared = prepare_prompts(ws.lm, split_prompts(contrast_text))
        contrast_key = (*run_key[:4], contrast_prepared.token_ids)
        if app.explore_contrast is None or app.explore_contrast.key != contrast_key:
            app.explore_contrast = state.ExploreRun(contrast_key, explore(ws.lm, ws.saes, contrast_prepared))
        contrast = app.explore_contrast.result
    except UnlearnError as exc:
        st.warning(f"Contrast prompts ignored: {md_escape(exc)}")

c1, c2, c3, c4 = st.columns([1, 1.2, 1.6, 1])
state.widget_default(Key.EXPLORE_TOP_K, 20)
top_k = c1.slider("Top latents", 5, 100, key=Key.EXPLORE_TOP_K, persist_state=PERSIST)
rank = c2.radio("Rank by", RANKINGS, key=Key.EXPLORE_RANK, horizontal=True, persist_state=PERSIST,
                format_func=lambda r: {"specific": "specificity", "max": "max activation", "mean": "mean activation",
                                          "frequency": "frequency"}[r],
                help="specificity: how much more often a latent fires on these prompts than on general text, on "
                     "everyday prompts and on the contrast prompts (if given), as a smoothed log ratio; latents "
                     "firing only on prompts that share nothing with the others (an off-topic prompt) rank lower")
scopes = ["all prompts", *[f"prompt {i + 1}: {p[:60]}" for i, p in enumerate(prepared.prompts)]]
if state.widget_value(Key.EXPLORE_SCOPE) not in scopes:
    state.set_widget(Key.EXPLORE_SCOPE, scopes[0])
scope = c3.selectbox("Over", scopes, key=Key.EXPLORE_SCOPE, persist_state=PERSIST)
prompt_index = None if scope == scopes[0] else scopes.index(scope) - 1
state.widget_default(Key.EXPLORE_HIDE_DENSE, True)
hide_dense = c4.toggle("Hide dense latents", key=Key.EXPLORE_HIDE_DENSE, persist_state=PERSIST,
                       help=f"Skip latents that fire on more than {DENSE_FREQUENCY:.0%} of the dashboard corpus (general "
                            "text): they fire on almost everything, so they are rarely concept-specific.")

family = ws.family
fl = state.forget_set()
wrong_model = fl.model != ws.preset.model_id
if wrong_model:
    st.warning(f"The current forget set is for {fl.model}, not {ws.preset.model_id}: start a new one on the Forget set "
               "page to tick latents here.")

# keyed with a callback, so the chosen tab survives reruns (typing a search must not jump back to the first layer)
tabs = st.tabs([f"Layer {s.layer}" for s in ws.saes], key=Key.EXPLORE_LAYER_TAB, on_change=_keep)
for tab, loaded in zip(tabs, ws.saes, strict=True):
    with tab:
        boards = get_dashboards(loaded)
        dense = dense_latents(boards) if hide_dense and boards is not None else set()
        reference = explore_panels.specificity_reference(ws, loaded, boards)
        by = rank if (rank != "specific" or reference is not None) else "max"
        if by != rank:
            st.caption("No dashboard for this SAE yet, so no general-text rates: ranked by max activation.")
        stats = result.top_latents(loaded.ref, k=top_k, by=by, prompt=prompt_index, exclude=dense,
                                   reference=reference, contrast=contrast)
        if dense:
            st.caption(f"{len(dense)} dense latents hidden.")
        if not stats:
            st.info("No latent of this SAE fires on these tokens.")
            continue
        picked = chosen_ids(family, loaded.layer)
        latents = [s.latent for s in stats]
        described = explore_panels.describe_columns(loaded, boards, latents)
        explanations = dict(zip(latents, described["label"], strict=True))
        table = pd.DataFrame({
            "forget": [s.latent in picked for s in stats],
            "latent": latents,
            "score": [s.score for s in stats],
            **described,
            "max act": [s.max_activation for s in stats],
            "frequency": [s.frequency for s in stats],
            "prompts": [s.n_prompts for s in stats],
            "top token": [s.top_token for s in stats],
        })
        by_id = {s.latent: s for s in stats}
        explore_panels.tick_table(
            ws, loaded, table, Key.explore_table(loaded.ref, state.version(), rank, top_k, prompt_index, hide_dense,
                                                 bool(contrast)),
            notes=lambda lat, b=by_id: (f"Explore: max {b[lat].max_activation:.3g} on {b[lat].top_token.strip()!r}, "
                                        f"fires on {b[lat].n_prompts}/{len(prepared.prompts)} prompts"),
            extra_config={"score": st.column_config.NumberColumn(format="%.2f", help=f"ranked by {by}"),
                          "max act": st.column_config.NumberColumn(format="%.2f"),
                          "frequency": st.column_config.NumberColumn(format="percent")})
        if st.button("Tick all shown", key=Key.tick_all(loaded.ref), disabled=wrong_model):
            explore_panels.tick_many(ws, loaded, [s.latent for s in stats if s.latent not in picked],
                                     note="Explore: ticked with all shown")

        with st.expander("Search all latents of this SAE", key=Key.explore_search_open(loaded.ref), on_change=_keep):
            explore_panels.search_panel(ws, loaded, boards)
        if prompt_index is not None:
            with st.expander(f"Token by token: which latents fire on each token of prompt {prompt_index + 1}"):
                explore_panels.by_token_panel(ws, result, loaded, prompt_index, boards, dense)

        st.subheader("Where a latent fires")
        options = [s.latent for s in stats]
        detail_key = Key.explore_detail(loaded.ref)
        if state.widget_value(detail_key) not in options:
            state.set_widget(detail_key, options[0])
        latent = st.selectbox("Latent", options, key=detail_key,
                              format_func=lambda i, e=explanations: f"{i} — {e.get(i, '')[:80]}")
        values = result.token_values(loaded.ref, latent)
        scale = max((v for row in values for v in row), default=1.0)
        for i, (toks, vals) in enumerate(zip(result.tokens, values, strict=True)):
            if prompt_index is not None and i != prompt_index:
                continue
            st.html(f"<div style='color:#6b7280;font-size:0.75rem'>prompt {i + 1}</div>"
                    + views.highlighted_tokens(toks, vals, scale=scale))
        with st.expander(f"Explanation and dashboard of latent {latent}", expanded=True):
            views.explanation_panel(loaded, latent)
