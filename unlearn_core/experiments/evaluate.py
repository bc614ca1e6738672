"""End-to-end evaluation of a forget set: load what it needs, run every condition, return a self-describing result.

The result dict carries the settings that produced it (as SAEBench results do), so a number can always be traced
back to a command.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from unlearn_core.ablation.interventions import Intervention, LatentSelection, hook_name_for
from unlearn_core.data.probes import load_probes
from unlearn_core.data.texts import load_texts
from unlearn_core.errors import FeatureListError, InputError
from unlearn_core.forget_set.lists import FeatureList, SaeEntry, check_latents_fit, load_feature_list
from unlearn_core.models.loading import LoadedModel, load_model
from unlearn_core.models.presets import ModelPreset, get_preset, presets_for_model_id
from unlearn_core.saes.loading import LoadedSae, load_sae
from unlearn_core.scoring.evaluation import (
    CONDITIONS,
    DEFAULT_BATCH_TOKENS,
    DEFAULT_MAX_SEQ_LEN,
    build_conditions,
    perplexity,
    probe_scores,
)

DEFAULT_TEXTS: tuple[str, ...] = ("wikitext2", "wikitext2-clean", "hp-fanwiki")
DEFAULT_PROBES: tuple[str, ...] = ("hp-cloze", "general-cloze")
StatusFn = Callable[[str], None]
StageProgressFn = Callable[[str, int, int], None]
"""Called as ``progress(stage, done, total)``; ``stage`` names the condition and text/probe set."""


@dataclass
class EvaluationConfig:
    """Everything that determines an evaluation's numbers."""

    forget_set: str
    preset: str | None = None
    mode: str | None = None
    """None: the intervention the list recommends (lists written by ``select`` carry one), else zero."""
    value: float | None = None
    hook_site: str = "trained"
    relative: bool = False
    texts: Sequence[str] = DEFAULT_TEXTS
    probes: Sequence[str] = DEFAULT_PROBES
    max_texts: int | None = None
    conditions: Sequence[str] = CONDITIONS
    seed: int = 0
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN
    batch_tokens: int = DEFAULT_BATCH_TOKENS
    device: str | None = None
    dtype: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def intervention(self) -> Intervention:
        """The intervention given explicitly (``mode`` set); see :func:`resolve_intervention` for the default."""
        return Intervention(
            mode=self.mode or "zero", value=self.value, hook_site=self.hook_site, relative=self.relative  # type: ignore[arg-type]
        )


def resolve_intervention(config: EvaluationConfig, fl: FeatureList) -> Intervention:
    """The intervention to apply: ``config.mode`` if given; else the list's recommended one (lists from ``select``
    carry one), with ``config.value`` and ``config.hook_site`` overriding its value and site; else zero."""
    if config.mode is not None or "intervention" not in fl.extra:
        if config.mode is None and config.value is not None:
            raise InputError("--value needs --mode (this list recommends no intervention)")
        return config.intervention
    rec = Intervention.from_dict(fl.extra["intervention"], fl.name)
    return Intervention(
        rec.mode,
        config.value if config.value is not None else rec.value,
        config.hook_site if config.hook_site != "trained" else rec.hook_site,
        rec.relative or config.relative,
    )


def preset_for_feature_list(fl: FeatureList, preset_name: str | None = None) -> ModelPreset:
    """The preset to run a feature list with: the named one (which must load the list's model) or the first fit."""
    if preset_name is not None:
        preset = get_preset(preset_name)
        if preset.model_id != fl.model:
            raise FeatureListError(
                f"feature list {fl.name!r} is for {fl.model}, but preset {preset.name!r} loads {preset.model_id}"
            )
        return preset
    candidates = presets_for_model_id(fl.model)
    chosen_on = fl.extra.get("selection", {}).get("preset") if isinstance(fl.extra.get("selection"), dict) else None
    candidates.sort(key=lambda p: p.name != chosen_on)  # the preset the latents were selected on, if recorded
    if not candidates:
        raise FeatureListError(f"no preset loads {fl.model}, the model of feature list {fl.name!r}")
    return candidates[0]


def load_selections(
    fl: FeatureList, device: str = "cpu", dtype: str | torch.dtype = "float32", status: StatusFn | None = None
) -> list[LatentSelection]:
    """Load each SAE of a feature list and check the list against it (hook site, latent range)."""
    selections = []
    for entry in fl.saes:
        if status:
            status(f"Loading SAE {entry.sae}")
        loaded: LoadedSae = load_sae(entry.sae, device=device, dtype=dtype)
        if loaded.hook_name != entry.hook_name:
            raise FeatureListError(
                f"feature list {fl.name!r} puts SAE {entry.sae} at {entry.hook_name}, but the SAE was trained at "
                f"{loaded.hook_name}; fix the list's hook_name"
            )
        check_latents_fit(entry, loaded.width, source=fl.name)
        selections.append(LatentSelection(loaded, tuple(entry.latent_ids), reference_activations(entry)))
    return selections


def reference_activations(entry: SaeEntry) -> tuple[float, ...] | None:
    """Each latent's mean activation on forget text (``stats.forget_mean_act``, written by ``select``), if all
    latents of the entry have one; relative clamps scale to it."""
    values = []
    for lat in entry.latents:
        stats = lat.extra.get("stats")
        value = stats.get("forget_mean_act") if isinstance(stats, dict) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
            return None
        values.append(float(value))
    return tuple(values)


def check_selections_fit_model(lm: LoadedModel, selections: Sequence[LatentSelection], intervention: Intervention) -> None:
    """Refuse SAEs that cannot be applied to this model: unknown hook, wrong width, or not an SAE (transcoders)."""
    d_model = int(lm.model.cfg.d_model)
    for sel in selections:
        if intervention.relative and sel.latents and sel.reference is None:
            raise FeatureListError(
                f"a clamp relative to each latent's mean activation needs those activations, and some latents of "
                f"{sel.sae.ref} have none (lists from `select` / Suggest latents carry them; latents added by hand "
                "do not): remove those latents or use an absolute clamp"
            )
        cfg = sel.sae.sae.cfg
        site = hook_name_for(sel, intervention.hook_site)
        if site not in lm.model.hook_dict:
            raise FeatureListError(f"SAE {sel.sae.ref} sits at {site}, which {lm.preset.model_id} does not have")
        if "transcoder" in cfg.architecture():
            raise FeatureListError(f"{sel.sae.ref} is a transcoder; only SAEs can be ablated in place")
        if int(cfg.d_in) != d_model:
            raise FeatureListError(
                f"SAE {sel.sae.ref} reads {cfg.d_in}-dimensional activations but {lm.preset.model_id} has d_model "
                f"{d_model}: it was trained on another model"
            )


def run_evaluation(
    config: EvaluationConfig,
    lm: LoadedModel | None = None,
    status: StatusFn | None = None,
    progress: StageProgressFn | None = None,
) -> dict[str, Any]:
    """Evaluate a forget set under the configured conditions; returns the JSON-ready result.

    ``result["conditions"][COND]["perplexity"][TEXTS]`` and ``result["conditions"][COND]["probes"][PROBES]``
    hold the numbers; ``result["settings"]`` the configuration; ``result["details"]`` token counts and timings.
    """
    started = time.perf_counter()
    fl = load_feature_list(config.forget_set)
    intervention = resolve_intervention(config, fl)  # validates mode and value before anything slow happens
    preset = preset_for_feature_list(fl, config.preset)
    if lm is None or lm.preset.model_id != preset.model_id:
        lm = load_model(preset, device=config.device, dtype=config.dtype, progress=status)
    selections = load_selections(fl, device=lm.device, dtype=lm.dtype, status=status)
    check_selections_fit_model(lm, selections, intervention)
    conditions = build_conditions(config.conditions, selections, intervention, seed=config.seed)
    text_sets = [load_texts(t, config.max_texts) for t in config.texts]
    probe_sets = [load_probes(p) for p in config.probes]

    out: dict[str, Any] = {"conditions": {}, "details": {}}
    for cond in conditions:
        if cond.name == "reconstruction_only" and intervention.keeps_error_term and "baseline" in out["conditions"]:
            # x + decode(f) - decode(f) = x: the hook returns the activation untouched, so this is the baseline
            # exactly (tests/test_interventions.py proves it); no need to score everything again.
            out["conditions"][cond.name] = out["conditions"]["baseline"]
            out["details"][cond.name] = {"n_latents": 0, "identical_to": "baseline (error term kept)"}
            continue
        hooks = cond.hooks()
        entry: dict[str, Any] = {"perplexity": {}, "probes": {}}
        detail: dict[str, Any] = {"n_latents": cond.n_latents, "perplexity": {}, "seconds": {}}
        for ts in text_sets:
            if status:
                status(f"{cond.name}: perplexity on {ts.name} ({len(ts)} texts)")
            t0 = time.perf_counter()
            res = perplexity(lm, ts.texts, hooks, config.max_seq_len, config.batch_tokens,
                             _stage(progress, f"{cond.name} / {ts.name}"))
            entry["perplexity"][ts.name] = res.perplexity
            detail["perplexity"][ts.name] = {"n_texts": res.n_texts, "n_tokens": res.n_tokens}
            detail["seconds"][ts.name] = round(time.perf_counter() - t0, 2)
        for ps in probe_sets:
            if status:
                status(f"{cond.name}: probes {ps.name} ({len(ps)} items)")
            pres = probe_scores(lm, ps, hooks, max_seq_len=min(config.max_seq_len, 256), batch_tokens=config.batch_tokens,
                                progress=_stage(progress, f"{cond.name} / {ps.name}"))
            entry["probes"][ps.name] = {"top1": pres.top1, "mean_logprob": pres.mean_logprob, "n": pres.n}
        if cond.name == "random_control":
            detail["random_latents"] = {s.sae.ref: list(s.latents) for s in cond.selections}
        out["conditions"][cond.name] = entry
        out["details"][cond.name] = detail

    out["settings"] = {
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
        "mode": intervention.mode,
        "value": intervention.value,
        "relative": intervention.relative,
        "hook_site": intervention.hook_site,
        "forget_set_name": fl.name,
        "model": preset.model_id,
        "preset": preset.name,
        "intervention": intervention.describe(),
        "intervention_settings": {"mode": intervention.mode, "value": intervention.value,
                                  "relative": intervention.relative, "hook_site": intervention.hook_site},
        "saes": [
            {"sae": s.sae.ref, "hook_name": s.sae.hook_name, "applied_at": hook_name_for(s, intervention.hook_site),
             "n_latents": len(s.latents)}
            for s in selections
        ],
        "device": lm.device,
        "dtype": str(lm.dtype).removeprefix("torch."),
        "versions": _versions(),
    }
    out["details"]["seconds_total"] = round(time.perf_counter() - started, 2)
    return out


def _stage(progress: StageProgressFn | None, stage: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(stage, done, total)


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformer_lens": version("transformer-lens"),
        "sae_lens": version("sae-lens"),
        "transformers": version("transformers"),
    }


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of a :func:`run_evaluation` result: one row per condition."""
    conds = result["conditions"]
    if not conds:
        return "(no conditions)"
    first = next(iter(conds.values()))
    ppl_cols = list(first["perplexity"])
    probe_cols = list(first["probes"])
    headers = ["condition"] + [f"PPL {c}" for c in ppl_cols]
    headers += [f"{p} top1" for p in probe_cols] + [f"{p} logp" for p in probe_cols]
    rows = []
    base = conds.get("baseline")
    for name, entry in conds.items():
        row = [name]
        for c in ppl_cols:
            val = entry["perplexity"][c]
            cell = f"{val:.3f}"
            if base is not None and name != "baseline":
                cell += f" (x{val / base['perplexity'][c]:.3f})"
            row.append(cell)
        row += [f"{entry['probes'][p]['top1']:.3f}" for p in probe_cols]
        row += [f"{entry['probes'][p]['mean_logprob']:.3f}" for p in probe_cols]
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=False)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) for r in rows]
    settings = result.get("settings", {})
    if settings:
        lines.append("")
        lines.append(f"model {settings.get('model')} ({settings.get('preset')}); {settings.get('intervention')}")
    return "\n".join(lines)


def write_json(result: dict[str, Any], path: str | Path) -> Path:
    """Write a result as JSON atomically."""
    from unlearn_core.files import write_json_atomic

    return write_json_atomic(path, result, indent=1)
