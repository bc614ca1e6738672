"""SAE quality metrics on the tiny model, checked on SAEs whose answers are known."""

from __future__ import annotations

import pytest
import torch
from tiny_models import random_jumprelu_sae

from unlearn_core.training.quality import measure_quality

TEXTS = ["A short text about rivers and hills.", "Another line, with numbers 1 2 3.", "The third and last one."]


def _signed_identity_sae(hook_name: str, d_in: int = 32):
    """relu(x) - relu(-x) = x: a JumpReLU SAE (threshold 0) that reconstructs exactly with 2 * d_in latents."""
    sae = random_jumprelu_sae(d_in, 2 * d_in, hook_name).sae
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        sae.threshold.zero_()
    return sae


def test_a_perfect_sae_recovers_everything(tiny_lm):
    hook = "blocks.1.hook_resid_post"
    q = measure_quality(tiny_lm, {hook: _signed_identity_sae(hook)}, TEXTS, ce_max_tokens=60)[hook]
    assert q.fve == pytest.approx(1.0, abs=1e-5)
    assert q.ce_loss_recovered == pytest.approx(1.0, abs=1e-4)
    assert q.l0 == pytest.approx(32.0, abs=0.5)  # every coordinate is non-zero, one latent each
    assert q.dead_fraction == 0.0
    assert q.ce_tokens == 60 and q.n_tokens == sum(len(t.encode()) for t in TEXTS)


def test_fve_is_mean_centred(tiny_lm):
    from unlearn_core.scoring.activations import collect_activations
    from unlearn_core.scoring.batching import tokenize_with_bos

    hook = "blocks.1.hook_resid_post"
    acts = collect_activations(tiny_lm, tokenize_with_bos(tiny_lm, TEXTS), [hook]).acts[hook]
    sae = _signed_identity_sae(hook)
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.b_dec.copy_(acts.mean(0))  # always predicts the data mean
    q = measure_quality(tiny_lm, {hook: sae}, TEXTS, ce_max_tokens=0)[hook]
    assert q.fve == pytest.approx(0.0, abs=1e-4)


def test_an_sae_that_outputs_nothing_recovers_nothing(tiny_lm):
    hook = "blocks.1.hook_resid_post"
    sae = _signed_identity_sae(hook)
    with torch.no_grad():
        sae.W_dec.zero_()
    q = measure_quality(tiny_lm, {hook: sae}, TEXTS, ce_max_tokens=60)[hook]
    assert q.ce_loss_recovered == pytest.approx(0.0, abs=1e-4)
    assert q.ce_spliced == pytest.approx(q.ce_zero, abs=1e-5)
    assert q.fve < 0.0  # worse than predicting the mean
    skipped = measure_quality(tiny_lm, {hook: sae}, TEXTS, ce_max_tokens=0)[hook]
    assert skipped.ce_tokens == 0 and skipped.fve == pytest.approx(q.fve)
