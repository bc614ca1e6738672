"""Explore's specificity ranking, contrast prompts, per-token grouping, latent search and automatic labels, on a tiny
random model and hand-made dashboards (the mechanics; the real-model checks are in test_explore_discovery.py)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from tiny_models import make_tiny_model, tiny_sae

from unlearn_core.errors import InputError
from unlearn_core.explain.dashboards import Context, Dashboards, auto_label
from unlearn_core.explain.explore import STUDY_PROMPTS, explore, reference_prompt_counts, reference_prompts
from unlearn_core.explain.ranking import (
    THEME_WEIGHT,
    ReferenceRates,
    dense_latents,
    general_reference,
    source_ratio,
    specificity,
    theme_weights,
    with_reference_prompts,
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


def _naive_theme(score: torch.Tensor, fires_on: dict[int, set[int]], n_prompts: int) -> dict[int, float]:
    """The theme weight written out as loops (the ranking module's docstring), for every latent in ``fires_on``
    (latent -> prompts it fires on). Every finite score is a candidate (the tiny SAE has fewer than 100 latents)."""
    vectors = [[max(float(score[lat]), 0.0) if p in prompts and math.isfinite(float(score[lat])) else 0.0
                for lat, prompts in sorted(fires_on.items())] for p in range(n_prompts)]
    norms = [math.sqrt(sum(v * v for v in vec)) for vec in vectors]
    theme = []
    for p in range(n_prompts):
        total = 0.0
        for q in range(n_prompts):
            if q != p and norms[p] > 0 and norms[q] > 0:
                total += sum(a * b for a, b in zip(vectors[p], vectors[q], strict=True)) / (norms[p] * norms[q])
        theme.append(total / (n_prompts - 1))
    best = max(theme)
    return {lat: max(max(theme[p] for p in prompts) / best, 1e-3) for lat, prompts in fires_on.items()}


def _fires_on(result, ref: str) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    sa = result.by_sae[ref]
    for lat, row in zip(sa.latents.tolist(), sa.rows.tolist(), strict=True):
        out.setdefault(lat, set()).add(int(result.row_prompt[row]))
    return out


def test_specific_ranking_is_the_smoothed_log_lift_weighted_by_theme(lm, sae):
    result = explore(lm, [sae], PROMPTS)
    reference = _reference(sae.width)
    counts, n = result.counts(sae.ref)
    assert n == sum(len(t) for t in result.tokens)
    smoothed = (reference.rate * 10_000 + 1) / (10_000 + 2)
    lift = torch.log((counts.double() + 1) / n / smoothed)
    lift[counts == 0] = -math.inf
    theme = _naive_theme(lift, _fires_on(result, sae.ref), len(PROMPTS))
    expected = lift.clone()
    for lat, weight in theme.items():
        expected[lat] += THEME_WEIGHT * math.log(weight)
    top = result.top_latents(sae.ref, k=8, reference=reference)  # "specific" is the default
    assert [s.latent for s in top] == torch.argsort(expected, descending=True, stable=True)[:8].tolist()
    assert [s.score for s in top] == pytest.approx(expected[[s.latent for s in top]].tolist())
    assert all(s.frequency > 0 for s in top)  # only latents that fire on the prompts
    one = result.top_latents(sae.ref, k=5, reference=reference, prompt=1)  # one prompt: the plain lift
    c1, n1 = result.counts(sae.ref, prompt=1)
    assert [s.score for s in one] == pytest.approx(
        [math.log((float(c1[s.latent]) + 1) / n1 / float(smoothed[s.latent])) for s in one])
    with pytest.raises(InputError, match="reference rates"):
        result.top_latents(sae.ref, k=3)


def test_theme_weights_demote_latents_of_a_prompt_unlike_the_others():
    # prompts 0-2 share latents 0-3; prompt 3 fires only latent 4 (and latent 5 fires on prompts 0 and 3)
    pairs = [(lat, p) for lat in range(4) for p in range(3)] + [(4, 3), (5, 0), (5, 3)]
    score = torch.tensor([5.0, 4.0, 3.0, 2.0, 6.0, 1.0, -math.inf, 2.5], dtype=torch.float64)
    weights = theme_weights(score, torch.tensor(pairs), n_prompts=4)
    fires_on: dict[int, set[int]] = {}
    for lat, p in pairs:
        fires_on.setdefault(lat, set()).add(p)
    naive = _naive_theme(score, fires_on, 4)
    assert weights[:6].tolist() == pytest.approx([naive[i] for i in range(6)])
    assert float(weights[4]) < 0.05 * float(weights[0])  # only on the off-topic prompt (which shares latent 5 only)
    assert float(weights[5]) == pytest.approx(float(weights[0]))  # also on a themed prompt: its best counts
    assert weights[6:].tolist() == [1.0, 1.0]  # not firing: untouched
    # random cases against the loops
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        n_prompts, width = 6, 40
        fires = torch.rand(width, n_prompts, generator=gen) < 0.2
        pairs_t = fires.nonzero()
        score = torch.randn(width, generator=gen, dtype=torch.float64) * 2
        fires_on = {}
        for lat, p in pairs_t.tolist():
            fires_on.setdefault(lat, set()).add(p)
        naive = _naive_theme(score, fires_on, n_prompts)
        got = theme_weights(score, pairs_t, n_prompts)
        assert [float(got[lat]) for lat in sorted(naive)] == pytest.approx([naive[lat] for lat in sorted(naive)])
    # one or two prompts: nothing to compare against, nothing changes
    assert theme_weights(score, torch.tensor([[0, 0], [1, 1]]), n_prompts=2).tolist() == [1.0] * score.numel()


def test_reference_prompts_raise_the_reference_rate(lm, sae):
    reference = _reference(sae.width)
    counts = reference_prompt_counts(lm, [sae], ["Describe the sea.", "Who was Ada Lovelace?"])[sae.ref]
    assert counts[1] == sum(len(t) for t in explore(lm, [sae], ["Describe the sea.", "Who was Ada Lovelace?"]).tokens)
    both = with_reference_prompts(reference, *counts)
    assert torch.equal(both.smoothed(), torch.maximum(reference.smoothed(), counts[0].double() / counts[1]))
    assert both.rate is reference.rate and "everyday prompts" in both.description
    with pytest.raises(InputError, match="no tokens"):
        with_reference_prompts(reference, counts[0], 0)
    with pytest.raises(InputError, match="reference describes"):
        with_reference_prompts(reference, torch.zeros(3), 5)
    # the bundled reference prompts: many, distinct, none on the concept or on the study's other topics
    bundled = reference_prompts()
    assert len(bundled) >= 150 and len(set(bundled)) == len(bundled)
    banned = ("harry", "potter", "hogwarts", "quidditch", "voldemort", "wizard", "witch", "wand", "magic", "spell",
              "roman", "empire", "diet", "healthy", "typical", "modern", "city")
    words = [set(re.findall(r"[a-z]+", p.lower())) for p in bundled]
    assert not [p for p, w in zip(bundled, words, strict=True) if w & set(banned)]
    assert not set(bundled) & {p for p, _ in STUDY_PROMPTS}


def test_contrast_prompts_push_down_latents_that_fire_there_too(lm, sae):
    result = explore(lm, [sae], PROMPTS)
    contrast = explore(lm, [sae], OTHER)
    reference = _reference(sae.width)
    c_counts, c_n = contrast.counts(sae.ref)
    counts, n = result.counts(sae.ref)
    plain = specificity(counts, n, reference)
    against = specificity(counts, n, reference, c_counts, c_n)
    for lat in torch.nonzero(counts).flatten().tolist():
        ref = max(float(reference.smoothed()[lat]), float(c_counts[lat]) / c_n)
        assert float(against[lat]) == pytest.approx(math.log((float(counts[lat]) + 1) / n / ref))
        # never more specific with a contrast, and strictly less where the contrast fires more than general text
        assert float(against[lat]) <= float(plain[lat]) + 1e-12
        if c_counts[lat] / c_n > float(reference.smoothed()[lat]):
            assert float(against[lat]) < float(plain[lat])
    # the ranking is that lift, weighted by the prompts' theme
    theme = _naive_theme(against, _fires_on(result, sae.ref), len(PROMPTS))
    top = result.top_latents(sae.ref, k=sae.width, reference=reference, contrast=contrast)
    assert [s.score for s in top] == pytest.approx(
        [float(against[s.latent]) + THEME_WEIGHT * math.log(theme[s.latent]) for s in top])


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
