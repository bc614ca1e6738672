"""Speed patches to library internals, all in this module and behind one switch.

Each patch changes *how* a library computes, never *what*: the patched path gives the same result as the plain
library path, bit for bit in fp32 (``tests/test_speed_patches.py`` checks each one against it). They are on by
default; ``load_model(..., speed_patches=False)`` or ``UNLEARN_SPEED_PATCHES=0`` in the environment turns them off.

* :func:`store_transposed_weights` - TransformerLens' MLP and unembedding copy their weight matrix on every
  forward; stored with transposed strides, that copy is free.
* :func:`plain_array_gguf_reader` - gguf's reader slices a ``np.memmap`` subclass millions of times while
  parsing the vocabulary; a plain ndarray view of the same map halves the one-time conversion.
* :func:`save_transformer_lens_cache` / :func:`load_transformer_lens_cache` - the offline model's converted
  TransformerLens state dict, cached so later starts skip the HF -> TransformerLens conversion (~20 s).
* :func:`keep_freed_memory` - glibc keeps freed large blocks instead of unmapping them. Process-wide, so the entry
  points (the CLI's ``main`` and ``app.py``) call it, never a library function.

Three more live in their own modules, behind the same switch:

* :mod:`unlearn_core.models.fast_forward` - fused, copy-free attention weights and leaner block, attention and MLP
  forwards (the library's bits in float32; SDPA and pre-packed weights in bfloat16), every hook point still firing.
  ``load_model`` applies it; ``uninstall_fast_forward(model)`` takes it off a model.
* :mod:`unlearn_core.models.lean_decode` - one unhooked row decodes outside ``HookedTransformer.forward``, with
  the fast forward's own ops on preallocated key/value buffers (the same numbers; a library cache is handed back
  the moment a hook or an SAE appears); used by :mod:`unlearn_core.scoring.generation`.
* :mod:`unlearn_core.models.greedy` - greedy decoding picks the arg-max token without the full float32/bfloat16
  unembedding (an int8 screen with a proven error bound, then the few candidates exactly); used by
  :mod:`unlearn_core.scoring.generation` when ``LoadedModel.speed_patches`` is on (``load_model`` sets it from
  the switch).

To compare with the plain path in one process, load a second model with ``load_model(..., speed_patches=False)``
(``scripts/gen_speed_check.py`` does).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import sys
import tempfile
import types
from collections.abc import Iterator
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

SPEED_PATCHES_ENV = "UNLEARN_SPEED_PATCHES"
"""Set to ``0`` (or ``false``/``no``/``off``) to turn every patch off, whatever the callers ask for."""


def speed_patches_enabled(requested: bool = True) -> bool:
    """Whether to apply the patches: the caller asks for them and ``$UNLEARN_SPEED_PATCHES`` does not say 0."""
    return bool(requested) and os.environ.get(SPEED_PATCHES_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


# --- allocator --------------------------------------------------------------------------------------------------


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed large blocks for reuse instead of returning them to the OS; True if it agreed.

    Why: scoring allocates and frees buffers of hundreds of MB per batch; by default glibc maps and unmaps each
    one, and the page faults cost about a fifth of the CPU time of a perplexity run here (measured by
    ``python -m unlearn_core bench``). The memory stays the process's, so the resident size only grows to the
    largest working set. Linux/glibc only; a no-op (returning False) elsewhere or when the switch is off.
    Process-wide: call it once from a program's entry point.
    """
    if not speed_patches_enabled() or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4
        ok = libc.mallopt(m_mmap_max, 0) and libc.mallopt(m_trim_threshold, 2**31 - 1)
        return bool(ok and libc.mallopt(m_top_pad, 256 * 2**20))
    except (OSError, AttributeError):
        return False


# --- TransformerLens weight layout ------------------------------------------------------------------------------

TRANSPOSED_WEIGHTS = ("W_gate", "W_in", "W_out", "W_U")
"""TransformerLens parameters used as ``F.linear(x, W.T.contiguous())`` (gated MLP and unembedding)."""


def is_transposed_weight(name: str, tensor: torch.Tensor) -> bool:
    """Whether a state-dict entry is one of :data:`TRANSPOSED_WEIGHTS` (a matrix)."""
    return name.rsplit(".", 1)[-1] in TRANSPOSED_WEIGHTS and tensor.dim() == 2


def store_transposed_weights(model: Any) -> int:
    """Store MLP and unembedding matrices with transposed strides (same values, same shapes); returns how many.

    Why: TransformerLens computes ``F.linear(x, W.T.contiguous())`` on every forward to match HF's memory layout;
    with the usual layout that copies each matrix on every call (for Gemma's 262k-token unembedding, 670 MB per
    generated token). Stored as ``W = W_t.T`` with ``W_t`` contiguous, ``W.T.contiguous()`` is a no-op returning
    the very tensor the copy would have produced, so the same kernel runs on the same bytes.
    """
    changed = 0
    with torch.no_grad():
        for name, param in model.named_parameters():
            if is_transposed_weight(name, param) and param.is_contiguous():
                param.data = param.data.t().contiguous().t()
                changed += 1
    return changed


# --- gguf reader ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def plain_array_gguf_reader(enabled: bool = True) -> Iterator[None]:
    """While active, gguf's reader slices a plain ndarray view of its memory map instead of ``np.memmap``.

    Why: parsing the 262k-entry vocabulary slices the map millions of times, and half of that time is the
    subclass's per-slice bookkeeping. The view is still memory-mapped (nothing more is read) and holds the same
    bytes. Only the ``gguf.gguf_reader`` module's name ``np`` is swapped, for the duration of the one-time
    conversion (run under the conversion lock). ``enabled=False`` makes this a no-op.
    """
    if not enabled:
        yield
        return
    import numpy as np
    from gguf import gguf_reader

    class _NumpyWithPlainMemmap(types.ModuleType):
        def __getattr__(self, name: str) -> Any:
            return getattr(np, name)

    shim = _NumpyWithPlainMemmap("numpy")
    shim.memmap = lambda *args, **kwargs: np.memmap(*args, **kwargs).view(np.ndarray)  # type: ignore[attr-defined]
    original = gguf_reader.np
    gguf_reader.np = shim  # type: ignore[assignment]
    try:
        yield
    finally:
        gguf_reader.np = original


# --- TransformerLens state-dict cache ---------------------------------------------------------------------------

TL_CACHE_FORMAT = 2
"""Bumped when the cached layout changes (2: transposed MLP/unembedding matrices); older caches are rebuilt."""


def save_transformer_lens_cache(model: Any, folder: Path) -> None:
    """Cache a converted model's TransformerLens weights and config in ``folder``, replacing it atomically.

    Why: building the offline model through ``HookedTransformer.from_pretrained_no_processing`` converts the HF
    weights (~20 s); the cache is TransformerLens' own state dict, which :func:`load_transformer_lens_cache`
    loads into a model built from the same config. Buffers (attention masks, rotary tables) are rebuilt from the
    config; a tied unembedding is stored once; :data:`TRANSPOSED_WEIGHTS` are stored transposed so loading them
    needs no copy. Written to a fresh temporary folder next to ``folder`` and renamed into place.
    """
    from safetensors.torch import save_file

    buffers = {name for name, _ in model.named_buffers()}
    weights = {k: v.detach() for k, v in model.state_dict().items() if k not in buffers}
    tied = torch.equal(weights["unembed.W_U"], weights["embed.W_E"].T)
    if tied:
        del weights["unembed.W_U"]
    transposed = sorted(k for k, v in weights.items() if is_transposed_weight(k, v))
    weights = {k: (v.t() if k in transposed else v).contiguous() for k, v in weights.items()}
    cfg = {k: v for k, v in model.cfg.to_dict().items() if k not in ("dtype", "device")}
    meta = {"cfg": cfg, "tied_unembed": tied, "transposed": transposed, "format": TL_CACHE_FORMAT,
            "transformer_lens": package_version("transformer-lens")}
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        save_file(weights, str(tmp / "weights.safetensors"))
        (tmp / "meta.json").write_text(json.dumps(meta, default=str), encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_transformer_lens_cache(folder: Path, tokenizer: Any, device: str, dtype: torch.dtype) -> Any | None:
    """The model saved by :func:`save_transformer_lens_cache`, or None when absent, stale or corrupt.

    A cache from another TransformerLens version or format, unreadable metadata, a damaged safetensors file (its
    header is checked against the file size) or weights that do not fit the config all give None, so the caller
    rebuilds it instead of trusting it.
    """
    from sae_lens import HookedSAETransformer
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformerConfig

    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring the unreadable TransformerLens cache %s (%s)", folder, type(exc).__name__)
        return None
    if not isinstance(meta, dict) or meta.get("transformer_lens") != package_version("transformer-lens") \
            or meta.get("format") != TL_CACHE_FORMAT:
        return None
    try:
        cfg = HookedTransformerConfig.from_dict({**meta["cfg"], "dtype": dtype, "device": device, "init_weights": False})
        weights = load_file(str(folder / "weights.safetensors"))
        for key in meta.get("transposed", []):
            weights[key] = weights[key].t()
        if meta["tied_unembed"]:
            weights["unembed.W_U"] = weights["embed.W_E"].clone().T  # already in the transposed layout
    except (SafetensorError, OSError, KeyError, TypeError, ValueError) as exc:
        log.warning("ignoring the damaged TransformerLens cache %s (%s: %s)", folder, type(exc).__name__, exc)
        return None
    model = HookedSAETransformer(cfg, tokenizer=tokenizer, default_padding_side="right")
    weights = {k: v.to(dtype) for k, v in weights.items()}
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False, assign=True)
    except RuntimeError as exc:  # a shape that does not fit the config
        log.warning("ignoring the TransformerLens cache %s: %s", folder, str(exc).splitlines()[0])
        return None
    buffers = {name for name, _ in model.named_buffers()}
    if unexpected or set(missing) - buffers:
        return None
    return model.to(device, print_details=False)
