"""One forward for several hooks, stopped early; rows map back to (sequence, position, token)."""

from __future__ import annotations

import torch
from tiny_models import tiny_sae

from unlearn_core.ablation.interventions import Intervention, LatentSelection, intervention_hooks
from unlearn_core.scoring.activations import collect_activations, iter_activations, stop_layer_for
from unlearn_core.scoring.batching import tokenize_with_bos

TEXTS = ["Harry Potter and the", "Hi", "A longer sentence about wizards and wands."]
HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


def test_matches_run_with_cache_and_skips_bos(tiny_lm):
    seqs = tokenize_with_bos(tiny_lm, TEXTS)
    got = collect_activations(tiny_lm, seqs, HOOKS, batch_tokens=30)
    assert got.acts[HOOKS[0]].shape == (sum(len(s) - 1 for s in seqs), 32)
    row = 0
    for i, seq in enumerate(seqs):
        _, cache = tiny_lm.model.run_with_cache(torch.tensor([seq]))
        for pos in range(1, len(seq)):
            assert got.sequence_index[row] == i and got.position[row] == pos and got.tokens[row] == seq[pos]
            for h in HOOKS:
                assert torch.allclose(got.acts[h][row], cache[h][0, pos], atol=1e-5)
            row += 1
    with_bos = collect_activations(tiny_lm, seqs, HOOKS, include_bos=True)
    assert with_bos.acts[HOOKS[0]].shape[0] == sum(len(s) for s in seqs)


def test_stops_after_the_deepest_hook(tiny_lm):
    assert stop_layer_for(HOOKS) == 2
    assert stop_layer_for(["blocks.2.hook_resid_post"]) == 3
    fired = []
    spy = ("blocks.2.hook_resid_pre", lambda act, hook: fired.append(1))
    list(iter_activations(tiny_lm, tokenize_with_bos(tiny_lm, TEXTS), HOOKS, extra_hooks=[spy]))
    assert fired == []  # block 2 never ran


def test_reads_activations_under_an_intervention(tiny_lm):
    sae = tiny_sae(layer=0)
    seqs = tokenize_with_bos(tiny_lm, TEXTS)
    hooks = intervention_hooks([LatentSelection(sae, tuple(range(96)))], Intervention(mode="clamp", value=3))
    plain = collect_activations(tiny_lm, seqs, HOOKS)
    edited = collect_activations(tiny_lm, seqs, HOOKS, extra_hooks=hooks)
    assert not torch.allclose(plain.acts[HOOKS[1]], edited.acts[HOOKS[1]])
