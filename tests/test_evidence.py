"""Evidence that holds: dev/test splits are disjoint, the matched random control matches, multiple-choice results
follow the JSON contract, typed results round-trip, and suggestions merge into a curated list."""

from __future__ import annotations

import json
import math

import pytest
from tiny_models import tiny_sae

from unlearn_core.ablation.conditions import (
    MATCH_CANDIDATES,
    RANDOM_MATCHED,
    LatentProfile,
    build_conditions,
    matched_random_selections,
)
from unlearn_core.ablation.interventions import Intervention, LatentSelection
from unlearn_core.data.probes import SPLIT_PROBES, load_probes
from unlearn_core.data.quizzes import load_knowledge_probes, quiz_from_bytes
from unlearn_core.data.texts import TEXT_SPLIT_ALIASES, TextSet, load_texts, selection_split
from unlearn_core.errors import InputError
from unlearn_core.experiments.results import (
    ChoiceScore,
    EvaluationResult,
    MeasureOptions,
    ProbeScore,
    measure_conditions,
)
from unlearn_core.forget_set import LatentStats, SelectionRecord, merge_feature_list, new_feature_list
from unlearn_core.forget_set.schema import Latent, SaeEntry
from unlearn_core.selection.stats import compute_latent_stats, stats_sequences

# ------------------------------------------------------------------------------------------------ splits


@pytest.mark.parametrize("name", ["hp-cloze", "general-cloze"])
def test_cloze_dev_and_test_splits_are_disjoint(name):
    dev, test = load_probes(f"{name}:dev"), load_probes(f"{name}:test")
    assert len(dev) >= 50 and len(test) >= 50
    assert not {p.prompt for p in dev.probes} & {p.prompt for p in test.probes}
    assert load_probes(name).probes == dev.probes  # the plain name is the dev split earlier sweeps tuned on
    assert set(SPLIT_PROBES) >= {f"{name}:dev", f"{name}:test"}


@pytest.mark.parametrize("base", ["hp-fanwiki", "wikitext2"])
def test_text_dev_and_test_splits_are_disjoint(base):
    dev, test = load_texts(f"{base}:dev"), load_texts(f"{base}:test")
    assert not set(dev.texts) & set(test.texts)
    assert load_texts(base).texts == test.texts  # the plain name is the held-out test split
    assert load_texts(selection_split(base)).texts == dev.texts  # selection only sees dev
    assert TEXT_SPLIT_ALIASES[f"{base}:dev"] == selection_split(base)


def test_hp_quiz_sizes_and_split_disjointness():
    dev, test = load_knowledge_probes("hp-quiz:dev"), load_knowledge_probes("hp-quiz:test")
    assert len(dev) + len(test) >= 200 and len(test) >= 100
    assert not {i.question for i in dev.items} & {i.question for i in test.items}
    for name in ("general-quiz", "adjacent-quiz"):
        assert len(load_knowledge_probes(name)) >= 100


# ------------------------------------------------------------------------------------------------ matched control


def _profile(rates, acts, n_tokens=10_000):
    return LatentProfile(tuple(rates), tuple(acts), n_tokens)


def test_matched_control_picks_latents_close_in_rate_and_scale(tiny_lm):
    sae = tiny_sae(0, seed=3)
    width = sae.width
    rates = [0.5 * (0.9**i) for i in range(width)]  # every latent a distinct rate
    acts = [1.0 + (i % 7) for i in range(width)]
    profile = _profile(rates, acts)
    chosen = LatentSelection(sae, (10, 40, 70), (2.0, 3.0, 4.0))
    (matched,) = matched_random_selections([chosen], {sae.ref: profile}, seed=0)
    assert len(matched.latents) == 3 and not set(matched.latents) & set(chosen.latents)
    features = profile.log_features()
    for c in chosen.latents:
        distances = sorted(float((features[j] - features[c]).abs().sum()) for j in range(width) if j not in chosen.latents)
        limit = distances[MATCH_CANDIDATES + len(chosen.latents)]  # among the nearest, allowing for used ones
        assert any(float((features[m] - features[c]).abs().sum()) <= limit for m in matched.latents)
    # deterministic in the seed, different across seeds
    again = matched_random_selections([chosen], {sae.ref: profile}, seed=0)[0]
    other = matched_random_selections([chosen], {sae.ref: profile}, seed=1)[0]
    assert again.latents == matched.latents and len(set(other.latents)) == 3
    assert matched.reference is not None and all(r > 0 for r in matched.reference)


def test_matched_control_rates_within_tolerance_on_real_statistics(tiny_lm):
    """On the tiny model's own statistics: each matched latent fires within a factor of 3 as often as its chosen
    latent (plus one token in n), the stated tolerance of the control."""
    sae = tiny_sae(1, seed=5)
    texts = [("the quick brown fox jumps over the lazy dog " * 3)[i:] for i in range(40)]
    stats = compute_latent_stats(tiny_lm, [sae], stats_sequences(tiny_lm, texts, 4000, 64))[sae.ref]
    profile = LatentProfile(tuple(stats.frequency.tolist()), tuple(stats.mean_activation.double().tolist()), stats.n_tokens)
    rates = stats.frequency.tolist()
    order = sorted(range(sae.width), key=lambda i: rates[i])
    chosen_ids = tuple(sorted(order[5:25:4]))  # some of the rarer latents
    (matched,) = matched_random_selections([LatentSelection(sae, chosen_ids)], {sae.ref: profile}, seed=0)
    eps = 1.0 / stats.n_tokens
    chosen_rates = sorted(rates[i] + eps for i in chosen_ids)
    matched_rates = sorted(rates[i] + eps for i in matched.latents)
    for c, m in zip(chosen_rates, matched_rates, strict=True):
        assert abs(math.log(m / c)) <= math.log(3), (c, m)


def test_matched_condition_needs_profiles(tiny_lm):
    sae = tiny_sae(0)
    with pytest.raises(InputError, match="matched random control"):
        build_conditions([RANDOM_MATCHED], [LatentSelection(sae, (1,))], Intervention())
    profile = _profile([0.01] * sae.width, [1.0] * sae.width)
    (cond,) = build_conditions([RANDOM_MATCHED], [LatentSelection(sae, (1, 2))], Intervention(), profiles={sae.ref: profile})
    assert cond.n_latents == 2 and cond.label == "random control (matched)"
    with pytest.raises(InputError, match="width"):
        matched_random_selections([LatentSelection(sae, (1,))], {sae.ref: _profile([0.0], [0.0])}, 0)


# ------------------------------------------------------------------------------------------------ results


QUIZ = [
    {"question": "Which is a colour?", "choices": ["red", "run", "rapidly"], "answer": 0},
    {"question": "Which is a number?", "choices": ["seven", "see", "sea"], "answer": 0},
]


def test_multiple_choice_results_follow_the_json_contract(tiny_lm):
    quiz = quiz_from_bytes(json.dumps(QUIZ).encode(), "my_quiz.json")
    cloze = load_probes("hp-cloze", max_items=3)
    texts = TextSet("t", ("some text here", "and more text"), "test")
    sae = tiny_sae(1)
    conds = build_conditions(["baseline", "ablated", "reconstruction_only"], [LatentSelection(sae, (0, 3))],
                             Intervention("clamp", 2.0))
    result = measure_conditions(tiny_lm, conds, [texts], [quiz, cloze], MeasureOptions(max_seq_len=64))
    data = json.loads(json.dumps(result.to_dict()))
    for cond in ("baseline", "ablated", "reconstruction_only"):
        mc = data["conditions"][cond]["probes"]["my_quiz"]
        assert set(mc) == {"acc", "acc_norm", "acc_calibrated", "chance", "n"}
        assert mc["n"] == 2 and mc["chance"] == pytest.approx(1 / 3)
        assert set(data["conditions"][cond]["probes"]["hp-cloze"]) == {"top1", "mean_logprob", "n"}
    assert data["details"]["reconstruction_only"]["identical_to"].startswith("baseline")
    back = EvaluationResult.from_dict(data)
    assert isinstance(back.conditions["ablated"].probes["my_quiz"], ChoiceScore)
    assert isinstance(back.conditions["ablated"].probes["hp-cloze"], ProbeScore)
    assert back.to_dict() == data
    assert back.ratio("ablated", "t") == pytest.approx(data["conditions"]["ablated"]["perplexity"]["t"]
                                                        / data["conditions"]["baseline"]["perplexity"]["t"])
    with pytest.raises(InputError):
        EvaluationResult.from_dict({"conditions": {"x": {"perplexity": {}}}})


# ------------------------------------------------------------------------------------------------ merging


def test_a_suggestion_merges_into_the_curated_list():
    curated = new_feature_list("mine", "google/gemma-3-270m")
    curated.saes.append(SaeEntry("s", "blocks.5.hook_resid_post", 5, None, [Latent(1, "kept label", "my note")]))
    stats = LatentStats.from_dict({"score": 1.0, "forget_freq": 0.01, "retain_freq": 0.0, "forget_mean_act": 2.0,
                                   "retain_mean_act": 0.0, "forget_max_act": 3.0})
    suggestion = new_feature_list("suggested", "google/gemma-3-270m")
    suggestion.saes.append(SaeEntry("s", "blocks.5.hook_resid_post", 5, None,
                                    [Latent(1, None, "suggested note", stats=stats), Latent(2, None, "n2", stats=stats)]))
    suggestion.selection = SelectionRecord.from_dict({"method": "ratio", "preset": "gemma-3-270m-offline"})
    suggestion.intervention = Intervention("clamp", 4.0, relative=True)
    assert merge_feature_list(curated, suggestion) == 1
    latents = {lat.id: lat for lat in curated.saes[0].latents}
    assert latents[1].label == "kept label" and latents[1].note == "my note" and latents[1].stats == stats
    assert latents[2].note == "n2"
    assert curated.selection.preset == "gemma-3-270m-offline"
    assert curated.intervention == Intervention("clamp", 4.0, relative=True)
    other_model = new_feature_list("x", "google/gemma-2-2b")
    with pytest.raises(Exception, match="gemma"):
        merge_feature_list(curated, other_model)


# ------------------------------------------------------------------------------------------------ familiarity, report


def test_familiarity_counts_terms_in_the_continuation_only(tiny_lm, monkeypatch):
    from unlearn_core.ablation.conditions import Condition
    from unlearn_core.data.familiarity import FamiliarityPrompt, familiar_terms, familiarity_prompts, hp_terms
    from unlearn_core.experiments import familiarity as fam

    assert len(familiarity_prompts("test")) == 30 and len(familiarity_prompts("dev")) == 30
    assert not {p.prompt for p in familiarity_prompts("dev")} & {p.prompt for p in familiarity_prompts("test")}
    assert "hogwarts" in hp_terms() and "wand" not in hp_terms()
    assert familiar_terms("Off to Hogwarts, said Hermione; a hogwartsish word") == ["hogwarts", "hermione"]
    prompts = [FamiliarityPrompt("a", "test", "Hermione said"), FamiliarityPrompt("b", "test", "The farmer said")]
    canned = {(0, "baseline"): " to Ron at Hogwarts", (1, "baseline"): " nothing", (0, "ablated"): " Hermione again",
              (1, "ablated"): " hello"}
    monkeypatch.setattr(fam, "generate_batch", lambda lm, ps, conds, **kw: canned)
    scores = fam.familiarity(tiny_lm, [Condition("baseline"), Condition("ablated")], prompts)
    assert scores["baseline"].share == 0.5 and scores["baseline"].share_new_terms == 0.5
    assert scores["ablated"].share == 0.5 and scores["ablated"].share_new_terms == 0.0  # only repeats the prompt
    assert "hogwarts" in scores["baseline"].generations[0]["terms"]


def test_familiarity_generates_for_real_on_a_tiny_model(tiny_lm):
    from unlearn_core.ablation.conditions import Condition
    from unlearn_core.data.familiarity import FamiliarityPrompt
    from unlearn_core.experiments.familiarity import familiarity

    sae = tiny_sae(1)
    conds = [Condition("baseline"), Condition("ablated", (LatentSelection(sae, (0, 1, 2)),), Intervention("clamp", 3.0))]
    scores = familiarity(tiny_lm, conds, [FamiliarityPrompt("a", "test", "Hogwarts is")], max_new_tokens=4)
    assert set(scores) == {"baseline", "ablated"} and all(s.n == 1 for s in scores.values())
    assert all(isinstance(s.generations[0]["continuation"], str) for s in scores.values())


def test_the_report_has_forget_retain_adjacent_attack_and_familiarity_rows():
    from unlearn_core.experiments.evaluation_report import evaluation_headline, evaluation_markdown

    def cond(ppl_hp, ppl_wiki, hp_acc, gen_acc, adj_acc):
        quiz = {"acc_norm": 0.3, "chance": 0.25, "n": 100, "acc": 0.3}
        return {"perplexity": {"hp-fanwiki": ppl_hp, "wikitext2": ppl_wiki},
                "probes": {"hp-quiz:test": {**quiz, "acc_calibrated": hp_acc},
                           "general-quiz:test": {**quiz, "acc_calibrated": gen_acc},
                           "adjacent-quiz:test": {**quiz, "acc_calibrated": adj_acc},
                           "hp-cloze:test": {"top1": 0.4, "mean_logprob": -2.0, "n": 64}}}

    result = {"conditions": {"baseline": cond(10, 20, 0.45, 0.6, 0.5), "ablated": cond(30, 20.5, 0.28, 0.59, 0.49),
                             "random_control": cond(11, 25, 0.44, 0.5, 0.45),
                             "random_control_matched": cond(10.5, 20.2, 0.45, 0.6, 0.5)},
              "settings": {"forget_set_name": "x", "saes": []},
              "familiarity": {"baseline": {"share": 0.6, "share_new_terms": 0.4, "mean_terms": 1.2},
                              "ablated": {"share": 0.1, "share_new_terms": 0.0, "mean_terms": 0.1}}}
    h = evaluation_headline(result)
    assert h["ablated"]["forget_quiz_above_chance"] == pytest.approx(0.03)
    assert h["ablated"]["retain_quiz_change"] == pytest.approx(-0.01)
    assert h["splits"]["hp-quiz:test"] == "test" and h["splits"]["hp-fanwiki"] == "test"
    md = evaluation_markdown(result, "cmd")
    for text in ("HP quiz: points above chance", "+0.030 ✓", "adjacent-fiction quiz", "random control (matched)",
                 "random control (unmatched)", "share with an HP term", "hp-quiz:test = **test**"):
        assert text in md, text
