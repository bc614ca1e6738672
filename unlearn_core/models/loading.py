"""Loading models for a preset, wrapped by TransformerLens as a ``HookedSAETransformer``.

The offline default (Gemma 3 270M) is converted from its PyPI GGUF package once and cached under
:func:`cache_dir` (see :mod:`unlearn_core.models.offline`). Hub presets load with
``from_pretrained_no_processing`` so the residual stream is exactly the one the SAEs were trained on (no
LayerNorm folding or weight centring). Speed patches to library internals live in
:mod:`unlearn_core.models.patches`, behind ``load_model(..., speed_patches=...)``.

A :class:`LoadedModel` carries a fair re-entrant lock (:class:`FairRLock`). Every forward pass in this package
holds it, so hooks added for one caller (one app session) can never be seen by a forward pass of another caller
sharing the model. Long jobs take it once per batch, and waiting callers are served in arrival order, so one
session's long job delays another's by at most one batch.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unlearn_core.errors import ModelUnavailableError
from unlearn_core.models.fast_forward import install_fast_forward, store_attention_weights_for_linear
from unlearn_core.models.hub import describe_hub_error, hf_token_available
from unlearn_core.models.offline import OFFLINE_CHECKPOINT_NAME, convert_checkpoint, load_offline
from unlearn_core.models.patches import speed_patches_enabled, store_transposed_weights
from unlearn_core.models.presets import ModelPreset, get_preset
from unlearn_core.models.progress import ProgressFn, say

SUPPORTED_DTYPES = ("bfloat16", "float16", "float32")
"""The dtype names :func:`load_model` accepts (converted by sae_lens' ``str_to_dtype``)."""


class FairRLock:
    """A re-entrant lock that serves waiting threads first come, first served (the interface of ``threading.RLock``).

    ``threading.RLock`` lets a thread that releases and at once re-acquires (a job looping over batches) win again
    and again over threads that were already waiting. Here every waiter takes a ticket, and the lock goes to the
    oldest ticket: a thread that releases and asks again queues behind everyone already waiting. The owner may
    acquire again without blocking (each acquire needs its release). A waiter that times out, or is interrupted,
    leaves the queue.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._owner: int | None = None
        self._depth = 0
        self._queue: deque[object] = deque()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Take the lock (again, for its owner); False when ``blocking=False`` or ``timeout`` seconds pass first."""
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
                return True
            if self._owner is None and not self._queue:
                self._owner, self._depth = me, 1
                return True
            if not blocking:
                return False
            ticket = object()
            self._queue.append(ticket)
            deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
            try:
                while self._owner is not None or self._queue[0] is not ticket:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        self._queue.remove(ticket)
                        self._cond.notify_all()  # the next ticket may be at the head now
                        return False
                    self._cond.wait(remaining)
            except BaseException:
                if ticket in self._queue:
                    self._queue.remove(ticket)
                    self._cond.notify_all()
                raise
            self._queue.popleft()
            self._owner, self._depth = me, 1
            return True

    def release(self) -> None:
        """Give back one acquire; the lock goes to the oldest waiter when the owner's last acquire is released."""
        with self._cond:
            if self._owner != threading.get_ident():
                raise RuntimeError("cannot release a FairRLock this thread does not hold")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._cond.notify_all()

    def locked(self) -> bool:
        """Whether some thread holds the lock."""
        with self._cond:
            return self._owner is not None

    @property
    def n_waiting(self) -> int:
        """How many threads are queued for the lock."""
        with self._cond:
            return len(self._queue)

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<FairRLock owner={self._owner} depth={self._depth} waiting={len(self._queue)}>"


@dataclass
class LoadedModel:
    """A model ready for SAE work, plus the lock that serialises its forward passes."""

    model: Any  # sae_lens.HookedSAETransformer; typed loosely to keep imports light
    preset: ModelPreset
    device: str
    dtype: torch.dtype
    lock: FairRLock = field(default_factory=FairRLock, repr=False)
    speed_patches: bool = True
    """Whether computations outside the model may take the patches' faster paths too (greedy decoding's
    :mod:`unlearn_core.models.greedy`); ``$UNLEARN_SPEED_PATCHES`` = 0 overrides it."""

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    @property
    def bos_token_id(self) -> int:
        return int(self.model.tokenizer.bos_token_id)

    @property
    def n_ctx(self) -> int:
        return int(self.model.cfg.n_ctx)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[Any]:
        """Hold the model for one caller; yields the HookedSAETransformer."""
        with self.lock:
            yield self.model


def cache_dir() -> Path:
    """Where converted checkpoints and other caches live (``$UNLEARN_CACHE_DIR`` or ``~/.cache/unlearn_core``)."""
    root = os.environ.get("UNLEARN_CACHE_DIR")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "unlearn_core"
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelUnavailableError(f"cannot create the cache folder {base} ({exc.strerror}); set UNLEARN_CACHE_DIR") from exc
    return base


def default_device() -> str:
    """CUDA when present, else Apple MPS, else CPU."""
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def validate_device(device: str) -> str:
    """Check that a device name is valid and present here (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ModelUnavailableError(f"unknown device {device!r}; use cpu, cuda or mps") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise ModelUnavailableError(f"device {device!r} is not available here (no such CUDA GPU); use cpu")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelUnavailableError("device 'mps' is not available here; use cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ModelUnavailableError(f"unsupported device {device!r}; use cpu, cuda or mps")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, preset: ModelPreset, device: str | None = None) -> torch.dtype:
    """Turn a dtype name (``float32``, ``bfloat16``, ``float16``, ``auto``) into a torch dtype; None = the preset's
    default. ``auto`` is bfloat16 where ``device`` (default: :func:`default_device`) has native bf16 matrix units,
    else float32 (:func:`unlearn_core.models.precision.auto_dtype`)."""
    from sae_lens.util import str_to_dtype

    from unlearn_core.models.precision import AUTO_DTYPE, auto_dtype

    if isinstance(dtype, torch.dtype):
        return dtype
    name = dtype or preset.default_dtype
    if name == AUTO_DTYPE:
        name = auto_dtype(device or default_device())
    if name not in SUPPORTED_DTYPES:
        raise ModelUnavailableError(f"unsupported dtype {name!r}; choose one of {[*SUPPORTED_DTYPES, AUTO_DTYPE]}")
    return str_to_dtype(name)


def offline_checkpoint(progress: ProgressFn | None = None) -> Path:
    """Path of the dequantized Gemma 3 270M checkpoint, converting it from the GGUF package on first use."""
    return convert_checkpoint(cache_dir() / OFFLINE_CHECKPOINT_NAME, progress, speed_patches_enabled())[0]


def transformer_lens_cache_dir() -> Path:
    """Where the offline model's converted TransformerLens weights are cached (a speed patch)."""
    return cache_dir() / (OFFLINE_CHECKPOINT_NAME + "-transformer-lens")


def load_model(
    preset: str | ModelPreset,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    progress: ProgressFn | None = None,
    speed_patches: bool = True,
) -> LoadedModel:
    """Load a preset's model as a ``HookedSAETransformer`` (no weight processing), in eval mode.

    ``speed_patches`` (default on; ``UNLEARN_SPEED_PATCHES=0`` turns it off) applies the patches of
    :mod:`unlearn_core.models.patches`, which give the same outputs faster. Raises :class:`ModelUnavailableError`
    with an actionable message when the hub, a token or memory is missing.
    """
    preset = get_preset(preset) if isinstance(preset, str) else preset
    device = validate_device(device or default_device())
    torch_dtype = resolve_dtype(dtype, preset, device)
    patched = speed_patches_enabled(speed_patches)
    try:
        if preset.loader == "gguf-offline":
            checkpoint = cache_dir() / OFFLINE_CHECKPOINT_NAME
            model = load_offline(preset, device, torch_dtype, checkpoint, transformer_lens_cache_dir(), progress, patched)
        else:
            model = _load_from_hub(preset, device, torch_dtype, progress)
    except ModelUnavailableError:
        raise
    except (MemoryError, torch.OutOfMemoryError) as exc:
        raise ModelUnavailableError(
            f"not enough memory to load {preset.model_id} on {device} in {torch_dtype}: "
            "try a smaller dtype (bfloat16), another device, or close other programs"
        ) from exc
    model.eval()
    if patched:
        store_transposed_weights(model)
        store_attention_weights_for_linear(model)
        install_fast_forward(model)
    # Batches are right-padded; with causal attention that needs no attention mask (TransformerLens would build
    # one from pad ids when the tokenizer pads on the left).
    model.tokenizer.padding_side = "right"
    return LoadedModel(model=model, preset=preset, device=device, dtype=torch_dtype, speed_patches=patched)


def _load_from_hub(preset: ModelPreset, device: str, dtype: torch.dtype, progress: ProgressFn | None) -> Any:
    from sae_lens import HookedSAETransformer

    if preset.needs_hf_token and not hf_token_available():
        raise ModelUnavailableError(
            f"{preset.model_id} is a gated model on the Hugging Face hub: set HF_TOKEN (environment or Streamlit "
            "secrets) to a token that has accepted its licence, or use the offline preset gemma-3-270m-offline"
        )
    say(progress, f"Downloading/loading {preset.model_id} from the Hugging Face hub")
    try:
        return HookedSAETransformer.from_pretrained_no_processing(preset.model_id, device=device, dtype=dtype)
    except Exception as exc:  # the hub stack raises many types; classify by what the user can do
        raise ModelUnavailableError(describe_hub_error(preset.model_id, exc)) from exc
