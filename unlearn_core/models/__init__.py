"""The ``models`` stage: presets, loading a preset's model (offline GGUF conversion or the hub), speed patches.

Modules: :mod:`~unlearn_core.models.presets` (plain data), :mod:`~unlearn_core.models.loading` (``load_model``,
cache folder, devices, dtypes), :mod:`~unlearn_core.models.offline` (GGUF package -> cached fp32 checkpoint),
:mod:`~unlearn_core.models.hub` (HF token, hub error messages), :mod:`~unlearn_core.models.patches` (speed
patches to library internals, one switch; with :mod:`~unlearn_core.models.fast_forward`, leaner TransformerLens
blocks, and :mod:`~unlearn_core.models.greedy`, exact greedy tokens without the full unembedding).
"""

from unlearn_core.models.hub import describe_hub_error, hf_token_available
from unlearn_core.models.loading import (
    SUPPORTED_DTYPES,
    LoadedModel,
    cache_dir,
    default_device,
    load_model,
    offline_checkpoint,
    resolve_dtype,
    validate_device,
)
from unlearn_core.models.offline import wrap_offline_checkpoint
from unlearn_core.models.patches import SPEED_PATCHES_ENV, keep_freed_memory, speed_patches_enabled
from unlearn_core.models.progress import ProgressFn

__all__ = [
    "SPEED_PATCHES_ENV",
    "SUPPORTED_DTYPES",
    "LoadedModel",
    "ProgressFn",
    "cache_dir",
    "default_device",
    "describe_hub_error",
    "hf_token_available",
    "keep_freed_memory",
    "load_model",
    "offline_checkpoint",
    "resolve_dtype",
    "speed_patches_enabled",
    "validate_device",
    "wrap_offline_checkpoint",
]
