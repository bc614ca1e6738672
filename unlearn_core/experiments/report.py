"""Headline numbers and Markdown reports for ``evaluate`` and ``sweep`` results, with the command that made them.

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

from unlearn_core.experiments.results import selectivity
from unlearn_core.experiments.sweep import forget_score

FORGET_TEXTS = ("hp-fanwiki",)
RETAIN_TEXTS = ("wikitext2",)
FORGET_PROBES = ("hp-cloze", "muse-knowmem-forget")
RETAIN_PROBES = ("general-cloze", "nq-open")
"""Probe sets (by name: a built-in, or a file's stem) the headline reads, first found wins."""
TARGETS = {
    "forget_top1_change": "<= -50%",
    "retain_top1_change": ">= -5%",
    "forget_ppl_ratio": ">= 2",
    "retain_ppl_ratio": "<= 1.10",
    "selectivity": ">= 10",
}


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as a user would type it again."""
    args = list(sys.argv[1:] if argv is None else argv)
    return "python -m unlearn_core " + " ".join(shlex.quote(a) for a in args)


def _pick(names: Sequence[str], preferred: Sequence[str]) -> str | None:
    for p in preferred:
        if p in names:
            return p
    return None


def evaluation_headline(result: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers of an ``evaluate`` result for ``ablated`` and ``random_control`` against ``baseline``.

    Uses the first forget/retain text and probe sets found in the result (``hp-fanwiki``/``wikitext2``,
    ``hp-cloze``/``general-cloze``); missing ones are left out.
    """
    conds = result["conditions"]
    base = conds.get("baseline")
    if base is None:
        return {}
    texts = list(base["perplexity"])
    probes = list(base["probes"])
    f_text, r_text = _pick(texts, FORGET_TEXTS), _pick(texts, RETAIN_TEXTS)
    f_probe, r_probe = _pick(probes, FORGET_PROBES), _pick(probes, RETAIN_PROBES)
    out: dict[str, Any] = {"forget_texts": f_text, "retain_texts": r_text, "forget_probes": f_probe, "retain_probes": r_probe}
    for name in ("ablated", "random_control"):
        if name not in conds:
            continue
        entry = conds[name]
        row: dict[str, Any] = {}
        if f_text:
            row["forget_ppl_ratio"] = entry["perplexity"][f_text] / base["perplexity"][f_text]
        if r_text:
            row["retain_ppl_ratio"] = entry["perplexity"][r_text] / base["perplexity"][r_text]
        if f_text and r_text:
            row["selectivity"] = selectivity(row["forget_ppl_ratio"], row["retain_ppl_ratio"])
        for key, probe in (("forget_top1_change", f_probe), ("retain_top1_change", r_probe)):
            if probe:
                b = base["probes"][probe]["top1"]
                row[key] = (entry["probes"][probe]["top1"] - b) / b if b else 0.0
        if "forget_ppl_ratio" in row and "forget_top1_change" in row:
            row["forget_score"] = forget_score(row["forget_ppl_ratio"], row["forget_top1_change"])
        out[name] = row
    return out


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
    }
    return {k: bool(check(row[k])) for k, check in checks.items() if k in row}


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "unbounded (retain PPL did not rise)" if key == "selectivity" else "n/a"
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
)


def headline_table(columns: dict[str, dict[str, Any]]) -> list[str]:
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
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {TARGETS[key]} |")
    return lines


def evaluation_markdown(result: dict[str, Any], command: str | None = None) -> str:
    """A Markdown report of an ``evaluate`` result: settings, headline numbers, and every raw number."""
    s = result.get("settings", {})
    h = result.get("headline") or evaluation_headline(result)
    lines = [f"# Evaluation of {s.get('forget_set_name', 'a forget set')}", ""]
    if command:
        lines += ["Produced by:", "", f"    {command}", ""]
    lines += [
        f"- model: {s.get('model')} (preset {s.get('preset')}), {s.get('device')}, {s.get('dtype')}",
        f"- intervention: {s.get('intervention')}",
        "- latents: " + ", ".join(f"{x['sae']} ({x['n_latents']})" for x in s.get("saes", [])),
        f"- texts: {', '.join(s.get('texts', []))} (max {s.get('max_texts') or 'all'} texts, "
        f"{s.get('max_seq_len')} tokens each); probes: {', '.join(s.get('probes', [])) or 'none'}",
        "",
    ]
    columns = {name: h[name] for name in ("ablated", "random_control") if name in h}
    if columns:
        lines += ["## Headline (against baseline)", ""]
        lines += headline_table(columns) + [""]
    lines += ["## All numbers", "", "| condition | " + " | ".join(_raw_headers(result)) + " |",
              "|---|" + "---|" * len(_raw_headers(result))]
    for name, entry in result["conditions"].items():
        cells = [f"{v:.3f}" for v in entry["perplexity"].values()]
        cells += [f"{p['top1']:.3f}" for p in entry["probes"].values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _raw_headers(result: dict[str, Any]) -> list[str]:
    first = next(iter(result["conditions"].values()))
    return [f"PPL {t}" for t in first["perplexity"]] + [f"{p} top-1" for p in first["probes"]]


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
        lines += headline_table(columns) + [""]
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
