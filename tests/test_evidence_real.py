"""The evidence pipeline end to end on the real offline model: `evaluate` with a multiple-choice file, both random
controls, familiarity and attacks in one run and one report (small sizes; the committed run is in docs/evidence/)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_real_model import _feature_list_with_local_sae

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent


def test_evaluate_reports_every_kind_of_evidence(tmp_path):
    quiz = tmp_path / "my_quiz.jsonl"
    quiz.write_text("\n".join(json.dumps(q) for q in [
        {"question": "What is the capital of France?", "choices": ["Berlin", "Paris", "Madrid", "Rome"], "answer": 1},
        {"question": "Which animal barks?", "choices": ["cat", "cow", "dog", "owl"], "answer": 2},
    ]))
    forget = _feature_list_with_local_sae(tmp_path)
    out, report = tmp_path / "result.json", tmp_path / "report.md"
    cmd = [sys.executable, "-m", "unlearn_core", "evaluate", "--forget-set", str(forget), "--mode", "clamp", "--value",
           "5", "--texts", "wikitext2", "hp-fanwiki", "--max-texts", "2", "--max-seq-len", "64", "--probes", str(quiz),
           "--match-tokens", "3000", "--attacks", "--familiarity", "--attack-items", "3", "--probe-texts-per-class", "4",
           "--familiarity-tokens", "4",
           "--json", str(out), "--report", str(report)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                          timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert list(res["conditions"]) == ["baseline", "ablated", "reconstruction_only", "random_control",
                                       "random_control_matched"]
    for entry in res["conditions"].values():
        assert set(entry["probes"]["my_quiz"]) == {"acc", "acc_norm", "acc_calibrated", "chance", "n"}
        assert entry["probes"]["my_quiz"]["n"] == 2 and entry["probes"]["my_quiz"]["chance"] == 0.25
    matching = res["details"]["random_control_matched"]["matching"]
    assert len(next(iter(matching.values()))["matched_latents"]) == 100
    assert set(res["familiarity"]) == {"baseline", "ablated", "random_control", "random_control_matched"}
    attacks = {row["attack"] for row in res["attacks"]["rows"]}
    assert {"plain", "paraphrase", "k-shot", "linear-probe", "hook-off"} <= attacks
    text = report.read_text()
    for part in ("## Attacks", "## Familiarity", "random control (matched)", "wikitext2 = **test**"):
        assert part in text, part
