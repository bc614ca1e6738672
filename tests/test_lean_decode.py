"""One-row decoding outside TransformerLens' forward (``models/lean_decode.py``) against the library, on the tiny
Gemma-3-like model of test_fast_forward: the same residuals bit for bit in float32 (through a local window and a
buffer growth), a library cache handed back as soon as a hook or an SAE appears, and generation using it."""

from __future__ import annotations

import pytest
import torch
from test_fast_forward import _lm, gemma_like, pair
from tiny_models import tiny_sae

from unlearn_core.ablation.conditions import Condition
from unlearn_core.models import lean_decode
from unlearn_core.models.lean_decode import LeanDecode
from unlearn_core.scoring.generation import generate_batch_ids

PROMPT = torch.tensor([[1, 17, 40, 200, 33, 8, 91]])
NEXT = [5, 250, 12, 12, 77, 3, 199, 64, 31, 2, 140]


def _prompt_pass(model):
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    cache = TransformerLensKeyValueCache.init_cache(model.cfg, "cpu", 1)
    model(PROMPT, past_kv_cache=cache, attention_mask=torch.ones_like(PROMPT), stop_at_layer=model.cfg.n_layers)
    return cache


def _library_step(model, cache, token):
    tokens = torch.tensor([[token]])
    return model(tokens, past_kv_cache=cache, attention_mask=torch.ones_like(tokens), stop_at_layer=model.cfg.n_layers)


@pytest.mark.parametrize("n_kv", [1, 2])
def test_lean_steps_are_the_library_bit_for_bit(n_kv):
    plain, patched = pair(n_kv=n_kv)
    with torch.inference_mode():
        reference = _prompt_pass(plain)
        lean = LeanDecode.start(patched, _prompt_pass(patched), capacity=PROMPT.shape[1] + 2)  # grows on step 3
        assert lean is not None
        for token in NEXT:  # 7 + 11 positions: past the local layers' window of 5
            assert torch.equal(lean.step(patched, token), _library_step(plain, reference, token))
        handed = lean.to_cache()
    assert handed.previous_attention_mask.shape == (1, PROMPT.shape[1] + len(NEXT))
    for mine, theirs in zip(handed.entries, reference.entries, strict=True):
        assert torch.equal(mine.past_keys, theirs.past_keys) and torch.equal(mine.past_values, theirs.past_values)


def test_a_hook_or_an_sae_hands_back_the_library_cache():
    plain, patched = pair()
    seen = []
    with torch.inference_mode():
        reference = _prompt_pass(plain)
        lean = LeanDecode.start(patched, _prompt_pass(patched), capacity=32)
        for token in NEXT[:3]:
            lean.step(patched, token)
            _library_step(plain, reference, token)
        hook = [("blocks.1.hook_resid_mid", lambda act, hook: seen.append(hook.name) or act * 2)]
        with patched.hooks(fwd_hooks=hook):
            assert lean.step(patched, NEXT[3]) is None  # nothing computed, nothing counted
            cache = lean.to_cache()
            with plain.hooks(fwd_hooks=hook):  # the library goes on from the handed-back cache
                assert torch.equal(_library_step(patched, cache, NEXT[3]), _library_step(plain, reference, NEXT[3]))
        assert seen == ["blocks.1.hook_resid_mid"] * 2
        assert lean.step(patched, NEXT[4]) is not None  # the hook is gone: the loop applies again
        again = LeanDecode.start(patched, _prompt_pass(patched), capacity=32)
        patched.add_sae(tiny_sae(layer=1).sae)  # swaps a hook point for an SAE: no hook registered anywhere
        assert again.step(patched, NEXT[0]) is None
        patched.reset_saes()
        with torch.enable_grad():
            assert again.step(patched, NEXT[0]) is None
        assert LeanDecode.start(gemma_like(), _prompt_pass(gemma_like()), 32) is None  # no fast forward installed
        _, swapped = pair()
        swapped.blocks[0].hook_resid_mid = _Doubler()  # a module in a hook point's place, by hand
        assert LeanDecode.start(swapped, _prompt_pass(swapped), 32) is None


class _Doubler(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


def test_generation_goes_through_it_for_one_row_only(monkeypatch):
    plain, patched = pair()
    lm_plain, lm_patched = _lm(plain, False), _lm(patched, True)
    steps = []
    original = LeanDecode.step
    monkeypatch.setattr(lean_decode.LeanDecode, "step", lambda self, *a: steps.append(1) or original(self, *a))
    base = [Condition("baseline")]
    one = generate_batch_ids(lm_patched, ["Once upon a time"], base, max_new_tokens=12)
    assert one == generate_batch_ids(lm_plain, ["Once upon a time"], base, max_new_tokens=12)
    n = len(one[(0, "baseline")])
    assert len(steps) == (11 if n == 12 else n)  # every step after the prompt pass (the last one may give EOS)
    steps.clear()
    generate_batch_ids(lm_patched, ["Once upon a time", "Hello"], base, max_new_tokens=12)
    assert not steps  # two rows: the library's batched path


def test_bfloat16_lean_steps_are_the_fast_path_bit_for_bit():
    _, patched = pair(dtype=torch.bfloat16)
    with torch.inference_mode():
        reference = _prompt_pass(patched)
        lean = LeanDecode.start(patched, _prompt_pass(patched), capacity=32)
        for token in NEXT:
            assert torch.equal(lean.step(patched, token), _library_step(patched, reference, token))
