"""The Compare page's trade-off panel: a sweep's Pareto front (from ``python -m unlearn_core sweep``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from unlearn_core.experiments.plots import pareto_figure, parse_sweep
from unlearn_core.models.presets import REPO_ROOT

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
            result = parse_sweep(upload.getvalue(), upload.name)
        elif choice != "(none)":
            result = parse_sweep(files[choice].read_bytes(), str(files[choice]))
        else:
            return
    except (ValueError, OSError) as exc:
        st.error(f"Cannot show that sweep: {exc}")
        return
    if not result["points"]:
        st.info("That sweep has no points.")
        return
    st.plotly_chart(pareto_figure(result), key=Key.pareto_chart(choice, upload.name if upload else ""))
    rows = result["points"]
    if result.get("best") is not None:
        best = rows[result["best"]]
        st.success(f"Best within the retain budget: **{best['label']}** — HP PPL x{best['forget_ppl_ratio']:.2f}, "
                   f"WikiText-2 PPL x{best['retain_ppl_ratio']:.3f}, HP cloze {best['forget_top1_change']:+.0%}, "
                   f"general cloze {best['retain_top1_change']:+.0%}.")
    else:
        st.warning("No point of this sweep stayed within the retain budget.")
    table = pd.DataFrame([{k: r[k] for k in ("label", "forget_ppl_ratio", "retain_ppl_ratio", "selectivity",
                                              "forget_top1_change", "retain_top1_change", "forget_score",
                                              "within_budget") if k in r} for r in rows])
    st.dataframe(table, hide_index=True)
    if result.get("command"):
        st.caption(f"Made by `{result['command']}`")
