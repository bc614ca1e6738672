"""The forget/retain trade-off of a sweep as a plotly figure (shown in the app, written as HTML/PNG by the CLI)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

log = logging.getLogger(__name__)

_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "cross", "x", "star", "hexagon")


_REQUIRED = ("baseline", "points", "settings")
_POINT_KEYS = ("label", "n", "intervention", "layers", "forget_ppl_ratio", "retain_ppl_ratio", "forget_top1_change",
               "retain_top1_change", "forget_score", "within_budget")


def parse_sweep(raw: bytes, source: str) -> dict[str, Any]:
    """A sweep result from JSON bytes, with a clear error (ValueError) when it is not one."""
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{source} is not JSON: {exc}") from None
    if not isinstance(data, dict) or any(k not in data for k in _REQUIRED):
        raise ValueError(f"{source} is not a sweep result (expected keys {', '.join(_REQUIRED)}; write one with "
                         "`python -m unlearn_core sweep --out-dir DIR`)")
    points = data["points"]
    if not isinstance(points, list) or not all(isinstance(p, dict) and all(k in p for k in _POINT_KEYS) for p in points):
        raise ValueError(f"{source}: 'points' must be a list of sweep points with {', '.join(_POINT_KEYS)}")
    numeric = ("forget_ppl_ratio", "retain_ppl_ratio", "forget_top1_change", "retain_top1_change", "forget_score")
    if not all(isinstance(p[k], (int, float)) and not isinstance(p[k], bool) for p in points for k in numeric):
        raise ValueError(f"{source}: every point needs numbers for {', '.join(numeric)}")
    if not isinstance(data["settings"], dict):
        raise ValueError(f"{source}: 'settings' must be an object")
    if data.get("best") is not None and not (isinstance(data["best"], int) and 0 <= data["best"] < len(points)):
        raise ValueError(f"{source}: 'best' does not index a point")
    data.setdefault("pareto", [])
    if not isinstance(data["pareto"], list) or not all(isinstance(i, int) and 0 <= i < len(points) for i in data["pareto"]):
        raise ValueError(f"{source}: 'pareto' must list indices of points")
    controls = data.setdefault("controls", {})
    if not isinstance(controls, dict) or not all(
        isinstance(c, dict) and all(isinstance(c.get(k), (int, float)) for k in ("retain_ppl_ratio", "forget_score"))
        for c in controls.values()
    ):
        raise ValueError(f"{source}: 'controls' must map names to measured points")
    return data


def pareto_figure(result: dict[str, Any]) -> go.Figure:
    """Every sweep point (retain perplexity ratio vs forget score, one colour per intervention, one marker per layer
    set), the Pareto front, the retain budget, the best point and its controls."""
    rows = result["points"]
    settings = result["settings"]
    fig = go.Figure()
    interventions = list(dict.fromkeys(r["intervention"] for r in rows))
    layer_sets = list(dict.fromkeys(tuple(r["layers"]) for r in rows))
    for spec in interventions:
        for k, layers in enumerate(layer_sets):
            group = [r for r in rows if r["intervention"] == spec and tuple(r["layers"]) == tuple(layers)]
            if not group:
                continue
            group.sort(key=lambda r: r["n"])
            name = spec if len(layer_sets) == 1 else f"{spec}, L{'+'.join(map(str, layers))}"
            fig.add_trace(go.Scatter(
                x=[r["retain_ppl_ratio"] for r in group],
                y=[r["forget_score"] for r in group],
                mode="lines+markers",
                name=name,
                marker={"symbol": _SYMBOLS[k % len(_SYMBOLS)], "size": 9},
                line={"width": 1},
                text=[_hover(r) for r in group],
                hovertemplate="%{text}<extra></extra>",
            ))
    front = [rows[i] for i in result.get("pareto", [])]
    if front:
        fig.add_trace(go.Scatter(
            x=[r["retain_ppl_ratio"] for r in front], y=[r["forget_score"] for r in front], mode="lines",
            name="Pareto front", line={"color": "black", "dash": "dot", "width": 2}, hoverinfo="skip",
        ))
    controls = result.get("controls", {})
    x_max = max([r["retain_ppl_ratio"] for r in rows] + [1 + settings.get("retain_ppl_budget", 0.10)])
    off_scale = []
    for name, entry, symbol in (("random control (random latents, same size and strength)",
                                 controls.get("random_control"), "x-thin"),
                                ("zero-ablation (best point's latents)", controls.get("zero_ablation"), "circle-open"),
                                ("study recipe (best point's latents)", controls.get("study_recipe"), "star-triangle-up")):
        if entry and entry["retain_ppl_ratio"] > 2 * x_max:
            short = name.split(" (")[0]
            off_scale.append(f"{short}: Wiki PPL x{entry['retain_ppl_ratio']:.3g}, HP PPL x{entry['forget_ppl_ratio']:.3g}")
        elif entry:
            fig.add_trace(go.Scatter(
                x=[entry["retain_ppl_ratio"]], y=[entry["forget_score"]], mode="markers", name=name,
                marker={"symbol": symbol, "size": 13, "color": "grey", "line": {"width": 2, "color": "grey"}},
                text=[_hover(entry)], hovertemplate="%{text}<extra></extra>",
            ))
    if result.get("best") is not None:
        best = rows[result["best"]]
        fig.add_trace(go.Scatter(
            x=[best["retain_ppl_ratio"]], y=[best["forget_score"]], mode="markers", name=f"best: {best['label']}",
            marker={"size": 20, "color": "rgba(0,0,0,0)", "line": {"width": 3, "color": "crimson"}},
            hoverinfo="skip",
        ))
    if off_scale:
        fig.add_annotation(text="off the chart: " + "; ".join(off_scale), xref="paper",
                           yref="paper", x=0, y=-0.24, showarrow=False, align="left", font={"size": 11})
    budget = 1 + settings.get("retain_ppl_budget", 0.10)
    fig.add_vline(x=budget, line={"color": "crimson", "dash": "dash"},
                  annotation_text=f"retain budget x{budget:.2f}", annotation_position="bottom left")
    fig.add_hline(y=2.0, line={"color": "seagreen", "dash": "dash"},
                  annotation_text="forget score 2 (both targets met, if balanced)", annotation_position="top left")
    fig.update_layout(
        title="Forget vs retain: each point is a forget set size x intervention x layers",
        xaxis_title=f"retain cost: {settings.get('retain_texts', 'retain')} perplexity ratio (lower is better)",
        yaxis_title="forget score: ln(HP PPL ratio)/ln 2 + HP cloze drop/0.5",
        template="plotly_white",
        legend={"orientation": "v"},
        height=520,
        margin={"l": 60, "r": 20, "t": 60, "b": 110},
    )
    return fig


def _hover(r: dict[str, Any]) -> str:
    sel = r.get("selectivity")
    return (
        f"{r.get('label', '')}<br>HP PPL x{r['forget_ppl_ratio']:.3f}, Wiki PPL x{r['retain_ppl_ratio']:.4f}"
        f"<br>selectivity {'n/a' if sel is None else f'{sel:.1f}'}"
        f"<br>HP cloze {r['forget_top1_change']:+.1%}, general cloze {r['retain_top1_change']:+.1%}"
    )


def write_figure_image(fig: go.Figure, path: str | Path, width: int = 1000, height: int = 560) -> bool:
    """Write a PNG/SVG/PDF of ``fig`` through plotly's kaleido (which drives a local Chrome/Chromium).

    Returns False (and logs why) when image export is not available, so callers can still write the HTML.
    """
    try:
        fig.write_image(str(path), width=width, height=height)
    except Exception as exc:  # noqa: BLE001 - kaleido missing, no browser found, or the browser failed to start
        log.warning("could not write %s: %s", path, exc)
        return False
    return True
