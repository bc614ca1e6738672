"""End to end: corpus -> activation cache -> SAEs -> shipped folders with cards, quality and dashboards.

This is what ``python -m unlearn_core train-sae`` runs. Every stage resumes: the cache continues where it stopped,
training continues from its newest checkpoint, and finished layers are skipped unless ``overwrite`` is set.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unlearn_core.data.texts import BUILTIN_TEXTS, load_texts
from unlearn_core.errors import InputError, UnlearnError
from unlearn_core.explain.dashboard_build import compute_dashboards
from unlearn_core.explain.dashboards import DASHBOARD_FILE
from unlearn_core.files import write_json_atomic
from unlearn_core.models.loading import LoadedModel, cache_dir, load_model
from unlearn_core.training.activation_cache import ActivationCache, build_activation_cache
from unlearn_core.training.corpus import DEFAULT_DATA_DIR, DEFAULT_MIX, build_training_corpus
from unlearn_core.training.quality import measure_quality
from unlearn_core.training.release import (
    QUALITY_FILE,
    SHIPPED_SAES_DIR,
    TRAINING_FILE,
    library_versions,
    ship_sae,
    shipped_folder_name,
    write_card,
    write_quality,
)
from unlearn_core.training.trainer import SaeTrainingConfig, train_sae

Status = Callable[[str], None]
EVAL_TEXTS = "wikitext2"


@dataclass(frozen=True)
class SaeBuildConfig:
    layers: tuple[int, ...] = (5, 9, 12, 15)
    total_tokens: int = 800_000
    context: int = 256
    corpus_seed: int = 0
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    data_dir: Path = DEFAULT_DATA_DIR
    training: SaeTrainingConfig = SaeTrainingConfig()
    out_dir: Path = SHIPPED_SAES_DIR
    work_dir: Path | None = None
    quality_tokens: int = 60_000
    ce_tokens: int = 8192
    dashboards: bool = True
    overwrite: bool = False
    cache_dtype: str = "bfloat16"
    command: str = ""
    preset: str = "gemma-3-270m-offline"

    @property
    def hook_names(self) -> list[str]:
        return [f"blocks.{layer}.hook_resid_post" for layer in self.layers]

    def resolved_work_dir(self) -> Path:
        return Path(self.work_dir) if self.work_dir else cache_dir() / "sae-training"

    def cache_path(self) -> Path:
        mix = "-".join(f"{k}{v:g}" for k, v in self.mix.items())
        layers = "-".join(str(layer) for layer in self.layers)
        name = f"{self.preset}-{self.total_tokens}tok-ctx{self.context}-seed{self.corpus_seed}-{mix}-L{layers}"
        if self.cache_dtype != "float16":
            name += f"-{self.cache_dtype}"
        return self.resolved_work_dir() / "activation-cache" / name


def build_saes(config: SaeBuildConfig, status: Status = print, lm: LoadedModel | None = None) -> list[Path]:
    """Train (or resume) and ship one SAE per layer of ``config``; the shipped folders."""
    if not config.layers:
        raise InputError("no layers given")
    lm = lm or load_model(config.preset, dtype="float32", progress=status)  # SAEs train on float32 activations
    n_layers = int(lm.model.cfg.n_layers)
    bad = [layer for layer in config.layers if not 0 <= layer < n_layers]
    if bad:
        raise InputError(f"layers {bad} do not exist; the model has layers 0..{n_layers - 1}")
    cache = _activation_cache(lm, config, status)
    shipped: list[Path] = []
    trained: list[Path] = []
    for layer, hook_name in zip(config.layers, config.hook_names, strict=True):
        dest = Path(config.out_dir) / shipped_folder_name(layer, config.training.width)
        shipped.append(dest)
        if (dest / QUALITY_FILE).exists() and not config.overwrite:
            if config.dashboards and not (dest / DASHBOARD_FILE).exists():
                status(f"{dest} is shipped but has no dashboards; building them")
                build_cache_dashboards(lm, dest, cache, status, Path(config.data_dir))
            else:
                status(f"{dest} is already shipped; skipping layer {layer} (--overwrite to retrain)")
            continue
        if (dest / TRAINING_FILE).exists() and not config.overwrite:
            status(f"{dest} is trained but not yet measured; measuring it")
        else:
            _train_and_ship(lm, config, cache, layer, hook_name, dest, status)
        trained.append(dest)
    if trained:
        # One activation pass and one clean loss pass serve every new SAE.
        measure_and_record(lm, trained, config.quality_tokens, config.ce_tokens, status)
        if config.dashboards:
            for dest in trained:
                build_cache_dashboards(lm, dest, cache, status, Path(config.data_dir))
    return shipped


def _train_and_ship(
    lm: LoadedModel, config: SaeBuildConfig, cache: ActivationCache, layer: int, hook_name: str, dest: Path,
    status: Status,
) -> None:
    settings = hashlib.sha256(json.dumps(config.training.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    run_name = f"{cache.path.name}-{shipped_folder_name(layer, config.training.width)}-{settings}"
    run_dir = config.resolved_work_dir() / "runs" / run_name
    status(f"training the layer {layer} SAE on {hook_name} (checkpoints in {run_dir / 'checkpoints'})")
    started = time.time()
    result = train_sae(cache, hook_name, config.training, run_dir / "checkpoints", run_dir / "final", lm.preset.model_id)
    seconds = time.time() - started
    ship_sae(result.path, dest, overwrite=True)
    write_json_atomic(dest / TRAINING_FILE, {
        "config": config.training.to_dict(),
        "hook_name": hook_name,
        "model": lm.preset.model_id,
        "preset": config.preset,
        "context": config.context,
        "corpus": cache.meta["corpus"],
        "tokens_in_cache": cache.n_rows,
        "cache_dtype": cache.dtype,
        "held_out_rows": cache.n_rows - result.train_rows,
        "train_rows": result.train_rows,
        "training_tokens": result.training_tokens,
        "warm_up_steps_used": result.warm_up_steps,
        "resumed_from_tokens": result.resumed_from,
        "train_seconds": round(seconds, 1),
        "versions": library_versions(),
        "command": config.command,
    })


def _activation_cache(lm: LoadedModel, config: SaeBuildConfig, status: Status) -> ActivationCache:
    path = config.cache_path()
    if path.exists():
        cache = ActivationCache.open(path)
        if cache.complete:
            status(f"using the activation cache {path} ({cache.n_rows:,} tokens)")
            return cache
    status(f"building the training corpus ({config.total_tokens:,} tokens, mix {config.mix})")
    corpus = build_training_corpus(
        lm.tokenizer, lm.bos_token_id, config.total_tokens, config.context, config.mix, config.data_dir, config.corpus_seed
    )
    description = {**corpus.describe(), "seed": config.corpus_seed, "total_tokens": config.total_tokens}
    status(f"caching activations at {', '.join(config.hook_names)} into {path} (resumable)")
    from tqdm import tqdm

    bar = tqdm(total=len(corpus.windows), unit="window", desc="activation cache")

    def progress(done: int, total: int) -> None:
        bar.n = done
        bar.refresh()

    try:
        return build_activation_cache(lm, corpus.windows, config.hook_names, path, description, progress=progress,
                                      dtype=config.cache_dtype)
    finally:
        bar.close()


def measure_and_record(
    lm: LoadedModel, folders: Sequence[Path], quality_tokens: int, ce_tokens: int, status: Status = print,
    write: bool = True,
) -> list[dict[str, Any]]:
    """Measure each shipped SAE on held-out WikiText-2 test text; with ``write``, update quality.json and the card."""
    from unlearn_core.saes.loading import load_sae

    loaded = {}
    for folder in folders:
        sae = load_sae(str(folder))
        if sae.hook_name in loaded:
            raise InputError(
                f"{folder} and {loaded[sae.hook_name][0]} are both at {sae.hook_name}; measure them in separate runs"
            )
        loaded[sae.hook_name] = (folder, sae)
    status(f"measuring quality of {len(loaded)} SAE(s) on {BUILTIN_TEXTS[EVAL_TEXTS]}")
    texts = load_texts(EVAL_TEXTS).texts
    results = measure_quality(lm, {h: s.sae for h, (_, s) in loaded.items()}, texts,
                              max_tokens=quality_tokens, ce_max_tokens=ce_tokens)
    rows = []
    for hook_name, (folder, _) in loaded.items():
        if write:
            write_quality(folder, results[hook_name], BUILTIN_TEXTS[EVAL_TEXTS])
            if (folder / TRAINING_FILE).exists():
                write_card(folder)
        rows.append({"name": folder.name, **results[hook_name].to_dict()})
    return rows


def _row_sources(lm: LoadedModel, cache: ActivationCache, data_dir: Path) -> tuple[Any, list[str]]:
    """Which corpus source each cached row came from (the corpus is rebuilt: it is deterministic), or (None, [])."""
    import numpy as np

    meta = cache.meta["corpus"]
    try:
        corpus = build_training_corpus(lm.tokenizer, lm.bos_token_id, meta["total_tokens"], int(cache.meta["context"]),
                                       meta["mix"], data_dir, meta["seed"])
    except (UnlearnError, KeyError):
        return None, []
    if len(corpus.windows) != int(cache.meta["windows_total"]):
        return None, []
    names = sorted(set(corpus.sources))
    per_window = np.array([names.index(s) for s in corpus.sources], dtype=np.int64)
    return np.repeat(per_window, int(cache.meta["context"]) - 1)[: cache.n_rows], names


def build_cache_dashboards(
    lm: LoadedModel, folder: Path, cache: ActivationCache, status: Status = print, data_dir: Path = DEFAULT_DATA_DIR
) -> Path:
    """Dashboards of a shipped SAE over the whole activation cache (its training corpus)."""
    from unlearn_core.saes.loading import load_sae

    loaded = load_sae(str(folder))
    status(f"dashboards for {folder.name} over {cache.n_rows:,} cached tokens")
    span = int(cache.meta["context"]) - 1
    import numpy as np

    rows = np.arange(cache.n_rows)
    corpus = cache.meta["corpus"]
    row_source, source_names = _row_sources(lm, cache, data_dir)
    bars: dict[str, Any] = {}

    def progress(stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        bar = bars.setdefault(stage, tqdm(total=total, desc=f"dashboards: {stage}", leave=False))
        bar.update(done - bar.n)

    try:
        board = compute_dashboards(
            loaded.sae,
            cache.activations(loaded.hook_name),
            np.asarray(cache.tokens()),
            rows // span,
            lm.model.W_U.detach(),
            lambda t: lm.tokenizer.decode([t]),
            f"SAE training corpus ({', '.join(f'{k} {v:,} tokens' for k, v in corpus['tokens_per_source'].items())})",
            progress,
            row_source=row_source,
            source_names=source_names,
        )
    finally:
        for bar in bars.values():
            bar.close()
    path = folder / DASHBOARD_FILE
    board.save(path)
    return path
