"""Explore's tables: the ranked latent table (with context, source share and Neuronpedia link), the search over every
latent of an SAE, and the per-token view. Each table ticks latents into the forget set through one function."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pandas as pd
import streamlit as st

from app_support import resources, state, views
from app_support.forget_ops import apply_ticks, chosen_ids
from app_support.safe_text import RUN_FAILURES, failure_message, md_escape
from app_support.state import PERSIST, Key
from unlearn_core.errors import UnlearnError
from unlearn_core.explain.dashboards import Dashboards
from unlearn_core.explain.explore import ExploreResult, explore
from unlearn_core.explain.ranking import ReferenceRates, general_reference, source_ratio, with_reference_prompts
from unlearn_core.explain.search import SearchHit, board_labels, search_contexts, search_labels, search_promoted
from unlearn_core.saes.loading import LoadedSae
from unlearn_core.saes.neuronpedia import search_explanations
from unlearn_core.saes.neuronpedia.explanation import neuronpedia_page_url

TEXT_SEARCH_CACHE = 16
"""Searches by pasted text a session keeps (oldest dropped first)."""
SEARCH_MODES = ("fires on a word or phrase", "label or explanation", "fires on this text", "promotes a token")


def specificity_reference(ws, loaded: LoadedSae, board: Dashboards | None) -> ReferenceRates | None:
    """The specificity ranking's reference for an SAE: its dashboards' general-text rates and its (shared, cached)
    rates on the everyday reference prompts; None without dashboards."""
    if board is None:
        return None
    try:
        counts, n_tokens = resources.get_reference_prompt_counts(ws.preset.name, ws.device, ws.dtype, ws.lm, loaded)
    except RUN_FAILURES as exc:  # ranked against general text alone, and said so
        reason = failure_message(exc, "use fewer layers")
        st.warning(f"Everyday reference prompts unavailable ({reason}); ranking against general text only.")
        return general_reference(board)
    return with_reference_prompts(general_reference(board), counts, n_tokens)


def strongest_context(board: Dashboards | None, latent: int, width: int = 70) -> str:
    """The latent's strongest dashboard context as one line of plain text, the activating token in ‹ ›."""
    if board is None:
        return ""
    contexts = board.latent(latent).contexts
    if not contexts:
        return "(never fired on the dashboard corpus)"
    c = max(contexts, key=lambda x: x.value)
    before = "".join(c.tokens[: c.focus])[-width // 2:]
    after = "".join(c.tokens[c.focus + 1:])[: width // 3]
    return (before + "‹" + c.tokens[c.focus] + "›" + after).replace("\n", " ⏎ ")


def concept_share(board: Dashboards | None, latent: int) -> float | None:
    """How many times more often the latent fires on the dashboards' Harry Potter text than on general text."""
    if board is None:
        return None
    ratio = source_ratio(board, latent)
    if ratio is None:
        return None
    return 1e6 if math.isinf(ratio) else ratio


def latent_link(loaded: LoadedSae, latent: int) -> str | None:
    return neuronpedia_page_url(loaded.neuronpedia, latent) if loaded.neuronpedia else None


def tick_table(ws, loaded: LoadedSae, table: pd.DataFrame, key: str, notes: Callable[[int], str],
               extra_config: dict | None = None) -> None:
    """Show ``table`` (first column ``forget``, a ``latent`` column) as an editor whose ticks edit the forget set."""
    family = ws.family
    wrong_model = state.forget_set().model != ws.preset.model_id
    config = {
        "forget": st.column_config.CheckboxColumn("forget", help="add to / remove from the forget set"),
        "label": st.column_config.TextColumn("label", width="medium"),
        "context": st.column_config.TextColumn("strongest context", width="large",
                                               help="the dashboard context it fires most on; the token in ‹ ›"),
        "HP ×": st.column_config.NumberColumn(
            "HP ×", format="%.1f", help="how many times more often it fires on the dashboard corpus's Harry Potter "
                                        "fan-wiki text than on its general text (1e6: never on general text)"),
        "neuronpedia": st.column_config.LinkColumn("neuronpedia", display_text="open"),
        **(extra_config or {}),
    }
    edited = st.data_editor(table, key=key, hide_index=True, width="stretch", column_config=config,
                            disabled=[c for c in table.columns if c != "forget"] + (["forget"] if wrong_model else []))
    before = dict(zip(table["latent"], table["forget"], strict=True))
    after = dict(zip(edited["latent"], edited["forget"], strict=True))
    add = [lat for lat, on in after.items() if on and not before[lat]]
    remove = [lat for lat, on in after.items() if not on and before[lat]]
    if not (add or remove):
        return
    try:
        added, removed = apply_ticks(family, loaded.layer, ws.preset.model_id, add, remove, {lat: notes(lat) for lat in add})
    except UnlearnError as exc:
        st.error(md_escape(exc))
    else:
        state.flash(f"Layer {loaded.layer}: added {added or 'nothing'}, removed {removed or 'nothing'}.")
        st.rerun()


def tick_many(ws, loaded: LoadedSae, latents: Sequence[int], note: str) -> None:
    """Add several latents of one layer at once (the "Tick all shown" button)."""
    try:
        added, _ = apply_ticks(ws.family, loaded.layer, ws.preset.model_id, list(latents), [],
                               {lat: note for lat in latents})
    except UnlearnError as exc:
        st.error(md_escape(exc))
    else:
        state.flash(f"Layer {loaded.layer}: added {added or 'nothing'}.")
        st.rerun()


def describe_columns(loaded: LoadedSae, board: Dashboards | None, latents: Sequence[int]) -> dict[str, list]:
    labels = views.explanation_texts(loaded, latents)
    columns: dict[str, list] = {
        "label": [labels[i] for i in latents],
        "context": [strongest_context(board, i) for i in latents],
        "HP ×": [concept_share(board, i) for i in latents],
    }
    if loaded.neuronpedia:
        columns["neuronpedia"] = [latent_link(loaded, i) for i in latents]
    return columns


def search_panel(ws, loaded: LoadedSae, board: Dashboards | None) -> None:
    """Search every latent of one SAE; results tick into the forget set like the ranked table."""
    c1, c2, c3 = st.columns([2.2, 2, 1])
    query = c1.text_input("Search all latents", key=Key.explore_search(loaded.ref), persist_state=PERSIST,
                          placeholder="e.g. Hogwarts, Quidditch, Voldemort")
    mode = c2.radio("by", SEARCH_MODES, key=Key.explore_search_mode(loaded.ref), horizontal=True, persist_state=PERSIST)
    state.widget_default(Key.explore_search_k(loaded.ref), 15)
    k = c3.number_input("results", 5, 100, key=Key.explore_search_k(loaded.ref), persist_state=PERSIST)
    if not query.strip():
        st.caption("Search by the words a latent fires on (its top dashboard contexts), by its label or Neuronpedia "
                   "explanation, by a text you paste (the latents active on it), or by the token it promotes.")
        return
    try:
        hits = run_search(ws, loaded, board, query, mode, int(k))
    except UnlearnError as exc:
        st.warning(md_escape(exc))
        return
    if not hits:
        st.info("No latent matches.")
        return
    picked = chosen_ids(ws.family, loaded.layer)
    latents = [h.latent for h in hits]
    table = pd.DataFrame({"forget": [i in picked for i in latents], "latent": latents,
                          "score": [h.score for h in hits], "matches": [h.matches for h in hits],
                          "evidence": [h.evidence for h in hits], **describe_columns(loaded, board, latents)})
    note = f"Explore search ({mode}): {query[:80]!r}"
    tick_table(ws, loaded, table, Key.explore_search_table(loaded.ref, state.version(), query, mode, k),
               notes=lambda lat: note,
               extra_config={"score": st.column_config.NumberColumn(format="%.2f"),
                             "evidence": st.column_config.TextColumn("why it matched", width="large")})
    if st.button("Tick all results", key=Key.explore_search_tick_all(loaded.ref),
                 disabled=state.forget_set().model != ws.preset.model_id):
        tick_many(ws, loaded, [i for i in latents if i not in picked], note=note)


def run_search(ws, loaded: LoadedSae, board: Dashboards | None, query: str, mode: str, k: int) -> list[SearchHit]:
    """The hits of one search mode (see :data:`SEARCH_MODES`)."""
    if mode == "fires on this text":
        cache = state.session().text_search
        key = (ws.preset.name, ws.device, ws.dtype, loaded.ref, query, k, board is not None)
        if key not in cache:
            found: ExploreResult = explore(ws.lm, [loaded], [query])
            reference = specificity_reference(ws, loaded, board)
            stats = found.top_latents(loaded.ref, k=k, by="specific" if reference else "max", reference=reference)
            if len(cache) >= TEXT_SEARCH_CACHE:
                cache.pop(next(iter(cache)))
            cache[key] = [SearchHit(s.latent, s.score, round(s.frequency * len(found.tokens[0])),
                                    f"max {s.max_activation:.3g} on {s.top_token!r}") for s in stats]
        return cache[key]
    if mode == "label or explanation":
        if loaded.neuronpedia:  # Neuronpedia's own search over its explanations (cached, with the client's limits)
            model_id = loaded.neuronpedia.split("/", 1)[0]
            found = search_explanations(query, model_id, [loaded.neuronpedia])
            return [SearchHit(h.index, float(h.similarity or 0.0), 1, h.description) for h in found][:k]
        if board is None:
            raise UnlearnError("this SAE has no dashboard yet: compute it on a latent's detail panel first")
        return search_labels(board_labels(board), query, k=k)
    if board is None:
        raise UnlearnError("this SAE has no dashboard yet: compute it on a latent's detail panel first")
    if mode == "promotes a token":
        return search_promoted(board, query, k=k)
    return search_contexts(board, query, k=k)


def by_token_panel(ws, result: ExploreResult, loaded: LoadedSae, prompt: int, board: Dashboards | None,
                   exclude: set[int]) -> None:
    """Which latents fire on each token of one prompt: the most specific first (rarest on general text and prompts)."""
    reference = specificity_reference(ws, loaded, board)
    rows = result.latents_by_token(loaded.ref, prompt, k=3, reference=reference, exclude=exclude)
    labels = views.explanation_texts(loaded, [lat for _, pairs in rows for lat, _ in pairs])
    table = pd.DataFrame({
        "token": [tok for tok, _ in rows],
        "latents (most specific first)": [
            " · ".join(f"{lat} ({val:.1f}) {labels.get(lat, '')[:40]}" for lat, val in pairs) for _, pairs in rows],
    })
    st.dataframe(table, hide_index=True, width="stretch")
