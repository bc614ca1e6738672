"""An on-disk activation cache: one model pass stores several hook points at once, SAEs then train from it.

Layout of a cache directory::

    meta.json          what was cached (model, hooks, context, corpus mix, storage dtype, rows written so far)
    tokens.int32       [rows] the token at each row
    <hook_name>.f16    [rows, d_model] activations, row-major, bfloat16 (default) or float16 bits

bfloat16 is the default because Gemma's residual stream has massive activations (one dimension beyond 65,504 on
~0.2% of tokens from layer 9 on) that float16 cannot hold; its 8-bit mantissa adds noise far below SAE error.

Rows are the non-BOS positions of fixed-length windows, in window order: row ``r`` is position
``r % (context - 1) + 1`` of window ``r // (context - 1)``. Building resumes where it stopped (``meta.json`` records
how many windows are complete), so a long caching run can span sessions.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unlearn_core.errors import InputError
from unlearn_core.files import write_json_atomic
from unlearn_core.models.loading import LoadedModel
from unlearn_core.scoring.activations import collect_activations

META_FILE = "meta.json"
TOKENS_FILE = "tokens.int32"
FLOAT16_MAX = 65504.0
WINDOWS_PER_FLUSH = 16
STORAGE_DTYPES = ("bfloat16", "float16")


def _acts_file(hook_name: str) -> str:
    return f"{hook_name}.f16"


@dataclass
class ActivationCache:
    """A read view of a complete (or partial) cache directory."""

    path: Path
    meta: dict[str, Any]

    @classmethod
    def open(cls, path: Path | str) -> ActivationCache:
        path = Path(path)
        meta_path = path / META_FILE
        if not meta_path.exists():
            raise InputError(f"{path} is not an activation cache (no {META_FILE})")
        return cls(path=path, meta=json.loads(meta_path.read_text(encoding="utf-8")))

    @property
    def hook_names(self) -> list[str]:
        return list(self.meta["hook_names"])

    @property
    def n_rows(self) -> int:
        return int(self.meta["windows_done"]) * (int(self.meta["context"]) - 1)

    @property
    def complete(self) -> bool:
        return int(self.meta["windows_done"]) == int(self.meta["windows_total"])

    @property
    def d_model(self) -> int:
        return int(self.meta["d_model"])

    @property
    def dtype(self) -> str:
        """Storage dtype; caches written before bfloat16 storage existed are float16."""
        return str(self.meta.get("dtype", "float16"))

    def activations(self, hook_name: str) -> CachedActivations:
        """[rows, d_model] activations at ``hook_name``: memory-mapped, indexed like an array, read as float32."""
        if hook_name not in self.hook_names:
            raise InputError(f"the cache at {self.path} has no {hook_name!r}; it has {', '.join(self.hook_names)}")
        raw = np.memmap(self.path / _acts_file(hook_name), dtype=np.uint16, mode="r", shape=(self.n_rows, self.d_model))
        return CachedActivations(raw, self.dtype)

    def tokens(self) -> np.memmap:
        return np.memmap(self.path / TOKENS_FILE, dtype=np.int32, mode="r", shape=(self.n_rows,))

    def window_of_row(self, row: int) -> tuple[int, int]:
        """(window index, position in the window) of a row; position 0 is BOS, so rows start at position 1."""
        span = int(self.meta["context"]) - 1
        return row // span, row % span + 1


class CachedActivations:
    """Rows of one hook's cache; ``acts[index]`` is a float32 array, ``acts.tensor()`` all rows in storage dtype."""

    def __init__(self, raw: np.memmap, dtype: str):
        self.raw = raw
        self.dtype = dtype
        self.shape = raw.shape

    def __len__(self) -> int:
        return int(self.shape[0])

    def tensor(self, stop: int | None = None) -> torch.Tensor:
        """Rows ``[:stop]`` in memory as a float16/bfloat16 tensor (half the size of float32)."""
        bits = torch.from_numpy(np.array(self.raw[:stop]))
        return bits.view(torch.bfloat16 if self.dtype == "bfloat16" else torch.float16)

    def __getitem__(self, index: Any) -> np.ndarray:
        bits = torch.from_numpy(np.array(self.raw[index]))
        return bits.view(torch.bfloat16 if self.dtype == "bfloat16" else torch.float16).float().numpy()


def _to_storage_bits(acts: torch.Tensor, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return acts.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    return acts.float().clamp_(-FLOAT16_MAX, FLOAT16_MAX).to(torch.float16).view(torch.int16).numpy().view(np.uint16)


def build_activation_cache(
    lm: LoadedModel,
    windows: Sequence[Sequence[int]],
    hook_names: Sequence[str],
    path: Path | str,
    description: dict[str, Any] | None = None,
    batch_windows: int = WINDOWS_PER_FLUSH,
    progress: Callable[[int, int], None] | None = None,
    dtype: str = "bfloat16",
) -> ActivationCache:
    """Cache activations at ``hook_names`` for equal-length ``windows`` (BOS first) into ``path``.

    One forward per batch of windows, stopped after the deepest hook. If ``path`` already holds a partial cache of
    the same request it is continued; a cache of a different request is an error, never overwritten.
    """
    path = Path(path)
    if not windows:
        raise InputError("no windows to cache")
    context = len(windows[0])
    if any(len(w) != context for w in windows):
        raise InputError("all windows must have the same length")
    if dtype not in STORAGE_DTYPES:
        raise InputError(f"cache dtype must be one of {STORAGE_DTYPES}, got {dtype!r}")
    request = {
        "model": lm.preset.name,
        "hook_names": list(hook_names),
        "context": context,
        "windows_total": len(windows),
        "d_model": int(lm.model.cfg.d_model),
        "corpus": description or {},
        "dtype": dtype,
    }
    meta = _resume_or_start(path, request)
    span = context - 1
    done = int(meta["windows_done"])
    total_rows = len(windows) * span
    files = {h: np.memmap(path / _acts_file(h), dtype=np.uint16, mode="r+", shape=(total_rows, request["d_model"]))
             for h in hook_names}
    token_file = np.memmap(path / TOKENS_FILE, dtype=np.int32, mode="r+", shape=(total_rows,))
    while done < len(windows):
        chunk = windows[done : done + batch_windows]
        rows = slice(done * span, (done + len(chunk)) * span)
        batch = collect_activations(lm, chunk, hook_names, include_bos=False, batch_tokens=context * len(chunk))
        for h in hook_names:
            files[h][rows] = _to_storage_bits(batch.acts[h], dtype)
        token_file[rows] = batch.tokens.numpy().astype(np.int32)
        for f in (*files.values(), token_file):
            f.flush()
        done += len(chunk)
        meta["windows_done"] = done
        write_json_atomic(path / META_FILE, meta)
        if progress is not None:
            progress(done, len(windows))
    return ActivationCache.open(path)


def _resume_or_start(path: Path, request: dict[str, Any]) -> dict[str, Any]:
    meta_path = path / META_FILE
    if meta_path.exists():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        existing = {k: meta.get(k) for k in request} | {"dtype": meta.get("dtype", "float16")}
        if existing != request:
            raise InputError(
                f"{path} already holds an activation cache of a different request; choose another directory "
                "or delete it"
            )
        return meta
    if path.exists() and any(path.iterdir()):
        raise InputError(f"{path} exists and is not an activation cache; refusing to write into it")
    path.mkdir(parents=True, exist_ok=True)
    total_rows = request["windows_total"] * (request["context"] - 1)
    for h in request["hook_names"]:
        _preallocate(path / _acts_file(h), total_rows * request["d_model"] * 2)
    _preallocate(path / TOKENS_FILE, total_rows * 4)
    meta = {**request, "windows_done": 0}
    write_json_atomic(meta_path, meta)
    return meta


def _preallocate(path: Path, n_bytes: int) -> None:
    with open(path, "wb") as f:
        f.truncate(n_bytes)
