"""Dashboards on the tiny model, checked against brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import tiny_sae

from unlearn_core.errors import InputError
from unlearn_core.explain import dashboard_build, dashboard_cache
from unlearn_core.explain import dashboards as dash
from unlearn_core.scoring.activations import collect_activations


@pytest.fixture(scope="module")
def setup(tiny_lm):
    loaded = tiny_sae(layer=1, d_sae=48)
    g = torch.Generator().manual_seed(1)
    sequences = [[1, *torch.randint(3, 250, (int(n),), generator=g).tolist()] for n in torch.randint(5, 40, (30,), generator=g)]
    batch = collect_activations(tiny_lm, sequences, [loaded.hook_name])
    acts = batch.acts[loaded.hook_name].numpy()
    board = dashboard_build.compute_dashboards(
        loaded.sae, acts, batch.tokens.numpy(), batch.sequence_index.numpy(), tiny_lm.model.W_U,
        lambda t: f"<{t}>", "test corpus",
    )
    feats = loaded.sae.encode(torch.from_numpy(acts))
    return loaded, board, feats, batch, tiny_lm


def test_frequency_max_and_top_context_match_brute_force(setup):
    loaded, board, feats, batch, _ = setup
    np.testing.assert_allclose(board.frequency, (feats > 0).float().mean(0).numpy(), rtol=1e-6)
    np.testing.assert_allclose(board.max_activation, feats.max(0).values.clamp(min=0).numpy(), rtol=1e-5)
    live = [i for i in range(board.width) if board.frequency[i] > 0]
    assert live, "the tiny SAE should have live latents"
    for i in live[:10]:
        d = board.latent(i)
        top_row = int(feats[:, i].argmax())
        first = d.contexts[0]
        assert first.value == pytest.approx(float(feats[top_row, i]), rel=8e-3)  # bfloat16 storage
        assert first.tokens[first.focus] == f"<{int(batch.tokens[top_row])}>"
        # the values shown on the other tokens are the latent's activations there
        pos = int(batch.position[top_row])
        assert len(first.tokens) == min(pos, dash.TOKENS_BEFORE + 1) + sum(
            1 for r in range(top_row + 1, top_row + 1 + dash.TOKENS_AFTER)
            if r < len(batch.tokens) and batch.sequence_index[r] == batch.sequence_index[top_row]
        )
        before = feats[top_row - first.focus : top_row, i].tolist()
        assert first.values[: first.focus] == pytest.approx(before, rel=8e-3, abs=1e-3)
        # contexts: the best row of each sequence, best sequences first, at most CONTEXTS_PER_LATENT
        best_per_sequence: dict[int, float] = {}
        for row in feats[:, i].argsort(descending=True).tolist():
            value = float(feats[row, i])
            if value > 0:
                best_per_sequence.setdefault(int(batch.sequence_index[row]), value)
        expected = list(best_per_sequence.values())[: dash.CONTEXTS_PER_LATENT]
        assert [c.value for c in d.contexts] == pytest.approx(expected, rel=1e-2)
        assert d.auto_label.startswith(dash.AUTO_LABEL_PREFIX)


def test_promoted_tokens_follow_the_decoder_direction(setup):
    loaded, board, _, _, lm = setup
    direction = loaded.sae.W_dec[3] / loaded.sae.W_dec[3].norm()
    logits = direction @ lm.model.W_U
    d = board.latent(3)
    assert [t for t, _ in d.promoted] == [f"<{int(t)}>" for t in logits.topk(dash.LOGIT_TOKENS).indices]
    assert [t for t, _ in d.suppressed] == [f"<{int(t)}>" for t in logits.topk(dash.LOGIT_TOKENS, largest=False).indices]
    assert d.promoted[0][1] == pytest.approx(float(logits.max()), rel=1e-2)


def test_save_load_round_trip_and_range_errors(setup, tmp_path):
    _, board, _, _, _ = setup
    board.save(tmp_path / "d.npz")
    again = dash.Dashboards.load(tmp_path / "d.npz")
    assert again.latent(5) == board.latent(5)
    with pytest.raises(InputError, match="out of range"):
        again.latent(board.width)
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(InputError, match="cannot read dashboards"):
        dash.Dashboards.load(tmp_path / "bad.npz")


def test_dashboards_for_any_sae_are_computed_once_then_cached(tiny_lm, tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARN_CACHE_DIR", str(tmp_path))
    loaded = tiny_sae(layer=2, d_sae=32, seed=5)
    texts = ["The boy who lived.", "Hogwarts School of Witchcraft and Wizardry", "A plain sentence about rivers."]
    first = dashboard_cache.dashboards_for(tiny_lm, loaded, texts=texts, corpus="three texts", max_tokens=500)
    assert first.meta["corpus"] == "three texts" and first.meta["n_tokens"] == sum(len(t.encode()) for t in texts)
    assert list((tmp_path / "dashboards").glob("*.npz"))
    calls = []
    monkeypatch.setattr(dashboard_cache, "compute_dashboards_from_texts", lambda *a, **k: calls.append(1))
    again = dashboard_cache.dashboards_for(tiny_lm, loaded, texts=texts, corpus="three texts", max_tokens=500)
    assert not calls and again.latent(0) == first.latent(0)


def _truncated(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _bad_crc(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside a compressed member: a zlib or CRC error when read
    path.write_bytes(bytes(data))


def _missing_member(path):
    import numpy as np

    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files if k != "frequency"}
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)


@pytest.mark.parametrize("damage", [_truncated, _bad_crc, _missing_member, lambda p: p.write_bytes(b"")],
                         ids=["truncated", "bad-crc", "missing-array", "empty"])
def test_corrupt_cached_dashboards_are_deleted_and_rebuilt(tiny_lm, tmp_path, monkeypatch, damage):
    monkeypatch.setenv("UNLEARN_CACHE_DIR", str(tmp_path))
    loaded = tiny_sae(layer=2, d_sae=32, seed=5)
    texts = ["The boy who lived.", "A plain sentence about rivers."]
    first = dashboard_cache.dashboards_for(tiny_lm, loaded, texts=texts, corpus="two texts", max_tokens=500)
    (cached,) = (tmp_path / "dashboards").glob("*.npz")
    damage(cached)
    with pytest.raises(InputError):
        dash.Dashboards.load(cached)
    calls = []
    compute = dashboard_cache.compute_dashboards_from_texts
    monkeypatch.setattr(dashboard_cache, "compute_dashboards_from_texts", lambda *a, **k: calls.append(1) or compute(*a, **k))
    again = dashboard_cache.dashboards_for(tiny_lm, loaded, texts=texts, corpus="two texts", max_tokens=500)
    assert calls == [1] and again.latent(0) == first.latent(0)  # rebuilt, not trusted
    assert dash.Dashboards.load(cached).latent(0) == first.latent(0)  # and the rewritten file is whole
    assert [p.name for p in cached.parent.iterdir()] == [cached.name]  # no temporary file left behind


def test_unreadable_cache_file_is_removed_and_reported_missing(tmp_path):
    path = tmp_path / "x.npz"
    path.write_bytes(b"PK\x03\x04 truncated")
    assert dashboard_cache.load_cached(path) is None and not path.exists()
    assert dashboard_cache.load_cached(path) is None
