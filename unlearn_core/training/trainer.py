"""Train SAEs with sae_lens' trainer, fed from an activation cache (one model pass, several epochs).

The SAE is sae_lens' ``BatchTopKTrainingSAE`` (TopK auxiliary loss for dead latents, decoder-norm-invariant top-k),
which sae_lens saves as a JumpReLU SAE with one global threshold. Activations are scaled to an expected norm of
``sqrt(d_in)`` while training (the factor is estimated from the cache, not from 1,000 model batches) and the factor
is folded into the saved weights, so the saved SAE takes raw residual-stream activations.

Checkpoints (weights, optimizer, schedule, firing statistics) are written under ``checkpoint_dir`` and a new run with
the same arguments resumes from the newest one, reading the cache from the same position.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
from sae_lens.saes.sae import SAEMetadata
from sae_lens.training.sae_trainer import SAETrainer

from unlearn_core.errors import InputError
from unlearn_core.files import write_json_atomic
from unlearn_core.saes.loading import layer_of_hook
from unlearn_core.training.activation_cache import ActivationCache

TRAINER_STATE = "trainer_state.pt"
SCALER_FILE = "activation_scaler.json"
TRAINING_CONFIG_FILE = "training_config.json"
SCALE_SAMPLE_ROWS = 65_536
CALIBRATION_ROWS = 16_384


@dataclass(frozen=True)
class SaeTrainingConfig:
    """Hyper-parameters of one SAE. ``epochs`` may be fractional (a smoke run uses a fraction of one epoch)."""

    width: int = 4096
    k: float = 120.0
    epochs: float = 2.0
    batch_size: int = 1024
    lr: float = 1e-3
    lr_warm_up_steps: int = 100
    lr_decay_fraction: float = 0.3
    aux_loss_coefficient: float = 1.0
    dead_feature_window: int = 50
    n_checkpoints: int = 8
    seed: int = 0
    held_out_rows: int = 32_768

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrainingResult:
    sae: SAE[Any]
    path: Path
    train_rows: int
    training_tokens: int
    resumed_from: int
    warm_up_steps: int


def training_row_count(cache: ActivationCache, cfg: SaeTrainingConfig) -> int:
    """Rows trained on: all but the last ``held_out_rows`` (at most a tenth of the cache), which stay unseen."""
    return cache.n_rows - min(cfg.held_out_rows, cache.n_rows // 10)


class CacheBatches(Iterator[torch.Tensor]):
    """Shuffled full batches of cached activations, epoch after epoch; can start at any sample offset."""

    def __init__(self, acts: torch.Tensor, batch_size: int, seed: int, start_sample: int = 0):
        if acts.shape[0] < batch_size:
            raise InputError(f"the cache has {acts.shape[0]} training rows, fewer than one batch ({batch_size})")
        self.acts = acts
        self.batch_size = batch_size
        self.seed = seed
        self.batches_per_epoch = acts.shape[0] // batch_size
        self.position = start_sample // batch_size
        self._epoch = -1
        self._order = torch.empty(0, dtype=torch.long)

    def __next__(self) -> torch.Tensor:
        epoch, index = divmod(self.position, self.batches_per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order = torch.randperm(self.acts.shape[0], generator=generator)
            self._epoch = epoch
        rows = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        self.position += 1
        return self.acts[rows].float()


def load_training_rows(cache: ActivationCache, hook_name: str, cfg: SaeTrainingConfig) -> torch.Tensor:
    """The training rows of one hook, in memory in the cache's 16-bit dtype (the held-out tail excluded)."""
    return cache.activations(hook_name).tensor(training_row_count(cache, cfg))


def estimate_scaling_factor(acts: torch.Tensor, seed: int) -> float:
    """sqrt(d_in) / mean activation norm over a fixed random sample: sae_lens' ``expected_average_only_in``."""
    generator = torch.Generator().manual_seed(seed)
    sample = acts[torch.randperm(acts.shape[0], generator=generator)[:SCALE_SAMPLE_ROWS]].float()
    return float(math.sqrt(acts.shape[1]) / sample.norm(dim=-1).mean())


def calibrate_threshold(sae: BatchTopKTrainingSAE, acts: torch.Tensor, seed: int, rows: int = CALIBRATION_ROWS) -> float:
    """Set the global threshold to BatchTopK's cut-off over ``rows`` training rows (mean L0 = k on them).

    sae_lens tracks the threshold as an exponential moving average of each batch's smallest kept activation, which
    has not settled after a few thousand steps; the inference SAE is only as sparse as this threshold.
    """
    generator = torch.Generator().manual_seed(seed + 1)
    sample = acts[torch.randperm(acts.shape[0], generator=generator)[:rows]].float()
    with torch.no_grad():
        _, hidden_pre = sae.encode_with_hidden_pre(sample)
        flat = hidden_pre.relu().flatten()
        n_keep = max(1, int(sae.cfg.k * sample.shape[0]))
        threshold = float(flat.topk(n_keep).values[-1])
        sae.topk_threshold = torch.tensor(threshold, dtype=torch.double)
    return threshold


def train_sae(
    cache: ActivationCache,
    hook_name: str,
    cfg: SaeTrainingConfig,
    checkpoint_dir: Path | str,
    out_dir: Path | str,
    model_name: str,
) -> TrainingResult:
    """Train one SAE on ``hook_name``'s cached activations; resume from ``checkpoint_dir`` if it holds a checkpoint.

    The inference SAE (JumpReLU, float32) is written to ``out_dir`` in sae_lens format.
    """
    checkpoint_dir = Path(checkpoint_dir)
    _check_checkpoint_config(checkpoint_dir, cfg, cache, hook_name)
    acts = load_training_rows(cache, hook_name, cfg)
    batches_per_epoch = acts.shape[0] // cfg.batch_size
    total_steps = max(1, int(cfg.epochs * batches_per_epoch))
    total_samples = total_steps * cfg.batch_size
    decay_steps = int(total_steps * cfg.lr_decay_fraction)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=total_samples,
        train_batch_size_samples=cfg.batch_size,
        lr=cfg.lr,
        lr_end=cfg.lr / 20,
        lr_scheduler_name="constant",
        lr_warm_up_steps=min(cfg.lr_warm_up_steps, total_steps // 10),
        lr_decay_steps=decay_steps,
        dead_feature_window=cfg.dead_feature_window,
        feature_sampling_window=max(cfg.dead_feature_window, 100),
        n_checkpoints=cfg.n_checkpoints,
        checkpoint_path=str(checkpoint_dir),
        save_final_checkpoint=False,
        n_batches_for_norm_estimate=1,
    )
    torch.manual_seed(cfg.seed)
    sae = BatchTopKTrainingSAE(
        BatchTopKTrainingSAEConfig(
            d_in=cache.d_model,
            d_sae=cfg.width,
            k=cfg.k,
            aux_loss_coefficient=cfg.aux_loss_coefficient,
            normalize_activations="expected_average_only_in",
            dtype="float32",
            device="cpu",
            metadata=SAEMetadata(
                model_name=model_name,
                hook_name=hook_name,
                context_size=int(cache.meta["context"]),
                prepend_bos=True,
            ),
        )
    )
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=iter(()), save_checkpoint_fn=None)
    resumed_from = _resume(trainer, checkpoint_dir)
    if resumed_from == 0:
        scale = estimate_scaling_factor(acts, cfg.seed)
        trainer.activation_scaler.scaling_factor = scale
        with torch.no_grad():
            sae.b_dec.copy_(acts[: SCALE_SAMPLE_ROWS].float().mean(0) * scale)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(checkpoint_dir / TRAINING_CONFIG_FILE, _checkpoint_identity(cfg, cache, hook_name))
    trainer.data_provider = CacheBatches(acts, cfg.batch_size, cfg.seed, start_sample=resumed_from)
    trainer.save_checkpoint_fn = lambda checkpoint_path: _keep_newest_checkpoints(checkpoint_dir, keep=2)
    with torch.enable_grad():
        trainer.fit()
    calibrate_threshold(sae, acts, cfg.seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sae.save_inference_model(out_dir)
    loaded = SAE.load_from_disk(out_dir)
    return TrainingResult(
        sae=loaded,
        path=out_dir,
        train_rows=int(acts.shape[0]),
        training_tokens=total_samples,
        resumed_from=resumed_from,
        warm_up_steps=trainer_cfg.lr_warm_up_steps,
    )


def _checkpoint_identity(cfg: SaeTrainingConfig, cache: ActivationCache, hook_name: str) -> dict[str, Any]:
    return {"config": cfg.to_dict(), "hook_name": hook_name, "cache": str(cache.path), "cache_rows": cache.n_rows}


def _check_checkpoint_config(checkpoint_dir: Path, cfg: SaeTrainingConfig, cache: ActivationCache, hook_name: str) -> None:
    saved = checkpoint_dir / TRAINING_CONFIG_FILE
    if saved.exists():
        previous = json.loads(saved.read_text(encoding="utf-8"))
        if previous != json.loads(json.dumps(_checkpoint_identity(cfg, cache, hook_name))):
            raise InputError(
                f"{checkpoint_dir} holds checkpoints of a different training run (other settings or cache); "
                "delete that folder or choose another --work-dir"
            )
    if layer_of_hook(hook_name) < 0:
        raise InputError(f"{hook_name!r} is not a block hook")


def _checkpoints(checkpoint_dir: Path) -> list[Path]:
    if not checkpoint_dir.exists():
        return []
    # sae_lens writes the activation scaler last, so its presence marks a complete checkpoint.
    found = [p for p in checkpoint_dir.iterdir()
             if p.is_dir() and p.name.isdigit() and (p / TRAINER_STATE).exists() and (p / SCALER_FILE).exists()]
    return sorted(found, key=lambda p: int(p.name))


def _resume(trainer: SAETrainer[Any, Any], checkpoint_dir: Path) -> int:
    """Load the newest checkpoint into ``trainer``; the number of samples already trained on (0 if none)."""
    found = _checkpoints(checkpoint_dir)
    if not found:
        return 0
    newest = found[-1]
    trainer.sae.load_weights_from_checkpoint(newest)
    trainer.load_trainer_state(newest)
    # sae_lens saves the step counter before incrementing it; the sample count is exact.
    trainer.n_training_steps = trainer.n_training_samples // trainer.cfg.train_batch_size_samples
    trainer.checkpoint_thresholds = [t for t in trainer.checkpoint_thresholds if t >= trainer.n_training_samples]
    return trainer.n_training_samples


def _keep_newest_checkpoints(checkpoint_dir: Path, keep: int) -> None:
    for old in _checkpoints(checkpoint_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
