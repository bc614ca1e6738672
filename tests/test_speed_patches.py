"""Each speed patch of ``unlearn_core.models.patches`` gives exactly what the plain library path gives (fp32),
and the one switch (``load_model(speed_patches=...)``, ``UNLEARN_SPEED_PATCHES=0``) turns them all off."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_gguf import tiny_gguf

from unlearn_core.models import loading
from unlearn_core.models.patches import (
    SPEED_PATCHES_ENV,
    TL_CACHE_FORMAT,
    keep_freed_memory,
    load_transformer_lens_cache,
    plain_array_gguf_reader,
    save_transformer_lens_cache,
    speed_patches_enabled,
    store_transposed_weights,
)

REPO = Path(__file__).resolve().parent.parent


def gated_model(seed: int = 0, tied: bool = False):
    """A 2-layer Gemma-like model (gated MLP, RMSNorm, rotary, grouped KV heads) with random weights."""
    from sae_lens import HookedSAETransformer
    from transformer_lens import HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=2, d_model=16, d_head=4, n_heads=4, n_key_value_heads=2, d_mlp=32, d_vocab=50, n_ctx=32,
        act_fn="gelu_pytorch_tanh", normalization_type="RMS", positional_embedding_type="rotary", gated_mlp=True,
        default_prepend_bos=True, seed=seed,
    )
    model = HookedSAETransformer(cfg)
    if tied:
        with torch.no_grad():
            model.unembed.W_U.copy_(model.embed.W_E.T)
    return model.eval()


TOKENS = torch.randint(0, 50, (3, 11), generator=torch.Generator().manual_seed(1))


@pytest.fixture(autouse=True)
def _switch_on(monkeypatch):
    monkeypatch.delenv(SPEED_PATCHES_ENV, raising=False)


# --- the switch -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value,expected", [(None, True), ("1", True), ("0", False), ("false", False), (" OFF ", False)])
def test_env_var_turns_every_patch_off(monkeypatch, value, expected):
    if value is not None:
        monkeypatch.setenv(SPEED_PATCHES_ENV, value)
    assert speed_patches_enabled() is expected
    assert speed_patches_enabled(False) is False
    if not expected:
        assert keep_freed_memory() is False


def test_load_model_applies_the_patches_only_when_switched_on(monkeypatch, tmp_path):
    monkeypatch.setenv("UNLEARN_CACHE_DIR", str(tmp_path))
    asked: list[bool] = []

    def fake_load_offline(preset, device, dtype, checkpoint, tl_cache, progress=None, speed_patches=True):
        asked.append(speed_patches)
        model = gated_model()
        model.tokenizer = type("Tok", (), {"padding_side": "left", "bos_token_id": 2})()
        return model

    monkeypatch.setattr(loading, "load_offline", fake_load_offline)
    patched = loading.load_model("gemma-3-270m-offline", device="cpu", dtype="float32")
    plain = loading.load_model("gemma-3-270m-offline", device="cpu", dtype="float32", speed_patches=False)
    monkeypatch.setenv(SPEED_PATCHES_ENV, "0")
    env_off = loading.load_model("gemma-3-270m-offline", device="cpu", dtype="float32")
    assert asked == [True, False, False]
    assert not patched.model.W_U.is_contiguous() and patched.model.W_U.T.is_contiguous()
    assert plain.model.W_U.is_contiguous() and env_off.model.W_U.is_contiguous()
    assert patched.tokenizer.padding_side == plain.tokenizer.padding_side == "right"
    assert patched.speed_patches and not plain.speed_patches and not env_off.speed_patches
    assert "forward" in vars(patched.model.blocks[0].attn)  # models/fast_forward.py (tested in test_fast_forward)
    assert "forward" not in vars(plain.model.blocks[0].attn) and "forward" not in vars(env_off.model.blocks[0].attn)
    torch.testing.assert_close(patched.model(TOKENS), plain.model(TOKENS), rtol=0, atol=1e-5)


# --- transposed weights -----------------------------------------------------------------------------------------
def test_transposed_weights_give_identical_logits():
    plain, patched = gated_model(), gated_model()  # the same weights (a deepcopy would lose some hooks)
    assert store_transposed_weights(patched) == 2 * 3 + 1  # W_gate, W_in, W_out per layer, and W_U
    assert store_transposed_weights(patched) == 0  # already laid out
    for name, param in patched.named_parameters():
        assert param.shape == dict(plain.named_parameters())[name].shape
    mlp = patched.blocks[0].mlp
    assert all(w.T.is_contiguous() and not w.is_contiguous() for w in (mlp.W_gate, mlp.W_in, mlp.W_out, patched.W_U))
    with torch.inference_mode():
        assert torch.equal(patched(TOKENS), plain(TOKENS))
        _, cache_p = patched.run_with_cache(TOKENS)
        _, cache_r = plain.run_with_cache(TOKENS)
    assert cache_p.keys() == cache_r.keys() and all(torch.equal(cache_p[k], cache_r[k]) for k in cache_r.keys())


# --- TransformerLens state-dict cache ---------------------------------------------------------------------------
@pytest.mark.parametrize("tied", [False, True])
def test_transformer_lens_cache_rebuilds_the_same_model(tmp_path, tied):
    reference = gated_model(tied=tied)
    folder = tmp_path / "tl"
    save_transformer_lens_cache(reference, folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tl"]  # the temporary folder was renamed into place
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["tied_unembed"] is tied and meta["format"] == TL_CACHE_FORMAT
    loaded = load_transformer_lens_cache(folder, None, "cpu", torch.float32)
    assert loaded is not None
    assert not loaded.W_U.is_contiguous()  # stored transposed: loading needs no copy
    with torch.inference_mode():
        assert torch.equal(loaded(TOKENS), reference(TOKENS))
    ref_state = reference.state_dict()
    assert all(torch.equal(v, ref_state[k]) for k, v in loaded.state_dict().items())


def test_a_damaged_or_stale_transformer_lens_cache_is_not_trusted(tmp_path):
    folder = tmp_path / "tl"
    save_transformer_lens_cache(gated_model(), folder)
    weights, meta_file = folder / "weights.safetensors", folder / "meta.json"
    good_weights, good_meta = weights.read_bytes(), meta_file.read_text()

    def load():
        return load_transformer_lens_cache(folder, None, "cpu", torch.float32)

    assert load() is not None
    weights.write_bytes(good_weights[: len(good_weights) // 2])  # cut short, as by a full disk
    assert load() is None
    weights.write_bytes(b"\x00" * 16)
    assert load() is None
    weights.write_bytes(good_weights)
    meta_file.write_text("{ not json")
    assert load() is None
    meta_file.write_text(json.dumps({**json.loads(good_meta), "format": TL_CACHE_FORMAT - 1}))
    assert load() is None
    meta_file.write_text(json.dumps({**json.loads(good_meta), "transformer_lens": "0.0.1"}))
    assert load() is None
    meta_file.unlink()
    assert load() is None
    save_transformer_lens_cache(gated_model(), folder)  # the rebuild replaces it
    assert load() is not None


# --- gguf reader ------------------------------------------------------------------------------------------------
def _read(path: Path) -> tuple[type, list, list]:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    fields = [(f.name, list(f.types), [bytes(np.ascontiguousarray(p)) for p in f.parts], f.contents())
              for f in reader.fields.values()]
    tensors = [(t.name, t.tensor_type, tuple(t.shape), bytes(np.ascontiguousarray(t.data))) for t in reader.tensors]
    return type(reader.data), fields, tensors


def test_plain_array_gguf_reader_reads_the_same_fields_and_tensors(tmp_path):
    path = tiny_gguf(tmp_path / "tiny.gguf")
    plain_type, plain_fields, plain_tensors = _read(path)
    with plain_array_gguf_reader():
        patched_type, patched_fields, patched_tensors = _read(path)
    assert plain_type is np.memmap and patched_type is np.ndarray  # the patch was active, and is undone
    assert _read(path)[0] is np.memmap
    assert patched_fields == plain_fields and patched_tensors == plain_tensors
    with plain_array_gguf_reader(enabled=False):
        assert _read(path)[0] is np.memmap


def test_plain_array_gguf_reader_converts_the_same_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    path = tiny_gguf(tmp_path / "tiny.gguf")
    plain = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    with plain_array_gguf_reader():
        patched = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    assert patched.get_vocab() == plain.get_vocab()
    for text in ("ab abc c", "a  b\nc", "cab x"):
        assert patched(text)["input_ids"] == plain(text)["input_ids"]


# --- allocator --------------------------------------------------------------------------------------------------
_ALLOCATION_HEAVY = """
import hashlib, sys, torch
from unlearn_core.models.patches import keep_freed_memory
print(keep_freed_memory() if sys.argv[1] == "1" else False)
torch.manual_seed(0)
torch.set_num_threads(1)
out = []
for _ in range(4):  # buffers of 8-16 MB, far above glibc's default mmap threshold
    a, b = torch.randn(512, 4096), torch.randn(4096, 1024)
    out.append((a @ b).softmax(-1).sum(0))
print(hashlib.sha256(torch.stack(out).numpy().tobytes()).hexdigest())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_keep_freed_memory_changes_no_result():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(SPEED_PATCHES_ENV, None)
    runs = {flag: subprocess.run([sys.executable, "-c", _ALLOCATION_HEAVY, flag], capture_output=True, text=True,
                                 env=env, timeout=300, check=True).stdout.split() for flag in ("0", "1")}
    assert runs["1"][0] == "True" and runs["0"][0] == "False"
    assert runs["1"][1] == runs["0"][1]


def test_entry_points_set_the_allocator_and_load_model_does_not(monkeypatch, tmp_path):
    import unlearn_core.cli as cli

    calls: list[int] = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(1) or True)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert cli.main(["evaluate", "--forget-set", str(bad)]) == 2
    assert calls == [1]
    app = (REPO / "app.py").read_text(encoding="utf-8")
    assert "\nkeep_freed_memory()" in app.split("st.set_page_config", 1)[0]
    assert "keep_freed_memory" not in Path(loading.__file__).read_text(encoding="utf-8")
