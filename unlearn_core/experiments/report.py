"""Headline targets, number formats and the ``sweep`` report (the ``evaluate`` report: :mod:`.evaluation_report`).

The headline compares a forget set against the baseline (error term kept unless the settings say otherwise):

* forget perplexity ratio (Harry Potter text) and retain perplexity ratio (WikiText-2);
* selectivity = ln(forget PPL ratio) / ln(retain PPL ratio);
* relative change of top-1 accuracy on forget probes (HP cloze) and retain probes (general cloze);
* the same for the same-size random-latent control.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from typing import Any

TARGETS = {
    "forget_top1_change": "<= -50%",
    "retain_top1_change": ">= -5%",
    "forget_ppl_ratio": ">= 2",
    "retain_ppl_ratio": "<= 1.10",
    "selectivity": ">= 10",
    "forget_quiz_above_chance": "<= +0.05 (within 5 points of chance)",
    "retain_quiz_change": ">= -0.03 (3 points)",
    "adjacent_quiz_change": ">= -0.03 (3 points)",
}


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as a user would type it again."""
    args = list(sys.argv[1:] if argv is None else argv)
    return "python -m unlearn_core " + " ".join(shlex.quote(a) for a in args)


def split_of(name: str, text_splits: dict[str, str] | None = None) -> str:
    """``dev``, ``test`` or ``no split`` for a set name: ``NAME:dev``/``NAME:test`` or a built-in text set's split."""
    if name.endswith((":dev", ":test")):
        return name.rpartition(":")[2]
    return (text_splits or {}).get(name, "no split")


def targets_met(row: dict[str, Any]) -> dict[str, bool]:
    """Which headline targets a row meets (only for the numbers it has).

    Selectivity is unbounded (met) when the forget perplexity rose and the retain perplexity did not.
    """
    unbounded = row.get("retain_ppl_ratio", 2.0) <= 1.0 and row.get("forget_ppl_ratio", 0.0) > 1.0
    checks = {
        "forget_top1_change": lambda v: v <= -0.5,
        "retain_top1_change": lambda v: v >= -0.05,
        "forget_ppl_ratio": lambda v: v >= 2.0,
        "retain_ppl_ratio": lambda v: v <= 1.10,
        "selectivity": lambda v: unbounded if v is None else v >= 10,
        "forget_quiz_above_chance": lambda v: v <= 0.05,
        "retain_quiz_change": lambda v: v >= -0.03,
        "adjacent_quiz_change": lambda v: v >= -0.03,
    }
    return {k: bool(check(row[k])) for k, check in checks.items() if k in row}


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "unbounded (retain PPL did not rise)" if key == "selectivity" else "n/a"
    if key.endswith("_quiz_change") or key.endswith("_above_chance"):
        return f"{value:+.3f}"
    if key.endswith("_quiz_acc"):
        return f"{value:.3f}"
    if key.endswith("_change"):
        return f"{value:+.1%}"
    if key.endswith("_ratio"):
        return f"x{value:.3f}"
    return f"{value:.2f}"


_ROWS = (
    ("forget_ppl_ratio", "HP text perplexity"),
    ("retain_ppl_ratio", "WikiText-2 perplexity"),
    ("selectivity", "selectivity ln(PPL_HP ratio)/ln(PPL_Wiki ratio)"),
    ("forget_top1_change", "HP cloze top-1 (relative)"),
    ("retain_top1_change", "general cloze top-1 (relative)"),
    ("forget_quiz_acc", "HP quiz, calibrated accuracy"),
    ("forget_quiz_above_chance", "HP quiz: points above chance"),
    ("forget_quiz_change", "HP quiz: change (points)"),
    ("retain_quiz_change", "general quiz: change (points)"),
    ("adjacent_quiz_change", "adjacent-fiction quiz: change (points)"),
)


def headline_targets_table(columns: dict[str, dict[str, Any]]) -> list[str]:
    """A Markdown table: one row per headline number, one column per condition, plus the target."""
    names = list(columns)
    lines = ["| number | " + " | ".join(names) + " | target |", "|---|" + "---|" * len(names) + "---|"]
    for key, label in _ROWS:
        if not any(key in col for col in columns.values()):
            continue
        cells = []
        for name in names:
            col = columns[name]
            if key not in col:
                cells.append("")
                continue
            met = targets_met(col).get(key)
            mark = "" if name != names[0] else (" ✓" if met else " ✗")
            cells.append(_fmt(key, col[key]) + mark)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {TARGETS.get(key, '')} |")
    return lines


def sweep_markdown(result: dict[str, Any], command: str | None = None) -> str:
    """A Markdown report of a sweep: the best point with its controls, the Pareto front, and every point."""
    s = result["settings"]
    b = result["baseline"]
    lines = ["# Forget/retain sweep", ""]
    if command:
        lines += ["Produced by:", "", f"    {command}", ""]
    lines += [
        f"- model: {s['model']} (preset {s['preset']}); SAEs: {', '.join(s['saes'])}",
        f"- selection: {s.get('extra', {}).get('selection', 'see settings')}",
        f"- forget: {s['forget_texts']} perplexity ({s['max_forget_texts']} texts x {s['max_seq_len']} tokens), "
        f"{s['forget_probes']} top-1; retain: {s['retain_texts']} perplexity ({s['max_retain_texts']} texts), "
        f"{s['retain_probes']} top-1",
        f"- retain budget: perplexity +{s['retain_ppl_budget']:.0%}, probe top-1 -{s['retain_probe_budget']:.0%} relative",
        f"- baseline: forget PPL {b['forget_ppl']:.3f}, retain PPL {b['retain_ppl']:.3f}, "
        f"forget top-1 {b['forget_top1']:.3f}, retain top-1 {b['retain_top1']:.3f}",
        f"- {len(result['points'])} points in {result['seconds']:.0f} s",
        "",
    ]
    best = result.get("best")
    if best is None:
        lines += ["**No point stayed within the retain budget.**", ""]
    else:
        row = result["points"][best]
        lines += [f"## Best point within budget: {row['label']} ({row['n_latents']} latents)", ""]
        columns = {"selected": row, **{k: v for k, v in result.get("controls", {}).items()}}
        lines += headline_targets_table(columns) + [""]
        lines += ["`random_control`: as many random latents per SAE, under the same intervention (a relative clamp "
                  "reuses the chosen latents' values). `zero_ablation`: the same latents zero-ablated, error term "
                  "kept. `study_recipe`: the same latents with the reference study's mechanics (zero-ablate, replace "
                  "the activation by the SAE reconstruction, hooked at resid_pre).", ""]
    lines += ["## Every point", "", "| point | latents | HP PPL | Wiki PPL | selectivity | HP cloze | general cloze | "
              "forget score | in budget | Pareto |", "|---|---|---|---|---|---|---|---|---|---|"]
    front = set(result.get("pareto", []))
    for i, r in enumerate(result["points"]):
        lines.append(
            f"| {r['label']} | {r['n_latents']} | {_fmt('forget_ppl_ratio', r['forget_ppl_ratio'])} | "
            f"{_fmt('retain_ppl_ratio', r['retain_ppl_ratio'])} | {_fmt('selectivity', r['selectivity'])} | "
            f"{_fmt('forget_top1_change', r['forget_top1_change'])} | {_fmt('retain_top1_change', r['retain_top1_change'])} | "
            f"{r['forget_score']:.2f} | {'yes' if r['within_budget'] else 'no'} | {'*' if i in front else ''} |"
        )
    return "\n".join(lines) + "\n"
