"""Rendering helpers shared by the pages: highlighted tokens, latent dashboards, explanations."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

import streamlit as st

from unlearn_core.errors import UnlearnError
from unlearn_core.explain.dashboards import LatentDashboard
from unlearn_core.explain.labels import latent_labels
from unlearn_core.saes.loading import LoadedSae
from unlearn_core.saes.neuronpedia import Explanation

from . import state
from .resources import get_dashboards, neuronpedia_client
from .safe_text import md_escape
from .state import Key

HIGHLIGHT_RGB = "234, 88, 12"  # orange: readable on light and dark themes


def _token_html(token: str) -> str:
    shown = html.escape(token).replace("\n", "⏎").replace(" ", "&nbsp;") or "∅"
    return shown


def highlighted_tokens(tokens: Sequence[str], values: Sequence[float], scale: float | None = None,
                       focus: int | None = None) -> str:
    """Tokens as inline spans shaded by activation (relative to ``scale``, default the max); hover shows the value."""
    top = scale if scale and scale > 0 else max([v for v in values if v > 0], default=1.0)
    spans = []
    for i, (tok, val) in enumerate(zip(tokens, values, strict=True)):
        alpha = 0.0 if val <= 0 else min(1.0, 0.15 + 0.85 * val / top)
        border = "border-bottom:2px solid #111;" if i == focus else ""
        spans.append(
            f'<span title="{val:.3g}" style="background:rgba({HIGHLIGHT_RGB},{alpha:.2f});padding:1px 0;'
            f'border-radius:3px;{border}">{_token_html(tok)}</span>'
        )
    return '<div style="font-family:ui-monospace,monospace;font-size:0.85rem;line-height:1.9;">' + "".join(spans) + "</div>"


def explanation_texts(loaded: LoadedSae, ids: Iterable[int]) -> dict[int, str]:
    """One line per latent (:func:`unlearn_core.explain.labels.latent_labels`), with the app's shared Neuronpedia
    client (its cache and circuit breaker) and the shared dashboards."""
    board = None if loaded.neuronpedia else get_dashboards(loaded)
    try:
        client = neuronpedia_client() if loaded.neuronpedia else None
    except UnlearnError as exc:  # e.g. a bad NEURONPEDIA_API_URL: reported per latent, not raised
        return {int(i): f"explanation unavailable ({exc})" for i in ids}
    return latent_labels(loaded, board, ids, client=client)


def _fetch_explanations(neuronpedia_id: str, ids: list[int]) -> dict[int, Explanation] | str:
    """Explanations from the shared client, or the reason none can be fetched now.

    A site that is unreachable, timing out or rate-limiting is not asked again on every rerun of every session: the
    client's process-wide circuit breaker (:mod:`unlearn_core.saes.neuronpedia.breaker`) answers at once until it
    retries. A bad ``NEURONPEDIA_API_URL`` is reported, not raised.
    """
    try:
        return neuronpedia_client().explanations(neuronpedia_id, ids)
    except UnlearnError as exc:
        return str(exc)


def neuronpedia_explanation(loaded: LoadedSae, latent: int) -> Explanation | None:
    """Neuronpedia's explanation of one latent (an Explanation carrying the error when it cannot be fetched)."""
    if not loaded.neuronpedia:
        return None
    found = _fetch_explanations(loaded.neuronpedia, [latent])
    if isinstance(found, str):
        return Explanation(loaded.neuronpedia, latent, None, None, None, error=found)
    return found[latent]


def dashboard_panel(board: LatentDashboard, max_contexts: int = 6) -> None:
    """A local dashboard: frequency, max activation, top contexts (highlighted) and promoted/suppressed tokens."""
    cols = st.columns(3)
    cols[0].metric("firing frequency", f"{board.frequency:.3%}")
    cols[1].metric("max activation", f"{board.max_activation:.3g}")
    cols[2].metric("corpus tokens", f"{board.n_tokens:,}")
    if board.frequency_by_source:
        st.caption("frequency by corpus part: " + " · ".join(
            f"{md_escape(name)} {freq:.3%}" for name, freq in board.frequency_by_source.items()))
    if board.is_dead:
        st.info("This latent never fired on the dashboard corpus.")
        return
    st.markdown("**Top activating contexts**")
    scale = max((c.value for c in board.contexts), default=1.0)
    for ctx in board.contexts[:max_contexts]:
        st.html(highlighted_tokens(ctx.tokens, ctx.values, scale=scale, focus=ctx.focus))
    left, right = st.columns(2)
    left.markdown("**Promoted tokens** (W_dec · W_U)")
    left.html(_chips(board.promoted, "#15803d"))
    right.markdown("**Suppressed tokens**")
    right.html(_chips(board.suppressed, "#b91c1c"))
    st.caption(f"Dashboard corpus: {md_escape(board.corpus)}. {md_escape(board.auto_label)} (automatic label, not a "
               "human explanation).")


def _chips(pairs: Sequence[tuple[str, float]], color: str) -> str:
    chips = [
        f'<span style="display:inline-block;margin:2px;padding:1px 6px;border:1px solid {color};border-radius:10px;'
        f'font-family:ui-monospace,monospace;font-size:0.8rem;" title="{value:+.3g}">{_token_html(tok.strip() or tok)}</span>'
        for tok, value in pairs
    ]
    return "<div>" + "".join(chips) + "</div>"


def explanation_panel(loaded: LoadedSae, latent: int) -> None:
    """Neuronpedia's explanation (for hosted SAEs) and the local dashboard when one exists."""
    exp = neuronpedia_explanation(loaded, latent)
    if exp is not None:
        if exp.ok:
            st.markdown(f"**Neuronpedia:** {md_escape(exp.text())}")  # the explanation is foreign text
            extra = []
            if exp.frac_nonzero is not None:
                extra.append(f"density {exp.frac_nonzero:.3%}")
            if exp.max_activation is not None:
                extra.append(f"max activation ≈ {exp.max_activation:.3g}")
            st.caption(" · ".join(extra + [f"[open on Neuronpedia]({exp.url})"]))
        else:
            st.warning(f"Neuronpedia: {md_escape(exp.text())}")
    boards = get_dashboards(loaded)
    if boards is not None:
        dashboard_panel(boards.latent(latent))
    elif exp is None or not exp.ok:
        st.info(
            "No local dashboard for this SAE yet. Computing one runs the model over ~40k tokens of built-in text "
            "(a few minutes on a CPU) and is cached for next time."
        )
        if st.button("Compute local dashboards", key=Key.compute_dashboards(loaded.ref)):
            _compute_dashboards(loaded)


def _compute_dashboards(loaded: LoadedSae) -> None:
    from unlearn_core.explain.dashboard_cache import dashboards_for

    from .resources import remember_dashboards

    ws = state.workspace()
    if ws.lm is None:
        st.error("Load a model first.")
        return
    bar = st.progress(0.0, text="Computing dashboards…")

    def progress(stage: str, done: int, total: int) -> None:
        bar.progress(min(1.0, done / max(total, 1)), text=f"{stage}: {done:,}/{total:,}")

    remember_dashboards(loaded, dashboards_for(ws.lm, loaded, progress=progress))
    st.rerun()
