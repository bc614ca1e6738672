"""End-to-end evaluation of a forget set: load what it needs, run every condition, return a self-describing result.

``__all__`` keeps :func:`resolve_intervention` here too (it lives in :mod:`.setup`, shared with ``attack``).

The result dict carries the settings that produced it (as SAEBench results do), so a number can always be traced
back to a command.
"""

from __future__ import annotations

__all__ = ["DEFAULT_PROBES", "DEFAULT_TEXTS", "EvaluationConfig", "format_table", "resolve_intervention",
           "run_evaluation", "write_json"]

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from unlearn_core.ablation.conditions import (
    ABLATED,
    BASELINE,
    RANDOM_CONTROL,
    RANDOM_MATCHED,
    RECONSTRUCTION_ONLY,
    build_conditions,
)
from unlearn_core.data.familiarity import familiarity_prompts
from unlearn_core.data.quizzes import load_knowledge_probes
from unlearn_core.data.texts import load_texts
from unlearn_core.experiments.controls import DEFAULT_MATCH_CORPUS, latent_profiles, matching_report
from unlearn_core.experiments.familiarity import DEFAULT_FAMILIARITY_TOKENS, familiarity
from unlearn_core.experiments.results import (
    EvaluationResult,
    MeasureOptions,
    StageProgressFn,
    StatusFn,
    measure_conditions,
)
from unlearn_core.experiments.setup import ForgetSetConfig, prepare_run, resolve_intervention, run_settings
from unlearn_core.models.loading import LoadedModel
from unlearn_core.scoring.batching import DEFAULT_MAX_SEQ_LEN
from unlearn_core.selection.gating import calibrated_conditions
from unlearn_core.selection.stats import DEFAULT_STATS_TOKENS

DEFAULT_TEXTS: tuple[str, ...] = ("wikitext2", "wikitext2-clean", "hp-fanwiki")
"""All test splits: WikiText-2 test rows and the 4 held-out fan-wiki articles (selection tunes on the others)."""
DEFAULT_PROBES: tuple[str, ...] = ("hp-quiz:test", "general-quiz:test", "adjacent-quiz:test", "hp-cloze:test",
                                   "general-cloze:test")
"""The test splits of the project's probe sets: forget (HP quiz and cloze), retain (general quiz and cloze) and
adjacent (other fiction). ``select`` and ``sweep`` only ever see the dev splits."""


@dataclass
class EvaluationConfig(ForgetSetConfig):
    """Everything that determines an evaluation's numbers (the forget set and intervention flags, see
    :class:`~unlearn_core.experiments.setup.ForgetSetConfig`, and what to measure)."""

    texts: Sequence[str] = DEFAULT_TEXTS
    probes: Sequence[str] = DEFAULT_PROBES
    max_texts: int | None = None
    conditions: Sequence[str] = (BASELINE, ABLATED, RECONSTRUCTION_ONLY, RANDOM_CONTROL)
    """The CLI adds ``random_control_matched`` (all of :data:`CONDITIONS`): it needs a statistics pass on retain text."""
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN
    match_corpus: str = DEFAULT_MATCH_CORPUS
    """Retain text the matched random control is matched on (its selection split, so ``select``'s cache serves)."""
    match_tokens: int = DEFAULT_STATS_TOKENS
    """Tokens of that text (``select``'s default, so its cached statistics are reused)."""
    familiarity: bool = False
    """Also generate greedy continuations of the test-split HP completion prompts and count HP terms."""
    familiarity_tokens: int = DEFAULT_FAMILIARITY_TOKENS
    attacks: bool = False
    """Also run the attacks (:mod:`unlearn_core.experiments.attacks`) on the HP quiz's test split."""
    attack_items: int | None = None
    """Use only the first N test questions in the attacks (None: all)."""
    probe_texts_per_class: int = 200
    extra: dict[str, Any] = field(default_factory=dict)


def run_evaluation(
    config: EvaluationConfig,
    lm: LoadedModel | None = None,
    status: StatusFn | None = None,
    progress: StageProgressFn | None = None,
) -> EvaluationResult:
    """Evaluate a forget set under the configured conditions.

    ``result.conditions[COND].perplexity[TEXTS]`` and ``result.conditions[COND].probes[PROBES]`` hold the
    numbers, ``result.settings`` the configuration, ``result.details`` token counts and timings;
    ``result.to_dict()`` is what ``evaluate --json`` writes.
    """
    started = time.perf_counter()
    run = prepare_run(config, lm, status)
    lm, selections, intervention = run.lm, run.selections, run.intervention
    profiles = None
    if RANDOM_MATCHED in config.conditions:
        if status:
            status(f"Latent statistics on {config.match_corpus} for the matched random control")
        profiles = latent_profiles(lm, [s.sae for s in selections], config.match_corpus, config.match_tokens,
                                   config.batch_tokens)
    conditions = build_conditions(config.conditions, selections, intervention, seed=config.seed, profiles=profiles)
    if intervention.gate is not None:  # a gated list: each random control's gate is calibrated on its own latents
        conditions = calibrated_conditions(lm, conditions, config.batch_tokens)
    text_sets = [load_texts(t, config.max_texts) for t in config.texts]
    probe_sets = [load_knowledge_probes(p) for p in config.probes]

    out = measure_conditions(lm, conditions, text_sets, probe_sets,
                             MeasureOptions(config.max_seq_len, config.batch_tokens, status, progress))
    if profiles is not None:
        out.details.setdefault(RANDOM_MATCHED, {})["matching"] = matching_report(conditions, profiles)
    if config.familiarity:
        if status:
            status("Familiarity: greedy continuations of the HP completion prompts (test split)")
        generated = [c for c in conditions if c.name != RECONSTRUCTION_ONLY]
        fam = familiarity(lm, generated, familiarity_prompts("test"), config.familiarity_tokens)
        out.familiarity = {name: score.to_dict() for name, score in fam.items()}
    if config.attacks:
        from unlearn_core.experiments.attacks import AttackConfig, run_attacks  # attacks builds on this module

        attack_config = AttackConfig(**{f.name: getattr(config, f.name) for f in fields(ForgetSetConfig)},
                                     max_items=config.attack_items, probe_texts_per_class=config.probe_texts_per_class)
        out.attacks = run_attacks(attack_config, lm=lm, status=status, progress=progress).to_dict()
    out.settings = run_settings(config, run)
    out.details["seconds_total"] = round(time.perf_counter() - started, 2)
    return out


_PROBE_COLUMNS = {"top1": (("top1", "top1"), ("mean_logprob", "logp")),
                  "acc": (("acc", "acc"), ("acc_calibrated", "acc_cal"))}


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of a :func:`run_evaluation` result: one row per condition."""
    conds = result["conditions"]
    if not conds:
        return "(no conditions)"
    first = next(iter(conds.values()))
    ppl_cols = list(first["perplexity"])
    probe_cols = list(first["probes"])
    headers = ["condition"] + [f"PPL {c}" for c in ppl_cols]
    metrics = [(p, m) for p in probe_cols for m in _PROBE_COLUMNS["acc" if "acc" in first["probes"][p] else "top1"]]
    headers += [f"{p} {label}" for p, (_, label) in metrics]
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
        row += [f"{entry['probes'][p][key]:.3f}" for p, (key, _) in metrics]
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
