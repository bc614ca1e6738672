"""Sweeps over forget-set size x intervention x layers, and the forget/retain trade-off they trace.

Each point edits the top ``n`` latents (per SAE, from one selection rule) of the chosen layers with one
intervention and measures, against the shared baseline:

* forget: perplexity on held-out forget text (``hp-fanwiki``) and top-1 accuracy on forget probes (``hp-cloze``);
* retain: perplexity on retain text (``wikitext2``) and top-1 accuracy on retain probes (``general-cloze``).

The *best* point is the one with the largest forget score among points within the retain budget (default:
retain perplexity +10% and retain probe top-1 -5% relative at most). The forget score adds the two forget effects,
each measured against its headline target, so 1.0 on each means "target met":
``ln(PPL ratio) / ln 2 + (relative top-1 drop) / 0.5``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from unlearn_core.ablation.conditions import Condition, random_selections
from unlearn_core.ablation.interventions import Intervention, LatentSelection
from unlearn_core.data.probes import load_probes
from unlearn_core.data.quizzes import load_quiz
from unlearn_core.data.texts import load_texts
from unlearn_core.errors import InputError
from unlearn_core.experiments.results import MeasureOptions, StageProgressFn, measure_condition, selectivity
from unlearn_core.experiments.sweep_store import (
    ConditionSpec,
    DoneFn,
    Job,
    PointDone,
    PointStore,
    Runner,
    SweepData,
    SweepKeys,
    measure_jobs,
)
from unlearn_core.models.loading import LoadedModel
from unlearn_core.saes.loading import LoadedSae
from unlearn_core.scoring.batching import DEFAULT_BATCH_TOKENS
from unlearn_core.selection.gating import calibrated_conditions
from unlearn_core.selection.rules import ScoredLatent

DEFAULT_NS: tuple[int, ...] = (10, 20, 40)
DEFAULT_INTERVENTIONS: tuple[str, ...] = ("zero", "clamp:2x", "clamp:4x", "clamp:8x")
DEFAULT_LAYER_SETS: tuple[str, ...] = ("all",)
DEFAULT_RETAIN_PPL_BUDGET = 0.10
DEFAULT_RETAIN_PROBE_BUDGET = 0.05

def parse_layer_set(spec: str, available: Sequence[int]) -> tuple[int, ...]:
    """``all`` or layers joined by ``+`` (``9+12``), each one of ``available``."""
    if spec.strip() == "all":
        return tuple(sorted(available))
    try:
        layers = tuple(sorted({int(part) for part in spec.split("+")}))
    except ValueError:
        raise InputError(f"cannot read layer set {spec!r}; use all, 12 or 9+12") from None
    missing = [layer for layer in layers if layer not in available]
    if missing:
        raise InputError(f"no SAE at layer(s) {missing}; available: {sorted(available)}")
    return layers


@dataclass(frozen=True)
class SweepPoint:
    """One forget set (top ``n`` per SAE at ``layers``) under one intervention."""

    n: int
    intervention: str
    layers: tuple[int, ...]

    @property
    def label(self) -> str:
        return f"n={self.n} {self.intervention} L{'+'.join(map(str, self.layers))}"


@dataclass
class SweepConfig:
    """What to sweep and how to measure it."""

    ns: Sequence[int] = DEFAULT_NS
    interventions: Sequence[str] = DEFAULT_INTERVENTIONS
    layer_sets: Sequence[str] = DEFAULT_LAYER_SETS
    forget_texts: str = "hp-fanwiki:dev"
    retain_texts: str = "wikitext2:dev"
    forget_probes: str = "hp-cloze:dev"
    retain_probes: str = "general-cloze:dev"
    forget_quiz: str = "hp-quiz:dev"
    retain_quiz: str = "general-quiz:dev"
    adjacent_quiz: str = "adjacent-quiz:dev"
    """Multiple-choice sets scored at every point (calibrated accuracy); ``""`` leaves one out. A sweep tunes, so
    every default is a dev split: the test splits stay unseen for ``evaluate``."""
    max_forget_texts: int | None = 40
    max_retain_texts: int | None = 80
    max_seq_len: int = 256
    batch_tokens: int = DEFAULT_BATCH_TOKENS
    retain_ppl_budget: float = DEFAULT_RETAIN_PPL_BUDGET
    retain_probe_budget: float = DEFAULT_RETAIN_PROBE_BUDGET
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Measurement:
    forget_ppl: float
    retain_ppl: float
    forget_top1: float
    retain_top1: float
    forget_quiz: float | None = None
    retain_quiz: float | None = None
    adjacent_quiz: float | None = None
    """Calibrated multiple-choice accuracies (``acc_calibrated``), when the sweep scores quizzes."""

    QUIZZES = ("forget_quiz", "retain_quiz", "adjacent_quiz")


def headline(base: Measurement, point: Measurement) -> dict[str, float]:
    """Ratios and relative changes of a point against the baseline, plus selectivity and the forget score."""
    forget_ratio = point.forget_ppl / base.forget_ppl
    retain_ratio = point.retain_ppl / base.retain_ppl
    return {
        "forget_ppl_ratio": forget_ratio,
        "retain_ppl_ratio": retain_ratio,
        "forget_top1_change": _relative(point.forget_top1, base.forget_top1),
        "retain_top1_change": _relative(point.retain_top1, base.retain_top1),
        "selectivity": selectivity(forget_ratio, retain_ratio),
        "forget_score": forget_score(forget_ratio, _relative(point.forget_top1, base.forget_top1)),
        **{f"{q}_change": getattr(point, q) - getattr(base, q) for q in Measurement.QUIZZES
           if getattr(point, q) is not None and getattr(base, q) is not None},
    }


def forget_score(forget_ppl_ratio: float, forget_top1_change: float) -> float:
    """``ln(PPL ratio)/ln 2 + drop/0.5``: each term is 1.0 at its headline target (2x perplexity, -50% top-1)."""
    return math.log(forget_ppl_ratio) / math.log(2) + (-forget_top1_change) / 0.5


def describe_headline(h: dict[str, Any]) -> str:
    sel = h["selectivity"]
    return (f"HP PPL x{h['forget_ppl_ratio']:.3f}, Wiki PPL x{h['retain_ppl_ratio']:.4f}, selectivity "
            f"{'n/a' if sel is None else f'{sel:.1f}'}, HP cloze {h['forget_top1_change']:+.1%}, general cloze "
            f"{h['retain_top1_change']:+.1%}")


def within_budget(h: dict[str, float], config: SweepConfig) -> bool:
    return h["retain_ppl_ratio"] <= 1 + config.retain_ppl_budget and h["retain_top1_change"] >= -config.retain_probe_budget


def _relative(value: float, base: float) -> float:
    return (value - base) / base if base else 0.0


def point_selections(
    saes: Sequence[LoadedSae], ranked: dict[str, list[ScoredLatent]], point: SweepPoint
) -> tuple[LatentSelection, ...]:
    """The top ``point.n`` latents of each SAE at ``point.layers``, with their reference activations."""
    out = []
    for sae in saes:
        if sae.layer not in point.layers:
            continue
        chosen = ranked.get(sae.ref, [])[: point.n]
        if chosen:
            out.append(LatentSelection(sae, tuple(c.id for c in chosen), tuple(c.forget_mean_act for c in chosen)))
    return tuple(out)


MEASUREMENT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Measurement))


def load_sweep_data(config: SweepConfig) -> SweepData:
    """The sweep's text, probe and quiz sets, loaded once (with the configured limits)."""
    quizzes = {field_name: load_quiz(name) for field_name, name in
               zip(Measurement.QUIZZES, (config.forget_quiz, config.retain_quiz, config.adjacent_quiz), strict=True)
               if name}
    return SweepData((load_texts(config.forget_texts, config.max_forget_texts),
                      load_texts(config.retain_texts, config.max_retain_texts)),
                     (load_probes(config.forget_probes), load_probes(config.retain_probes)), quizzes)


def measure_limits(config: SweepConfig) -> dict[str, Any]:
    """The settings besides the sets' contents that change a measurement (part of every point's key)."""
    return {"max_seq_len": config.max_seq_len, "batch_tokens": config.batch_tokens,
            "max_forget_texts": config.max_forget_texts, "max_retain_texts": config.max_retain_texts}


class Measurer:
    """Measures conditions on the sweep's fixed text and probe sets (loaded once, or given as ``data``), through the
    same :func:`~unlearn_core.experiments.results.measure_condition` as ``evaluate``."""

    def __init__(self, lm: LoadedModel, config: SweepConfig, data: SweepData | None = None) -> None:
        self.lm = lm
        self.config = config
        self.data = data if data is not None else load_sweep_data(config)
        self.text_sets, self.probe_sets, self.quizzes = self.data.text_sets, self.data.probe_sets, self.data.quizzes

    def measure(self, condition: Condition, progress: StageProgressFn | None = None) -> Measurement:
        options = MeasureOptions(self.config.max_seq_len, self.config.batch_tokens, progress=progress)
        probe_sets = (*self.probe_sets, *self.quizzes.values())
        scores, _ = measure_condition(self.lm, condition, self.text_sets, probe_sets, options)
        forget_texts, retain_texts = (ts.name for ts in self.text_sets)
        forget_probes, retain_probes = (ps.name for ps in self.probe_sets)
        quiz = {field_name: scores.probes[q.name].acc_calibrated for field_name, q in self.quizzes.items()}  # type: ignore[union-attr]
        return Measurement(scores.perplexity[forget_texts], scores.perplexity[retain_texts],
                           scores.probes[forget_probes].top1, scores.probes[retain_probes].top1, **quiz)  # type: ignore[union-attr]


class LocalRunner:
    """The default :class:`~unlearn_core.experiments.sweep_store.Runner`: one job after another, in this process."""

    def __init__(self, measurer: Measurer, saes: Sequence[LoadedSae], progress: StageProgressFn | None = None,
                 status: Callable[[str], None] | None = None) -> None:
        self.measurer, self.saes, self.progress, self.status = measurer, {s.ref: s for s in saes}, progress, status

    def run(self, jobs: Sequence[Job], done: DoneFn) -> None:
        for i, (key, spec) in enumerate(jobs):
            if self.status:
                self.status(f"{spec.name} ({i + 1}/{len(jobs)})")
            done(key, asdict(self.measurer.measure(spec.build(self.saes), self.progress)), None)


def sweep_points(config: SweepConfig, available_layers: Sequence[int]) -> list[SweepPoint]:
    if not config.ns or any(n < 1 for n in config.ns):
        raise InputError("latent counts must be >= 1")
    for spec in config.interventions:
        Intervention.from_spec(spec)
    layer_sets = [parse_layer_set(s, available_layers) for s in config.layer_sets]
    return [
        SweepPoint(n, spec, layers)
        for layers in dict.fromkeys(layer_sets)
        for spec in config.interventions
        for n in sorted(set(config.ns))
    ]


def run_sweep(
    lm: LoadedModel,
    saes: Sequence[LoadedSae],
    ranked: dict[str, list[ScoredLatent]],
    config: SweepConfig,
    progress: StageProgressFn | None = None,
    status: Callable[[str], None] | None = None,
    *,
    data: SweepData | None = None,
    runner: Runner | None = None,
    points_dir: str | Path | None = None,
    on_point: Callable[[PointDone], None] | None = None,
) -> dict[str, Any]:
    """Measure every point, then for the best point: a random control (as many random latents per SAE, same
    intervention), plain zero-ablation of its latents, and the study's recipe on its latents.

    ``runner`` measures (default: :class:`LocalRunner`, in this process; ``sweep_ray.RayPool.runner`` fans out).
    With ``points_dir`` every measurement is stored there the moment it is done and reused by a re-run
    (:class:`~unlearn_core.experiments.sweep_store.PointStore`); ``on_point`` hears of each new one.
    Returns a JSON-ready dict: ``baseline``, ``points`` (each with its measurement and :func:`headline`),
    ``best`` (index or None), ``pareto`` (indices), ``controls`` and ``settings``.
    """
    started = time.perf_counter()
    points = sweep_points(config, [s.layer for s in saes])
    data = data if data is not None else load_sweep_data(config)
    runner = runner if runner is not None else LocalRunner(Measurer(lm, config, data), saes, progress, status)
    keys = SweepKeys(lm, saes, data, measure_limits(config))
    store = PointStore(points_dir, MEASUREMENT_FIELDS) if points_dir is not None else None
    measured: dict[str, Measurement] = {}
    base_key = keys.key(ConditionSpec("baseline"))
    if store is not None and (stored := store.load(base_key)) is not None:
        measured[base_key] = Measurement(**stored)

    def heard(event: PointDone) -> None:
        measured[event.key] = Measurement(**event.measurement)
        if status and event.key != base_key and base_key in measured:
            status(f"  {event.name}: {describe_headline(headline(measured[base_key], measured[event.key]))}")
        if on_point is not None:
            on_point(event)

    def measure(conditions: Sequence[Condition], what: str) -> list[Measurement]:
        jobs = [(keys.key(spec), spec) for spec in map(ConditionSpec.of, conditions)]
        found = measure_jobs(jobs, runner, store, heard, status, what)
        return [Measurement(**found[key]) for key, _ in jobs]

    chosen = [(p, sel) for p in points if (sel := point_selections(saes, ranked, p))]
    conds = [Condition(p.label, sel, Intervention.from_spec(p.intervention)) for p, sel in chosen]
    conds = calibrated_conditions(lm, conds, config.batch_tokens)  # gated points (`clamp:4x@gate`): per point
    base, *point_measurements = measure([Condition("baseline"), *conds], "points")
    rows: list[dict[str, Any]] = []
    for (point, _), cond, m in zip(chosen, conds, point_measurements, strict=True):
        h = headline(base, m)
        rows.append({
            **asdict(point),
            "label": point.label,
            "n_latents": cond.n_latents,
            "measurement": asdict(m),
            **h,
            "within_budget": within_budget(h, config),
        })
    best = best_index(rows)
    controls: dict[str, Any] = {}
    if best is not None:
        point = SweepPoint(rows[best]["n"], rows[best]["intervention"], tuple(rows[best]["layers"]))
        selections = point_selections(saes, ranked, point)
        intervention = Intervention.from_spec(point.intervention)
        control_conds = [Condition("random_control", random_selections(selections, config.seed), intervention),
                         Condition("zero_ablation", selections, Intervention("zero")),
                         Condition("study_recipe", selections, Intervention("replace", hook_site="resid_pre"))]
        control_conds = calibrated_conditions(lm, control_conds, config.batch_tokens)
        if status:
            status("controls for the best point")
        for cond, m in zip(control_conds, measure(control_conds, "controls"), strict=True):
            controls[cond.name] = {"measurement": asdict(m), **headline(base, m)}
    return {
        "baseline": asdict(base),
        "points": rows,
        "best": best,
        "pareto": pareto_front(rows),
        "controls": controls,
        "settings": {**asdict(config), "ns": list(config.ns), "interventions": list(config.interventions),
                     "layer_sets": list(config.layer_sets), "model": lm.preset.model_id, "preset": lm.preset.name,
                     "saes": [s.ref for s in saes]},
        "seconds": round(time.perf_counter() - started, 1),
    }


def best_index(rows: Sequence[dict[str, Any]]) -> int | None:
    """The point with the largest forget score within the retain budget (None if no point is within it)."""
    inside = [i for i, r in enumerate(rows) if r["within_budget"]]
    if not inside:
        return None
    return max(inside, key=lambda i: (rows[i]["forget_score"], -rows[i]["retain_ppl_ratio"]))


def pareto_front(rows: Sequence[dict[str, Any]]) -> list[int]:
    """Points no other point beats on both axes: higher forget score and lower retain perplexity ratio.

    Returned in order of increasing retain cost.
    """
    front = []
    for i, r in enumerate(rows):
        dominated = any(
            o["forget_score"] >= r["forget_score"] and o["retain_ppl_ratio"] <= r["retain_ppl_ratio"]
            and (o["forget_score"] > r["forget_score"] or o["retain_ppl_ratio"] < r["retain_ppl_ratio"])
            for j, o in enumerate(rows) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: rows[i]["retain_ppl_ratio"])
