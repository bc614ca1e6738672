"""Search every latent of an SAE by what it fires on and by what it is called, from its dashboards.

* :func:`search_contexts` - latents whose top activating contexts have the query (a word or a phrase, any case) at
  the token they fire on: the query's text overlaps the activating token, or ends just before it (a latent that
  fires on " Potter" is found by "Harry" too, one token back; such matches count half and are flagged ``after``).
  Multi-token words ("Hog" + "warts") match because contexts are searched as text, not token by token. Ranked by
  the activation of the matching contexts relative to the latent's strongest, summed, so a latent whose *every* top
  context is the word comes first.
* :func:`search_promoted` - latents whose decoder direction promotes a token matching the query (what they write).
* :func:`search_labels` - latents whose automatic label or explanation (Neuronpedia's, when the caller has them)
  contains every word of the query.

"Fires on this text" is an exploration of the text itself (:func:`unlearn_core.explain.explore.explore`).
The joined context texts of a board are built once and kept on the board (~0.1 s for 4k latents), so a warm
search over every latent takes milliseconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from unlearn_core.errors import InputError
from unlearn_core.explain.dashboards import Dashboards

MAX_QUERY_CHARS = 200
TOKENS_BACK = 1
"""A match may end this many tokens before the activating token (names: "Harry" finds the " Potter" latent)."""


@dataclass(frozen=True)
class SearchHit:
    """One latent found by a search: its score (higher is better) and why it matched."""

    latent: int
    score: float
    matches: int
    """How many of its top contexts (or promoted tokens, or label words) matched."""
    evidence: str
    """The best matching context (with the activating token in ‹ ›), promoted token, or label, as plain text."""
    after: bool = False
    """Context search: every match ended just before the activating token (it fires on the word *after* the query)."""


AFTER_WEIGHT = 0.5
"""A context matching only just before the activating token counts this much (it fires on what follows the word)."""


@dataclass(frozen=True)
class _ContextIndex:
    texts: list[str]
    """Lower-cased text of each (latent, context) pair, in latent-major order."""
    focus_spans: list[tuple[int, int, int]]
    """Character spans in that text: start of the :data:`TOKENS_BACK` tokens before the activating token, and the
    activating token's own start and end."""
    display: list[str]
    owners: np.ndarray
    values: np.ndarray


def _check_query(query: str) -> str:
    query = (query or "").strip()
    if not query:
        raise InputError("type a word or phrase to search for")
    if len(query) > MAX_QUERY_CHARS:
        raise InputError(f"the search is {len(query)} characters long; use at most {MAX_QUERY_CHARS}")
    return query


def _index(board: Dashboards) -> _ContextIndex:
    cached = board.__dict__.get("_context_index")
    if cached is not None:
        return cached
    texts, spans, display, owners, values = [], [], [], [], []
    vocab = board.vocab
    for latent in range(board.width):
        for c in range(board.context_tokens.shape[1]):
            focus = int(board.context_focus[latent, c])
            if focus < 0:
                continue
            ids = board.context_tokens[latent, c]
            tokens = [vocab[t] for t in ids[ids >= 0]]
            start = sum(len(t) for t in tokens[: max(focus - TOKENS_BACK, 0)])
            focus_start = sum(len(t) for t in tokens[:focus])
            end = focus_start + len(tokens[focus])
            text = "".join(tokens)
            texts.append(text.lower())
            spans.append((start, focus_start, end))
            display.append((text[:focus_start] + "‹" + tokens[focus] + "›" + text[end:]).replace("\n", " ⏎ "))
            owners.append(latent)
            values.append(float(board.context_values[latent, c, focus]))
    index = _ContextIndex(texts, spans, display, np.asarray(owners, dtype=np.int64), np.asarray(values, dtype=np.float64))
    board.__dict__["_context_index"] = index
    return index


def _match(text: str, query: str, span: tuple[int, int, int]) -> str | None:
    """``"on"`` if an occurrence of ``query`` overlaps the activating token, ``"before"`` if one only overlaps the
    tokens just before it, else None."""
    found = None
    start = text.find(query)
    while start != -1:
        end = start + len(query)
        if start < span[2] and end > span[1]:
            return "on"
        if start < span[1] and end > span[0]:
            found = "before"
        start = text.find(query, start + 1)
    return found


def search_contexts(board: Dashboards, query: str, k: int = 20, exclude: set[int] | None = None) -> list[SearchHit]:
    """Latents that fire on ``query`` in their top contexts (module docstring), best first."""
    needle = _check_query(query).lower()
    index = _index(board)
    peak = np.maximum(board.max_activation.astype(np.float64), 1e-9)
    scores: dict[int, float] = {}
    counts: dict[int, int] = {}
    best: dict[int, tuple[float, str]] = {}
    on_word: set[int] = set()
    for row, text in enumerate(index.texts):
        if needle not in text:
            continue
        where = _match(text, needle, index.focus_spans[row])
        latent = int(index.owners[row])
        if where is None or (exclude and latent in exclude):
            continue
        if where == "on":
            on_word.add(latent)
        value = float(index.values[row])
        scores[latent] = scores.get(latent, 0.0) + value / peak[latent] * (1.0 if where == "on" else AFTER_WEIGHT)
        counts[latent] = counts.get(latent, 0) + 1
        if value > best.get(latent, (-1.0, ""))[0]:
            best[latent] = (value, index.display[row])
    order = sorted(scores, key=lambda i: (-scores[i], i))[:k]
    return [SearchHit(i, scores[i], counts[i], best[i][1], after=i not in on_word) for i in order]


def search_promoted(board: Dashboards, query: str, k: int = 20, exclude: set[int] | None = None) -> list[SearchHit]:
    """Latents whose decoder promotes a token containing ``query`` (case-insensitive), by the promotion's size."""
    needle = _check_query(query).lower()
    matching = np.array([needle in token.strip().lower() and bool(token.strip()) for token in board.vocab] + [False])
    hits = matching[board.promoted_tokens]  # [d_sae, L]; -1 ids hit the trailing False
    hits &= board.promoted_tokens >= 0
    found: list[SearchHit] = []
    for latent in np.flatnonzero(hits.any(axis=1)):
        if exclude and int(latent) in exclude:
            continue
        cols = np.flatnonzero(hits[latent])
        top = int(cols[np.argmax(board.promoted_values[latent, cols])])
        found.append(SearchHit(int(latent), float(board.promoted_values[latent, cols].sum()), len(cols),
                               f"promotes {board.vocab[int(board.promoted_tokens[latent, top])]!r}"))
    found.sort(key=lambda h: (-h.score, h.latent))
    return found[:k]


def search_labels(
    labels: Mapping[int, str], query: str, k: int = 20, exclude: set[int] | None = None
) -> list[SearchHit]:
    """Latents whose label (automatic or an explanation) contains every word of ``query``, case-insensitive;
    labels with the words as one phrase first, then shorter labels."""
    words = _check_query(query).lower().split()
    phrase = " ".join(words)
    found = []
    for latent, label in labels.items():
        text = (label or "").lower()
        if (exclude and latent in exclude) or not all(w in text for w in words):
            continue
        score = (2.0 if phrase in text else 1.0) + 1.0 / (1 + len(text))
        found.append(SearchHit(int(latent), score, len(words), label))
    found.sort(key=lambda h: (-h.score, h.latent))
    return found[:k]


def board_labels(board: Dashboards) -> dict[int, str]:
    """The automatic label of every latent of a board (built once, kept on the board)."""
    cached = board.__dict__.get("_labels")
    if cached is None:
        cached = {i: board.latent(i).auto_label for i in range(board.width)}
        board.__dict__["_labels"] = cached
    return cached
