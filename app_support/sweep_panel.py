"""The Compare page's trade-off panel: a sweep's Pareto front (from ``python -m unlearn_core sweep``).

A sweep file may be uploaded, so everything in it is foreign: its field types are checked before anything is drawn,
its labels are escaped for Markdown and for plotly's pseudo-HTML, and its command is shown as code."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from unlearn_core.errors import UnlearnError
from unlearn_core.experiments.plots import pareto_figure, parse_sweep
from unlearn_core.models.presets import REPO_ROOT

from . import uploads
from .safe_text import md_escape
from .state import Key

SWEEPS_DIR = REPO_ROOT / "docs" / "sweeps"


def sweep_files() -> dict[str, Path]:
    """Committed sweeps (``docs/sweeps/<name>/sweep.json``) by name."""
    return {p.parent.name: p for p in sorted(SWEEPS_DIR.glob("*/sweep.json"))}


def render() -> None:
    st.header("Forget/retain trade-off")
    st.caption("Each point: the top-n suggested latents per layer under one intervention, against the baseline. "
               "Forget score = ln(HP PPL ratio)/ln 2 + HP cloze drop/0.5 (1 per headline target met). Run your own "
               "with `python -m unlearn_core sweep --out-dir DIR` and load its sweep.json here.")
    files = sweep_files()
    c1, c2 = st.columns(2)
    choice = c1.selectbox("Committed sweep", ["(none)", *files], key=Key.SWEEP_CHOICE)
    upload = c2.file_uploader("or a sweep.json", type=["json"], key=Key.SWEEP_UPLOAD)
    try:
        if upload is not None:
            result = uploads.decoded(upload, "sweep", _parse_for_display)
        elif choice != "(none)":
            result = _parse_for_display(files[choice].read_bytes(), str(files[choice]))
        else:
            return
    except (UnlearnError, ValueError, OSError) as exc:
        st.error(f"Cannot show that sweep: {md_escape(exc)}")
        return
    if not result["points"]:
        st.info("That sweep has no points.")
        return
    try:
        figure = pareto_figure(_plotly_safe(result))
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:  # a field this check does not cover
        st.error(f"Cannot show that sweep: a field has an unexpected type or value ({type(exc).__name__}: "
                 f"{md_escape(exc)})")
        return
    st.plotly_chart(figure, key=Key.pareto_chart(choice, upload.name if upload else ""))
    rows = result["points"]
    if result.get("best") is not None:
        best = rows[result["best"]]
        st.success(f"Best within the retain budget: **{md_escape(best['label'])}** — HP PPL "
                   f"x{best['forget_ppl_ratio']:.2f}, WikiText-2 PPL x{best['retain_ppl_ratio']:.3f}, HP cloze "
                   f"{best['forget_top1_change']:+.0%}, general cloze {best['retain_top1_change']:+.0%}.")
    else:
        st.warning("No point of this sweep stayed within the retain budget.")
    table = pd.DataFrame([{k: r[k] for k in ("label", "forget_ppl_ratio", "retain_ppl_ratio", "selectivity",
                                              "forget_top1_change", "retain_top1_change", "forget_score",
                                              "within_budget") if k in r} for r in rows])
    st.dataframe(table, hide_index=True)
    if result.get("command"):
        st.caption("Made by")
        st.code(result["command"], language="bash", wrap_lines=True)  # foreign text: never Markdown


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_for_display(raw: bytes, source: str) -> dict[str, Any]:
    """:func:`parse_sweep`, then the types of every field this panel and the figure read (ValueError naming the
    first wrong one): a sweep file is foreign input, and a wrong type must give a message, not a traceback."""
    result = parse_sweep(raw, source)
    for i, point in enumerate(result["points"]):
        where = f"{source}: point {i + 1}"
        wrong = next((key for key, ok in (
            ("label", isinstance(point["label"], str)),
            ("n", isinstance(point["n"], int) and not isinstance(point["n"], bool)),
            ("intervention", isinstance(point["intervention"], str)),
            ("layers", isinstance(point["layers"], list) and all(isinstance(x, int) for x in point["layers"])),
            ("selectivity", point.get("selectivity") is None or _is_number(point.get("selectivity"))),
            ("within_budget", isinstance(point["within_budget"], bool)),
        ) if not ok), None)
        if wrong is not None:
            raise ValueError(f"{where}: {wrong!r} has the wrong type ({type(point[wrong]).__name__})")
    settings = result["settings"]
    if "retain_ppl_budget" in settings and not _is_number(settings["retain_ppl_budget"]):
        raise ValueError(f"{source}: settings.retain_ppl_budget must be a number")
    if "retain_texts" in settings and not isinstance(settings["retain_texts"], str):
        raise ValueError(f"{source}: settings.retain_texts must be text")
    for name, entry in result["controls"].items():
        if "forget_ppl_ratio" in entry and not _is_number(entry["forget_ppl_ratio"]):
            raise ValueError(f"{source}: controls.{name}.forget_ppl_ratio must be a number")
    if "command" in result and result["command"] is not None and not isinstance(result["command"], str):
        raise ValueError(f"{source}: 'command' must be text")
    return result


def _plotly_safe(result: dict[str, Any]) -> dict[str, Any]:
    """A copy whose texts cannot act as plotly's pseudo-HTML (``<a href>``, ``<span style>``): labels,
    intervention names and settings texts with ``<``, ``>`` and ``&`` escaped."""
    def clean(value: Any) -> Any:
        return html.escape(value, quote=False) if isinstance(value, str) else value

    out = dict(result)
    out["points"] = [{k: clean(v) for k, v in p.items()} for p in result["points"]]
    out["settings"] = {k: clean(v) for k, v in result["settings"].items()}
    out["controls"] = {k: {kk: clean(vv) for kk, vv in v.items()} for k, v in result["controls"].items()}
    return out
