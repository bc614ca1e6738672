"""The ``evaluate`` report: forget, retain, adjacent-fiction, attack and familiarity rows, each with its split.

Every number is the ablated forget set (or a control) against the untouched baseline on data that ``select`` and
``sweep`` never saw (the test splits), unless the result says otherwise: a row names the set it comes from, and a
set without a split suffix is marked "(no split)". Controls stand beside the forget set: the unmatched random
control (random latents, which fire on general text far more often than chosen ones) and the matched one
(random latents as rare on retain text and as strong as the chosen ones).
"""

from __future__ import annotations

from typing import Any

from unlearn_core.data.texts import TEXT_SPLITS
from unlearn_core.experiments.attack_report import attack_table
from unlearn_core.experiments.report import headline_targets_table, split_of
from unlearn_core.experiments.results import selectivity
from unlearn_core.experiments.sweep import forget_score

FORGET_TEXTS = ("hp-fanwiki", "hp-fanwiki:test")
RETAIN_TEXTS = ("wikitext2", "wikitext2:test")
FORGET_PROBES = ("hp-cloze:test", "hp-cloze")
RETAIN_PROBES = ("general-cloze:test", "general-cloze", "nq-open")
FORGET_QUIZZES = ("hp-quiz:test", "hp-quiz")
RETAIN_QUIZZES = ("general-quiz:test", "general-quiz")
ADJACENT_QUIZZES = ("adjacent-quiz:test", "adjacent-quiz")
"""Sets (by name: a built-in, or a file's stem) the headline reads, first found wins."""
COLUMNS = ("ablated", "random_control", "random_control_matched")
COLUMN_LABELS = {"ablated": "forget set", "random_control": "random control (unmatched)",
                 "random_control_matched": "random control (matched)"}


def _pick(names: list[str], preferred: tuple[str, ...]) -> str | None:
    return next((p for p in preferred if p in names), None)


def evaluation_headline(result: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers of an ``evaluate`` result for the forget set and the controls against ``baseline``.

    Perplexity ratios and selectivity (HP text, WikiText-2); cloze top-1 relative change; multiple-choice
    calibrated accuracy (``acc_calibrated``) in absolute points, with the baseline, chance and the value; the sets
    used and their splits. Missing sets are left out.
    """
    conds = result["conditions"]
    base = conds.get("baseline")
    if base is None:
        return {}
    texts, probes = list(base["perplexity"]), list(base["probes"])
    sets = {"forget_texts": _pick(texts, FORGET_TEXTS), "retain_texts": _pick(texts, RETAIN_TEXTS),
            "forget_probes": _pick(probes, FORGET_PROBES), "retain_probes": _pick(probes, RETAIN_PROBES),
            "forget_quiz": _pick(probes, FORGET_QUIZZES), "retain_quiz": _pick(probes, RETAIN_QUIZZES),
            "adjacent_quiz": _pick(probes, ADJACENT_QUIZZES)}
    out: dict[str, Any] = dict(sets)
    out["splits"] = {name: split_of(name, TEXT_SPLITS) for name in sets.values() if name}
    for name in COLUMNS:
        if name in conds:
            out[name] = _row(base, conds[name], sets)
    out["baseline"] = {f"{key}_acc": base["probes"][q]["acc_calibrated"] for key in ("forget_quiz", "retain_quiz",
                       "adjacent_quiz") if (q := sets[key])}
    if sets["forget_quiz"]:
        out["baseline"]["chance"] = base["probes"][sets["forget_quiz"]]["chance"]
    return out


def _row(base: dict[str, Any], entry: dict[str, Any], sets: dict[str, str | None]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    f_text, r_text = sets["forget_texts"], sets["retain_texts"]
    if f_text:
        row["forget_ppl_ratio"] = entry["perplexity"][f_text] / base["perplexity"][f_text]
    if r_text:
        row["retain_ppl_ratio"] = entry["perplexity"][r_text] / base["perplexity"][r_text]
    if f_text and r_text:
        row["selectivity"] = selectivity(row["forget_ppl_ratio"], row["retain_ppl_ratio"])
    for key, probe in (("forget_top1_change", sets["forget_probes"]), ("retain_top1_change", sets["retain_probes"])):
        if probe:
            b = base["probes"][probe]["top1"]
            row[key] = (entry["probes"][probe]["top1"] - b) / b if b else 0.0
    if "forget_ppl_ratio" in row and "forget_top1_change" in row:
        row["forget_score"] = forget_score(row["forget_ppl_ratio"], row["forget_top1_change"])
    for key in ("forget_quiz", "retain_quiz", "adjacent_quiz"):
        quiz = sets[key]
        if quiz:
            row[f"{key}_acc"] = entry["probes"][quiz]["acc_calibrated"]
            row[f"{key}_change"] = entry["probes"][quiz]["acc_calibrated"] - base["probes"][quiz]["acc_calibrated"]
    if sets["forget_quiz"]:
        row["forget_quiz_above_chance"] = row["forget_quiz_acc"] - entry["probes"][sets["forget_quiz"]]["chance"]
    return row


def evaluation_markdown(result: dict[str, Any], command: str | None = None) -> str:
    """A Markdown report of an ``evaluate`` result: settings, headline rows (forget, retain, adjacent, attacks,
    familiarity) for the forget set and its controls, and every raw number."""
    s = result.get("settings", {})
    h = result.get("headline") or evaluation_headline(result)
    lines = [f"# Evaluation of {s.get('forget_set_name', 'a forget set')}", ""]
    if command:
        lines += ["Produced by:", "", f"    {command}", ""]
    splits = h.get("splits", {})
    lines += [
        f"- model: {s.get('model')} (preset {s.get('preset')}), {s.get('device')}, {s.get('dtype')}",
        f"- intervention: {s.get('intervention')}",
        "- latents: " + ", ".join(f"{x['sae']} ({x['n_latents']})" for x in s.get("saes", [])),
        f"- texts: {', '.join(s.get('texts', []))} (max {s.get('max_texts') or 'all'} texts, "
        f"{s.get('max_seq_len')} tokens each); probes: {', '.join(s.get('probes', [])) or 'none'}",
        "- splits of the headline sets: " + (", ".join(f"{k} = **{v}**" for k, v in splits.items()) or "n/a"),
        "",
    ]
    columns = {COLUMN_LABELS[name]: h[name] for name in COLUMNS if name in h}
    if columns:
        lines += ["## Headline (against baseline)", ""]
        if h.get("baseline"):
            b = h["baseline"]
            lines += ["Baseline calibrated multiple-choice accuracy: " + ", ".join(
                f"{k.removesuffix('_acc').replace('_', ' ')} {v:.3f}" for k, v in b.items()) + ".", ""]
        lines += headline_targets_table(columns) + [""]
    if result.get("attacks"):
        lines += ["## Attacks: how much of the forgotten quiz accuracy comes back", ""]
        lines += attack_table(result["attacks"], markdown=True) + [""]
        lines += [f"- {k}: {v}" for k, v in result["attacks"].get("definitions", {}).items()] + [""]
    if result.get("familiarity"):
        lines += ["## Familiarity of greedy continuations (HP completion prompts, test split)", "",
                  "| condition | share with an HP term | share with a new HP term | HP terms per continuation |",
                  "|---|---|---|---|"]
        for name, fam in result["familiarity"].items():
            lines.append(f"| {name} | {fam['share']:.2f} | {fam['share_new_terms']:.2f} | {fam['mean_terms']:.2f} |")
        lines.append("")
    lines += _raw_numbers(result)
    return "\n".join(lines) + "\n"


def _raw_numbers(result: dict[str, Any]) -> list[str]:
    first = next(iter(result["conditions"].values()))
    headers = [f"PPL {t}" for t in first["perplexity"]]
    keys: list[tuple[str, str]] = []
    for name, probe in first["probes"].items():
        metric = "acc_calibrated" if "acc" in probe else "top1"
        keys.append((name, metric))
        headers.append(f"{name} {'acc (calibrated)' if metric == 'acc_calibrated' else 'top-1'}")
    lines = ["## All numbers", "", "| condition | " + " | ".join(headers) + " |", "|---|" + "---|" * len(headers)]
    for name, entry in result["conditions"].items():
        cells = [f"{v:.3f}" for v in entry["perplexity"].values()]
        cells += [f"{entry['probes'][p][m]:.3f}" for p, m in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines
