"""The ``attack`` evaluation on tiny models: each attack where its answer is known, and the CLI's input checks."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from tiny_models import tiny_sae

from unlearn_core.ablation.conditions import ABLATED, BASELINE, RANDOM_CONTROL, Condition
from unlearn_core.ablation.interventions import Intervention, LatentSelection
from unlearn_core.cli import main
from unlearn_core.data.quizzes import Quiz, load_quiz, paraphrased, translated
from unlearn_core.errors import InputError
from unlearn_core.experiments import attacks, setup
from unlearn_core.experiments.attack_report import attack_markdown, attack_table
from unlearn_core.experiments.attacks import (
    ATTACKS,
    HOOK_OFF_NOTE,
    AttackConfig,
    fraction_recovered,
    hook_off_row,
    kshot_template,
    quiz_row,
    quiz_variants,
    run_attacks,
)
from unlearn_core.experiments.linear_probe import auroc, fit_logistic, mean_pooled_activations, score_probe
from unlearn_core.forget_set import Latent, SaeEntry, new_feature_list, save_feature_list
from unlearn_core.scoring.choices import ChoiceResult, choice_scores

QUESTIONS = [("Which city is France's capital?", ["Paris", "Lyon", "Nice"], 0),
             ("Who wrote {Hamlet}?", ["Marlowe", "Shakespeare"], 1),
             ("What is 2 + 2?", ["3", "4", "5"], 1),
             ("Which colour is the sky?", ["green", "blue"], 1),
             ("Which animal barks?", ["cat", "dog", "cow"], 1),
             ("How many legs has a spider?", ["six", "eight"], 1),
             ("Which metal is liquid at room temperature?", ["iron", "mercury"], 1),
             ("What do bees make?", ["honey", "milk"], 0)]


def _items() -> list[dict]:
    out = []
    for i, (q, choices, answer) in enumerate(QUESTIONS):
        out.append({"id": f"q{i}", "split": "dev" if i < 4 else "test", "question": q, "choices": choices,
                    "answer": answer, "paraphrase": f"Put differently: {q.lower()}",
                    "translations": {"fr": {"question": f"En français : {q}", "choices": [c.upper() for c in choices]},
                                     "es": {"question": f"En español: {q}", "choices": [c + "s" for c in choices]}}})
    return out


@pytest.fixture()
def quiz_file(tmp_path):
    path = tmp_path / "mini_quiz.json"
    path.write_text(json.dumps(_items()))
    return path


@pytest.fixture()
def split_files(tmp_path):
    items = _items()
    (tmp_path / "dev.json").write_text(json.dumps([i for i in items if i["split"] == "dev"]))
    (tmp_path / "test.json").write_text(json.dumps([i for i in items if i["split"] == "test"]))
    return tmp_path / "dev.json", tmp_path / "test.json"


@pytest.fixture()
def forget_file(tmp_path):
    sae_dir = tmp_path / "sae_l1"
    tiny_sae(layer=1, d_sae=96).sae.save_model(sae_dir)
    fl = new_feature_list("tiny forget set", "google/gemma-3-270m")
    fl.saes.append(SaeEntry(str(sae_dir), "blocks.1.hook_resid_post", 1, None, [Latent(i) for i in range(0, 96, 3)]))
    return save_feature_list(fl, tmp_path / "forget.json")


def _choice(acc_cal: float, acc: float | None = None, n: int = 10) -> ChoiceResult:
    return ChoiceResult(acc=acc_cal if acc is None else acc, acc_norm=0.0, acc_calibrated=acc_cal, chance=0.3, n=n)


def test_fraction_recovered_on_hand_made_accuracies():
    assert fraction_recovered(attacked=0.5, plain=0.3, baseline=0.7) == pytest.approx(0.5)
    assert fraction_recovered(0.7, 0.3, 0.7) == pytest.approx(1.0)
    assert fraction_recovered(0.2, 0.3, 0.7) == pytest.approx(-0.25)  # the attack made it worse: not clipped
    assert fraction_recovered(0.9, 0.5, 0.52) is None  # forgot 0.02: nothing was forgotten
    assert fraction_recovered(0.9, 0.6, 0.5) is None
    assert fraction_recovered(0.6, 0.5, 0.53) == pytest.approx(10 / 3)


def test_quiz_row_and_hook_off_on_hand_made_accuracies():
    plain = {BASELINE: _choice(0.8, 0.7), ABLATED: _choice(0.4, 0.6), RANDOM_CONTROL: _choice(0.79, 0.7)}
    attacked = {BASELINE: _choice(0.75), ABLATED: _choice(0.6), RANDOM_CONTROL: _choice(0.7)}
    row = quiz_row("paraphrase", "mini", attacked, plain)
    assert row.headline(ABLATED) == 0.6 and row.headline_recovered(ABLATED) == pytest.approx(0.5)
    assert row.headline_recovered(RANDOM_CONTROL) is None  # the random control forgot 0.01
    assert row.recovered["acc"][ABLATED] == pytest.approx((0.6 - 0.6) / (0.7 - 0.6))
    off = hook_off_row(plain, "mini")
    assert off.recovered["acc_calibrated"][ABLATED] == 1.0 and off.recovered["acc"][ABLATED] == 1.0  # exactly
    assert off.headline(ABLATED) == off.headline(RANDOM_CONTROL) == 0.8 and off.note == HOOK_OFF_NOTE
    assert hook_off_row({c: _choice(0.5) for c in plain}, "mini").headline_recovered(ABLATED) is None
    table = "\n".join(attack_table({"rows": [row.to_dict(), off.to_dict()]}))
    assert "n/a: nothing was forgotten" in table and "100%" in table and "50%" in table


def test_kshot_uses_only_dev_items_and_never_the_item_itself(quiz_file):
    everything = load_quiz(str(quiz_file))
    attacked = Quiz("attacked", (everything.items[0], *everything.items[4:]), "x")  # a dev item is attacked too
    seen = set()
    for seed in range(30):
        template, ids = kshot_template(everything, attacked, 2, seed)
        assert len(ids) == 2 and set(ids) <= {"q1", "q2", "q3"}  # dev, and not q0 (attacked)
        seen |= set(ids)
        prompt = template.format(question="Which bird talks?")
        assert prompt.endswith("Question: Which bird talks?\nAnswer:")
        for i in ids:
            item = everything.items[int(i[1:])]
            assert f"Question: {item.question}\nAnswer: {item.choices[item.answer]}\n\n" in prompt
    assert seen == {"q1", "q2", "q3"}
    assert kshot_template(everything, attacked, 2, 5) == kshot_template(everything, attacked, 2, 5)
    assert "{Hamlet}" in kshot_template(everything, attacked, 3, 0)[0].format(question="?")  # braces escaped
    with pytest.raises(InputError, match="3 dev items"):
        kshot_template(everything, attacked, 4, 0)
    dev, test = load_quiz("hp-quiz:dev"), load_quiz("hp-quiz:test")
    _, ids = kshot_template(dev, test, 3, 0)
    assert set(ids) <= {i.id for i in dev.items} and not set(ids) & {i.id for i in test.items}


def test_paraphrase_and_translation_variants_score_the_same_items():
    quiz = load_quiz("hp-quiz:test")
    variants = quiz_variants(quiz, ATTACKS, ["fr", "es"], ("T {question}", "hp-quiz:dev"))
    assert [v.name for v in variants] == ["plain", "paraphrase", "k-shot", "translation (fr)", "translation (es)"]
    ids = [i.id for i in quiz.items]
    assert len(ids) == 120
    for v in variants:
        assert [i.id for i in v.quiz.items] == ids and v.positions == tuple(range(120))
        assert [i.answer for i in v.quiz.items] == [i.answer for i in quiz.items]
    assert variants[1].quiz.items == paraphrased(quiz).items and variants[3].quiz.items == translated(quiz, "fr").items
    assert all(a.question != b.question for a, b in zip(quiz.items, variants[1].quiz.items, strict=True))
    assert all(a.choices == b.choices for a, b in zip(quiz.items, variants[1].quiz.items, strict=True))
    with pytest.raises(InputError, match="no translations into 'de'"):
        quiz_variants(quiz, ATTACKS, ["de"])


def test_logistic_regression_matches_closed_form():
    # x = -1 (class 0) and +1 (class 1), already standardised: by symmetry b = 0, and the optimum of
    # mean BCE + l2/2 w^2 solves sigmoid(-w) = l2 w; with l2 = sigmoid(-2)/2 it is w = 2.
    x = torch.tensor([[-1.0], [1.0]] * 5)
    y = [0, 1] * 5
    probe = fit_logistic(x, y, l2=1 / (1 + math.exp(2)) / 2)
    assert float(probe.weight[0]) == pytest.approx(2.0, abs=1e-6) and probe.bias == pytest.approx(0.0, abs=1e-8)
    assert probe.predict(x).tolist() == y
    # a second feature that is pure noise-free constant gets no weight and does not break standardisation
    probe2 = fit_logistic(torch.cat([x, torch.ones(10, 1)], 1), y, l2=0.1)
    assert float(probe2.weight[1]) == 0.0
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc([0.5, 0.5, 0.2], [1, 0, 0]) == pytest.approx(0.75)  # a tie counts one half
    with pytest.raises(InputError):
        fit_logistic(x, [1] * 10)


def _synthetic_texts(n: int, alphabet: str, rng: random.Random) -> list[str]:
    return [" ".join("".join(rng.choice(alphabet) for _ in range(rng.randint(2, 6))) for _ in range(6)) for _ in range(n)]


def test_linear_probe_separates_token_classes_and_is_at_chance_on_random_labels(tiny_lm):
    rng = random.Random(0)
    letters, digits = _synthetic_texts(120, "aeiou", rng), _synthetic_texts(120, "0123456789", rng)
    hook = "blocks.1.hook_resid_post"
    train = letters[:60] + digits[:60]
    test = letters[60:] + digits[60:]
    feats = mean_pooled_activations(tiny_lm, train + test, hook)
    assert feats.shape == (240, 32) and feats.dtype == torch.float64
    labels = [1] * 60 + [0] * 60
    separated = score_probe(feats[:120], labels, feats[120:], labels)
    assert separated.auroc > 0.9 and separated.accuracy > 0.8 and separated.n_test == 120
    shuffled = random.Random(1)
    random_train = [shuffled.randint(0, 1) for _ in range(120)]
    random_test = [shuffled.randint(0, 1) for _ in range(120)]
    chance = score_probe(feats[:120], random_train, feats[120:], random_test)
    assert 0.3 <= chance.auroc <= 0.7


def test_probe_features_are_mean_pooled_without_bos(tiny_lm):
    from unlearn_core.scoring.activations import collect_activations
    from unlearn_core.scoring.batching import tokenize_with_bos

    texts = ["Harry", "a longer text here"]
    feats = mean_pooled_activations(tiny_lm, texts, "blocks.0.hook_resid_post", batch_tokens=8)
    seqs = tokenize_with_bos(tiny_lm, texts)
    acts = collect_activations(tiny_lm, seqs, ["blocks.0.hook_resid_post"]).acts["blocks.0.hook_resid_post"]
    assert torch.allclose(feats[0], acts[: len(seqs[0]) - 1].double().mean(0), atol=1e-5)
    assert torch.allclose(feats[1], acts[len(seqs[0]) - 1 :].double().mean(0), atol=1e-5)
    # with an edit's hooks active the edited stream is read (the capture runs after the edit at the same site)
    edit = Condition("a", (LatentSelection(tiny_sae(layer=0), tuple(range(0, 96, 2))),), Intervention("clamp", 5.0)).hooks()
    edited = mean_pooled_activations(tiny_lm, texts, "blocks.0.hook_resid_post", edit)
    assert not torch.allclose(edited, feats, atol=1e-3)


def test_run_attacks_end_to_end_on_the_tiny_model(tiny_lm, split_files, forget_file, monkeypatch):
    monkeypatch.setattr(setup, "versions", lambda: {})
    dev_file, test_file = split_files
    config = AttackConfig(forget_set=str(forget_file), mode="clamp", value=3.0, quiz=str(test_file),
                          shots_from=str(dev_file), shots=2, probe_texts_per_class=6, seed=1)
    result = run_attacks(config, lm=tiny_lm)
    names = [r.attack for r in result.rows]
    assert names == ["plain", "paraphrase", "k-shot", "translation (fr)", "translation (es)", "linear-probe", "hook-off"]
    quiz = load_quiz(str(test_file))
    para = result.row("paraphrase")
    assert para.n == len(quiz) == 4 and set(para.scores) == {BASELINE, ABLATED, RANDOM_CONTROL}
    base_para = choice_scores(tiny_lm, paraphrased(quiz), max_seq_len=256)
    assert para.scores[BASELINE]["acc_calibrated"] == base_para.acc_calibrated
    template, shots = kshot_template(load_quiz(str(dev_file)), quiz, 2, 1)
    assert result.row("k-shot").n == 4 and result.details["shots"] == list(shots)
    hooks = attacks.build_conditions([ABLATED], [LatentSelection(tiny_sae(layer=1, d_sae=96), tuple(range(0, 96, 3)))],
                                     Intervention("clamp", 3.0))[0].hooks()
    kshot_ablated = choice_scores(tiny_lm, quiz, hooks, max_seq_len=256, template=template)
    assert result.row("k-shot").scores[ABLATED]["acc"] == kshot_ablated.acc
    plain, off = result.row("plain"), result.row("hook-off")
    assert off.headline(ABLATED) == plain.headline(BASELINE)
    assert off.headline_recovered(ABLATED) in (1.0, None)
    assert plain.headline_recovered(ABLATED) in (0.0, None)
    probe = result.row("linear-probe")
    assert result.details["probe_hook"] == "blocks.1.hook_resid_post" and probe.n == 12
    assert all(0.0 <= probe.scores[c]["auroc"] <= 1.0 for c in probe.scores)
    out = result.to_dict()
    json.dumps(out)
    assert out["settings"]["forget_set_name"] == "tiny forget set" and out["settings"]["saes"][0]["n_latents"] == 32
    report = attack_markdown(out, "python -m unlearn_core attack --forget-set f.json")
    assert HOOK_OFF_NOTE in report and "python -m unlearn_core attack" in report and "fraction_recovered" in report
    assert report.count("| hook-off |") == 2


@pytest.mark.parametrize("flags", [["--shots", "0"], ["--max-items", "0"], ["--probe-texts-per-class", "1"],
                                   ["--languages", "French!"], ["--mode", "erase"]])
def test_cli_refuses_bad_flags_at_parsing(flags, forget_file, monkeypatch, capsys):
    monkeypatch.setattr(setup, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit) as exc:
        main(["attack", "--forget-set", str(forget_file), *flags])
    assert exc.value.code == 2


@pytest.mark.parametrize(("flags", "message"), [
    (["--languages", "de"], "no translations into 'de'"),
    (["--languages", "fr", "fr"], "each once"),
    (["--value", "3"], "--value needs --mode"),
    (["--shots", "500"], "500 shots need 500"),
    (["--quiz", "hp-quiz:train"], "unknown split"),
    (["--json", "/nonexistent/folder/out.json"], "cannot write"),
])
def test_cli_refuses_bad_inputs_before_loading_a_model(flags, message, forget_file, monkeypatch, capsys):
    monkeypatch.setattr(setup, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(["attack", "--forget-set", str(forget_file), *flags]) == 2
    assert message in capsys.readouterr().err
