"""Explore's specificity ranking, contrast prompts, per-token grouping, latent search and automatic labels, on a tiny
random model and hand-made dashboards (the mechanics; the real-model checks are in test_explore_discovery.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny_models import make_tiny_model, tiny_sae

from unlearn_core.errors import InputError
from unlearn_core.explain.dashboards import Context, Dashboards, auto_label
from unlearn_core.explain.explore import explore
from unlearn_core.explain.ranking import (
    ReferenceRates,
    dense_latents,
    general_reference,
    source_ratio,
    specificity,
)
from unlearn_core.explain.search import board_labels, search_contexts, search_labels, search_promoted

PROMPTS = ["Harry waved his wand.", "The Roman Empire fell.", "Bread, milk and eggs."]
OTHER = ["Milk and bread again.", "An empire of bread."]


@pytest.fixture(scope="module")
def lm():
    return make_tiny_model(seed=5)


@pytest.fixture(scope="module")
def sae():
    return tiny_sae(layer=2, seed=2)


def _reference(width: int, seed: int = 0) -> ReferenceRates:
    rates = torch.rand(width, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 0.05
    rates[::7] = 0.0  # some latents never seen on the reference
    return ReferenceRates(rates, 10_000, "test")


def test_specific_ranking_is_the_smoothed_log_lift(lm, sae):
    result = explore(lm, [sae], PROMPTS)
    reference = _reference(sae.width)
    counts, n = result.counts(sae.ref)
    assert n == sum(len(t) for t in result.tokens)
    smoothed = (reference.rate * 10_000 + 1) / (10_000 + 2)
    expected = torch.log((counts.double() + 1) / n / smoothed)
    expected[counts == 0] = -math.inf
    top = result.top_latents(sae.ref, k=8, reference=reference)  # "specific" is the default
    assert [s.latent for s in top] == torch.argsort(expected, descending=True, stable=True)[:8].tolist()
    assert [s.score for s in top] == pytest.approx(expected[[s.latent for s in top]].tolist())
    assert all(s.frequency > 0 for s in top)  # only latents that fire on the prompts
    with pytest.raises(InputError, match="reference rates"):
        result.top_latents(sae.ref, k=3)


def test_contrast_prompts_push_down_latents_that_fire_there_too(lm, sae):
    result = explore(lm, [sae], PROMPTS)
    contrast = explore(lm, [sae], OTHER)
    reference = _reference(sae.width)
    plain = result.top_latents(sae.ref, k=sae.width, reference=reference)
    against = result.top_latents(sae.ref, k=sae.width, reference=reference, contrast=contrast)
    c_counts, c_n = contrast.counts(sae.ref)
    counts, n = result.counts(sae.ref)
    for s in against:
        ref = max(float(reference.smoothed()[s.latent]), float(c_counts[s.latent]) / c_n)
        assert s.score == pytest.approx(math.log((float(counts[s.latent]) + 1) / n / ref))
    plain_scores = {s.latent: s.score for s in plain}
    for s in against:  # never more specific with a contrast, and strictly less where the contrast fires
        assert s.score <= plain_scores[s.latent] + 1e-12
        if c_counts[s.latent] / c_n > float(reference.smoothed()[s.latent]):
            assert s.score < plain_scores[s.latent]


def test_exclude_and_errors(lm, sae):
    result = explore(lm, [sae], PROMPTS)
    reference = _reference(sae.width)
    first = result.top_latents(sae.ref, k=3, reference=reference)
    skipped = result.top_latents(sae.ref, k=3, reference=reference, exclude={first[0].latent})
    assert first[0].latent not in [s.latent for s in skipped]
    assert [s.latent for s in skipped][:2] == [s.latent for s in first][1:3]
    with pytest.raises(InputError, match="no prompt tokens"):
        specificity(torch.zeros(sae.width), 0, reference)
    with pytest.raises(InputError, match="reference describes"):
        specificity(torch.zeros(3), 5, reference)


def test_latents_by_token_lists_each_tokens_active_latents(lm, sae):
    result = explore(lm, [sae], PROMPTS)
    reference = _reference(sae.width)
    rows = result.latents_by_token(sae.ref, 1, k=3, reference=reference)
    assert [tok for tok, _ in rows] == result.tokens[1]
    for position, (_, pairs) in enumerate(rows):
        values = result.token_values
        for latent, value in pairs:
            assert value > 0
            assert values(sae.ref, latent)[1][position] == pytest.approx(value)
        rarity = [float(reference.smoothed()[lat]) for lat, _ in pairs]
        assert rarity == sorted(rarity)  # rarest on general text first
    with pytest.raises(InputError, match="does not exist"):
        result.latents_by_token(sae.ref, 9)


def _board() -> Dashboards:
    vocab = [" Harry", " Potter", " went", " to", " Hog", "warts", " the", " Roman", " bread", "."]
    width, n_ctx, window = 4, 2, 5
    tokens = np.full((width, n_ctx, window), -1, dtype=np.int32)
    values = np.zeros((width, n_ctx, window), dtype=np.float32)
    focus = np.full((width, n_ctx), -1, dtype=np.int8)
    # latent 0 fires on " Potter" after " Harry"; latent 1 on "warts" of " Hog"+"warts"; latent 2 on " Roman"
    tokens[0, 0] = [0, 1, 2, 3, 6]
    focus[0, 0] = 1
    values[0, 0, 1] = 4.0
    tokens[0, 1] = [6, 0, 1, 9, -1]
    focus[0, 1] = 2
    values[0, 1, 2] = 3.0
    tokens[1, 0] = [2, 3, 4, 5, 9]
    focus[1, 0] = 3
    values[1, 0, 3] = 5.0
    tokens[2, 0] = [6, 7, 8, 9, -1]
    focus[2, 0] = 1
    values[2, 0, 1] = 2.0
    promoted = np.array([[1, 0], [5, 4], [7, 6], [9, 9]], dtype=np.int32)
    board = Dashboards(
        frequency=np.array([0.01, 0.02, 0.5, 0.0], dtype=np.float32),
        max_activation=np.array([4.0, 5.0, 2.0, 0.0], dtype=np.float32),
        context_tokens=tokens, context_values=values, context_focus=focus,
        promoted_tokens=promoted, promoted_values=np.ones((width, 2), dtype=np.float32),
        suppressed_tokens=promoted.copy(), suppressed_values=np.ones((width, 2), dtype=np.float32),
        vocab=vocab, meta={"corpus": "test", "n_tokens": 3000, "sources": ["gutenberg", "hp-fanwiki", "wikitext2"]},
        source_frequency=np.array([[0.001, 0.03, 0.002], [0.0, 0.05, 0.0], [0.4, 0.3, 0.6], [0, 0, 0]], dtype=np.float32),
    )
    board.validate()
    return board


def test_search_by_word_finds_latents_firing_on_it_even_across_tokens():
    board = _board()
    assert [h.latent for h in search_contexts(board, "potter")] == [0]
    assert search_contexts(board, "Potter")[0].matches == 2
    assert [h.latent for h in search_contexts(board, "Hogwarts")] == [1]  # " Hog" + "warts"
    assert "‹warts›" in search_contexts(board, "Hogwarts")[0].evidence
    harry = search_contexts(board, "Harry")
    assert [h.latent for h in harry] == [0] and harry[0].after  # one token before the activating " Potter"...
    assert harry[0].score == pytest.approx(0.5 * (4.0 / 4.0 + 3.0 / 4.0))  # ...counts half
    assert not search_contexts(board, "potter")[0].after
    assert search_contexts(board, "went") == []  # in a context, but not at (or just before) the activating token
    assert [h.latent for h in search_contexts(board, "Roman", exclude={2})] == []
    with pytest.raises(InputError, match="type a word"):
        search_contexts(board, "  ")
    with pytest.raises(InputError, match="at most"):
        search_contexts(board, "x" * 500)


def test_search_by_promoted_token_and_by_label():
    board = _board()
    assert [h.latent for h in search_promoted(board, "warts")] == [1]
    labels = board_labels(board)
    assert labels[0].startswith("auto: Potter")
    assert [h.latent for h in search_labels(labels, "hogwarts")] == [1]
    assert [h.latent for h in search_labels({5: "Harry Potter names", 6: "potter's wheel, Harry"}, "harry potter")] == [5, 6]


def test_reference_rates_use_general_sources_only():
    board = _board()
    reference = general_reference(board)
    assert reference.rate.tolist() == pytest.approx([0.002, 0.0, 0.6, 0.0])  # max of gutenberg and wikitext2
    assert source_ratio(board, 0) == pytest.approx(15.0)
    assert source_ratio(board, 1) == math.inf
    assert source_ratio(board, 3) == 0.0
    assert dense_latents(board) == {2}
    board.source_frequency = None
    assert general_reference(board).rate.tolist() == pytest.approx(board.frequency.tolist())
    assert source_ratio(board, 0) is None


def test_auto_label_joins_word_pieces_and_adds_what_it_writes():
    contexts = [Context([" at", " Hog", "warts", "."], [0, 0, 3.0, 0], 2, 3.0),
                Context([" the", " Hog", "warts"], [0, 2.0, 0], 1, 2.0)]
    assert auto_label(contexts) == "auto: Hogwarts"
    label = auto_label(contexts, promoted=[(" castle", 1.0), ("ß", 0.9), (" school", 0.8)])
    assert label == "auto: Hogwarts (writes: castle, school)"
    assert auto_label([]) == "auto: (no activations seen)"
