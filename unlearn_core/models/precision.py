"""Native low precision: whether a device multiplies bfloat16 matrices in hardware, and what ``"auto"`` means.

``load_model(dtype="auto")`` (through :func:`unlearn_core.models.loading.resolve_dtype`) picks bfloat16 where the
hardware has native bf16 matrix units and float32 elsewhere, since emulated bf16 is slower than float32:

* CUDA: ``torch.cuda.is_bf16_supported`` without emulation (Ampere and later);
* CPU: the ``amx_bf16`` (Intel AMX, Sapphire Rapids and later) or ``avx512_bf16`` (Cooper Lake, Zen 4 and later)
  flags of ``/proc/cpuinfo`` on x86 Linux, ``bf16`` in its ``Features`` on Arm (BFMMLA); where ``/proc/cpuinfo``
  cannot be read, a ``torch.backends.cpu.get_cpu_capability()`` naming AMX or BF16;
* MPS and anything else: no (float32).

What stays float32 in a bf16 model is the caller's business (the scoring code keeps the log-sum-exp over the
vocabulary and the NLL sums in float32 or float64; TransformerLens' RMSNorm upcasts to float32).
"""

from __future__ import annotations

import functools
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from unlearn_core.models.loading import LoadedModel

AUTO_DTYPE = "auto"
"""The dtype name that means: bfloat16 where it is native, else float32."""
PRECISION_CHOICES: tuple[str, ...] = (AUTO_DTYPE, "float32", "bfloat16", "float16")
"""What a precision picker (app sidebar, CLI ``--dtype``) can offer; every one is accepted by ``load_model``."""
DTYPE_HELP = ("model dtype; auto (the default): bfloat16 where native (AMX, AVX512-BF16, CUDA), else float32; "
              "float32 is the exact reference")

CPU_BF16_FLAGS: tuple[tuple[str, str], ...] = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"), ("bf16", "Arm BF16"))
"""``/proc/cpuinfo`` flags that mean native bf16 matrix arithmetic, best first, with the name shown to users."""

CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo_text: str) -> frozenset[str]:
    """The feature flags of a ``/proc/cpuinfo`` text (x86 ``flags`` lines, Arm ``Features`` lines), lower case."""
    flags: set[str] = set()
    for line in cpuinfo_text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            flags.update(value.lower().split())
    return frozenset(flags)


def bf16_feature_from_flags(flags: frozenset[str] | set[str]) -> str | None:
    """The best native-bf16 feature among CPU ``flags`` (e.g. ``"AMX-BF16"``), or None."""
    return next((label for flag, label in CPU_BF16_FLAGS if flag in flags), None)


@functools.lru_cache(maxsize=1)
def cpu_bf16_feature() -> str | None:
    """This CPU's native-bf16 feature (``"AMX-BF16"``, ``"AVX512-BF16"``, ``"Arm BF16"``), or None. Read once."""
    if sys.platform.startswith("linux"):
        try:
            return bf16_feature_from_flags(cpu_flags(CPUINFO.read_text(encoding="utf-8", errors="replace")))
        except OSError:
            pass
    try:
        capability = str(torch.backends.cpu.get_cpu_capability()).upper()
    except (AttributeError, RuntimeError):
        return None
    return f"{capability} (torch CPU capability)" if "AMX" in capability or "BF16" in capability else None


def bf16_feature(device: str | torch.device = "cpu") -> str | None:
    """What gives ``device`` native bf16 matrix arithmetic (a short name for users), or None when it has none."""
    dev = torch.device(device)
    if dev.type == "cpu":
        return cpu_bf16_feature()
    if dev.type == "cuda" and torch.cuda.is_available():
        try:
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # older torch: no emulation switch
            native = torch.cuda.is_bf16_supported()
        return f"CUDA bf16 ({torch.cuda.get_device_name(dev)})" if native else None
    return None


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware (see the module docstring)."""
    return bf16_feature(device) is not None


def auto_dtype(device: str | torch.device = "cpu") -> str:
    """The dtype name ``"auto"`` stands for on ``device``: ``"bfloat16"`` when bf16 is native there, else ``"float32"``."""
    return "bfloat16" if native_bf16(device) else "float32"


def describe_precision(device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None) -> str:
    """What ``dtype`` (default ``"auto"``) means on ``device``, for a user: ``"bfloat16 (native: AMX-BF16)"``,
    ``"float32 (no native bfloat16 on cpu)"``, ``"bfloat16 (emulated on cpu: slower than float32)"``."""
    name = str(dtype).removeprefix("torch.") if dtype is not None else AUTO_DTYPE
    if name == AUTO_DTYPE:
        name = auto_dtype(device)
        if name == "float32":
            return f"float32 (no native bfloat16 on {torch.device(device).type})"
    if name != "bfloat16":
        return name
    feature = bf16_feature(device)
    if feature is None:
        return f"bfloat16 (emulated on {torch.device(device).type}, slower than float32)"
    return f"bfloat16 (native: {feature})"


def residual_extreme(lm: LoadedModel, text: str) -> dict[str, Any]:
    """The largest |value| of the residual stream (any layer's ``hook_resid_post``) on ``text`` (BOS prepended),
    where it is, and the spacing of bfloat16 numbers at that size (8 significant bits): Gemma 3 keeps values near
    1e5 in one dimension, which bf16 can only hold to a few hundred."""
    ids = [lm.bos_token_id, *lm.tokenizer(text, add_special_tokens=False)["input_ids"][: lm.n_ctx - 1]]
    with torch.inference_mode(), lm.exclusive() as model:
        _, cache = model.run_with_cache(torch.tensor([ids]), names_filter=lambda n: n.endswith("hook_resid_post"))
    stacked = torch.stack([cache[k][0] for k in cache.keys()]).abs().float()  # [layer, pos, d]
    value = float(stacked.max())
    layer, pos, dim = (int(i) for i in torch.unravel_index(stacked.argmax(), stacked.shape))
    return {"residual_max_abs": value, "residual_max_layer": layer, "residual_max_dim": dim, "residual_max_is_bos": pos == 0,
            "bf16_spacing_at_max": 2.0 ** (math.floor(math.log2(value)) - 7) if value > 0 else 0.0}
