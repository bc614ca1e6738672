"""Attribution-based selection (``select --method attribution``) on the tiny model: f * dL/df is the first-order
effect of ablating a latent, the splice leaves the model unchanged, only dev splits are used, and the ranking and
feature list come out as for the other methods."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny_models import tiny_sae

import unlearn_core.selection.attribution as attribution
from unlearn_core.ablation.interventions import Intervention, LatentSelection, intervened, intervention_hooks
from unlearn_core.data.quizzes import Quiz, QuizItem
from unlearn_core.errors import InputError
from unlearn_core.selection.attribution import (
    AnswerSequence,
    AttributionTotals,
    KnowledgeItems,
    attribution_scores,
    check_dev_set,
    latent_attributions,
    load_knowledge_items,
    quiz_items,
    rank_by_attribution,
)
from unlearn_core.selection.stats import LatentStats

QUIZ = Quiz("tiny", (
    QuizItem("Who teaches potions?", ("Snape", "Sprout", "Hooch"), 0, "q1", "dev"),
    QuizItem("What is the owl called?", ("Hedwig", "Errol", "Pig"), 0, "q2", "dev"),
    QuizItem("Which house is brave?", ("Slytherin", "Gryffindor"), 1, "q3", "dev"),
), "test")


def objective(lm, items, hooks=()):
    """L = sum of weight x the answers' summed log-probability, in float64, one sequence at a time."""
    total = 0.0
    for kind in items:
        for seq in kind.sequences:
            with intervened(lm, hooks) as model:
                logp = torch.log_softmax(model(torch.tensor([seq.tokens]))[0].double(), dim=-1)
            n = len(seq.tokens)
            total += seq.weight * sum(float(logp[t - 1, seq.tokens[t]]) for t in range(n - seq.n_answer, n))
    return total


@pytest.fixture(scope="module")
def saes():
    return [tiny_sae(0, seed=1), tiny_sae(2, seed=2)]


@pytest.fixture(scope="module")
def items(tiny_lm):
    return [quiz_items(tiny_lm, QUIZ, "margin")]


@pytest.fixture(scope="module")
def totals(tiny_lm, saes, items):
    return latent_attributions(tiny_lm, saes, items, batch_tokens=64)


def test_splicing_the_saes_in_leaves_the_objective_unchanged(tiny_lm, totals, items):
    assert next(iter(totals.values())).objective == pytest.approx(objective(tiny_lm, items), rel=1e-5, abs=1e-4)


def test_attribution_is_the_derivative_of_scaling_the_latent(tiny_lm, saes, items, totals):
    """d/da L(f_i -> a f_i) at a = 1 is exactly f_i * dL/df_i summed over positions: check it by central
    differences through the real intervention hooks (error term kept, every other latent untouched)."""
    eps = 0.05
    for sae in saes:
        attr = totals[sae.ref].attribution
        for i in torch.argsort(attr.abs(), descending=True)[:3].tolist() + [int(torch.argsort(attr.abs())[-10])]:
            up, down = (intervention_hooks([LatentSelection(sae, (i,))], Intervention("scale", 1 + s * eps))
                        for s in (1, -1))
            numeric = (objective(tiny_lm, items, up) - objective(tiny_lm, items, down)) / (2 * eps)
            assert float(attr[i]) == pytest.approx(numeric, rel=2e-2, abs=2e-3), (sae.ref, i)


def test_attribution_predicts_zero_ablation_to_first_order(tiny_lm, saes, items, totals):
    """L - L(latent i zero-ablated) ~ attribution_i; nearly exact for latents with small activations."""
    base = objective(tiny_lm, items)
    sae = saes[0]
    attr = totals[sae.ref].attribution
    picked = torch.argsort(attr.abs(), descending=True)[:12].tolist()
    exact = [base - objective(tiny_lm, items, intervention_hooks([LatentSelection(sae, (i,))], Intervention("zero")))
             for i in picked]
    predicted = [float(attr[i]) for i in picked]
    assert float(torch.corrcoef(torch.tensor([exact, predicted]))[0, 1]) > 0.95
    smallest = picked[-1]
    tiny_edit = intervention_hooks([LatentSelection(sae, (smallest,))], Intervention("scale", 0.99))
    assert base - objective(tiny_lm, items, tiny_edit) == pytest.approx(0.01 * float(attr[smallest]), rel=0.05, abs=1e-4)


def _scaled_hook(sae, eps, part):
    """Non-BOS positions with the SAE's error term (``part="error"``) or the whole activation scaled by 1 + eps."""
    def hook(activation, hook):
        x = activation[:, 1:]
        moved = x - sae.sae.decode(sae.sae.encode(x)) if part == "error" else x
        return torch.cat([activation[:, :1], x + eps * moved], dim=1)
    return [(sae.hook_name, hook)]


def test_error_term_attribution_is_the_derivative_of_scaling_the_error(tiny_lm, saes, items, totals):
    """The error term's attribution is d/da L(e -> a e) at a = 1, and latents + b_dec + error add up to scaling the
    whole activation (x = (decode(f) - b_dec) + b_dec + e)."""
    eps = 0.05
    for sae in saes:
        t = totals[sae.ref]
        for part, expected in (("error", t.error_attribution),
                               ("all", float(t.attribution.sum()) + t.bias_attribution + t.error_attribution)):
            numeric = (objective(tiny_lm, items, _scaled_hook(sae, eps, part))
                       - objective(tiny_lm, items, _scaled_hook(sae, -eps, part))) / (2 * eps)
            assert expected == pytest.approx(numeric, rel=2e-2, abs=2e-3), (sae.ref, part)
        assert t.error_attribution != 0.0


def test_upstream_attribution_counts_paths_through_later_saes(tiny_lm, saes, items, totals):
    """A later SAE spliced in (error term kept) is the identity, gradient included: layer 0's attributions are the
    same with or without the layer-2 SAE."""
    alone = latent_attributions(tiny_lm, saes[:1], items, batch_tokens=64)
    assert torch.allclose(alone[saes[0].ref].attribution, totals[saes[0].ref].attribution, rtol=1e-4, atol=1e-5)


def test_bos_and_padding_never_count_and_params_stay_untouched(tiny_lm, saes, items):
    params = list(tiny_lm.model.parameters()) + [p for s in saes for p in s.sae.parameters()]
    before = [p.requires_grad for p in params]
    # one long and one short sequence in one batch: the short one is padded
    seqs = (AnswerSequence((1, 40, 41, 42, 43, 44, 45, 46), 2), AnswerSequence((1, 50, 60), 1))
    together = latent_attributions(tiny_lm, saes, [KnowledgeItems("x", seqs, 2)], batch_tokens=1000)
    apart = [latent_attributions(tiny_lm, saes, [KnowledgeItems("x", (s,), 1)], batch_tokens=1000) for s in seqs]
    for sae in saes:
        summed = apart[0][sae.ref].attribution + apart[1][sae.ref].attribution
        assert torch.allclose(together[sae.ref].attribution, summed, rtol=1e-4, atol=1e-6)
    assert [p.requires_grad for p in params] == before
    assert all(p.grad is None for p in params)


def test_the_model_lock_is_taken_once_per_batch(tiny_lm, saes, items, monkeypatch):
    calls = []
    real = attribution.intervened

    def counting(lm, hooks):
        calls.append(len(hooks))
        return real(lm, hooks)

    monkeypatch.setattr(attribution, "intervened", counting)
    seqs = items[0].sequences
    n_batches = len(attribution.batches_by_length([len(s.tokens) for s in seqs], 64))
    latent_attributions(tiny_lm, saes, items, batch_tokens=64)
    assert len(calls) == n_batches > 1 and set(calls) == {len(saes)}


@pytest.mark.parametrize("name", ["hp-quiz:test", "hp-quiz", "general-quiz:test", "adjacent-quiz", "hp-cloze:test",
                                  "general-cloze:test", "nq-open", "my_quiz.json"])
def test_only_dev_splits_are_accepted(tiny_lm, name):
    with pytest.raises(InputError, match="dev"):
        load_knowledge_items(tiny_lm, name)


def test_dev_splits_load_with_the_scoring_formatting(tiny_lm):
    for name in (*attribution.FORGET_ITEMS, *attribution.RETAIN_ITEMS, "hp-cloze", "general-cloze"):
        check_dev_set(name)
    quiz = load_knowledge_items(tiny_lm, "hp-quiz:dev")
    assert quiz.n_items == 120 and len(quiz.sequences) == 120
    assert all(s.tokens[0] == tiny_lm.bos_token_id and s.weight == 1.0 for s in quiz.sequences)
    first = quiz.sequences[0]
    text = tiny_lm.tokenizer.decode(list(first.tokens))
    assert text.startswith("Question: ") and "\nAnswer: " in text
    margin = load_knowledge_items(tiny_lm, "hp-quiz:dev", "margin")
    assert len(margin.sequences) == 480 and sum(s.weight for s in margin.sequences) == pytest.approx(0.0, abs=1e-9)
    assert load_knowledge_items(tiny_lm, "hp-cloze:dev").n_items == 52
    with pytest.raises(InputError, match="test-split"):
        quiz_items(tiny_lm, Quiz("mixed", (QuizItem("q?", ("a", "b"), 0, None, "test"),), "x"))


def _stats(fire, freq_scale=1.0):
    fire = torch.tensor(fire, dtype=torch.long)
    n = 1000
    return LatentStats("s", "h", n, 10, (fire * freq_scale).long(), fire.double() * 2.0, torch.full((len(fire),), 5.0),
                       (fire > 0).long())


def test_ranking_penalises_retain_attribution_and_needs_forget_firing():
    forget = AttributionTotals("s", torch.tensor([4.0, 3.0, 2.0, 1.0, 5.0, -1.0]), torch.zeros(6), 2)
    retain = AttributionTotals("s", torch.tensor([0.0, 6.0, -10.0, 0.0, 0.0, 0.0]), torch.zeros(6), 3)
    f_stats = _stats([5, 5, 5, 5, 0, 5])  # latent 4 never fires on forget text
    r_stats = _stats([0, 0, 0, 50, 0, 0])  # latent 3 fires on 5% of retain tokens
    score = attribution_scores(forget, retain, f_stats, r_stats, lam=1.0, retain_threshold=0.01)
    assert score.tolist()[:3] == [2.0, -math.inf, 1.0]  # 1: 1.5 - 1.0 * 2.0 <= 0
    assert all(math.isinf(v) for v in score.tolist()[3:])
    assert float(attribution_scores(forget, retain, f_stats, r_stats, lam=0.0)[1]) == 1.5
    ranked = rank_by_attribution(forget, retain, f_stats, r_stats, top=5, lam=0.5, retain_threshold=0.01)
    assert [c.id for c in ranked] == [0, 2, 1]  # 1 scores 1.5 - 0.5 * 2 = 0.5
    assert ranked[0].forget_attribution == 2.0 and ranked[0].forget_mean_act == 2.0
    assert {"forget_attribution", "retain_attribution", "score"} <= set(ranked[0].stats())
    with pytest.raises(InputError):
        attribution_scores(forget, retain, f_stats, r_stats, lam=-1)


def test_select_method_attribution_writes_an_ordinary_feature_list(tiny_lm, saes, monkeypatch, tmp_path):
    from unlearn_core.forget_set import load_feature_list, save_feature_list
    from unlearn_core.selection.rules import METHODS
    from unlearn_core.selection.suggest import SelectConfig, suggest, suggested_feature_list

    assert {"ratio", "frequency", "attribution"} <= set(METHODS)
    real = attribution.load_knowledge_items

    def few(lm, name, objective="logprob", max_seq_len=attribution.ITEM_SEQ_LEN):  # keep the test fast
        kind = real(lm, name, objective, max_seq_len)
        return KnowledgeItems(kind.name, kind.sequences[:6], 6)

    monkeypatch.setattr(attribution, "load_knowledge_items", few)
    texts = ["Harry Potter went to Hogwarts with Ron and Hermione."] * 4
    retain = ["The river flows to the sea past the old mill."] * 4
    config = SelectConfig(forget="hp.txt", retain="wiki.txt", method="attribution", top=5, stats_tokens=2000,
                          retain_threshold=1.0, intervention=Intervention.from_spec("clamp:4x@gate"))
    chosen = suggest(tiny_lm, saes, config, forget_texts=texts, retain_texts=retain)
    assert chosen and all(0 < len(v) <= 5 for v in chosen.values())
    fl = suggested_feature_list(tiny_lm, saes, chosen, config)
    assert fl.selection.method == "attribution"
    assert fl.selection.extra["attribution_forget_items"] == list(attribution.FORGET_ITEMS)
    assert fl.intervention.gate.calibrated and fl.intervention.mode == "clamp"
    lat = fl.saes[0].latents[0]
    assert "forget_attribution" in lat.stats.extra and lat.stats.forget_mean_act > 0
    path = save_feature_list(fl, tmp_path / "attr.json")
    again = load_feature_list(path)
    assert again.intervention == fl.intervention and again.selection == fl.selection
    assert json.loads(path.read_text())["selection"]["method"] == "attribution"


def test_the_cli_offers_the_method():
    from unlearn_core.cli import build_parser

    args = build_parser().parse_args(["select", "--out", "x.json", "--method", "attribution", "--attribution-lambda",
                                      "0.5", "--intervention", "clamp:4x@gate"])
    assert (args.method, args.attribution_lambda, args.attribution_objective) == ("attribution", 0.5, "logprob")
