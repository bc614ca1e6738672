"""Multiple-choice probes: loading, the built-in quizzes and lm-eval-style scoring on the tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny_models import tiny_sae

from unlearn_core.ablation.conditions import Condition
from unlearn_core.ablation.interventions import Intervention, LatentSelection, intervened
from unlearn_core.data.quizzes import (
    BUILTIN_QUIZZES,
    Quiz,
    QuizItem,
    is_quiz_records,
    load_quiz,
    looks_like_quiz,
    paraphrased,
    quiz_from_bytes,
    translated,
)
from unlearn_core.errors import InputError, TextSourceError
from unlearn_core.scoring import batching, choices
from unlearn_core.scoring.choices import ChoiceResult, accuracies, choice_loglikelihoods, choice_scores

ITEMS = [
    {
        "id": "q1",
        "split": "dev",
        "question": "What is the capital of France?",
        "choices": ["Paris", "Lyon", "Nice"],
        "answer": 0,
        "paraphrase": "Which city is France's capital?",
        "translations": {"fr": {"question": "Quelle est la capitale de la France ?", "choices": ["Paris", "Lyon", "Nice"]}},
    },
    {
        "id": "q2",
        "split": "test",
        "question": "Who wrote Hamlet?",
        "choices": ["Marlowe", "Shakespeare"],
        "answer": 1,
        "topic": "plays",
    },
    {
        "id": "q3",
        "split": "test",
        "question": "2 + 2 =",
        "choices": ["3", "4", "22", "four", "Ünïcödé"],
        "answer": 3,
        "paraphrase": "Two plus two is",
    },
    {"id": "q4", "split": "dev", "question": "Which is a colour?", "choices": ["Paris", "red"], "answer": 1},
]
BUILTIN_AVAILABLE = {name: all(p.is_file() for p in paths) for name, paths in BUILTIN_QUIZZES.items()}


@pytest.fixture()
def quiz_path(tmp_path):
    path = tmp_path / "mini_quiz.json"
    path.write_text(json.dumps(ITEMS), encoding="utf-8")
    return path


def brute_force(lm, quiz, template="Question: {question}\nAnswer:", neutral="Answer:", hooks=()):
    """Per item and choice, (conditional, neutral) summed log-likelihood: one unbatched forward pass each."""

    def summed(prompt, cont):
        p_ids = [lm.bos_token_id] + lm.tokenizer(prompt)["input_ids"]
        c_ids = lm.tokenizer(cont)["input_ids"]
        with intervened(lm, hooks) as model:
            logp = torch.log_softmax(model(torch.tensor([p_ids + c_ids]))[0].double(), -1)
        return sum(float(logp[len(p_ids) - 1 + k, t]) for k, t in enumerate(c_ids))

    return [
        [(summed(template.format(question=item.question), " " + c), summed(neutral, " " + c)) for c in item.choices]
        for item in quiz.items
    ]


def by_hand(quiz, lls):
    acc = norm = cal = 0
    for item, row in zip(quiz.items, lls, strict=True):
        cond = [c for c, _ in row]
        acc += max(range(len(row)), key=lambda j: (cond[j], -j)) == item.answer
        normed = [cond[j] / len(" " + item.choices[j]) for j in range(len(row))]
        norm += max(range(len(row)), key=lambda j: (normed[j], -j)) == item.answer
        calib = [row[j][0] - row[j][1] for j in range(len(row))]
        cal += max(range(len(row)), key=lambda j: (calib[j], -j)) == item.answer
    n = len(quiz.items)
    return acc / n, norm / n, cal / n


def test_scores_match_brute_force(tiny_lm, quiz_path):
    quiz = load_quiz(str(quiz_path))
    expected = brute_force(tiny_lm, quiz)
    got = choice_loglikelihoods(tiny_lm, quiz)
    assert np.allclose(np.array([x for row in got for x in row]), np.array([x for row in expected for x in row]), atol=1e-5)
    res = choice_scores(tiny_lm, quiz)
    assert (res.acc, res.acc_norm, res.acc_calibrated) == pytest.approx(by_hand(quiz, expected))
    assert res.chance == pytest.approx((1 / 3 + 1 / 2 + 1 / 5 + 1 / 2) / 4) and res.n == 4
    assert set(res.to_dict()) == {"acc", "acc_norm", "acc_calibrated", "chance", "n"}
    # another template and neutral prompt, and a small batch budget (many batches) give the brute-force values too
    got = choice_loglikelihoods(tiny_lm, quiz, batch_tokens=64, template="Q: {question}\nA:", neutral_prompt="")
    expected = brute_force(tiny_lm, quiz, "Q: {question}\nA:", "")
    for g_row, e_row in zip(got, expected, strict=True):
        assert np.allclose(np.array(g_row), np.array(e_row), atol=1e-5)


def test_scores_under_hooks_match_brute_force(tiny_lm, quiz_path):
    quiz = load_quiz(str(quiz_path), max_items=2)
    cond = Condition("ablated", (LatentSelection(tiny_sae(), tuple(range(0, 96, 3))),), Intervention(mode="clamp", value=4))
    got = choice_loglikelihoods(tiny_lm, quiz, cond.hooks())
    expected = brute_force(tiny_lm, quiz, hooks=cond.hooks())
    for g_row, e_row in zip(got, expected, strict=True):
        assert np.allclose(np.array(g_row), np.array(e_row), atol=1e-5)
    assert got != choice_loglikelihoods(tiny_lm, quiz)


def test_one_batched_call_with_deduplicated_sequences(tiny_lm, monkeypatch):
    item = {"question": "Pick one", "choices": ["yes", "no"], "answer": 0}
    twice = quiz_from_bytes(json.dumps([item, {**item, "answer": 1}, {**item, "question": "Other"}]).encode(), "dup.json")
    calls = []
    real = batching.score_tokens

    def counting(lm, sequences, *args, **kwargs):
        calls.append([tuple(s) for s in sequences])
        return real(lm, sequences, *args, **kwargs)

    monkeypatch.setattr(choices, "score_tokens", counting)
    lls = choice_loglikelihoods(tiny_lm, twice)
    assert len(calls) == 1
    # 2 prompts x 2 choices conditional + 2 neutral sequences (shared by all three items)
    assert len(calls[0]) == len(set(calls[0])) == 6
    assert lls[0] == lls[1] and lls[0][0][1] == lls[2][0][1]
    monkeypatch.undo()
    singles = [choice_loglikelihoods(tiny_lm, Quiz("one", (it,), "x"))[0] for it in twice.items]
    for a, b in zip(lls, singles, strict=True):
        assert np.allclose(np.array(a), np.array(b), atol=1e-5)
    res = choice_scores(tiny_lm, twice)
    assert res.acc == pytest.approx(by_hand(twice, lls)[0])


def test_ties_go_to_the_lowest_index():
    quiz = Quiz("t", (QuizItem("q", ("aa", "bb", "cc"), 0), QuizItem("q", ("aa", "bb", "cc"), 1)), "x")
    tie = [(-2.0, -1.0), (-2.0, -1.0), (-5.0, -1.0)]
    res = accuracies(quiz, [tie, tie])
    assert res == ChoiceResult(acc=0.5, acc_norm=0.5, acc_calibrated=0.5, chance=pytest.approx(1 / 3), n=2)
    # acc_norm divides by UTF-8 bytes of " " + choice: a longer choice can win on the normalised score
    long = Quiz("t", (QuizItem("q", ("a", "ééé"), 1),), "x")
    res = accuracies(long, [[(-4.0, 0.0), (-6.0, 0.0)]])  # -4/2 = -2 < -6/7
    assert (res.acc, res.acc_norm, res.acc_calibrated) == (0.0, 1.0, 0.0)
    res = accuracies(long, [[(-4.0, -1.0), (-6.0, -4.0)]])  # calibrated: -3 < -2
    assert res.acc_calibrated == 1.0
    with pytest.raises(InputError):
        accuracies(long, [])


def test_too_long_choice_and_long_prompt(tiny_lm):
    long_q = quiz_from_bytes(json.dumps([{"question": "word " * 60, "choices": ["a", "b"], "answer": 0}]).encode(), "l.json")
    got = choice_loglikelihoods(tiny_lm, long_q, max_seq_len=40)
    assert all(np.isfinite(v) for row in got for pair in row for v in pair)
    huge = quiz_from_bytes(json.dumps([{"question": "q", "choices": ["x" * 200, "b"], "answer": 0}]).encode(), "h.json")
    with pytest.raises(InputError, match="does not fit"):
        choice_scores(tiny_lm, huge)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[{"question": "q", "choices": ["a", "b"], "answer": 0},', "malformed JSON"),
        ('{"question": "q", "choices": ["a", "b"], "answer": 0}\n{"question": ', "line 2 is not valid JSON"),
        ('[{"question": "q", "choices": ["a", "b"], "answer": 2}]', "item 0: 'answer' 2 is out of range"),
        ('[{"question": "q", "choices": ["a", "b"], "answer": -1}]', "out of range"),
        ('[{"question": "q", "choices": ["a", "b"], "answer": true}]', "item 0: 'answer' must be the integer"),
        ('[{"question": "q", "choices": ["a", "b"], "answer": "0"}]', "'answer' must be the integer"),
        (
            '[{"question": "q", "choices": ["a", "b"], "answer": 0}, {"question": "r", "choices": ["a", "a"], "answer": 0}]',
            "item 1: 'choices' lists 'a' more than once",
        ),
        ('[{"question": "q", "choices": ["a"], "answer": 0}]', "'choices' must be a list of 2 to 10"),
        ('[{"question": "q", "choices": ["a", ""], "answer": 0}]', r"'choices'\[1\] must be a non-empty string"),
        ('[{"question": "", "choices": ["a", "b"], "answer": 0}]', "'question' must be a non-empty string"),
        ('[{"question": "q", "choices": ["a", "b"], "answer": 0, "paraphrase": 3}]', "'paraphrase' must be"),
        (
            '[{"question": "q", "choices": ["a", "b"], "answer": 0, "translations": {"fr": {"question": "q", '
            '"choices": ["a"]}}}]',
            "translations.fr",
        ),
        (
            '[{"id": "x", "question": "q", "choices": ["a", "b"], "answer": 0}, '
            '{"id": "x", "question": "r", "choices": ["a", "b"], "answer": 0}]',
            "id 'x' is used twice",
        ),
        ("[]", "contains no questions"),
        ('["q"]', "item 0 must be an object"),
    ],
)
def test_loader_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TextSourceError, match=message) as err:
        load_quiz(str(path))
    assert str(path) in str(err.value)
    with pytest.raises(TextSourceError, match=message):
        quiz_from_bytes(content.encode(), "bad.json")


def test_binary_non_utf8_and_missing_files(tmp_path):
    with pytest.raises(TextSourceError, match="binary"):
        quiz_from_bytes(b"\x00\x01\x02", "x.json")
    with pytest.raises(TextSourceError, match="not UTF-8"):
        quiz_from_bytes(b'[{"question": "\xff"}]', "x.json")
    with pytest.raises(TextSourceError, match="not found"):
        load_quiz(str(tmp_path / "nope.json"))
    with pytest.raises(TextSourceError, match="unknown split"):
        load_quiz("general-quiz:train")


def test_split_filtering_and_names(quiz_path):
    full = load_quiz(str(quiz_path))
    assert full.name == "mini_quiz" and len(full) == 4 and full.source == str(quiz_path)
    dev = load_quiz(str(quiz_path), split="dev")
    assert [i.id for i in dev.items] == ["q1", "q4"] and dev.name == "mini_quiz:dev"
    assert [i.id for i in load_quiz(str(quiz_path), split="test", max_items=1).items] == ["q2"]
    with pytest.raises(TextSourceError, match="no items in split"):
        load_quiz(str(quiz_path), split="train")
    item = full.items[1]
    assert item.choices == ("Marlowe", "Shakespeare") and item.answer == 1 and item.extra == {"topic": "plays"}
    jsonl = quiz_from_bytes("\n".join(json.dumps(i) for i in ITEMS).encode(), "up.jsonl", split="test")
    assert jsonl.name == "up:test" and jsonl.source == "upload:up.jsonl" and len(jsonl) == 2


def test_variants_keep_ids_and_choices(quiz_path):
    quiz = load_quiz(str(quiz_path))
    para = paraphrased(quiz)
    assert para.name == "mini_quiz+paraphrase" and [i.id for i in para.items] == ["q1", "q3"]
    assert para.items[0].question == "Which city is France's capital?"
    assert [(i.choices, i.answer) for i in para.items] == [(quiz.items[0].choices, 0), (quiz.items[2].choices, 3)]
    fr = translated(quiz, "fr")
    assert fr.name == "mini_quiz+fr" and [i.id for i in fr.items] == ["q1"]
    assert fr.items[0].question.startswith("Quelle") and fr.items[0].choices == ("Paris", "Lyon", "Nice")
    assert len(translated(quiz, "de")) == 0


def test_a_quiz_file_is_recognised_by_its_fields(quiz_path, tmp_path):
    assert looks_like_quiz(quiz_path) and looks_like_quiz(str(quiz_path))
    assert looks_like_quiz(quiz_path.read_bytes()) and looks_like_quiz(quiz_path.read_text())
    assert looks_like_quiz("hp-quiz") and looks_like_quiz("general-quiz:test")
    cloze = tmp_path / "cloze.jsonl"
    cloze.write_text('{"prompt": "The capital of France is", "answer": "Paris"}\n{"question": "Who?", "answer": "Me"}\n')
    assert not looks_like_quiz(cloze) and not looks_like_quiz("hp-cloze") and not looks_like_quiz("[not json")
    assert is_quiz_records(ITEMS)
    assert not is_quiz_records([]) and not is_quiz_records([{"question": "q", "choices": ["a"], "answer": True}])
    assert not is_quiz_records([*ITEMS, {"question": "q", "answer": "Paris"}])


@pytest.mark.parametrize("name", sorted(BUILTIN_QUIZZES))
def test_builtin_quizzes_load_with_disjoint_complete_splits(name):
    for path in BUILTIN_QUIZZES[name]:
        if path.is_file():
            assert len(load_quiz(str(path))) > 0
    if not BUILTIN_AVAILABLE[name]:
        pytest.skip(f"{name}: not all of its files exist yet")
    quiz = load_quiz(name)
    dev, test = load_quiz(name, split="dev"), load_quiz(f"{name}:test")
    assert dev.name == f"{name}:dev" and test.name == f"{name}:test"
    assert len(dev) + len(test) == len(quiz) and len(dev) > 0 and len(test) > 0
    assert all(item.id is not None for item in quiz.items)
    assert not {i.id for i in dev.items} & {i.id for i in test.items}
    assert not {i.question.lower() for i in dev.items} & {i.question.lower() for i in test.items}
    assert 0 < quiz.chance < 1
    if any("paraphrase" in i.extra for i in quiz.items):
        assert [i.id for i in paraphrased(quiz).items] == [i.id for i in quiz.items if "paraphrase" in i.extra]
