"""Explore statistics, comparison conditions and cell keys, progressive perplexity and forget-set edits, on a tiny
random model (the mechanics the app pages are built on)."""

from __future__ import annotations

import dataclasses
import math
import threading

import pytest
import torch
from tiny_models import make_tiny_model, tiny_sae

from unlearn_core.ablation.conditions import ABLATED, BASELINE, RANDOM_CONTROL, RECONSTRUCTION_ONLY
from unlearn_core.ablation.gating import Gate
from unlearn_core.ablation.interventions import Intervention, LatentSelection
from unlearn_core.data.texts import TextSet
from unlearn_core.errors import FeatureListError, InputError
from unlearn_core.experiments.compare import (
    comparison_conditions,
    condition_key,
    generation_cell,
    perplexity_cell,
    same_as_baseline,
    text_set_key,
)
from unlearn_core.experiments.results import selectivity
from unlearn_core.explain.explore import explore, prepare_prompts, split_prompts
from unlearn_core.forget_set import (
    add_latents,
    check_model_matches,
    content_signature,
    feature_list_from_bytes,
    feature_list_json,
    new_feature_list,
    parse_latent_ids,
    remove_latents,
)
from unlearn_core.scoring.batching import tokenize_with_bos
from unlearn_core.scoring.perplexity import iter_perplexity, perplexity

PROMPTS = ["Harry waved his wand.", "The Roman Empire fell.", "Bread, milk and eggs."]


@pytest.fixture(scope="module")
def lm():
    return make_tiny_model(seed=5)


@pytest.fixture(scope="module")
def saes():
    return [tiny_sae(layer=0, seed=1), tiny_sae(layer=2, seed=2)]


def dense_features(lm, sae, prompts):
    """Brute force: run each prompt alone with run_with_cache and encode every non-BOS token."""
    out = []
    for p in prompts:
        ids = tokenize_with_bos(lm, [p])[0]
        _, cache = lm.model.run_with_cache(torch.tensor([ids]), names_filter=[sae.hook_name])
        out.append(sae.sae.encode(cache[sae.hook_name][0, 1:]))
    return out


def test_explore_statistics_match_brute_force(lm, saes):
    result = explore(lm, saes, PROMPTS)
    for sae in saes:
        per_prompt = dense_features(lm, sae, PROMPTS)
        feats = torch.cat(per_prompt)
        assert [len(t) for t in result.tokens] == [f.shape[0] for f in per_prompt]
        for by, score in (("max", feats.max(0).values), ("mean", feats.mean(0)), ("frequency", (feats > 0).float().mean(0))):
            top = result.top_latents(sae.ref, k=5, by=by)
            expected = torch.argsort(score, descending=True, stable=True)[:5].tolist()
            assert [s.latent for s in top] == expected, by
        best = result.top_latents(sae.ref, k=1, by="max")[0]
        assert best.max_activation == pytest.approx(float(feats[:, best.latent].max()), rel=1e-5)
        assert best.mean_activation == pytest.approx(float(feats[:, best.latent].mean()), rel=1e-5)
        assert best.n_prompts == sum(int((f[:, best.latent] > 0).any()) for f in per_prompt)
        values = result.token_values(sae.ref, best.latent)
        for vals, f in zip(values, per_prompt, strict=True):
            assert vals == pytest.approx(f[:, best.latent].tolist(), rel=1e-5, abs=1e-6)
        # one prompt's ranking only sees that prompt
        one = result.top_latents(sae.ref, k=3, by="max", prompt=1)
        assert [s.latent for s in one] == torch.argsort(per_prompt[1].max(0).values, descending=True, stable=True)[:3].tolist()


def test_explore_runs_one_forward_stopped_at_the_deepest_layer(lm, saes):
    calls = []
    handle = lm.model.blocks[2].register_forward_hook(lambda *a: calls.append("block2"))
    try:
        explore(lm, saes[:1], PROMPTS)  # layer 0 only: blocks 1-2 never run
        assert calls == []
        explore(lm, saes, PROMPTS)
        assert calls == ["block2"]  # both layers from a single (batched) forward
    finally:
        handle.remove()


def test_explore_input_errors(lm, saes):
    with pytest.raises(InputError, match="at least one prompt"):
        prepare_prompts(lm, ["", "   "])
    with pytest.raises(InputError, match="at least one SAE"):
        explore(lm, [], PROMPTS)
    prepared = prepare_prompts(lm, ["x" * 50_000])
    assert len(prepared.token_ids[0]) == lm.n_ctx  # truncated to the model context, BOS first
    assert prepared.token_ids[0][0] == lm.bos_token_id
    assert "only its first" in prepared.notices[0]
    result = explore(lm, saes, prepared)
    with pytest.raises(InputError, match="out of range"):
        result.token_values(saes[0].ref, 96)
    with pytest.raises(InputError, match="not part"):
        result.top_latents("nope")
    assert split_prompts(" a \n\n b\n") == ["a", "b"]


def test_conditions_and_keys(lm, saes):
    a, b = saes
    clamp = Intervention(mode="clamp", value=5)
    sel = [LatentSelection(a, (1, 2, 3)), LatentSelection(b, (4,))]
    conds = comparison_conditions(sel, clamp, seed=0)
    names = [c.name for c in conds]
    assert names == [BASELINE, ABLATED, "ablated_layer_0", "ablated_layer_2", RECONSTRUCTION_ONLY, RANDOM_CONTROL]
    labels = [c.label for c in conds]  # what the Compare page shows
    assert labels == ["baseline", "ablated: all layers", "ablated: layer 0", "ablated: layer 2", "reconstruction only",
                      "random control"]
    random_ctrl = conds[-1]
    for chosen, rnd in zip(sel, random_ctrl.selections, strict=True):
        assert len(rnd.latents) == len(chosen.latents) and not set(rnd.latents) & set(chosen.latents)
    # a single SAE: no separate "all layers"
    assert [c.label for c in comparison_conditions(sel[:1], clamp, controls=())] == [BASELINE, "ablated: layer 0"]
    assert [c.name for c in comparison_conditions([LatentSelection(a, ())], clamp)] == [BASELINE]
    # keys: the baseline (and reconstruction-only with the error term) do not depend on the forget set
    other = comparison_conditions([LatentSelection(a, (7,))], clamp)
    assert condition_key(lm, conds[0]) == condition_key(lm, other[0]) == condition_key(lm, conds[4])
    assert same_as_baseline(conds[4])
    replace = comparison_conditions(sel, Intervention(mode="replace"))
    assert not same_as_baseline(replace[4]) and condition_key(lm, replace[4]) != condition_key(lm, conds[0])
    assert condition_key(lm, conds[2]) != condition_key(lm, other[1])
    assert condition_key(lm, conds[2]) != condition_key(lm, comparison_conditions(sel, Intervention(mode="zero"))[2])
    # a gate changes the numbers, and so do its quantile and its thresholds
    gates = [Gate(), Gate(quantile=0.999), Gate(thresholds=((a.hook_name, 1.0),)), Gate(thresholds=((a.hook_name, 2.0),))]
    keys = {condition_key(lm, comparison_conditions(sel, dataclasses.replace(clamp, gate=g))[2]) for g in gates}
    assert len(keys) == 4 and condition_key(lm, conds[2]) not in keys
    with pytest.raises(InputError):
        comparison_conditions(sel, clamp, controls=("bogus",))


def test_progressive_perplexity_ends_at_the_exact_value(lm, saes):
    texts = [PROMPTS[i % 3] * (1 + i % 4) for i in range(12)]
    hooks = comparison_conditions([LatentSelection(saes[1], (0, 5, 9))], Intervention(mode="clamp", value=3))[1].hooks()
    steps = list(iter_perplexity(lm, texts, hooks, batch_tokens=200))
    assert len(steps) > 2
    assert [s.n_tokens for s in steps] == sorted(s.n_tokens for s in steps)
    final = perplexity(lm, texts, hooks)
    assert steps[-1].n_tokens == final.n_tokens and steps[-1].n_texts == len(texts)
    assert steps[-1].perplexity == pytest.approx(final.perplexity, rel=1e-6)
    ts = TextSet("t", tuple(texts), "test")
    assert text_set_key(ts, 64) != text_set_key(TextSet("t", tuple(texts[:-1]), "test"), 64)
    assert text_set_key(ts, 64) != text_set_key(ts, 32)


def test_two_sessions_from_threads_get_their_own_results(lm, saes):
    """One session ablated, one baseline, at the same time on one shared model: each equals its run alone."""
    ts = TextSet("t", tuple(PROMPTS * 3), "test")
    conds = comparison_conditions([LatentSelection(saes[1], tuple(range(0, 96, 3)))], Intervention(mode="clamp", value=6))
    base, abl = conds[0], conds[1]

    def run(cond):
        return [r.perplexity for r in perplexity_cell(lm, cond, ts, batch_tokens=40)][-1], generation_cell(lm, cond, "Harry", 8)

    alone = {"base": run(base), "abl": run(abl)}
    assert alone["base"][0] != alone["abl"][0]
    got: dict[str, list] = {"base": [], "abl": []}

    def worker(kind):
        for _ in range(4):
            got[kind].append(run(base if kind == "base" else abl))

    threads = [threading.Thread(target=worker, args=(k,)) for k in ("base", "abl", "abl", "base")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got["base"] == [alone["base"]] * 8
    assert got["abl"] == [alone["abl"]] * 8


def test_selectivity():
    assert selectivity(math.e**2, math.e**0.1) == pytest.approx(20)
    assert selectivity(2.0, 1.0) is None


# ------------------------------------------------------------------------------------------------ list editing


def test_parse_latent_ids():
    assert parse_latent_ids("12, 40-42 3000;12") == [12, 40, 41, 42, 3000]
    assert parse_latent_ids("5 - 7") == [5, 6, 7]
    for bad in ("", "abc", "9-3", "1.5"):
        with pytest.raises(InputError):
            parse_latent_ids(bad)
    with pytest.raises(InputError, match="out of range"):
        parse_latent_ids("3, 4096", width=4096)


def test_add_and_remove_latents_keep_the_list_valid():
    fl = new_feature_list("t", "google/gemma-3-270m")
    signature = content_signature(fl)
    ident = {"sae": "saes/gemma-3-270m/layer_12_width_4k", "hook_name": "blocks.12.hook_resid_post", "layer": 12,
             "neuronpedia": None}
    assert add_latents(fl, **ident, ids=[5, 3, 5], notes={5: "why"}, width=4096) == [5, 3]
    assert add_latents(fl, **ident, ids=[3, 9], width=4096) == [9]
    assert fl.saes[0].latent_ids == [5, 3, 9] and fl.saes[0].latents[0].note == "why"
    with pytest.raises(FeatureListError, match="out of range"):
        add_latents(fl, **ident, ids=[1, 4096], width=4096)
    assert fl.saes[0].latent_ids == [5, 3, 9]  # nothing added by the refused call
    add_latents(fl, **{**ident, "sae": "saes/gemma-3-270m/layer_5_width_4k", "hook_name": "blocks.5.hook_resid_post",
                       "layer": 5}, ids=[1])
    assert [e.layer for e in fl.saes] == [5, 12]
    fl.validate()
    assert content_signature(fl) != signature
    assert remove_latents(fl, sae=ident["sae"], ids=[3, 77]) == [3]
    assert remove_latents(fl, sae="saes/gemma-3-270m/layer_5_width_4k", ids=[1]) == [1]
    assert [e.layer for e in fl.saes] == [12]  # emptied entries are dropped
    reread = feature_list_from_bytes(feature_list_json(fl).encode(), "x.json")
    assert content_signature(reread) == content_signature(fl)
    fl.updated = "2030-01-01T00:00:00+00:00"
    assert content_signature(reread) == content_signature(fl)  # the save stamp is not an edit


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", "malformed JSON"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "binary"),
        (b"\xff\xfe{\x00}", "binary|UTF-8"),
        (b'{"name": "x"}', "format_version|missing"),
        (b"[" * 100_000, "nested too deeply"),
    ],
)
def test_uploaded_lists_fail_clearly(data, message):
    with pytest.raises(FeatureListError, match=message):
        feature_list_from_bytes(data, "upload.json")


def test_wrong_model_is_refused():
    fl = new_feature_list("t", "google/gemma-2-2b")
    with pytest.raises(FeatureListError, match="gemma-2-2b.*gemma-3-270m"):
        check_model_matches(fl, "google/gemma-3-270m", "upload.json")
