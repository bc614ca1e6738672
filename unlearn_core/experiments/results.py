"""Typed results and the one measuring loop behind ``evaluate``, ``sweep`` and the Compare page's downloads.

A :class:`ConditionScores` holds one condition's numbers (perplexity per text set, scores per probe set); an
:class:`EvaluationResult` holds every condition with the settings that produced them. Both round-trip through
JSON (``to_dict`` / ``from_dict``) in the format ``evaluate --json`` has always written::

    {"conditions": {COND: {"perplexity": {TEXTS: float}, "probes": {PROBES: {"top1", "mean_logprob", "n"}
                                                                  or {"acc", "acc_norm", "acc_calibrated", "chance", "n"}}}},
     "details": {...}, "settings": {...}, "headline": {...}, "command": "..."}
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from unlearn_core.ablation.conditions import BASELINE, RANDOM_CONTROL, Condition
from unlearn_core.data.probes import ProbeSet
from unlearn_core.data.quizzes import Quiz
from unlearn_core.data.texts import TextSet
from unlearn_core.errors import InputError
from unlearn_core.models.loading import LoadedModel
from unlearn_core.scoring.batching import DEFAULT_BATCH_TOKENS
from unlearn_core.scoring.choices import choice_scores
from unlearn_core.scoring.perplexity import perplexity
from unlearn_core.scoring.probes import probe_scores

StatusFn = Callable[[str], None]
StageProgressFn = Callable[[str, int, int], None]
"""Called as ``progress(stage, done, total)``; ``stage`` names the condition and text/probe set."""
PROBE_SEQ_LEN = 256
"""Probe prompts are short; they are cut to at most this many tokens."""


@dataclass(frozen=True)
class ProbeScore:
    """One probe set's scores under one condition (see :func:`unlearn_core.scoring.probes.probe_scores`)."""

    top1: float
    mean_logprob: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"top1": self.top1, "mean_logprob": self.mean_logprob, "n": self.n}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeScore:
        return cls(float(data["top1"]), float(data["mean_logprob"]), int(data["n"]))


@dataclass(frozen=True)
class ChoiceScore:
    """One multiple-choice probe set's scores under one condition, scored as lm-eval does
    (see :func:`unlearn_core.scoring.choices.choice_scores`)."""

    acc: float
    acc_norm: float
    acc_calibrated: float
    chance: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"acc": self.acc, "acc_norm": self.acc_norm, "acc_calibrated": self.acc_calibrated,
                "chance": self.chance, "n": self.n}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChoiceScore:
        return cls(float(data["acc"]), float(data["acc_norm"]), float(data["acc_calibrated"]), float(data["chance"]),
                   int(data["n"]))


KnowledgeScore = ProbeScore | ChoiceScore


def knowledge_score_from_dict(data: dict[str, Any]) -> KnowledgeScore:
    """A probe entry of a result: multiple-choice (``acc`` ...) or cloze/QA (``top1`` ...), by its keys."""
    return ChoiceScore.from_dict(data) if "acc" in data else ProbeScore.from_dict(data)


@dataclass
class ConditionScores:
    """One condition's numbers: perplexity per text set and scores per probe set, in measuring order."""

    perplexity: dict[str, float] = field(default_factory=dict)
    probes: dict[str, KnowledgeScore] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"perplexity": dict(self.perplexity), "probes": {k: v.to_dict() for k, v in self.probes.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConditionScores:
        return cls({k: float(v) for k, v in data["perplexity"].items()},
                   {k: knowledge_score_from_dict(v) for k, v in data["probes"].items()})


@dataclass
class EvaluationResult:
    """Every condition's scores, with per-condition details (token counts, timings) and the settings."""

    conditions: dict[str, ConditionScores] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    headline: dict[str, Any] | None = None
    command: str | None = None
    familiarity: dict[str, Any] | None = None
    """Per condition: the share of greedy continuations of HP prompts that use HP terms (and the continuations)."""
    attacks: dict[str, Any] | None = None
    """The attacks' result (``AttackResult.to_dict()``), when they were run."""

    def ratio(self, condition: str, texts: str) -> float:
        """A condition's perplexity on ``texts`` divided by the baseline's."""
        return self.conditions[condition].perplexity[texts] / self.conditions[BASELINE].perplexity[texts]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"conditions": {k: v.to_dict() for k, v in self.conditions.items()},
                               "details": self.details, "settings": self.settings}
        if self.headline is not None:
            out["headline"] = self.headline
        if self.command is not None:
            out["command"] = self.command
        for key in ("familiarity", "attacks"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluationResult:
        try:
            return cls({k: ConditionScores.from_dict(v) for k, v in data["conditions"].items()},
                       dict(data.get("details", {})), dict(data.get("settings", {})), data.get("headline"),
                       data.get("command"), data.get("familiarity"), data.get("attacks"))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"not an evaluation result ({exc.__class__.__name__}: {exc})") from None


@dataclass(frozen=True)
class MeasureOptions:
    """How conditions are scored: the token limits, and where status lines and progress go."""

    max_seq_len: int
    batch_tokens: int = DEFAULT_BATCH_TOKENS
    status: StatusFn | None = None
    progress: StageProgressFn | None = None


def measure_condition(
    lm: LoadedModel,
    condition: Condition,
    text_sets: Sequence[TextSet],
    probe_sets: Sequence[ProbeSet | Quiz],
    options: MeasureOptions,
) -> tuple[ConditionScores, dict[str, Any]]:
    """Score one condition on every text and probe set; returns the scores and details (counts, seconds)."""
    status, progress = options.status, options.progress
    max_seq_len, batch_tokens = options.max_seq_len, options.batch_tokens
    hooks = condition.hooks()
    scores = ConditionScores()
    detail: dict[str, Any] = {"n_latents": condition.n_latents, "perplexity": {}, "seconds": {}}
    for ts in text_sets:
        if status:
            status(f"{condition.name}: perplexity on {ts.name} ({len(ts)} texts)")
        t0 = time.perf_counter()
        res = perplexity(lm, ts.texts, hooks, max_seq_len, batch_tokens, _stage(progress, f"{condition.name} / {ts.name}"))
        scores.perplexity[ts.name] = res.perplexity
        detail["perplexity"][ts.name] = {"n_texts": res.n_texts, "n_tokens": res.n_tokens}
        detail["seconds"][ts.name] = round(time.perf_counter() - t0, 2)
    for ps in probe_sets:
        if status:
            status(f"{condition.name}: probes {ps.name} ({len(ps)} items)")
        stage = _stage(progress, f"{condition.name} / {ps.name}")
        limit = min(max_seq_len, PROBE_SEQ_LEN)
        if isinstance(ps, Quiz):
            cres = choice_scores(lm, ps, hooks, max_seq_len=limit, batch_tokens=batch_tokens, progress=stage)
            scores.probes[ps.name] = ChoiceScore(cres.acc, cres.acc_norm, cres.acc_calibrated, cres.chance, cres.n)
        else:
            pres = probe_scores(lm, ps, hooks, max_seq_len=limit, batch_tokens=batch_tokens, progress=stage)
            scores.probes[ps.name] = ProbeScore(pres.top1, pres.mean_logprob, pres.n)
    if condition.name == RANDOM_CONTROL:
        detail["random_latents"] = {s.sae.ref: list(s.latents) for s in condition.selections}
    return scores, detail


def measure_conditions(
    lm: LoadedModel,
    conditions: Sequence[Condition],
    text_sets: Sequence[TextSet],
    probe_sets: Sequence[ProbeSet | Quiz],
    options: MeasureOptions,
) -> EvaluationResult:
    """Score every condition. A condition that provably equals the baseline (nothing edited, error term kept:
    x + decode(f) - decode(f) = x, proven in tests/test_interventions.py) reuses the baseline's numbers."""
    result = EvaluationResult()
    for cond in conditions:
        if cond.same_as_baseline and cond.name != BASELINE and BASELINE in result.conditions:
            result.conditions[cond.name] = result.conditions[BASELINE]
            result.details[cond.name] = {"n_latents": 0, "identical_to": "baseline (error term kept)"}
            continue
        scores, detail = measure_condition(lm, cond, text_sets, probe_sets, options)
        result.conditions[cond.name] = scores
        result.details[cond.name] = detail
    return result


def selectivity(forget_ratio: float, retain_ratio: float) -> float | None:
    """ln(forget PPL ratio) / ln(retain PPL ratio): how much more the forget text is hurt than the retain text.

    None when retain perplexity did not rise (unbounded) or a ratio is not positive.
    """
    if retain_ratio <= 1.0 or forget_ratio <= 0:
        return None
    return math.log(forget_ratio) / math.log(retain_ratio)


def _stage(progress: StageProgressFn | None, stage: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(stage, done, total)
