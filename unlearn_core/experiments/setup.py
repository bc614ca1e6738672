"""What every run on a forget set shares: its flags, the checked selections it runs on, and the settings it records.

``evaluate`` and ``attack`` both start from a :class:`ForgetSetConfig` (the list, the preset and the intervention
flags) and go through :func:`prepare_run`: load the list, resolve the intervention (before anything slow), pick the
preset, load the model once, load and check the SAEs. :func:`run_settings` is the block of settings both record, so
a number can always be traced back to what produced it (as SAEBench results carry their config).
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from unlearn_core.ablation.interventions import Intervention, LatentSelection, hook_name_for
from unlearn_core.errors import InputError
from unlearn_core.forget_set import FeatureList, load_feature_list
from unlearn_core.forget_set.selections import check_selections_fit_model, load_selections, preset_for_feature_list
from unlearn_core.models.loading import LoadedModel, load_model
from unlearn_core.models.precision import describe_precision
from unlearn_core.models.presets import ModelPreset
from unlearn_core.scoring.batching import DEFAULT_BATCH_TOKENS

StatusFn = Callable[[str], None]


@dataclass
class ForgetSetConfig:
    """A forget set and how to apply it; the fields every run on a forget set has."""

    forget_set: str
    preset: str | None = None
    mode: str | None = None
    """None: the intervention the list recommends (lists written by ``select`` carry one), else zero."""
    value: float | None = None
    hook_site: str = "trained"
    relative: bool = False
    seed: int = 0
    """Seeds the random controls (and anything else random in the run)."""
    batch_tokens: int = DEFAULT_BATCH_TOKENS
    device: str | None = None
    dtype: str | None = None

    @property
    def intervention(self) -> Intervention:
        """The intervention given explicitly (``mode`` set); see :func:`resolve_intervention` for the default."""
        return Intervention(
            mode=self.mode or "zero", value=self.value, hook_site=self.hook_site, relative=self.relative  # type: ignore[arg-type]
        )


def resolve_intervention(config: ForgetSetConfig, fl: FeatureList) -> Intervention:
    """The intervention to apply: ``config.mode`` if given; else the list's recommended one (lists from ``select``
    carry one), with ``config.value`` and ``config.hook_site`` overriding its value and site; else zero."""
    if config.mode is not None or fl.intervention is None:
        if config.mode is None and config.value is not None:
            raise InputError("--value needs --mode (this list recommends no intervention)")
        return config.intervention
    rec = fl.intervention
    return Intervention(
        rec.mode,
        config.value if config.value is not None else rec.value,
        config.hook_site if config.hook_site != "trained" else rec.hook_site,
        rec.relative or config.relative,
    )


@dataclass
class PreparedRun:
    """A forget set ready to run: the list, its intervention and preset, the loaded model and checked selections."""

    feature_list: FeatureList
    intervention: Intervention
    preset: ModelPreset
    lm: LoadedModel
    selections: list[LatentSelection]


def prepare_run(config: ForgetSetConfig, lm: LoadedModel | None = None, status: StatusFn | None = None) -> PreparedRun:
    """Load and check everything a run needs; a given ``lm`` is reused when it is the list's model."""
    fl = load_feature_list(config.forget_set)
    intervention = resolve_intervention(config, fl)  # validates mode and value before anything slow happens
    preset = preset_for_feature_list(fl, config.preset)
    if lm is None or lm.preset.model_id != preset.model_id:
        lm = load_model(preset, device=config.device, dtype=config.dtype, progress=status)
    selections = load_selections(fl, device=lm.device, dtype=lm.dtype, status=status)
    check_selections_fit_model(lm, selections, intervention)
    return PreparedRun(fl, intervention, preset, lm, selections)


def run_settings(config: ForgetSetConfig, run: PreparedRun) -> dict[str, Any]:
    """The settings a result records: the config, the intervention applied, the model, the SAEs and where they were
    applied, the device, the precision and the library versions."""
    iv = run.intervention
    return {
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
        "mode": iv.mode,
        "value": iv.value,
        "relative": iv.relative,
        "hook_site": iv.hook_site,
        "forget_set_name": run.feature_list.name,
        "model": run.preset.model_id,
        "preset": run.preset.name,
        "intervention": iv.describe(),
        "intervention_settings": iv.to_dict(),
        "saes": [
            {"sae": s.sae.ref, "hook_name": s.sae.hook_name, "applied_at": hook_name_for(s, iv.hook_site),
             "n_latents": len(s.latents)}
            for s in run.selections
        ],
        "device": run.lm.device,
        "dtype": str(run.lm.dtype).removeprefix("torch."),
        "precision": describe_precision(run.lm.device, run.lm.dtype),
        "dtype_requested": config.dtype or f"{run.preset.default_dtype} (default)",
        "versions": versions(),
    }


def versions() -> dict[str, str]:
    """The versions of Python and of the libraries that determine the numbers."""
    from importlib.metadata import version

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformer_lens": version("transformer-lens"),
        "sae_lens": version("sae-lens"),
        "transformers": version("transformers"),
    }
