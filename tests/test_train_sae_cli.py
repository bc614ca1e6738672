"""The training command end to end on the real offline model, in a smoke configuration (seconds of training)."""

from __future__ import annotations

import json

import pytest
from sae_lens import SAE

from unlearn_core import cli
from unlearn_core.explain.dashboards import Dashboards


@pytest.mark.integration
def test_train_sae_smoke_run_ships_loadable_saes_with_cards(real_lm, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("unlearn_core.training.build.load_model", lambda *a, **k: real_lm)
    argv = ["train-sae", "--layers", "5", "9", "--tokens", "3000", "--context", "64", "--width", "256", "--k", "16",
            "--epochs", "2", "--batch-size", "256", "--warm-up-steps", "2", "--out", str(tmp_path / "saes"),
            "--work-dir", str(tmp_path / "work"), "--quality-tokens", "300", "--ce-tokens", "120"]
    assert cli.main(argv) == 0
    table = capsys.readouterr().out
    assert "layer_5_width_256" in table and "layer_9_width_256" in table
    for layer in (5, 9):
        folder = tmp_path / "saes" / f"layer_{layer}_width_256"
        sae = SAE.load_from_disk(folder)
        assert sae.cfg.architecture() == "jumprelu" and sae.cfg.metadata.hook_name == f"blocks.{layer}.hook_resid_post"
        quality = json.loads((folder / "quality.json").read_text())
        assert quality["ce_tokens"] == 120 and quality["ce_zero"] > quality["ce_clean"]
        training = json.loads((folder / "training.json").read_text())
        assert training["command"].startswith("python -m unlearn_core train-sae --layers 5 9")
        assert training["corpus"]["mix"] == {"gutenberg": 0.45, "wikitext2": 0.3, "hp-fanwiki": 0.25}
        board = Dashboards.load(folder / "dashboards.npz")
        assert board.width == 256 and board.meta["n_tokens"] == training["tokens_in_cache"]
    # a second run finds everything done and retrains nothing
    assert cli.main(argv) == 0
    assert "already shipped" in capsys.readouterr().err
