"""Loading models for a preset, wrapped by TransformerLens as a ``HookedSAETransformer``.

The offline default (Gemma 3 270M) is converted from its PyPI GGUF package once and cached under
:func:`cache_dir` (see :mod:`unlearn_core.models.offline`). Hub presets load with
``from_pretrained_no_processing`` so the residual stream is exactly the one the SAEs were trained on (no
LayerNorm folding or weight centring). Speed patches to library internals live in
:mod:`unlearn_core.models.patches`, behind ``load_model(..., speed_patches=...)``.

A :class:`LoadedModel` carries a re-entrant lock. Every forward pass in this package holds it, so hooks added
for one caller (one app session) can never be seen by a forward pass of another caller sharing the model.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unlearn_core.errors import ModelUnavailableError
from unlearn_core.models.hub import describe_hub_error, hf_token_available
from unlearn_core.models.offline import OFFLINE_CHECKPOINT_NAME, convert_checkpoint, load_offline
from unlearn_core.models.patches import speed_patches_enabled, store_transposed_weights
from unlearn_core.models.presets import ModelPreset, get_preset
from unlearn_core.models.progress import ProgressFn, say

SUPPORTED_DTYPES = ("bfloat16", "float16", "float32")
"""The dtype names :func:`load_model` accepts (converted by sae_lens' ``str_to_dtype``)."""


@dataclass
class LoadedModel:
    """A model ready for SAE work, plus the lock that serialises its forward passes."""

    model: Any  # sae_lens.HookedSAETransformer; typed loosely to keep imports light
    preset: ModelPreset
    device: str
    dtype: torch.dtype
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

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


def resolve_dtype(dtype: str | torch.dtype | None, preset: ModelPreset) -> torch.dtype:
    """Turn a dtype name (``float32``, ``bfloat16``, ``float16``) into a torch dtype; None = the preset's default."""
    from sae_lens.util import str_to_dtype

    if isinstance(dtype, torch.dtype):
        return dtype
    name = dtype or preset.default_dtype
    if name not in SUPPORTED_DTYPES:
        raise ModelUnavailableError(f"unsupported dtype {name!r}; choose one of {list(SUPPORTED_DTYPES)}")
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
    torch_dtype = resolve_dtype(dtype, preset)
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
    # Batches are right-padded; with causal attention that needs no attention mask (TransformerLens would build
    # one from pad ids when the tokenizer pads on the left).
    model.tokenizer.padding_side = "right"
    return LoadedModel(model=model, preset=preset, device=device, dtype=torch_dtype)


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
