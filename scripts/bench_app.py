"""App speed, measured in one run: cold start (first ever, conversion included), later start, warm Explore.

    python scripts/bench_app.py [--json docs/bench-app.json] [--skip-cold]

Each start is a fresh Python process running the real app (Streamlit's AppTest, no browser) until the Explore page
has rendered its latent tables for the study's 7 prompts x 3 layers on the offline default. "First ever" points
UNLEARN_CACHE_DIR at an empty folder, so the GGUF conversion and weight caching are included. Warm Explore is the
page re-run after the prompts change (a new forward pass, SAE encodes, rankings and explanations), the model
already loaded. Compare: with the page's defaults (DEFAULT_COMPARE_TEXTS texts x 256 tokens per set), the time to the first number
(the first batch) and to the whole set, baseline and the bundled example forget set ablated.
Warm search: the page re-run with a word typed in a layer's search box, and the library search alone.
Targets: first ever <= 90 s, later starts <= 15 s (issue 4); warm Explore and warm search <= 1 s (issue 15).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, time
t0 = float(sys.argv[1])
from streamlit.testing.v1 import AppTest
from unlearn_core.explain.explore import study_prompts
at = AppTest.from_file(sys.argv[2], default_timeout=900)
at.run()
assert not at.exception, [e.message for e in at.exception]
assert len(at.data_editor) == 3, "Explore did not render its 3 layer tables"
start = time.time() - t0
warm = []
prompts = study_prompts()
for i in range(4):
    at.session_state["explore_prompts"] = "\n".join(prompts[i % 7:] + prompts[: i % 7] if i % 2 else prompts[::-1])
    t = time.perf_counter()
    at.run()
    warm.append(time.perf_counter() - t)
    assert not at.exception and len(at.data_editor) == 3
# Warm search: the page re-run with a search typed in layer 12's search box (the page's own work included), and the
# library search alone; each word searched once cold (the board's context index is built on first use) first.
from unlearn_core.explain.dashboard_cache import find_dashboards
from unlearn_core.explain.search import search_contexts
from unlearn_core.models.presets import get_preset
from unlearn_core.saes.loading import load_sae
ref12 = get_preset("gemma-3-270m-offline").family().ref(12)
search_page, search_lib = [], []
board = find_dashboards(load_sae(ref12))
for word in ("Hogwarts", "Quidditch", "Voldemort", "Hogwarts"):
    at.text_input(key=f"explore_search_{ref12}").set_value(word)
    t = time.perf_counter()
    at.run()
    search_page.append(time.perf_counter() - t)
    assert not at.exception and len(at.data_editor) == 4
    t = time.perf_counter()
    search_contexts(board, word)
    search_lib.append(time.perf_counter() - t)
# Compare with the page's defaults: time to the first number (first batch) and to the full cell, baseline and
# ablated (the bundled example forget set at layers 5/9/12).
from app_support.resources import get_model
from unlearn_core.experiments.compare import (
    DEFAULT_COMPARE_SEQ_LEN,
    DEFAULT_COMPARE_TEXTS,
    comparison_conditions,
    perplexity_cell,
)
from unlearn_core.forget_set import load_feature_list
from unlearn_core.ablation.interventions import Intervention, LatentSelection
from unlearn_core.saes.loading import load_sae
from unlearn_core.data.texts import load_texts
lm = get_model("gemma-3-270m-offline", "cpu", "float32")
fl = load_feature_list(sys.argv[3])
sel = [LatentSelection(load_sae(e.sae), tuple(e.latent_ids)) for e in fl.saes]
conds = comparison_conditions(sel, Intervention(), per_layer=False, controls=())
texts = load_texts("wikitext2", DEFAULT_COMPARE_TEXTS)
compare = {}
for cond in conds:
    t = time.perf_counter()
    first = None
    for i, _ in enumerate(perplexity_cell(lm, cond, texts, DEFAULT_COMPARE_SEQ_LEN, batch_tokens=1024)):
        first = first if first is not None else time.perf_counter() - t
    compare[cond.name] = {"first_number_s": first, "cell_s": time.perf_counter() - t}
print(json.dumps({"start_s": start, "warm_explore_s": warm, "compare": compare, "search_page_s": search_page,
                  "search_s": search_lib}))
"""


def run_child(cache_dir: str | None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if cache_dir:
        env["UNLEARN_CACHE_DIR"] = cache_dir
    t0 = time.time()
    example = REPO / "feature_lists" / "example_gemma-3-270m-offline_harry-potter.json"
    out = subprocess.run([sys.executable, "-c", CHILD, str(t0), str(REPO / "app.py"), str(example)], env=env,
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"app run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="also write the numbers here")
    parser.add_argument("--skip-cold", action="store_true", help="skip the first-ever start (it converts the model)")
    args = parser.parse_args()
    results: dict = {}
    if not args.skip_cold:
        with tempfile.TemporaryDirectory(prefix="unlearn-cold-") as empty:
            cold = run_child(empty)
            results["first_ever_start_s"] = round(cold["start_s"], 1)
            again = run_child(empty)
            results["later_start_s"] = round(again["start_s"], 1)
            warm = again["warm_explore_s"]
    else:
        again = run_child(None)
        results["later_start_s"] = round(again["start_s"], 1)
        warm = again["warm_explore_s"]
    results["compare_wikitext2_default"] = {name: {k: round(v, 1) for k, v in cell.items()}
                                           for name, cell in again["compare"].items()}
    results["warm_explore_s"] = [round(w, 2) for w in warm]
    results["warm_explore_median_s"] = round(statistics.median(warm), 2)
    results["warm_search_page_s"] = [round(w, 2) for w in again["search_page_s"]]
    results["warm_search_page_median_s"] = round(statistics.median(again["search_page_s"][1:]), 2)
    results["search_s"] = [round(w, 4) for w in again["search_s"]]
    targets = {"first_ever_start_s": 90, "later_start_s": 15, "warm_explore_median_s": 1,
               "warm_search_page_median_s": 1}
    for key, limit in targets.items():
        if key in results:
            print(f"{key:24s} {results[key]:7.2f} s   target <= {limit} s   ({results[key] / limit:.2f} of the budget)")
    for name, cell in results["compare_wikitext2_default"].items():
        print(f"compare {name:20s} first number {cell['first_number_s']:5.1f} s, whole text set {cell['cell_s']:5.1f} s")
    results["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
