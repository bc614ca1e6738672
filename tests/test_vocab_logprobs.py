"""The tiled vocabulary log-softmax against full logits: values, argmax hits (ties included), bias, soft-cap, bf16."""

from __future__ import annotations

import pytest
import torch

from unlearn_core.scoring.vocab_logprobs import target_logprobs


def reference(x, w_u, targets, bias=None, cap=None):
    logits = x.float() @ w_u.float()
    if bias is not None:
        logits = logits + bias
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    logp = logits.log_softmax(-1).gather(1, targets[:, None])[:, 0]
    return logp, logits.argmax(-1) == targets


@pytest.mark.parametrize("tile_rows,tile_cols", [(7, 13), (64, 64), (3, 1000), (512, 2048)])
@pytest.mark.parametrize("with_bias,cap", [(False, None), (True, None), (True, 5.0)])
def test_matches_full_logits_in_float32(tile_rows, tile_cols, with_bias, cap):
    gen = torch.Generator().manual_seed(tile_rows * 31 + tile_cols)
    n, d, vocab = 41, 16, 300
    x = torch.randn(n, d, generator=gen)
    w_u = torch.randn(d, vocab, generator=gen)
    bias = torch.randn(vocab, generator=gen) if with_bias else None
    ref_logits = x @ w_u + (bias if bias is not None else 0)
    # half the targets are the argmax, so hits are tested both ways
    targets = torch.randint(0, vocab, (n,), generator=gen)
    targets[::2] = ref_logits[::2].argmax(-1)
    logp, hits = target_logprobs(x, w_u, targets, bias, cap, tile_rows, tile_cols)
    want_logp, want_hits = reference(x, w_u, targets, bias, cap)
    assert logp.dtype == torch.float32 and hits.dtype == torch.bool
    assert torch.allclose(logp, want_logp, atol=1e-4, rtol=1e-5)
    assert torch.equal(hits, want_hits)
    assert int(hits.sum()) >= n // 2


def test_ties_go_to_the_first_index_as_argmax_does():
    d, vocab = 8, 50
    w_u = torch.randn(d, vocab, generator=torch.Generator().manual_seed(1))
    w_u = w_u / w_u.norm(dim=0)  # unit columns: x along column c makes c (and its exact copies) the maximum
    w_u[:, 37] = w_u[:, 5]  # twins in different tiles
    w_u[:, 12] = w_u[:, 11]  # twins side by side
    for first, twin in ((5, 37), (11, 12)):
        x = 50 * w_u[:, first][None, :]
        assert int((x @ w_u).argmax()) == first
        for tile_cols in (4, 10, 12, 64):
            assert bool(target_logprobs(x, w_u, torch.tensor([first]), tile_cols=tile_cols)[1])
            assert not bool(target_logprobs(x, w_u, torch.tensor([twin]), tile_cols=tile_cols)[1])


def test_bfloat16_is_close_to_float32_of_the_same_weights():
    gen = torch.Generator().manual_seed(3)
    n, d, vocab = 64, 32, 4000
    x = torch.randn(n, d, generator=gen).bfloat16()
    w_u = (torch.randn(d, vocab, generator=gen) / d**0.5).bfloat16()
    targets = torch.randint(0, vocab, (n,), generator=gen)
    logp, hits = target_logprobs(x, w_u, targets, tile_rows=16, tile_cols=512)
    want, _ = reference(x, w_u, targets)
    assert logp.dtype == torch.float32
    assert float((logp - want).abs().max()) < 0.05
    assert abs(float((logp - want).mean())) < 0.005


def test_no_rows_gives_empty_results():
    logp, hits = target_logprobs(torch.zeros(0, 4), torch.randn(4, 10), torch.zeros(0, dtype=torch.long))
    assert logp.shape == (0,) and hits.shape == (0,)


@pytest.mark.parametrize("scale,offset", [(0.1, 0.0), (30.0, 0.0), (1.0, -150.0), (1.0, 90.0)])
def test_extreme_logits_match_full_logits(scale, offset):
    """Logits far beyond exp's float32 range (overflow above ~88, underflow below ~-87) in some rows or all."""
    gen = torch.Generator().manual_seed(int(scale * 10))
    n, d, vocab = 23, 16, 500
    x = torch.randn(n, d, generator=gen) * scale
    x[5] *= 40  # one row far out of exp's range whatever the scale
    w_u = torch.randn(d, vocab, generator=gen)
    bias = torch.full((vocab,), offset)
    targets = torch.randint(0, vocab, (n,), generator=gen)
    targets[::3] = (x @ w_u)[::3].argmax(-1)
    logp, hits = target_logprobs(x, w_u, targets, bias, None, 16, 128)
    want_logp, want_hits = reference(x.double(), w_u.double(), targets, bias.double())
    assert bool(torch.isfinite(logp).all())
    assert torch.allclose(logp.double(), want_logp, atol=2e-4, rtol=1e-5)
    assert torch.equal(hits, want_hits)
