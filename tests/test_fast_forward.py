"""The decoding speed patches (``models/fast_forward.py``, ``models/greedy.py``) against the plain library path, on a
tiny random Gemma-3-like model: in float32 the same logits bit for bit (the SDPA path of bfloat16 models to ~1e-6),
the same greedy tokens, every hook point still firing with the same tensors."""

from __future__ import annotations

import pytest
import torch
from tiny_models import ByteTokenizer, tiny_sae

from unlearn_core.ablation.conditions import Condition
from unlearn_core.ablation.interventions import Intervention, LatentSelection
from unlearn_core.models import fast_forward
from unlearn_core.models.fast_forward import install_fast_forward, store_attention_weights_for_linear, uninstall_fast_forward
from unlearn_core.models.greedy import GreedyScreen, greedy_tokens
from unlearn_core.models.loading import LoadedModel
from unlearn_core.models.presets import get_preset
from unlearn_core.scoring.generation import generate_batch_ids, prompt_token_ids

ATOL = 1e-5
TOKENS = torch.randint(3, 320, (2, 12), generator=torch.Generator().manual_seed(1))


def gemma_like(seed: int = 0, n_kv: int = 2, dtype: torch.dtype = torch.float32):
    """3 layers like Gemma 3's: grouped KV heads (Gemma 3 270M has one), Q/K norms, norms after attention and MLP,
    local (window 5) and global layers with their own rotary bases, gated MLP; d_vocab a multiple of 64 as Gemma's."""
    from sae_lens import HookedSAETransformer
    from transformer_lens import HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=3, d_model=32, d_head=8, n_heads=4, n_key_value_heads=n_kv, d_mlp=64, d_vocab=320, n_ctx=64,
        act_fn="gelu_pytorch_tanh", normalization_type="RMS", positional_embedding_type="rotary", gated_mlp=True,
        use_qk_norm=True, use_normalization_before_and_after=True, use_local_attn=True,
        attn_types=["local", "global", "local"], window_size=5, rotary_base_local=10000, rotary_base=1000000,
        use_attn_scale=True, attn_scale=4.0, final_rms=True, default_prepend_bos=True, seed=seed, dtype=dtype,
    )
    return HookedSAETransformer(cfg).eval()


def pair(seed: int = 0, n_kv: int = 2, dtype: torch.dtype = torch.float32):
    """``(plain, patched)``: the same weights, the second with both patches."""
    plain, patched = gemma_like(seed, n_kv, dtype), gemma_like(seed, n_kv, dtype)
    changed = store_attention_weights_for_linear(patched)
    assert changed == 3 * (4 if n_kv > 1 else 2)  # W_Q, W_O (and W_K, W_V unless one key-value head) per layer
    assert install_fast_forward(patched) == 3
    return plain, patched


def decode(model, tokens, prompt_len=9, pad_row=True):
    """A prompt pass (row 1 left-padded by 3) and one-token steps through the KV cache; all logits."""
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    cache = TransformerLensKeyValueCache.init_cache(model.cfg, "cpu", tokens.shape[0])
    mask = torch.ones(tokens.shape[0], prompt_len, dtype=torch.long)
    if pad_row:
        mask[1, :3] = 0
    out = [model(tokens[:, :prompt_len], past_kv_cache=cache, attention_mask=mask)]
    for j in range(prompt_len, tokens.shape[1]):
        out.append(model(tokens[:, j : j + 1], past_kv_cache=cache, attention_mask=torch.ones_like(tokens[:, :1])))
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("n_kv", [1, 2])
def test_copy_free_layout_keeps_the_library_path_bit_for_bit(n_kv):
    plain, stored = gemma_like(n_kv=n_kv), gemma_like(n_kv=n_kv)
    assert store_attention_weights_for_linear(stored) == 3 * (4 if n_kv > 1 else 2)
    attn = stored.blocks[0].attn
    for name in ("W_Q", "_W_K", "_W_V"):  # TransformerLens' rearrange is now a view, not a copy
        w = getattr(attn, name)
        assert w.permute(0, 2, 1).reshape(-1, w.shape[1]).data_ptr() == w.data_ptr()
        assert w.shape == getattr(plain.blocks[0].attn, name).shape
    assert attn._W_K.is_contiguous() is (n_kv == 1)  # one head: already a view, left as it is
    assert attn.W_O.permute(2, 0, 1).is_contiguous()
    with torch.inference_mode():
        assert torch.equal(stored(TOKENS), plain(TOKENS))
        _, cache_f = stored.run_with_cache(TOKENS)
        _, cache_p = plain.run_with_cache(TOKENS)
    assert all(torch.equal(cache_f[k], cache_p[k]) for k in cache_p.keys())


def _count_calls(monkeypatch, name):
    calls = []
    original = getattr(fast_forward, name)
    monkeypatch.setattr(fast_forward, name, lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


def _check_against_library(plain, patched, same):
    long = torch.randint(3, 320, (1, 40), generator=torch.Generator().manual_seed(2))  # past the window of 5
    with torch.inference_mode():
        for a, b in ((patched(TOKENS), plain(TOKENS)), (patched(long), plain(long)),
                     (decode(patched, TOKENS), decode(plain, TOKENS))):
            same(a, b)


@pytest.mark.parametrize("n_kv", [1, 2])
def test_fast_forward_is_bit_for_bit_the_library_in_float32(monkeypatch, n_kv):
    plain, patched = pair(n_kv=n_kv)
    calls = _count_calls(monkeypatch, "_exact_attention")
    _check_against_library(plain, patched, lambda a, b: assert_equal(a, b))
    # 3 layers x (2 full passes + 3 decode steps); the left-padded prompt pass takes the library path
    assert len(calls) == 3 * (2 + 3)


def test_the_sdpa_path_matches_the_library(monkeypatch):
    """bfloat16 models take SDPA; the same code in float32 gives the library's logits to float rounding."""
    plain, patched = pair()
    monkeypatch.setattr(fast_forward, "EXACT_DTYPES", ())
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(fast_forward.F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    _check_against_library(plain, patched, lambda a, b: torch.testing.assert_close(a, b, rtol=0, atol=ATOL))
    assert len(calls) == 3 * (2 + 3)


def assert_equal(a, b):
    assert torch.equal(a, b), float((a - b).abs().max())


def test_gradients_take_the_library_path():
    plain, patched = pair()
    with torch.enable_grad():  # the pre-packed copies are not what autograd would differentiate
        out = patched(TOKENS)
        assert torch.equal(out, plain(TOKENS))
        out.sum().backward()
    assert patched.blocks[0].attn.W_Q.grad is not None


def _record(model, names, edit=None):
    seen: dict[str, torch.Tensor] = {}

    def hook(t, hook):
        seen[hook.name] = t.detach().clone()
        return edit(t, hook) if edit is not None else None

    model.reset_hooks()
    for name in names:
        model.add_hook(name, hook)
    return seen


def test_every_hook_point_fires_with_the_same_tensors():
    plain, patched = pair()
    skipped = ("hook_attn_scores", "hook_pattern", "ln1.",  # these take the library path (tested below)
               "hook_result", "_input", "attn_in", "mlp_in")  # not allowed by this configuration
    names = [n for n in plain.hook_dict if not any(s in n for s in skipped)]
    assert any(n.endswith("attn.hook_z") for n in names) and any(n.endswith("hook_rot_k") for n in names)

    def edit(t, hook):  # an edit inside attention and one on the residual stream, as SAEs do
        if hook.name == "blocks.1.attn.hook_z":
            t = t.clone()
            t[:, :, 1] = 0
        return t * 1.5 if hook.name == "blocks.0.hook_resid_post" else t

    with torch.inference_mode():
        seen_p = _record(plain, names, edit)
        out_p = decode(plain, TOKENS, pad_row=False)
        seen_f = _record(patched, names, edit)
        out_f = decode(patched, TOKENS, pad_row=False)
    assert seen_f.keys() == seen_p.keys()
    for site in ("hook_q", "hook_k", "hook_v", "hook_rot_q", "hook_rot_k", "hook_z", "q_norm.hook_scale"):
        assert f"blocks.2.attn.{site}" in seen_f
    assert {"blocks.2.mlp.hook_in", "blocks.2.mlp.hook_pre", "blocks.2.hook_resid_mid"} <= seen_f.keys()
    for name in seen_p:
        assert torch.equal(seen_f[name], seen_p[name]), name
    assert_equal(out_f, out_p)
    plain.reset_hooks()
    patched.reset_hooks()


@pytest.mark.parametrize("name", ["blocks.1.attn.hook_pattern", "blocks.1.attn.hook_attn_scores", "blocks.1.ln1.hook_scale"])
def test_hooks_the_fast_path_cannot_serve_take_the_library_path(name):
    plain, patched = pair()
    with torch.inference_mode():
        seen_p = _record(plain, [name])
        out_p = plain(TOKENS)
        seen_f = _record(patched, [name])
        out_f = patched(TOKENS)
    assert_equal(seen_f[name], seen_p[name])
    assert_equal(out_f, out_p)


def test_an_sae_spliced_in_by_sae_lens_still_runs():
    plain, patched = pair()
    with torch.inference_mode():
        clean = plain(TOKENS)
        sae = tiny_sae(layer=1).sae
        plain.add_sae(sae)
        patched.add_sae(sae)  # replaces blocks.1.hook_resid_post by a wrapper module
        out = patched(TOKENS)
        assert_equal(out, plain(TOKENS))
    assert (out - clean).abs().max() > 0.1


def test_replaced_weights_fall_back_and_uninstall_restores_the_library():
    plain, patched = pair()
    with torch.no_grad():
        new = torch.randn_like(plain.blocks[1].attn.W_Q)
        plain.blocks[1].attn.W_Q.copy_(new)
        patched.blocks[1].attn.W_Q.data = new.clone()  # the usual layout again: the rearrange copies
        plain.blocks[2].attn._W_V.mul_(2)
        patched.blocks[2].attn._W_V.mul_(2)
    with torch.inference_mode():
        assert_equal(patched(TOKENS), plain(TOKENS))
        assert uninstall_fast_forward(patched) == 3 and "forward" not in vars(patched.blocks[0])
        assert torch.equal(patched(TOKENS), plain(TOKENS))
        seen = _record(patched, ["blocks.0.mlp.hook_in"])  # sae_lens' own MLP wrapper is back
        patched(TOKENS)
    assert "blocks.0.mlp.hook_in" in seen


def test_bfloat16_takes_sdpa_and_packed_weights_rebuilt_after_a_change():
    plain, patched = pair(dtype=torch.bfloat16)

    def close(a, b):
        assert float((a.float() - b.float()).abs().max()) < 0.05 * float(b.float().abs().max())

    with torch.inference_mode():
        close(patched(TOKENS), plain(TOKENS))
        close(decode(patched, TOKENS, pad_row=False), decode(plain, TOKENS, pad_row=False))
    if fast_forward._PACKING:
        assert {"qkv", "out"} <= vars(patched.blocks[0].attn)[fast_forward._PACKED].keys()
    with torch.no_grad():
        for model in (plain, patched):
            model.blocks[0].mlp.W_in.mul_(-3)
            model.blocks[1].attn._W_K.zero_()
    with torch.inference_mode():
        close(patched(TOKENS), plain(TOKENS))  # a stale packed copy would be far off


def test_bfloat16_gated_mlp_fuses_gelu_and_product_unless_their_hooks_are_used():
    plain, patched = pair(dtype=torch.bfloat16)
    mlp = patched.blocks[1].mlp
    x = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(5)).bfloat16()
    with torch.inference_mode():
        want = plain.blocks[1].mlp(x.float().bfloat16()).float()
        wide = mlp.W_gate.float(), mlp.W_in.float(), mlp.W_out.float()
        exact = (torch.nn.functional.gelu(x.float() @ wide[0], approximate="tanh") * (x.float() @ wide[1])) @ wide[2]
        got = mlp(x).float()
        if fast_forward._PACKING:
            assert fast_forward.fuses_gated_mlp(mlp, x) and {"gate", "in"} <= vars(mlp)[fast_forward._PACKED].keys()
        # closer to float32 than the library's bfloat16 (one rounding instead of three), and near the library
        assert float((got - exact).abs().mean()) <= float((want - exact).abs().mean()) * 1.05
        assert float((got - want).abs().max()) < 0.05 * float(want.abs().max())
        seen = {}
        handle = mlp.hook_pre.register_forward_hook(lambda m, i, o: seen.setdefault("pre", o.clone()))
        try:
            mlp(x)
        finally:
            handle.remove()
        assert seen["pre"].shape == (2, 7, 64)  # a hook on the pre-activation still sees it


def _lm(model, patches: bool) -> LoadedModel:
    model.tokenizer = ByteTokenizer()
    return LoadedModel(model=model, preset=get_preset("gemma-3-270m-offline"), device="cpu", dtype=torch.float32,
                       speed_patches=patches)


def test_generation_gives_the_same_tokens():
    plain, patched = pair()
    lm_plain, lm_patched = _lm(plain, False), _lm(patched, True)
    sae = tiny_sae(layer=1)
    conditions = [Condition("baseline"), Condition("clamp", (LatentSelection(sae, tuple(range(0, 96, 3))),),
                                                   Intervention(mode="clamp", value=4))]
    prompts = ["Once upon", "Hello there, how are you?", "x"]
    got = generate_batch_ids(lm_patched, prompts, conditions, max_new_tokens=20)
    assert got == generate_batch_ids(lm_plain, prompts, conditions, max_new_tokens=20)
    assert any(got[(i, "clamp")] != got[(i, "baseline")] for i in range(len(prompts)))
    for i, prompt in enumerate(prompts):  # one row at a time too (the screen's one-row product)
        assert generate_batch_ids(lm_patched, [prompt], conditions[:1], max_new_tokens=20)[(0, "baseline")] \
            == got[(i, "baseline")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_screen_is_exact(dtype):
    model = gemma_like().to(dtype)
    with torch.no_grad():
        model.unembed.W_U.mul_(3)  # sharper logits, and a change after which the screen is rebuilt
    screen = GreedyScreen.for_model(model)
    if screen is None:
        pytest.skip("no oneDNN int8 kernel here")
    gen = torch.Generator().manual_seed(0)
    for scale in (0.01, 1.0, 30.0):
        x = (torch.randn(5, 32, generator=gen) * scale).to(dtype)
        x[:, 3] *= 50  # a massive activation in one dimension, as Gemma has
        reference = (x @ model.W_U).argmax(dim=1)
        assert torch.equal(greedy_tokens(model, x), reference)
        assert torch.equal(greedy_tokens(model, x[:1]), reference[:1])
    assert GreedyScreen.for_model(model) is screen
    with torch.no_grad():
        model.unembed.W_U.mul_(-1)
    assert GreedyScreen.for_model(model) is not screen
    assert greedy_tokens(model, torch.full((1, 32), float("nan"), dtype=dtype)) is None
    with torch.no_grad():
        model.unembed.b_U.add_(1)
    assert greedy_tokens(model, x) is None  # an output bias: the full product


@pytest.mark.integration
def test_real_model_patched_equals_unpatched(real_lm):
    from unlearn_core.explain.explore import study_prompts
    from unlearn_core.models.loading import load_model

    plain = load_model("gemma-3-270m-offline", device="cpu", dtype="float32", speed_patches=False)
    prompts = study_prompts()[:2]
    base = [Condition("baseline")]
    got = generate_batch_ids(real_lm, prompts[:1], base, max_new_tokens=40)
    assert got == generate_batch_ids(plain, prompts[:1], base, max_new_tokens=40)
    tokens = torch.tensor([prompt_token_ids(real_lm, prompts[1], 1024)])
    with torch.inference_mode():
        assert torch.equal(real_lm.model(tokens), plain.model(tokens))


def test_rms_norm_is_the_librarys_in_float32_and_closer_to_it_in_bfloat16():
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.components import RMSNorm

    from unlearn_core.models.exact_ops import rms_norm

    gen = torch.Generator().manual_seed(2)
    x, w = torch.randn(5, 7, 64, generator=gen) * 3, torch.randn(64, generator=gen)
    cfg = HookedTransformerConfig(n_layers=1, d_model=64, n_ctx=8, d_head=8, act_fn="gelu", dtype=torch.float32)
    lib = RMSNorm(cfg)
    lib.w.data.copy_(w)
    assert torch.equal(rms_norm(x, w, lib.eps, torch.float32), lib(x))
    exact = rms_norm(x.bfloat16().float(), w.bfloat16().float(), lib.eps, torch.float32)
    ours = rms_norm(x.bfloat16(), w.bfloat16(), lib.eps, torch.bfloat16)
    lib16 = RMSNorm(HookedTransformerConfig(n_layers=1, d_model=64, n_ctx=8, d_head=8, act_fn="gelu", dtype=torch.bfloat16))
    lib16.w.data.copy_(w.bfloat16())
    theirs = lib16(x.bfloat16())
    assert ours.dtype == theirs.dtype == torch.bfloat16
    assert float((ours.float() - exact).abs().mean()) < float((theirs.float() - exact).abs().mean())
    assert float((ours.float() - theirs.float()).abs().max()) < 0.05 * float(exact.abs().max())
