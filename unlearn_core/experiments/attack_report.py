"""Tables and the Markdown report of an attack run (``AttackResult.to_dict()``): what ``attack`` prints and writes,
and the attack rows of the ``evaluate`` report."""

from __future__ import annotations

from typing import Any

from unlearn_core.ablation.conditions import BASELINE
from unlearn_core.experiments.attacks import ATTACK_CONDITIONS, EDITED, HEADLINE_METRIC, HOOK_OFF_NOTE, definitions

_NA = {"linear-probe": "n/a: baseline probe at chance"}


def attack_table(result: dict[str, Any], metric: str | None = None, markdown: bool = False) -> list[str]:
    """Rows x (baseline / ablated / random control, fraction recovered for each edit) of an ``AttackResult.to_dict()``;
    ``metric`` None: each row's headline metric, else that quiz metric (the probe keeps AUROC)."""
    headers = ["attack", "data", "metric", "baseline", "ablated", "random control", "recovered (ablated)",
               "recovered (random control)"]
    table = []
    for row in result["rows"]:
        m = metric if metric in row["scores"][BASELINE] else row["metric"]
        na = _NA.get(row["attack"], "n/a: nothing was forgotten")
        fractions = [na if (f := row["recovered"][m].get(c)) is None else f"{f:.0%}" for c in EDITED]
        table.append([row["attack"], row["data"], m, *(f"{row['scores'][c][m]:.3f}" for c in ATTACK_CONDITIONS), *fractions])
    if markdown:
        return ["| " + " | ".join(headers) + " |", "|---" * len(headers) + "|"] + ["| " + " | ".join(r) + " |" for r in table]
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(headers)]
    lines = [headers, ["-" * w for w in widths], *table]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in lines]


def attack_markdown(result: dict[str, Any], command: str | None = None) -> str:
    """A Markdown report of an ``AttackResult.to_dict()``: the command, the settings, both tables, the definitions."""
    s, d = result.get("settings", {}), result.get("details", {})
    lines = [f"# Attacks on {s.get('forget_set_name', 'a forget set')}", ""]
    if command:
        lines += ["Produced by:", "", f"    {command}", ""]
    lines += [f"- model: {s.get('model')} (preset {s.get('preset')}), {s.get('device')}, {s.get('dtype')}",
              f"- intervention: {s.get('intervention')}",
              "- latents: " + ", ".join(f"{x['sae']} ({x['n_latents']})" for x in s.get("saes", [])),
              f"- quiz: {s.get('quiz')} ({d.get('quiz_items')} items); languages: {', '.join(s.get('languages', []))}",
              f"- k-shot: {s.get('shots')} shots from {s.get('shots_from')} ({', '.join(d.get('shots', [])) or 'none'})",
              f"- linear probe: {d.get('probe_hook')}, up to {s.get('probe_texts_per_class')} texts per class",
              f"- seed: {s.get('seed')} (random control, shots, probe texts)",
              "", f"## Can the forgotten knowledge be recovered? ({HEADLINE_METRIC})", "",
              *attack_table(result, markdown=True), "", "## The same with acc", "",
              *attack_table(result, "acc", markdown=True), "", "## Definitions", ""]
    lines += [f"- **{k}**: {v}" for k, v in result.get("definitions", definitions()).items()]
    lines += ["", "## Hook-off", "", HOOK_OFF_NOTE]
    return "\n".join(lines) + "\n"
