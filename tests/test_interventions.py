"""The intervention primitive on a tiny random model: exactness, placement, scoping, thread isolation."""

from __future__ import annotations

import threading

import pytest
import torch
from tiny_models import TOKENS, logits, make_tiny_model, resid_at, tiny_sae

from unlearn_core.ablation.interventions import (
    Intervention,
    LatentSelection,
    edit_latents,
    encode_latents,
    intervened,
    intervention_hooks,
)
from unlearn_core.errors import InputError


def test_empty_forget_set_with_error_term_reproduces_unhooked_model(tiny_lm):
    sae = tiny_sae()
    for mode in ("zero", "clamp", "scale"):
        hooks = intervention_hooks([LatentSelection(sae, ())], Intervention(mode=mode))
        assert (logits(tiny_lm, hooks) - logits(tiny_lm)).abs().max().item() <= 1e-4


def test_editing_no_active_latent_is_exact_identity(tiny_lm):
    sae = tiny_sae()
    x = resid_at(tiny_lm, sae.hook_name)
    acts = sae.sae.encode(x[:, 1:])
    never = [i for i in range(sae.width) if not bool((acts[..., i] > 0).any())]
    if not never:
        pytest.skip("every latent fires on these tokens")
    hooks = intervention_hooks([LatentSelection(sae, tuple(never))], Intervention(mode="clamp", value=5))
    assert torch.equal(logits(tiny_lm, hooks), logits(tiny_lm))


@pytest.mark.parametrize("mode,value", [("zero", None), ("clamp", 3.0), ("scale", 0.25), ("scale", 2.0)])
def test_edit_does_exactly_what_it_says_on_the_latent_vector(tiny_lm, mode, value):
    sae = tiny_sae()
    chosen = (0, 5, 17, 40)
    hooks = intervention_hooks([LatentSelection(sae, chosen)], Intervention(mode=mode, value=value))
    x = resid_at(tiny_lm, sae.hook_name)
    x_new = resid_at(tiny_lm, sae.hook_name, hooks)
    f = sae.sae.encode(x[:, 1:])
    f_expected = f.clone()
    idx = list(chosen)
    if mode == "zero":
        f_expected[..., idx] = 0
    elif mode == "clamp":
        f_expected[..., idx] = torch.where(f[..., idx] > 0, torch.tensor(-value), f[..., idx])
    else:
        f_expected[..., idx] = f[..., idx] * value
    assert bool((f[..., idx] > 0).any()), "test needs some chosen latents active"
    # error term kept: x' = x + decode(f') - decode(f)
    expected = x[:, 1:] + sae.sae.decode(f_expected) - sae.sae.decode(f)
    assert torch.allclose(x_new[:, 1:], expected, atol=1e-5)


def test_edit_latents_modes():
    acts = torch.tensor([[0.0, 2.0, 0.5], [1.0, 0.0, 0.0]])
    assert torch.equal(edit_latents(acts, "zero", 0.0), torch.zeros_like(acts))
    assert torch.equal(edit_latents(acts, "clamp", 4.0), torch.tensor([[0.0, -4.0, -4.0], [-4.0, 0.0, 0.0]]))
    assert torch.equal(edit_latents(acts, "scale", 0.5), acts * 0.5)


def test_bos_position_is_untouched(tiny_lm):
    sae = tiny_sae()
    hooks = intervention_hooks([LatentSelection(sae, tuple(range(sae.width)))], Intervention(mode="clamp", value=50))
    x = resid_at(tiny_lm, sae.hook_name)
    x_new = resid_at(tiny_lm, sae.hook_name, hooks)
    assert torch.equal(x_new[:, 0], x[:, 0])
    assert not torch.allclose(x_new[:, 1:], x[:, 1:])


def test_hook_lands_on_the_sae_hook_name_and_nowhere_else(tiny_lm):
    sae = tiny_sae(layer=1)
    hooks = intervention_hooks([LatentSelection(sae, (1, 2, 3))], Intervention(mode="zero"))
    assert [name for name, _ in hooks] == ["blocks.1.hook_resid_post"]
    fired = []
    with intervened(tiny_lm, hooks) as model:
        for name, hp in model.hook_dict.items():
            if hp.fwd_hooks:
                fired.append(name)
    assert fired == ["blocks.1.hook_resid_post"]
    # upstream activations are unchanged, the hooked one changes
    assert torch.equal(resid_at(tiny_lm, "blocks.1.hook_resid_mid", hooks), resid_at(tiny_lm, "blocks.1.hook_resid_mid"))
    assert not torch.equal(resid_at(tiny_lm, "blocks.2.hook_resid_pre", hooks), resid_at(tiny_lm, "blocks.2.hook_resid_pre"))


def test_resid_pre_reproduction_site(tiny_lm):
    sae = tiny_sae(layer=1)
    hooks = intervention_hooks([LatentSelection(sae, (1,))], Intervention(mode="replace", hook_site="resid_pre"))
    assert [name for name, _ in hooks] == ["blocks.1.hook_resid_pre"]
    assert "REPRODUCTION ONLY" in Intervention(mode="replace", hook_site="resid_pre").describe()


def test_replace_differs_from_baseline_by_the_reconstruction_error(tiny_lm):
    sae = tiny_sae()
    hooks = intervention_hooks([LatentSelection(sae, ())], Intervention(mode="replace"))
    x = resid_at(tiny_lm, sae.hook_name)
    x_new = resid_at(tiny_lm, sae.hook_name, hooks)
    recon_error = x[:, 1:] - sae.sae.decode(sae.sae.encode(x[:, 1:]))
    assert recon_error.abs().max() > 1e-3
    assert torch.allclose(x[:, 1:] - x_new[:, 1:], recon_error, atol=1e-5)
    # replace with latents zeroed = decode of the edited vector, no error term
    chosen = (2, 3)
    hooks = intervention_hooks([LatentSelection(sae, chosen)], Intervention(mode="replace"))
    f = sae.sae.encode(x[:, 1:])
    f[..., list(chosen)] = 0
    assert torch.allclose(resid_at(tiny_lm, sae.hook_name, hooks)[:, 1:], sae.sae.decode(f), atol=1e-5)


def test_subset_encoder_matches_full_encoder():
    sae = tiny_sae()
    x = torch.randn(2, 7, 32)
    idx = torch.tensor([0, 3, 9, 50, 95])
    assert torch.allclose(encode_latents(sae.sae, x, idx), sae.sae.encode(x)[..., idx], atol=1e-6)


def test_non_affine_sae_uses_generic_path(tiny_lm):
    """A normalising SAE (decode not affine in f) takes the decode(f') - decode(f) path: still exact when empty."""
    sae = tiny_sae()
    sae.sae.cfg.normalize_activations = "layer_norm"
    sae.sae._setup_activation_normalization()
    try:
        hooks = intervention_hooks([LatentSelection(sae, ())], Intervention(mode="zero"))
        assert (logits(tiny_lm, hooks) - logits(tiny_lm)).abs().max() <= 1e-4
        hooks = intervention_hooks([LatentSelection(sae, (1, 2))], Intervention(mode="zero"))
        assert not torch.allclose(logits(tiny_lm, hooks), logits(tiny_lm))
    finally:
        sae.sae.cfg.normalize_activations = "none"
        sae.sae._setup_activation_normalization()


def test_several_layers_at_once(tiny_lm):
    saes = [tiny_sae(layer=0, seed=1), tiny_sae(layer=2, seed=2)]
    hooks = intervention_hooks([LatentSelection(s, (1, 2, 3)) for s in saes], Intervention(mode="clamp", value=2))
    assert [n for n, _ in hooks] == ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]
    one = intervention_hooks([LatentSelection(saes[0], (1, 2, 3))], Intervention(mode="clamp", value=2))
    assert not torch.allclose(logits(tiny_lm, hooks), logits(tiny_lm, one))


def test_no_hook_left_behind_even_after_an_exception(tiny_lm):
    sae = tiny_sae()
    hooks = intervention_hooks([LatentSelection(sae, (1, 2))], Intervention(mode="zero"))
    clean = logits(tiny_lm)
    with pytest.raises(RuntimeError, match="boom"), intervened(tiny_lm, hooks) as model:
        model(TOKENS)
        raise RuntimeError("boom")
    assert all(not hp.fwd_hooks for hp in tiny_lm.model.hook_dict.values())
    assert torch.equal(tiny_lm.model(TOKENS), clean)
    # and a hook that itself raises leaves nothing behind
    def bad(act, hook):
        raise ValueError("bad hook")

    with pytest.raises(ValueError, match="bad hook"), intervened(tiny_lm, [(sae.hook_name, bad)]) as model:
        model(TOKENS)
    assert all(not hp.fwd_hooks for hp in tiny_lm.model.hook_dict.values())


def test_bad_selections_are_refused():
    sae = tiny_sae(d_sae=96)
    with pytest.raises(InputError, match="out of range"):
        LatentSelection(sae, (96,))
    with pytest.raises(InputError, match="duplicate"):
        LatentSelection(sae, (3, 3))
    with pytest.raises(InputError, match="unknown intervention mode"):
        Intervention(mode="explode")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="clamp value"):
        Intervention(mode="clamp", value=-1)


def test_two_sessions_on_one_model_do_not_see_each_others_hooks():
    lm = make_tiny_model(seed=3)
    sae = tiny_sae()
    hooks = intervention_hooks([LatentSelection(sae, tuple(range(0, 96, 2)))], Intervention(mode="clamp", value=8))
    alone_base = logits(lm)
    alone_abl = logits(lm, hooks)
    assert not torch.allclose(alone_base, alone_abl)
    results: dict[str, list[torch.Tensor]] = {"base": [], "abl": []}
    errors: list[BaseException] = []

    def worker(kind: str) -> None:
        try:
            for _ in range(25):
                results[kind].append(logits(lm, hooks if kind == "abl" else ()))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in ("base", "abl", "base", "abl")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(torch.equal(r, alone_base) for r in results["base"])
    assert all(torch.equal(r, alone_abl) for r in results["abl"])
