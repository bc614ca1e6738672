"""Conditional gating of an intervention (``Intervention.gate``) on the tiny model: identities, placement, specs,
feature-list round trips and calibration on dev text."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from tiny_models import logits, resid_at, tiny_sae

from unlearn_core.ablation.conditions import Condition
from unlearn_core.ablation.gating import DEFAULT_GATE_QUANTILE, Gate
from unlearn_core.ablation.interventions import Intervention, LatentSelection, intervention_hooks
from unlearn_core.errors import InputError
from unlearn_core.forget_set import FeatureList, SaeEntry, new_feature_list
from unlearn_core.forget_set.schema import Latent
from unlearn_core.selection.gating import GateCalibrator, calibrate_gate, calibrated_conditions, check_dev_corpus

TEXTS = ["the quick brown fox jumps over the lazy dog", "a stitch in time saves nine", "hello world, again"]
EDITS = [Intervention("zero"), Intervention("clamp", 3.0), Intervention("scale", 0.25),
         Intervention("clamp", 2.0, relative=True)]


def gated(intervention: Intervention, thresholds: dict[str, float]) -> Intervention:
    return dataclasses.replace(intervention, gate=Gate().with_thresholds(thresholds))




def selections():
    a, b = tiny_sae(0, seed=1), tiny_sae(2, seed=2)
    return [LatentSelection(a, (1, 5, 9, 30), (1.0, 2.0, 0.5, 1.5)), LatentSelection(b, (2, 3, 70), (1.0, 1.0, 3.0))]


@pytest.mark.parametrize("edit", EDITS, ids=lambda i: i.to_spec())
def test_infinite_threshold_is_the_baseline_and_minus_infinity_the_ungated_edit_exactly(tiny_lm, edit):
    sels = selections()
    hooks = {s.sae.hook_name: math.inf for s in sels}
    closed = logits(tiny_lm, intervention_hooks(sels, gated(edit, hooks)))
    assert torch.equal(closed, logits(tiny_lm))
    opened = logits(tiny_lm, intervention_hooks(sels, gated(edit, dict.fromkeys(hooks, -math.inf))))
    ungated = logits(tiny_lm, intervention_hooks(sels, edit))
    assert torch.equal(opened, ungated)
    assert not torch.equal(ungated, logits(tiny_lm))  # the edit does something, so the identities mean something


def test_the_gate_edits_exactly_the_positions_above_threshold_and_never_bos(tiny_lm):
    sel = selections()[0]
    sae = sel.sae.sae
    clean = resid_at(tiny_lm, sel.sae.hook_name)
    summed = sae.encode(clean)[..., list(sel.latents)].sum(dim=-1)
    threshold = float(summed[:, 1:].flatten().median())
    edit = Intervention("clamp", 3.0)
    seen_gated = resid_at(tiny_lm, sel.sae.hook_name, intervention_hooks([sel], gated(edit, {sel.sae.hook_name: threshold})))
    seen_full = resid_at(tiny_lm, sel.sae.hook_name, intervention_hooks([sel], edit))
    above = summed > threshold
    above[:, 0] = False  # BOS: never edited
    assert above.any() and (~above[:, 1:]).any()
    assert torch.equal(seen_gated[above], seen_full[above])
    assert torch.equal(seen_gated[~above], clean[~above])
    assert torch.equal(seen_gated[:, 0], clean[:, 0])


def test_the_gated_edit_keeps_the_error_term(tiny_lm):
    """Where the gate is open, x' - x is exactly the latent change decoded: the SAE's error term is kept."""
    sel = selections()[0]
    sae = sel.sae.sae
    edit = gated(Intervention("zero"), {sel.sae.hook_name: -math.inf})
    clean = resid_at(tiny_lm, sel.sae.hook_name)
    seen = resid_at(tiny_lm, sel.sae.hook_name, intervention_hooks([sel], edit))
    acts = sae.encode(clean[:, 1:])[..., list(sel.latents)]
    expected = clean[:, 1:] - acts @ sae.W_dec[list(sel.latents)]
    assert (seen[:, 1:] - expected).abs().max() <= 1e-5
    # and an empty selection under a gate changes nothing, with no threshold needed
    empty = [LatentSelection(sel.sae, ())]
    assert torch.equal(logits(tiny_lm, intervention_hooks(empty, gated(Intervention("clamp", 3.0), {}))), logits(tiny_lm))


def test_an_uncalibrated_gate_is_refused_when_hooks_are_built():
    with pytest.raises(InputError, match="calibrate"):
        intervention_hooks(selections(), Intervention.from_spec("clamp:3@gate"))


def test_specs_round_trip_and_bad_ones_are_refused():
    cases = {"clamp:4x@gate": ("clamp", True, DEFAULT_GATE_QUANTILE), "zero@gate:0.999": ("zero", False, 0.999),
             "scale:0.5@gate:0.9": ("scale", False, 0.9)}
    for spec, (mode, relative, q) in cases.items():
        iv = Intervention.from_spec(spec)
        assert (iv.mode, iv.relative, iv.gate.quantile) == (mode, relative, q)
        assert iv.to_spec() == spec
        assert Intervention.from_spec(iv.to_spec()) == iv
    assert Intervention.from_spec("clamp:4x").gate is None
    for bad in ("clamp:4x@gate:1.5", "clamp:4x@gate:0", "clamp:4x@gates", "clamp:4x@", "@gate", "clamp:4x@gate@gate"):
        with pytest.raises(InputError):
            Intervention.from_spec(bad)
    assert "summed activation" in Intervention.from_spec("clamp:4x@gate").describe()


def test_json_round_trip_and_old_interventions_unchanged():
    old = {"mode": "clamp", "value": 4.0, "relative": True, "hook_site": "trained"}
    assert Intervention.from_dict(old).to_dict() == old  # no "gate" key appears in an old list
    iv = gated(Intervention("clamp", 4.0, relative=True), {"blocks.5.hook_resid_post": 41.25, "blocks.9.hook_resid_post": 3.0})
    data = json.loads(json.dumps(iv.to_dict()))
    assert data["gate"]["thresholds"] == {"blocks.5.hook_resid_post": 41.25, "blocks.9.hook_resid_post": 3.0}
    assert Intervention.from_dict(data) == iv
    for bad in ({"quantile": 2}, {"thresholds": {"h": "x"}}, {"thresholds": [1]}, {"colour": 1}, "gate",
                {"tokens": 0}, {"corpus": ""}):
        with pytest.raises(InputError):
            Intervention.from_dict({**old, "gate": bad})


def test_a_gated_intervention_round_trips_through_a_feature_list(tmp_path):
    from unlearn_core.forget_set import load_feature_list, save_feature_list

    fl: FeatureList = new_feature_list("gated", "google/gemma-3-270m")
    fl.saes.append(SaeEntry("saes/gemma-3-270m/layer_5_width_4k", "blocks.5.hook_resid_post", 5, None,
                            [Latent(id=3, label=None, note=None)]))
    fl.intervention = gated(Intervention("clamp", 4.0, relative=True), {"blocks.5.hook_resid_post": 12.5})
    path = save_feature_list(fl, tmp_path / "gated.json")
    again = load_feature_list(path)
    assert again.intervention == fl.intervention
    assert json.loads(path.read_text())["intervention"]["gate"]["thresholds"] == {"blocks.5.hook_resid_post": 12.5}
    assert again.to_dict()["intervention"] == fl.to_dict()["intervention"]


def test_shipped_lists_load_unchanged():
    from pathlib import Path

    from unlearn_core.forget_set import load_feature_list

    for path in sorted((Path(__file__).resolve().parent.parent / "feature_lists").glob("*.json")):
        fl = load_feature_list(path)
        assert fl.intervention is None or fl.intervention.gate is None
        assert json.loads(json.dumps(fl.to_dict())) == json.loads(path.read_text())


def test_calibration_is_the_quantile_of_the_summed_activation_on_retain_text(tiny_lm):
    sels = selections()
    iv = calibrate_gate(tiny_lm, sels, Intervention.from_spec("clamp:3@gate:0.9"), texts=TEXTS)
    calibrator = GateCalibrator(tiny_lm, [s.sae.hook_name for s in sels], TEXTS)
    n_tokens = sum(len(t.encode()) for t in TEXTS)
    assert calibrator.n_tokens == n_tokens
    for sel in sels:
        summed = calibrator.summed_activation(sel)
        threshold = iv.gate.threshold_for(sel.sae.hook_name)
        assert threshold == float(torch.quantile(summed, 0.9, interpolation="higher"))
        assert float((summed > threshold).double().mean()) <= 0.1 + 1e-9
    assert calibrate_gate(tiny_lm, sels, Intervention("zero"), texts=TEXTS) == Intervention("zero")
    conds = calibrated_conditions(tiny_lm, [Condition("baseline"), Condition("g", tuple(sels),
                                                                               Intervention.from_spec("zero@gate"))])
    assert conds[0] == Condition("baseline") and conds[1].intervention.gate.calibrated
    # a random control under a list's calibrated gate gets thresholds for its own latents
    from unlearn_core.ablation.conditions import random_selections

    control = Condition("random_control", random_selections(sels, 0), conds[1].intervention)
    again = calibrated_conditions(tiny_lm, [conds[1], control])
    assert again[0] is conds[1]
    assert again[1].intervention.gate.thresholds != conds[1].intervention.gate.thresholds


@pytest.mark.parametrize("name", ["wikitext2", "wikitext2:test", "hp-fanwiki", "hp-fanwiki:test", "wikitext2-clean"])
def test_calibration_refuses_test_splits(name):
    with pytest.raises(InputError, match="dev"):
        check_dev_corpus(name)
    check_dev_corpus("wikitext2:dev")
    check_dev_corpus("wikitext2-train")


def test_a_sweep_calibrates_gated_points_on_their_own_latents(tiny_lm, tmp_path, monkeypatch):
    from unlearn_core.experiments.sweep import SweepConfig, run_sweep
    from unlearn_core.selection.rules import ScoredLatent

    monkeypatch.setenv("UNLEARN_CACHE_DIR", str(tmp_path / "cache"))
    forget, retain = tmp_path / "f.txt", tmp_path / "r.txt"
    forget.write_text("\n\n".join(TEXTS * 2))
    retain.write_text("\n\n".join(reversed(TEXTS * 2)))
    probes = tmp_path / "probes.json"
    probes.write_text(json.dumps([{"prompt": "The wizard", "answer": " cast"}, {"prompt": "The farmer", "answer": "p"}]))
    sels = selections()
    ranked = {s.sae.ref: [ScoredLatent(i, 1.0, 0.1, 0.0, 1.0, 1.0, 2.0) for i in s.latents] for s in sels}
    config = SweepConfig(ns=[3], interventions=["clamp:3x", "clamp:3x@gate:0.5"], forget_texts=str(forget),
                         retain_texts=str(retain), forget_probes=str(probes), retain_probes=str(probes), forget_quiz="",
                         retain_quiz="", adjacent_quiz="", max_forget_texts=4, max_retain_texts=4, max_seq_len=32,
                         retain_ppl_budget=100.0, retain_probe_budget=1.0)
    result = run_sweep(tiny_lm, [s.sae for s in sels], ranked, config)
    ungated, gated_point = result["points"]
    assert gated_point["intervention"] == "clamp:3x@gate:0.5"
    assert gated_point["measurement"] != ungated["measurement"]
    assert "random_control" in result["controls"]
