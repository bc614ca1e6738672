"""Explore: which latents fire on your prompts; tick them to add them to the forget set."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from app_support import shell, state, views
from app_support.forget_ops import apply_ticks, chosen_ids
from app_support.resources import get_dashboards
from app_support.safe_text import md_escape
from app_support.state import PERSIST, Key
from unlearn_core.errors import UnlearnError
from unlearn_core.explain.explore import RANKINGS, ExploreResult, explore, prepare_prompts, split_prompts, study_prompts

DENSE_FREQUENCY = 0.10

ws = shell.page_setup(needs_model=True)
st.title("Explore")
st.caption(
    "Paste prompts (one per line). For each layer's SAE: the latents that fire most (BOS excluded), what they mean, "
    "and where they fire. Tick **forget** to add a latent to the forget set."
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

c1, c2, c3, c4 = st.columns([1, 1.2, 1.6, 1])
state.widget_default(Key.EXPLORE_TOP_K, 20)
top_k = c1.slider("Top latents", 5, 100, key=Key.EXPLORE_TOP_K, persist_state=PERSIST)
rank = c2.radio("Rank by", RANKINGS, key=Key.EXPLORE_RANK, horizontal=True, persist_state=PERSIST,
                format_func=lambda r: {"max": "max activation", "mean": "mean activation", "frequency": "frequency"}[r])
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

tabs = st.tabs([f"Layer {s.layer}" for s in ws.saes])
for tab, loaded in zip(tabs, ws.saes, strict=True):
    with tab:
        boards = get_dashboards(loaded)
        dense = set(np.flatnonzero(boards.frequency > DENSE_FREQUENCY).tolist()) if hide_dense and boards is not None else set()
        stats = result.top_latents(loaded.ref, k=top_k, by=rank, prompt=prompt_index, exclude=dense)
        if dense:
            st.caption(f"{len(dense)} dense latents hidden.")
        if not stats:
            st.info("No latent of this SAE fires on these tokens.")
            continue
        explanations = views.explanation_texts(loaded, [s.latent for s in stats])
        picked = chosen_ids(family, loaded.layer)
        table = pd.DataFrame({
            "forget": [s.latent in picked for s in stats],
            "latent": [s.latent for s in stats],
            "explanation": [explanations[s.latent] for s in stats],
            "max act": [s.max_activation for s in stats],
            "mean act": [s.mean_activation for s in stats],
            "frequency": [s.frequency for s in stats],
            "prompts": [s.n_prompts for s in stats],
            "top token": [s.top_token for s in stats],
        })
        edited = st.data_editor(
            table,
            key=Key.explore_table(loaded.ref, state.version(), rank, top_k, prompt_index, hide_dense),
            hide_index=True,
            width="stretch",
            disabled=[c for c in table.columns if c != "forget"] + (["forget"] if wrong_model else []),
            column_config={
                "forget": st.column_config.CheckboxColumn("forget", help="add to / remove from the forget set"),
                "explanation": st.column_config.TextColumn("explanation", width="large"),
                "max act": st.column_config.NumberColumn(format="%.2f"),
                "mean act": st.column_config.NumberColumn(format="%.3f"),
                "frequency": st.column_config.NumberColumn(format="percent"),
            },
        )
        before = dict(zip(table["latent"], table["forget"], strict=True))
        after = dict(zip(edited["latent"], edited["forget"], strict=True))
        add = [lat for lat, on in after.items() if on and not before[lat]]
        remove = [lat for lat, on in after.items() if not on and before[lat]]
        cols = st.columns([1, 1, 3])
        if cols[0].button("Tick all shown", key=Key.tick_all(loaded.ref), disabled=wrong_model):
            add = [s.latent for s in stats if s.latent not in picked]
        if add or remove:
            by_id = {s.latent: s for s in stats}
            notes = {
                lat: (f"Explore: max {by_id[lat].max_activation:.3g} on {by_id[lat].top_token.strip()!r}, fires on "
                      f"{by_id[lat].n_prompts}/{len(prepared.prompts)} prompts")
                for lat in add
            }
            try:
                added, removed = apply_ticks(family, loaded.layer, ws.preset.model_id, add, remove, notes)
            except UnlearnError as exc:
                st.error(md_escape(exc))
            else:
                state.flash(f"Layer {loaded.layer}: added {added or 'nothing'}, removed {removed or 'nothing'}.")
                st.rerun()

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
