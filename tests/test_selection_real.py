"""Automated selection on the real offline model: `select` -> `evaluate` and `sweep` from the CLI, and the app's
"Suggest latents" button and trade-off panel. Statistics use 20k tokens (cached on disk, shared by these tests)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from apptest_helpers import open_app

from app_support.state import SESSION_KEY
from unlearn_core.cli import main
from unlearn_core.forget_set import load_feature_list

APP = Path(__file__).resolve().parent.parent / "app.py"
LAYERS = (5, 9, 12)  # the app's default layers: the CLI tests reuse the statistics the app test computes
SAE_ARGS = [a for layer in LAYERS for a in ("--sae", f"saes/gemma-3-270m/layer_{layer}_width_4k")]
pytestmark = pytest.mark.integration


@pytest.fixture
def small_probes(tmp_path):
    # named like the built-ins, so the headline treats them as the forget and retain probes
    hp = tmp_path / "hp-cloze.json"
    general = tmp_path / "general-cloze.json"
    hp.write_text(json.dumps([{"prompt": "Harry Potter's best friend is Ron", "answer": "Weasley"},
                              {"prompt": "The headmaster of Hogwarts is Albus", "answer": "Dumbledore"},
                              {"prompt": "Harry Potter's snowy owl is named", "answer": "Hedwig"}]))
    general.write_text(json.dumps([{"prompt": "The capital of France is", "answer": "Paris"},
                                   {"prompt": "The capital of Japan is", "answer": "Tokyo"}]))
    return str(hp), str(general)


def test_app_suggest_latents_then_recommended_intervention(real_lm, tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARN_FEATURE_LISTS_DIR", str(tmp_path))
    at = open_app(900)
    at.run()
    at.switch_page("pages/forget_set.py")
    at.run()
    at.select_slider(key="suggest_tokens").set_value(20_000)
    at.number_input(key="suggest_top").set_value(12)
    at.run()
    next(b for b in at.button if b.label == "Suggest latents").click()
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    fl = at.session_state[SESSION_KEY].forget_set
    assert [e.layer for e in fl.saes] == list(LAYERS)
    assert all(len(e.latents) == 12 for e in fl.saes)
    lat = fl.saes[0].latents[0]
    assert lat.stats.forget_freq > lat.stats.retain_freq
    assert "ratio rule: fires on" in lat.note
    assert any("Added 36 suggested latent(s)" in s.value for s in at.success)
    next(b for b in at.button if b.label == "Use the recommended intervention").click()
    at.run()
    assert at.session_state["mode"] == "clamp" and at.session_state["clamp_relative"] is True
    assert at.sidebar.checkbox(key="clamp_relative").value is True
    at.switch_page("pages/compare.py")
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    # the committed sweep's trade-off plot, and a bad sweep file refused with a reason
    at.selectbox(key="sweep_choice").set_value(at.selectbox(key="sweep_choice").options[1])
    at.run()
    assert any("Best within the retain budget" in s.value for s in at.success)
    at.file_uploader(key="sweep_upload").upload("sweep.json", b'{"points": 3}', "application/json")
    at.run()
    assert any("not a sweep result" in e.value for e in at.error)


def test_cli_select_then_evaluate_reports_headline(real_lm, tmp_path, small_probes, capsys):
    out = tmp_path / "suggested.json"
    assert main(["select", *SAE_ARGS, "--stats-tokens", "20000", "--top", "12", "--out", str(out)]) == 0
    fl = load_feature_list(out)
    assert [e.layer for e in fl.saes] == list(LAYERS)
    assert fl.intervention.relative is True
    assert fl.selection.forget_corpus == "hp-fanwiki-select"
    assert "select --sae" in fl.selection.command
    # an existing file is never replaced silently
    assert main(["select", *SAE_ARGS, "--stats-tokens", "20000", "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err

    report, result = tmp_path / "report.md", tmp_path / "result.json"
    rc = main(["evaluate", "--forget-set", str(out), "--texts", "hp-fanwiki", "wikitext2", "--max-texts", "3",
               "--max-seq-len", "64", "--probes", *small_probes, "--conditions", "baseline,ablated,random_control",
               "--json", str(result), "--report", str(report)])
    assert rc == 0
    data = json.loads(result.read_text())
    assert data["settings"]["intervention_settings"] == {"mode": "clamp", "value": 4.0, "relative": True,
                                                         "hook_site": "trained"}
    head = data["headline"]
    assert head["forget_texts"] == "hp-fanwiki" and head["retain_texts"] == "wikitext2"
    assert set(head["ablated"]) >= {"forget_ppl_ratio", "retain_ppl_ratio", "forget_top1_change"}
    assert head["ablated"]["forget_ppl_ratio"] > head["random_control"]["forget_ppl_ratio"]
    md = report.read_text()
    assert "## Headline (against baseline)" in md and "evaluate --forget-set" in md
    printed = capsys.readouterr().out
    assert "HP text perplexity" in printed


def test_cli_sweep_writes_report_plot_and_best_list(real_lm, tmp_path, small_probes):
    out_dir, best = tmp_path / "sweep", tmp_path / "best.json"
    rc = main(["sweep", "--sae", "saes/gemma-3-270m/layer_12_width_4k", "--stats-tokens", "20000", "--ns", "4", "8",
               "--interventions", "clamp:4x", "--max-forget-texts", "2", "--max-retain-texts", "2",
               "--max-seq-len", "48", "--forget-probes", small_probes[0], "--retain-probes", small_probes[1],
               "--retain-ppl-budget", "1.0", "--retain-probe-budget", "1.0", "--out-dir", str(out_dir),
               "--forget-quiz", "", "--retain-quiz", "", "--adjacent-quiz", "",  # quizzes: tests/test_selection.py
               "--write-best", str(best)])
    assert rc == 0
    result = json.loads((out_dir / "sweep.json").read_text())
    assert len(result["points"]) == 2 and result["best"] is not None
    assert set(result["controls"]) == {"random_control", "zero_ablation", "study_recipe"}
    assert "Best point within budget" in (out_dir / "sweep.md").read_text()
    assert (out_dir / "pareto.html").stat().st_size > 10_000
    if os.environ.get("UNLEARN_REQUIRE_BROWSER") == "1" or (out_dir / "pareto.png").exists():
        assert (out_dir / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fl = load_feature_list(best)
    assert [e.layer for e in fl.saes] == [12]
    assert len(fl.saes[0].latents) == result["points"][result["best"]]["n"]
