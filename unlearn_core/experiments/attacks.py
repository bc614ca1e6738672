"""Attacks on a forget set: can the forgotten Harry Potter knowledge be recovered from the edited model?

The HP quiz's test split is scored under ``baseline``, ``ablated`` and ``random_control`` (the same conditions as
``evaluate``), asked plainly and under each attack:

* ``paraphrase`` - each item's indirect wording without the names, same choices;
* ``k-shot`` - k true question/answer pairs from the quiz's dev split before every question (one seeded draw shared
  by all items, never an item of the attacked quiz);
* ``translation`` - each item in another language (one row per language);
* ``linear-probe`` - a logistic regression on the residual stream after the deepest edited layer, telling HP text
  from other text (see :mod:`unlearn_core.experiments.linear_probe`);
* ``hook-off`` - the edit removed: the unhooked model, i.e. the baseline.

The fraction of the forgotten accuracy an attack recovers is (ablated under the attack - ablated plain) /
(baseline plain - ablated plain), ``None`` when the edit forgot (almost) nothing (denominator <= 0.02); the same
with ``random_control`` in place of ``ablated`` beside it. For the probe: (ablated AUROC - 0.5) / (baseline
AUROC - 0.5), the share of HP-detectability that survives the edit.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from unlearn_core.ablation.conditions import ABLATED, BASELINE, RANDOM_CONTROL, Condition, build_conditions
from unlearn_core.ablation.interventions import Intervention, LatentSelection
from unlearn_core.data.quizzes import Quiz, load_quiz, paraphrased, translated
from unlearn_core.errors import InputError
from unlearn_core.experiments.linear_probe import (
    PROBE_MAX_SEQ_LEN,
    ProbeResult,
    ProbeTexts,
    probe_texts,
    probe_under_hooks,
)
from unlearn_core.experiments.results import PROBE_SEQ_LEN, StageProgressFn, StatusFn
from unlearn_core.experiments.setup import ForgetSetConfig, prepare_run, run_settings
from unlearn_core.models.loading import LoadedModel
from unlearn_core.scoring.batching import DEFAULT_BATCH_TOKENS
from unlearn_core.scoring.choices import QUIZ_TEMPLATE, ChoiceResult, accuracies, choice_loglikelihoods
from unlearn_core.selection.gating import calibrated_conditions

PLAIN = "plain"
ATTACKS: tuple[str, ...] = ("paraphrase", "k-shot", "translation", "linear-probe", "hook-off")
ATTACK_CONDITIONS: tuple[str, ...] = (BASELINE, ABLATED, RANDOM_CONTROL)
EDITED: tuple[str, ...] = (ABLATED, RANDOM_CONTROL)
HEADLINE_METRIC = "acc_calibrated"
QUIZ_METRICS: tuple[str, ...] = ("acc_calibrated", "acc")
MIN_FORGOTTEN = 0.02
HOOK_OFF_NOTE = ("Removing the hooks restores the model: this edit is an inference-time filter, not a change of the "
                 "weights; deployment must keep the hooks on.")


@dataclass
class AttackConfig(ForgetSetConfig):
    """Everything that determines an attack run's numbers: the forget set and intervention flags (as ``evaluate``'s,
    see :class:`~unlearn_core.experiments.setup.ForgetSetConfig`) and the attacks."""

    quiz: str = "hp-quiz:test"
    shots_from: str = "hp-quiz:dev"
    shots: int = 3
    languages: Sequence[str] = ("fr", "es")
    max_items: int | None = None
    probe_texts_per_class: int = 200
    attacks: Sequence[str] = ATTACKS
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AttackRow:
    """One attack's numbers: per condition every metric measured, and the fraction recovered per metric."""

    attack: str
    data: str
    """Which split(s) the numbers come from."""
    metric: str
    """The headline metric (a key of each ``scores[condition]``)."""
    scores: dict[str, dict[str, float]]
    recovered: dict[str, dict[str, float | None]]
    """Per metric, per edited condition (``ablated``, ``random_control``): the fraction recovered."""
    n: int
    note: str = ""

    def headline(self, condition: str) -> float:
        return self.scores[condition][self.metric]

    def headline_recovered(self, condition: str) -> float | None:
        return self.recovered[self.metric][condition]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AttackResult:
    """Every attack's row, with details (shots used, timings) and the settings that produced them."""

    rows: list[AttackRow] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    command: str | None = None

    def row(self, attack: str) -> AttackRow:
        return next(r for r in self.rows if r.attack == attack)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rows": [r.to_dict() for r in self.rows], "details": self.details,
                               "settings": self.settings, "definitions": definitions()}
        if self.command is not None:
            out["command"] = self.command
        return out


@dataclass(frozen=True)
class QuizVariant:
    """One way of asking the quiz: which items (positions in the plain quiz), with which prompt template."""

    name: str
    quiz: Quiz
    positions: tuple[int, ...]
    template: str = QUIZ_TEMPLATE
    data: str = ""


def fraction_recovered(attacked: float, plain: float, baseline: float, min_forgotten: float = MIN_FORGOTTEN) -> float | None:
    """(attacked - plain) / (baseline - plain): how much of what the edit removed the attack brings back;
    ``None`` when the edit removed at most ``min_forgotten`` (nothing to recover). Not clipped."""
    forgotten = baseline - plain
    if forgotten <= min_forgotten + 1e-9:  # accuracies are fractions: 0.52 - 0.5 must count as 0.02
        return None
    return (attacked - plain) / forgotten


def quiz_row(
    attack: str, data: str, attacked: dict[str, ChoiceResult], plain: dict[str, ChoiceResult], note: str = ""
) -> AttackRow:
    """A quiz attack's row from per-condition accuracies under the attack and on the plain questions (same items)."""
    scores = {c: {m: float(getattr(r, m)) for m in QUIZ_METRICS} for c, r in attacked.items()}
    recovered = {m: {c: fraction_recovered(getattr(attacked[c], m), getattr(plain[c], m), getattr(plain[BASELINE], m))
                     for c in EDITED if c in attacked} for m in QUIZ_METRICS}
    return AttackRow(attack, data, HEADLINE_METRIC, scores, recovered, attacked[BASELINE].n, note)


def hook_off_row(plain: dict[str, ChoiceResult], data: str) -> AttackRow:
    """Hooks removed: every condition runs the unhooked model, so it scores the baseline (nothing is re-run)."""
    return quiz_row("hook-off", data, {c: plain[BASELINE] for c in plain}, plain, HOOK_OFF_NOTE)


def probe_row(results: dict[str, ProbeResult], data: str) -> AttackRow:
    """The linear probe's row: accuracy and AUROC per condition; recovered = (AUROC - 0.5) / (baseline AUROC - 0.5)."""
    scores = {c: {"auroc": r.auroc, "accuracy": r.accuracy} for c, r in results.items()}
    base = results[BASELINE]
    recovered = {m: {c: fraction_recovered(getattr(results[c], m), 0.5, getattr(base, m)) for c in EDITED if c in results}
                 for m in ("auroc", "accuracy")}
    return AttackRow("linear-probe", data, "auroc", scores, recovered, base.n_test,
                     "share of HP-detectability (AUROC above chance) that survives the edit")


def kshot_template(pool: Quiz, attacked: Quiz, k: int, seed: int = 0) -> tuple[str, tuple[str, ...]]:
    """The prompt template with ``k`` true QA pairs drawn (seeded) from ``pool`` before the question, and their ids.

    Only dev items qualify (items marked ``split: test`` never do) and never an item of the attacked quiz (same id or
    same question), so no question sees itself. Braces in the shots are escaped for ``str.format``.
    """
    if k < 1:
        raise InputError("--shots must be at least 1")
    ids = {i.id for i in attacked.items if i.id is not None}
    questions = {i.question for i in attacked.items}
    candidates = [i for i in pool.items
                  if i.split != "test" and (i.id is None or i.id not in ids) and i.question not in questions]
    if len(candidates) < k:
        raise InputError(f"{pool.name} has {len(candidates)} dev items that are not in {attacked.name}; {k} shots need {k}")
    shots = random.Random(seed).sample(candidates, k)
    prefix = "".join(f"Question: {s.question}\nAnswer: {s.choices[s.answer]}\n\n" for s in shots)
    escaped = prefix.replace("{", "{{").replace("}", "}}")
    return escaped + QUIZ_TEMPLATE, tuple(s.id or s.question for s in shots)


def quiz_variants(quiz: Quiz, attacks: Sequence[str], languages: Sequence[str],
                  kshot: tuple[str, str] | None = None) -> list[QuizVariant]:
    """The plain quiz and each attack's variant. ``kshot`` = (template, where the shots come from)."""
    everything = tuple(range(len(quiz.items)))
    out = [QuizVariant(PLAIN, quiz, everything, data=quiz.name)]
    if "paraphrase" in attacks:
        where = tuple(i for i, item in enumerate(quiz.items) if "paraphrase" in item.extra)
        out.append(QuizVariant("paraphrase", paraphrased(quiz), where, data=f"{quiz.name}, paraphrased"))
    if "k-shot" in attacks and kshot is not None:
        out.append(QuizVariant("k-shot", quiz, everything, kshot[0], f"{quiz.name}, shots from {kshot[1]}"))
    if "translation" in attacks:
        for lang in languages:
            where = tuple(i for i, item in enumerate(quiz.items) if lang in item.extra.get("translations", {}))
            variant = translated(quiz, lang)
            if not variant.items:
                available = sorted({lg for item in quiz.items for lg in item.extra.get("translations", {})})
                raise InputError(f"quiz {quiz.name} has no translations into {lang!r} (it has: {', '.join(available) or 'none'})")
            out.append(QuizVariant(f"translation ({lang})", variant, where, data=f"{quiz.name}, in {lang}"))
    for v in out:
        assert [quiz.items[i].id for i in v.positions] == [item.id for item in v.quiz.items]
    return out


def measure_attacks(
    lm: LoadedModel,
    conditions: Sequence[Condition],
    variants: Sequence[QuizVariant],
    attacks: Sequence[str],
    probe: tuple[ProbeTexts, str] | None = None,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    status: StatusFn | None = None,
    progress: StageProgressFn | None = None,
) -> tuple[list[AttackRow], dict[str, Any]]:
    """Score every variant (one batched pass each) and the probe under each condition; the rows and timings.

    ``variants[0]`` must be the plain quiz; ``probe`` = (texts, hook name to read).
    """
    lls: dict[str, dict[str, list]] = {c.name: {} for c in conditions}
    seconds: dict[str, dict[str, float]] = {c.name: {} for c in conditions}
    probes: dict[str, ProbeResult] = {}
    for cond in conditions:
        hooks = cond.hooks()
        for v in variants:
            if status:
                status(f"{cond.name}: {v.name} ({len(v.quiz)} questions)")
            t0 = time.perf_counter()
            lls[cond.name][v.name] = choice_loglikelihoods(lm, v.quiz, hooks, PROBE_SEQ_LEN, batch_tokens,
                                                           _stage(progress, f"{cond.name} / {v.name}"), v.template)
            seconds[cond.name][v.name] = round(time.perf_counter() - t0, 2)
        if probe is not None:
            if status:
                n_texts = len(probe[0].train_texts) + len(probe[0].test_texts)
                status(f"{cond.name}: linear probe at {probe[1]} ({n_texts} texts)")
            t0 = time.perf_counter()
            probes[cond.name] = probe_under_hooks(lm, probe[0], probe[1], hooks, batch_tokens=batch_tokens,
                                                  progress=_stage(progress, f"{cond.name} / linear probe"))
            seconds[cond.name]["linear-probe"] = round(time.perf_counter() - t0, 2)

    plain = variants[0]

    def attacked(v: QuizVariant) -> dict[str, ChoiceResult]:
        return {c: accuracies(v.quiz, lls[c][v.name]) for c in lls}

    def plain_on(v: QuizVariant) -> dict[str, ChoiceResult]:  # the plain questions, on the variant's items
        items = Quiz(plain.quiz.name, tuple(plain.quiz.items[i] for i in v.positions), plain.quiz.source)
        return {c: accuracies(items, [lls[c][PLAIN][i] for i in v.positions]) for c in lls}

    rows = []
    for v in variants:
        rows.append(quiz_row(v.name, v.data, attacked(v), plain_on(v)))
    if probe is not None:
        rows.append(probe_row(probes, f"train {probe[0].sources['train_1']} vs {probe[0].sources['train_0']}; "
                                      f"test {probe[0].sources['test_1']} vs {probe[0].sources['test_0']}"))
    if "hook-off" in attacks:
        rows.append(hook_off_row(attacked(plain), f"{plain.data}, hooks removed"))
    return rows, {"seconds": seconds}


def run_attacks(
    config: AttackConfig,
    lm: LoadedModel | None = None,
    status: StatusFn | None = None,
    progress: StageProgressFn | None = None,
) -> AttackResult:
    """Run the configured attacks against a forget set; every input is checked before the model loads.

    ``result.rows`` holds one :class:`AttackRow` per attack (the plain questions first), ``result.settings`` the
    configuration as ``evaluate`` records it; ``result.to_dict()`` is what ``attack --json`` writes.
    """
    plan = plan_attacks(config)  # validates flags and loads the quizzes before anything slow happens
    run = prepare_run(config, lm, status)
    result = attack_selections(run.lm, run.selections, run.intervention, config, plan, status, progress)
    result.settings = {**run_settings(config, run), "conditions": list(ATTACK_CONDITIONS),
                       "headline_metric": HEADLINE_METRIC}
    return result


@dataclass(frozen=True)
class AttackPlan:
    """The quiz variants and probe texts an attack run scores (loaded and checked up front)."""

    quiz: Quiz
    variants: tuple[QuizVariant, ...]
    shot_ids: tuple[str, ...]
    texts: ProbeTexts | None


def plan_attacks(config: AttackConfig) -> AttackPlan:
    """Check the attack flags and load the quiz variants and the probe texts."""
    unknown = [a for a in config.attacks if a not in ATTACKS]
    if unknown:
        raise InputError(f"unknown attack(s) {unknown}; choose from {list(ATTACKS)}")
    if len(set(config.languages)) != len(config.languages) or ("translation" in config.attacks and not config.languages):
        raise InputError("--languages needs at least one language code, each once")
    quiz = load_quiz(config.quiz, max_items=config.max_items)
    kshot, shot_ids = None, ()
    if "k-shot" in config.attacks:
        template, shot_ids = kshot_template(load_quiz(config.shots_from), quiz, config.shots, config.seed)
        kshot = (template, config.shots_from)
    variants = quiz_variants(quiz, config.attacks, config.languages, kshot)
    texts = probe_texts(config.probe_texts_per_class, config.seed) if "linear-probe" in config.attacks else None
    return AttackPlan(quiz, tuple(variants), tuple(shot_ids), texts)


def attack_selections(
    lm: LoadedModel,
    selections: Sequence[LatentSelection],
    intervention: Intervention,
    config: AttackConfig,
    plan: AttackPlan | None = None,
    status: StatusFn | None = None,
    progress: StageProgressFn | None = None,
) -> AttackResult:
    """The attacks against already loaded selections (what the Compare page runs on the forget set it holds)."""
    started = time.perf_counter()
    plan = plan or plan_attacks(config)
    conditions = build_conditions(ATTACK_CONDITIONS, selections, intervention, seed=config.seed)
    if intervention.gate is not None:  # the random control's gate, calibrated on its own latents
        conditions = calibrated_conditions(lm, conditions, config.batch_tokens)
    probe_hook = f"blocks.{max(s.sae.layer for s in selections)}.hook_resid_post" if selections else None
    probe = (plan.texts, probe_hook) if plan.texts is not None and probe_hook is not None else None
    rows, details = measure_attacks(lm, conditions, plan.variants, config.attacks, probe, config.batch_tokens, status,
                                    progress)
    details |= {"shots": list(plan.shot_ids), "quiz_items": len(plan.quiz), "probe_hook": probe_hook,
                "probe_max_seq_len": PROBE_MAX_SEQ_LEN, "quiz_max_seq_len": PROBE_SEQ_LEN,
                "random_latents": {s.sae.ref: list(s.latents) for c in conditions if c.name == RANDOM_CONTROL
                                   for s in c.selections},
                "seconds_total": round(time.perf_counter() - started, 2)}
    return AttackResult(rows, details)


def definitions() -> dict[str, str]:
    """What each reported number means (written into the JSON and the report)."""
    return {
        "fraction_recovered": "(ablated accuracy under the attack - ablated accuracy on the plain questions) / "
                              f"(baseline accuracy on the plain questions - ablated accuracy on the plain questions), on "
                              f"the same items; n/a (nothing was forgotten) when the denominator is <= {MIN_FORGOTTEN}",
        "fraction_recovered_random_control": "the same with the random control in place of ablated",
        "linear_probe_fraction": "(ablated AUROC - 0.5) / (baseline AUROC - 0.5): how much HP-detectability survives",
        "acc_calibrated": "highest log-likelihood of ' choice' after the question minus after 'Answer:' (headline)",
        "acc": "highest summed log-likelihood of ' choice' after the question",
        "hook-off": HOOK_OFF_NOTE,
    }


def _stage(progress: StageProgressFn | None, stage: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(stage, done, total)
