"""Latent statistics, selection rules, relative clamps, suggested lists, sweeps and reports (tiny random models)."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from tiny_models import tiny_sae

from unlearn_core.ablation.conditions import Condition, random_selections
from unlearn_core.ablation.interventions import Intervention, LatentSelection, intervened
from unlearn_core.errors import InputError
from unlearn_core.experiments.evaluate import EvaluationConfig, resolve_intervention
from unlearn_core.experiments.evaluation_report import evaluation_headline, evaluation_markdown
from unlearn_core.experiments.report import sweep_markdown, targets_met
from unlearn_core.experiments.sweep import (
    SweepConfig,
    forget_score,
    pareto_front,
    parse_layer_set,
    run_sweep,
    selectivity,
)
from unlearn_core.forget_set import load_feature_list, save_feature_list
from unlearn_core.forget_set.selections import reference_activations
from unlearn_core.scoring.batching import tokenize_with_bos
from unlearn_core.selection.rules import latent_scores, select_latents
from unlearn_core.selection.stats import LatentStats, cached_latent_stats, compute_latent_stats, stats_sequences
from unlearn_core.selection.suggest import SelectConfig, suggest, suggested_feature_list

FORGET = [f"The wizard {n} cast a spell at the castle of {n}." for n in ("Zed", "Quill", "Vex", "Jax", "Kip", "Wyn")]
RETAIN = [f"The farmer {n} planted corn near the river in {n}." for n in ("Ann", "Bob", "Cal", "Dee", "Eve", "Fay")]


def _stats(counts: list[int], n_tokens: int, act: float = 1.0) -> LatentStats:
    fire = torch.tensor(counts, dtype=torch.long)
    return LatentStats("sae", "blocks.1.hook_resid_post", n_tokens, 10, fire, fire.double() * act,
                       torch.full((len(counts),), act), torch.clamp(fire, max=10))


# ------------------------------------------------------------------------------------------------ statistics


def test_latent_stats_equal_brute_force(tiny_lm):
    saes = [tiny_sae(layer=1, seed=1), tiny_sae(layer=2, seed=2)]
    seqs = tokenize_with_bos(tiny_lm, FORGET + RETAIN, 40)
    stats = compute_latent_stats(tiny_lm, saes, seqs, batch_tokens=100)
    for s in saes:
        fire = torch.zeros(s.width, dtype=torch.long)
        total = torch.zeros(s.width, dtype=torch.float64)
        top = torch.zeros(s.width)
        texts = torch.zeros(s.width, dtype=torch.long)
        n = 0
        for seq in seqs:  # one sequence at a time, BOS dropped
            _, cache = tiny_lm.model.run_with_cache(torch.tensor([seq]), names_filter=[s.hook_name])
            f = s.sae.encode(cache[s.hook_name][0, 1:])
            fire += (f > 0).sum(0)
            total += f.double().sum(0)
            top = torch.maximum(top, f.max(0).values)
            texts += (f > 0).any(0)
            n += f.shape[0]
        got = stats[s.ref]
        assert got.n_tokens == n and got.n_texts == len(seqs)
        assert torch.equal(got.fire_count, fire)
        assert torch.equal(got.text_count, texts)
        torch.testing.assert_close(got.act_sum, total, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(got.act_max, top, rtol=1e-5, atol=1e-5)
        assert 0 < float(got.frequency.max()) <= 1
        active = got.fire_count > 0
        torch.testing.assert_close(got.mean_activation[active], (total / fire.clamp(min=1))[active])


def test_stats_sequences_window_long_texts_and_stop_at_the_budget(tiny_lm):
    text = "x" * 95
    seqs = stats_sequences(tiny_lm, [text, "short"], max_tokens=1000, max_seq_len=40)
    assert [len(s) for s in seqs] == [40, 40, 18, 6]  # 39 + 39 + 17 tokens of the long text, each window with BOS
    assert all(s[0] == tiny_lm.bos_token_id for s in seqs)
    capped = stats_sequences(tiny_lm, [text, "short"], max_tokens=50, max_seq_len=40)
    assert sum(len(s) - 1 for s in capped) == 50
    with pytest.raises(InputError):
        stats_sequences(tiny_lm, [text], max_tokens=0)


def test_stats_cache_is_reused_and_keyed_by_text_and_weights(tiny_lm, tmp_path, monkeypatch):
    import unlearn_core.selection.stats as ls

    sae = tiny_sae(layer=1, seed=3)
    seqs = tokenize_with_bos(tiny_lm, FORGET, 40)
    first = cached_latent_stats(tiny_lm, [sae], seqs, directory=tmp_path)
    assert len(list(tmp_path.glob("*.pt"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(ls, "compute_latent_stats", fail)
    again = cached_latent_stats(tiny_lm, [sae], seqs, directory=tmp_path)
    assert torch.equal(again[sae.ref].fire_count, first[sae.ref].fire_count)
    monkeypatch.undo()
    other_text = tokenize_with_bos(tiny_lm, RETAIN, 40)
    cached_latent_stats(tiny_lm, [sae], other_text, directory=tmp_path)
    with torch.no_grad():
        sae.sae.W_enc.add_(0.01)
    cached_latent_stats(tiny_lm, [sae], seqs, directory=tmp_path)
    files = list(tmp_path.glob("*.pt"))
    assert len(files) == 3
    for f in files:  # a damaged cache file is recomputed, not trusted
        f.write_bytes(b"garbage")
    again = cached_latent_stats(tiny_lm, [sae], seqs, directory=tmp_path)
    assert again[sae.ref].n_tokens == sum(len(s) - 1 for s in seqs)


# ------------------------------------------------------------------------------------------------ rules


def test_frequency_rule_is_saebench_rule():
    forget = _stats([50, 40, 30, 20, 0, 10], 1000)
    retain = _stats([20, 0, 5, 1, 0, 0], 1000)  # retain rates 2%, 0, 0.5%, 0.1%, 0, 0
    chosen = select_latents(forget, retain, top=10, method="frequency", retain_threshold=0.01)
    assert [c.id for c in chosen] == [1, 2, 3, 5]  # latent 0 fires on retain >= 1%; latent 4 never fires
    assert chosen[0].forget_freq == pytest.approx(0.04) and chosen[1].retain_freq == pytest.approx(0.005)
    assert [c.id for c in select_latents(forget, retain, top=2, method="frequency", retain_threshold=0.01)] == [1, 2]


def test_ratio_rule_prefers_specific_latents_and_respects_thresholds():
    # latent 0: common on both; 1: specific and common; 2: specific but rare; 3: below min_forget_freq
    forget = _stats([300, 200, 20, 2], 10_000)
    retain = _stats([250, 0, 0, 0], 10_000)
    scores = latent_scores(forget, retain, "ratio", retain_threshold=0.05, min_forget_freq=0.001)
    assert scores[1] > scores[2] > 0
    assert scores[1] > scores[0]
    assert scores[3] == -math.inf
    chosen = select_latents(forget, retain, top=5, method="ratio", retain_threshold=0.01, min_forget_freq=0.001)
    assert [c.id for c in chosen] == [1, 2]  # latent 0 fires on 2.5% of retain tokens: excluded at 1%
    assert "fires on 2.000% of forget tokens" in chosen[0].note("ratio")
    with pytest.raises(InputError):
        latent_scores(forget, retain, "nope")
    with pytest.raises(InputError):
        latent_scores(forget, retain, "ratio", retain_threshold=0)


# ------------------------------------------------------------------------------------------------ relative clamp


def test_relative_clamp_sets_each_latent_to_its_own_value(tiny_lm):
    sae = tiny_sae(layer=1, seed=4)
    seq = torch.tensor(tokenize_with_bos(tiny_lm, ["The wizard cast a spell."], 40))
    _, cache = tiny_lm.model.run_with_cache(seq, names_filter=[sae.hook_name])
    x = cache[sae.hook_name]
    feats = sae.sae.encode(x[0, 1:])
    latents = tuple(int(i) for i in torch.argsort((feats > 0).sum(0), descending=True)[:3])
    ref = (1.0, 2.5, 4.0)
    sel = LatentSelection(sae, latents, ref)
    captured = {}

    def grab(act, hook):
        captured["x"] = act.clone()

    hook = Condition("c", (sel,), Intervention("clamp", 2.0, relative=True)).hooks()
    with intervened(tiny_lm, [*hook, (sae.hook_name, grab)]) as model:
        model(seq)
    f = feats[:, list(latents)]
    target = torch.where(f > 0, -2.0 * torch.tensor(ref), f)
    expected = x[0, 1:] + (target - f) @ sae.sae.W_dec[list(latents)]
    torch.testing.assert_close(captured["x"][0, 1:], expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(captured["x"][0, 0], x[0, 0])  # BOS untouched

    # an empty selection (reconstruction only) needs no reference activations, even under a relative clamp
    empty = Condition("r", (LatentSelection(sae, ()),), Intervention("clamp", 2.0, relative=True)).hooks()
    with intervened(tiny_lm, [*empty, (sae.hook_name, grab)]) as model:
        model(seq)
    torch.testing.assert_close(captured["x"], x)
    with pytest.raises(InputError, match="reference activation"):
        Condition("c", (LatentSelection(sae, latents),), Intervention("clamp", 2.0, relative=True)).hooks()
    with pytest.raises(InputError):
        Intervention("zero", relative=True)
    with pytest.raises(InputError):
        LatentSelection(sae, latents, (1.0,))


def test_random_control_reuses_the_clamp_values():
    sae = tiny_sae(layer=1, d_sae=64, seed=5)
    sel = LatentSelection(sae, (1, 2, 3, 4), (1.0, 2.0, 3.0, 4.0))
    (rand,) = random_selections([sel], seed=7)
    assert not set(rand.latents) & set(sel.latents)
    assert sorted(rand.reference) == [1.0, 2.0, 3.0, 4.0]


# ------------------------------------------------------------------------------------------------ suggested lists


def _write_texts(tmp_path):
    forget = tmp_path / "forget.txt"
    retain = tmp_path / "retain.txt"
    forget.write_text("\n\n".join(FORGET * 3), encoding="utf-8")
    retain.write_text("\n\n".join(RETAIN * 3), encoding="utf-8")
    return str(forget), str(retain)


def test_suggested_list_round_trips_with_stats_and_intervention(tiny_lm, tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARN_CACHE_DIR", str(tmp_path / "cache"))
    forget, retain = _write_texts(tmp_path)
    saes = [tiny_sae(layer=1, seed=6), tiny_sae(layer=2, seed=7)]
    config = SelectConfig(forget=forget, retain=retain, method="ratio", top=5, retain_threshold=0.5,
                          min_forget_freq=0.0, stats_tokens=5000)
    chosen = suggest(tiny_lm, saes, config)
    assert all(1 <= len(v) <= 5 for v in chosen.values())
    fl = suggested_feature_list(tiny_lm, saes, chosen, config)
    for entry in fl.saes:
        for lat in entry.latents:
            assert set(lat.stats.to_dict()) >= {"forget_freq", "retain_freq", "forget_mean_act"}
            assert "forget tokens" in lat.note
    path = save_feature_list(fl, tmp_path / "suggested.json")
    loaded = load_feature_list(path)
    assert loaded.selection.preset == tiny_lm.preset.name
    assert loaded.intervention.to_dict() == {"mode": "clamp", "value": 4.0, "relative": True, "hook_site": "trained"}
    refs = [reference_activations(e) for e in loaded.saes]
    assert all(r is not None and len(r) == len(e.latents) for r, e in zip(refs, loaded.saes, strict=True))
    assert resolve_intervention(EvaluationConfig(forget_set=str(path)), loaded) == Intervention("clamp", 4.0, relative=True)
    explicit = resolve_intervention(EvaluationConfig(forget_set=str(path), mode="zero"), loaded)
    assert explicit == Intervention("zero")
    stronger = resolve_intervention(EvaluationConfig(forget_set=str(path), value=6.0), loaded)
    assert stronger == Intervention("clamp", 6.0, relative=True)
    study = resolve_intervention(EvaluationConfig(forget_set=str(path), hook_site="resid_pre"), loaded)
    assert study.hook_site == "resid_pre"
    loaded.intervention = None
    assert resolve_intervention(EvaluationConfig(forget_set=str(path)), loaded) == Intervention("zero")
    with pytest.raises(InputError, match="--value needs --mode"):
        resolve_intervention(EvaluationConfig(forget_set=str(path), value=3.0), loaded)
    with pytest.raises(InputError):
        Intervention.from_dict({"mode": "clamp", "value": "big"}, "x")
    with pytest.raises(InputError):
        Intervention.from_dict({"mode": "melt"}, "x")


def test_selection_refuses_when_nothing_qualifies(tiny_lm, tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARN_CACHE_DIR", str(tmp_path / "cache"))
    forget, _ = _write_texts(tmp_path)
    saes = [tiny_sae(layer=1, seed=6)]
    config = SelectConfig(forget=forget, retain=forget, top=5, stats_tokens=2000)  # same text: nothing is specific
    chosen = suggest(tiny_lm, saes, config)
    with pytest.raises(InputError, match="no latent passed"):
        suggested_feature_list(tiny_lm, saes, chosen, config)


# ------------------------------------------------------------------------------------------------ sweeps


def test_intervention_and_layer_specs():
    assert Intervention.from_spec("clamp:4x") == Intervention("clamp", 4.0, relative=True)
    assert Intervention.from_spec("clamp:10") == Intervention("clamp", 10.0)
    assert Intervention.from_spec("replace") == Intervention("replace", hook_site="resid_pre")
    assert Intervention.from_spec(" zero ") == Intervention("zero")
    assert Intervention.from_spec("clamp:.5x") == Intervention("clamp", 0.5, relative=True)
    for bad in ("clamp", "clamp:-1", "melt", "clamp:2y", "clamp:.", "scale:1.2.3", "clamp:"):
        with pytest.raises(InputError):
            Intervention.from_spec(bad)
    assert parse_layer_set("all", [12, 5]) == (5, 12)
    assert parse_layer_set("12+5", [5, 12]) == (5, 12)
    with pytest.raises(InputError):
        parse_layer_set("7", [5, 12])


def test_pareto_front_matches_brute_force():
    rng = random.Random(0)
    rows = [{"forget_score": rng.random(), "retain_ppl_ratio": 1 + rng.random()} for _ in range(40)]
    front = pareto_front(rows)
    for i, r in enumerate(rows):
        beaten = any(o["forget_score"] > r["forget_score"] and o["retain_ppl_ratio"] < r["retain_ppl_ratio"] for o in rows)
        assert (i in front) == (not beaten)
    costs = [rows[i]["retain_ppl_ratio"] for i in front]
    assert costs == sorted(costs)


def test_headline_math():
    assert selectivity(2.0, 1.0) is None
    assert selectivity(math.e**2, math.e**0.1) == pytest.approx(20)
    assert forget_score(2.0, -0.5) == pytest.approx(2.0)
    assert targets_met({"forget_ppl_ratio": 2.1, "retain_ppl_ratio": 1.2, "selectivity": None}) == {
        "forget_ppl_ratio": True, "retain_ppl_ratio": False, "selectivity": False}
    # forget perplexity up, retain perplexity not: unbounded selectivity meets the target
    assert targets_met({"forget_ppl_ratio": 2.5, "retain_ppl_ratio": 0.998, "selectivity": None})["selectivity"]


def test_sweep_on_a_tiny_model(tiny_lm, tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARN_CACHE_DIR", str(tmp_path / "cache"))
    forget, retain = _write_texts(tmp_path)
    probes = tmp_path / "probes.json"
    probes.write_text(json.dumps([{"prompt": "The wizard", "answer": " cast"}, {"prompt": "The farmer", "answer": "p"}]))
    quiz = tmp_path / "quiz.json"
    quiz.write_text(json.dumps([{"question": "Who casts?", "choices": ["wizard", "farmer"], "answer": 0},
                                {"question": "Who ploughs?", "choices": ["wizard", "farmer"], "answer": 1}]))
    saes = [tiny_sae(layer=1, seed=8), tiny_sae(layer=2, seed=9)]
    ranked = suggest(tiny_lm, saes, SelectConfig(forget=forget, retain=retain, top=6, retain_threshold=0.5,
                                                 min_forget_freq=0.0, stats_tokens=5000))
    config = SweepConfig(ns=[2, 6], interventions=["zero", "clamp:3x"], layer_sets=["all", "2"], forget_texts=forget,
                         retain_texts=retain, forget_probes=str(probes), retain_probes=str(probes),
                         forget_quiz=str(quiz), retain_quiz=str(quiz), adjacent_quiz="",
                         max_forget_texts=4, max_retain_texts=4, max_seq_len=32, retain_ppl_budget=10.0,
                         retain_probe_budget=1.0)
    result = run_sweep(tiny_lm, saes, ranked, config)
    assert {"forget_quiz_change", "retain_quiz_change"} <= set(result["points"][0])
    assert "adjacent_quiz_change" not in result["points"][0] and result["baseline"]["adjacent_quiz"] is None
    assert len(result["points"]) == 8
    base = result["baseline"]
    for row in result["points"]:
        m = row["measurement"]
        assert row["forget_ppl_ratio"] == pytest.approx(m["forget_ppl"] / base["forget_ppl"])
        assert row["within_budget"] == (row["retain_ppl_ratio"] <= 11.0)
        assert row["n_latents"] == row["n"] * len(row["layers"]) or row["n_latents"] < row["n"] * len(row["layers"])
    best = result["points"][result["best"]]
    assert best["forget_score"] == max(r["forget_score"] for r in result["points"] if r["within_budget"])
    assert set(result["controls"]) == {"random_control", "zero_ablation", "study_recipe"}
    json.dumps(result)  # JSON-ready
    md = sweep_markdown(result, "python -m unlearn_core sweep --x")
    assert "Best point within budget" in md and "random_control" in md and "--x" in md
    from unlearn_core.experiments.plots import pareto_figure

    fig = pareto_figure(result)
    assert any(t.name == "Pareto front" for t in fig.data)
    from unlearn_core.cli import main

    (tmp_path / "sw").mkdir()
    (tmp_path / "sw" / "sweep.json").write_text(json.dumps(result))
    assert main(["plot-sweep", str(tmp_path / "sw" / "sweep.json")]) == 0
    assert (tmp_path / "sw" / "pareto.html").stat().st_size > 10_000
    (tmp_path / "sw" / "bad.json").write_text("[1]")
    assert main(["plot-sweep", str(tmp_path / "sw" / "bad.json")]) == 2
    assert main(["plot-sweep", str(tmp_path / "sw" / "missing.json")]) == 2
    # the best point of a budget nobody meets: none
    strict = run_sweep(tiny_lm, saes, ranked, SweepConfig(**{**config.__dict__, "ns": [2], "interventions": ["clamp:1000x"],
                                                              "layer_sets": ["all"], "retain_ppl_budget": -1.0,
                                                              "retain_probe_budget": 0.0}))
    assert strict["best"] is None and strict["controls"] == {}
    assert "No point stayed within the retain budget" in sweep_markdown(strict)


def test_evaluation_report_has_headline_and_command():
    result = {
        "conditions": {
            "baseline": {"perplexity": {"wikitext2": 20.0, "hp-fanwiki": 10.0},
                         "probes": {"hp-cloze": {"top1": 0.5}, "general-cloze": {"top1": 0.8}}},
            "ablated": {"perplexity": {"wikitext2": 21.0, "hp-fanwiki": 25.0},
                        "probes": {"hp-cloze": {"top1": 0.2}, "general-cloze": {"top1": 0.78}}},
            "random_control": {"perplexity": {"wikitext2": 20.1, "hp-fanwiki": 10.1},
                               "probes": {"hp-cloze": {"top1": 0.5}, "general-cloze": {"top1": 0.8}}},
        },
        "settings": {"forget_set_name": "x", "saes": [], "texts": ["wikitext2", "hp-fanwiki"], "probes": []},
    }
    h = evaluation_headline(result)
    assert h["ablated"]["forget_ppl_ratio"] == pytest.approx(2.5)
    assert h["ablated"]["forget_top1_change"] == pytest.approx(-0.6)
    assert h["ablated"]["selectivity"] == pytest.approx(math.log(2.5) / math.log(1.05))
    md = evaluation_markdown(result, "python -m unlearn_core evaluate --forget-set x.json")
    assert "x2.500 ✓" in md and "-60.0% ✓" in md and "evaluate --forget-set x.json" in md


def test_sweep_files_are_validated_before_plotting():
    from unlearn_core.experiments.plots import parse_sweep

    for raw, reason in ((b"\xff\xfe", "not JSON"), (b"[1, 2]", "not a sweep result"), (b'{"points": 1}', "not a sweep"),
                        (b'{"baseline": {}, "settings": {}, "points": [{"label": "x"}]}', "'points' must be"),
                        (b'{"baseline": {}, "settings": {}, "points": [], "best": 3}', "'best' does not"),
                        (b'{"baseline": {}, "settings": {}, "points": [], "pareto": [99]}', "'pareto' must"),
                        (b'{"baseline": {}, "settings": [], "points": []}', "'settings' must")):
        with pytest.raises(ValueError, match=reason):
            parse_sweep(raw, "f.json")
    ok = parse_sweep(b'{"baseline": {}, "settings": {}, "points": []}', "f.json")
    assert ok["pareto"] == [] and ok["controls"] == {}


def test_select_and_sweep_refuse_bad_flags_before_loading_anything(tmp_path, capsys):
    from unlearn_core.cli import main

    out = str(tmp_path / "x.json")
    cases = [
        (["select", "--out", out, "--retain-threshold", "2"], "--retain-threshold must be in (0, 1]"),
        (["select", "--out", out, "--top", "0"], "--top must be >= 1"),
        (["select", "--out", out, "--forget", str(tmp_path / "missing.txt")], "neither a built-in text set"),
        (["sweep", "--out-dir", str(tmp_path / "s"), "--ns", "0"], "--ns must all be >= 1"),
        (["sweep", "--out-dir", str(tmp_path / "s"), "--interventions", "melt"], "cannot read intervention"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err
