"""SAE training mechanics on the tiny random model: corpus, activation cache (resume), training (resume), shipping."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sae_lens import SAE
from tiny_models import ByteTokenizer

from unlearn_core.errors import InputError
from unlearn_core.explain.dashboards import Dashboards
from unlearn_core.scoring.activations import collect_activations
from unlearn_core.training import trainer as sae_training
from unlearn_core.training.activation_cache import ActivationCache, build_activation_cache
from unlearn_core.training.build import SaeBuildConfig, build_saes
from unlearn_core.training.corpus import DEFAULT_DATA_DIR, build_training_corpus, strip_gutenberg_boilerplate
from unlearn_core.training.release import QUALITY_FILE, meets_targets, ship_sae
from unlearn_core.training.trainer import SaeTrainingConfig, train_sae

HOOKS = ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]


def _windows(n: int, context: int = 24, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [[1, *torch.randint(3, 250, (context - 1,), generator=g).tolist()] for _ in range(n)]


needs_shared_data = pytest.mark.skipif(not DEFAULT_DATA_DIR.is_dir(), reason="needs ../shared/data (dev and CI)")


@needs_shared_data
def test_corpus_follows_the_mix_and_is_reproducible():
    tok = ByteTokenizer()
    mix = {"gutenberg": 0.5, "wikitext2": 0.25, "hp-fanwiki": 0.25}
    a = build_training_corpus(tok, 1, 20_000, context=65, mix=mix, seed=3)
    b = build_training_corpus(tok, 1, 20_000, context=65, mix=mix, seed=3)
    assert a.windows == b.windows
    assert all(len(w) == 65 and w[0] == 1 and 1 not in w[1:] for w in a.windows)
    assert a.tokens_per_source == {"gutenberg": 9984, "wikitext2": 4992, "hp-fanwiki": 4992}
    assert sorted(set(a.sources)) == ["gutenberg", "hp-fanwiki", "wikitext2"]
    assert build_training_corpus(tok, 1, 20_000, context=65, mix=mix, seed=4).windows != a.windows
    with pytest.raises(InputError, match="sum to 1"):
        build_training_corpus(tok, 1, 20_000, mix={"gutenberg": 0.5})


def test_gutenberg_boilerplate_is_stripped():
    raw = ("Header\r\n*** START OF THE PROJECT GUTENBERG EBOOK ALICE ***\r\nDown the rabbit hole.\r\n"
           "*** END OF THE PROJECT GUTENBERG EBOOK ***\r\nLicence")
    assert strip_gutenberg_boilerplate(raw) == "Down the rabbit hole."


def test_activation_cache_matches_a_direct_pass_and_resumes(tiny_lm, tmp_path):
    windows = _windows(10)
    expected = collect_activations(tiny_lm, windows, HOOKS)
    calls = []

    def stop_after_first(done, total):
        calls.append(done)
        if len(calls) == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_activation_cache(tiny_lm, windows, HOOKS, tmp_path / "c", {"x": 1}, batch_windows=4,
                               progress=stop_after_first)
    partial = ActivationCache.open(tmp_path / "c")
    assert not partial.complete and partial.n_rows == 4 * 23
    cache = build_activation_cache(tiny_lm, windows, HOOKS, tmp_path / "c", {"x": 1}, batch_windows=4,
                                   progress=lambda d, t: calls.append(d))
    assert calls[1:] == [8, 10]  # continued after the first 4 windows
    assert cache.complete and cache.n_rows == 10 * 23
    for h in HOOKS:
        cached = torch.from_numpy(np.array(cache.activations(h))).float()
        torch.testing.assert_close(cached, expected.acts[h], atol=1e-2, rtol=8e-3)  # bfloat16 storage
    assert np.array_equal(np.array(cache.tokens()), expected.tokens.numpy())
    assert cache.window_of_row(23) == (1, 1)
    with pytest.raises(InputError, match="different request"):
        build_activation_cache(tiny_lm, windows[:5], HOOKS, tmp_path / "c", {"x": 1})
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="refusing"):
        build_activation_cache(tiny_lm, windows, HOOKS, tmp_path / "other")


def test_bfloat16_storage_keeps_massive_activations_that_float16_would_clip():
    from unlearn_core.training.activation_cache import CachedActivations, _to_storage_bits

    acts = torch.tensor([[1.0e5, -3.0, 0.125], [2.5, 7.0e4, -1.0e-3]])
    for dtype, tol in (("bfloat16", 4e-3), ("float16", 1e-3)):
        bits = _to_storage_bits(acts.clone(), dtype)
        back = CachedActivations(bits, dtype)[:]
        if dtype == "bfloat16":
            np.testing.assert_allclose(back, acts.numpy(), rtol=tol)
        else:
            assert back[0, 0] == 65504.0 and back[1, 1] == 65504.0  # clipped: why bfloat16 is the default
            np.testing.assert_allclose(back[:, 1:][0], acts.numpy()[0, 1:], rtol=tol)


@pytest.fixture(scope="module")
def tiny_cache(tiny_lm, tmp_path_factory):
    return build_activation_cache(tiny_lm, _windows(120, context=32), HOOKS, tmp_path_factory.mktemp("cache") / "c")


TINY_CFG = SaeTrainingConfig(width=64, k=4, epochs=2, batch_size=128, lr=3e-3, lr_warm_up_steps=5,
                             dead_feature_window=10, n_checkpoints=3, held_out_rows=256)


def test_training_gives_a_jumprelu_sae_that_reconstructs(tiny_cache, tmp_path):
    result = train_sae(tiny_cache, HOOKS[1], TINY_CFG, tmp_path / "ckpt", tmp_path / "out", "tiny")
    sae = SAE.load_from_disk(tmp_path / "out")
    assert sae.cfg.architecture() == "jumprelu"
    assert sae.cfg.metadata.hook_name == HOOKS[1] and sae.cfg.d_sae == 64
    held = torch.from_numpy(np.array(tiny_cache.activations(HOOKS[1])[result.train_rows:])).float()
    feats = sae.encode(held)
    l0 = float((feats > 0).sum(-1).float().mean())
    fve = 1 - float((sae.decode(feats) - held).pow(2).sum() / (held - held.mean(0)).pow(2).sum())
    assert 2 <= l0 <= 8, l0  # k = 4, held-out rows
    assert fve > 0.3, fve  # an untrained SAE (decoder norm 0.1) explains ~0
    assert result.training_tokens == 2 * (result.train_rows // 128) * 128


def test_training_resumes_from_its_newest_checkpoint(tiny_cache, tmp_path, monkeypatch):
    straight = train_sae(tiny_cache, HOOKS[0], TINY_CFG, tmp_path / "a" / "ckpt", tmp_path / "a" / "out", "tiny")

    original = sae_training._keep_newest_checkpoints
    seen = []

    def interrupt_after_first_checkpoint(checkpoint_dir, keep):
        original(checkpoint_dir, keep)
        seen.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(sae_training, "_keep_newest_checkpoints", interrupt_after_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train_sae(tiny_cache, HOOKS[0], TINY_CFG, tmp_path / "b" / "ckpt", tmp_path / "b" / "out", "tiny")
    monkeypatch.setattr(sae_training, "_keep_newest_checkpoints", original)
    resumed = train_sae(tiny_cache, HOOKS[0], TINY_CFG, tmp_path / "b" / "ckpt", tmp_path / "b" / "out", "tiny")
    assert resumed.resumed_from > 0
    for name, value in straight.sae.state_dict().items():
        torch.testing.assert_close(resumed.sae.state_dict()[name], value, msg=name)

    other = SaeTrainingConfig(**{**TINY_CFG.to_dict(), "k": 8})
    with pytest.raises(InputError, match="different training run"):
        train_sae(tiny_cache, HOOKS[0], other, tmp_path / "b" / "ckpt", tmp_path / "b" / "out2", "tiny")


def test_shipping_halves_the_weights_and_never_overwrites_silently(tiny_cache, tmp_path):
    result = train_sae(tiny_cache, HOOKS[1], SaeTrainingConfig(**{**TINY_CFG.to_dict(), "epochs": 0.5}),
                       tmp_path / "ckpt", tmp_path / "out", "tiny")
    dest = ship_sae(result.path, tmp_path / "ship" / "layer_2_width_64")
    loaded = SAE.load_from_disk(dest)
    assert loaded.W_enc.dtype == torch.float32
    torch.testing.assert_close(loaded.W_dec, result.sae.W_dec, atol=1e-3, rtol=1e-3)
    with pytest.raises(InputError, match="already exists"):
        ship_sae(result.path, dest)
    ship_sae(result.path, dest, overwrite=True)


@needs_shared_data
def test_build_saes_end_to_end_on_the_tiny_model(tiny_lm, tmp_path):
    config = SaeBuildConfig(
        layers=(0, 2), total_tokens=6000, context=32,
        training=SaeTrainingConfig(width=64, k=4, epochs=1, batch_size=128, lr_warm_up_steps=2, held_out_rows=128),
        out_dir=tmp_path / "saes", work_dir=tmp_path / "work", quality_tokens=400, ce_tokens=100, command="test",
    )
    folders = build_saes(config, status=lambda m: None, lm=tiny_lm)
    assert [f.name for f in folders] == ["layer_0_width_64", "layer_2_width_64"]
    for f in folders:
        q = json.loads((f / QUALITY_FILE).read_text())
        assert 0 < q["l0"] < 64 and q["n_tokens"] == 400 and q["ce_tokens"] == 100
        assert set(meets_targets(q)) == {"l0", "fve", "ce_loss_recovered", "dead_fraction"}
        card = (f / "README.md").read_text()
        assert "test" in card and "CE loss recovered" in card
        board = Dashboards.load(f / "dashboards.npz")
        assert board.meta["sources"] == ["gutenberg", "hp-fanwiki", "wikitext2"]
        assert board.source_frequency.shape == (64, 3) and board.source_frequency.max() > 0
    messages = []
    build_saes(config, status=messages.append, lm=tiny_lm)
    assert any("already shipped" in m for m in messages)
