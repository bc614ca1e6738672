"""Multiple-choice knowledge probes, scored like lm-eval's multiple-choice tasks.

Each choice is the continuation ``" " + choice`` of the prompt ``template.format(question=...)`` (BOS first; a
prompt too long for ``max_seq_len`` loses its start, never BOS or the choice). Three accuracies:

* ``acc`` - the choice with the highest summed log-likelihood;
* ``acc_norm`` - the highest summed log-likelihood per UTF-8 byte of the continuation;
* ``acc_calibrated`` - the highest log-likelihood after the question minus that of the same continuation after
  ``neutral_prompt`` (lm-eval's ``acc_mutual_info``): it discounts choices the model likes whatever the question.

Ties go to the lowest index, as with ``numpy.argmax``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from unlearn_core.ablation.interventions import Hook
from unlearn_core.data.quizzes import Quiz, QuizItem
from unlearn_core.errors import InputError
from unlearn_core.models.loading import LoadedModel
from unlearn_core.scoring.batching import DEFAULT_BATCH_TOKENS, ProgressCallback, StopCheck, score_tokens

QUIZ_TEMPLATE = "Question: {question}\nAnswer:"
NEUTRAL_PROMPT = "Answer:"

ChoiceLogLikelihoods = list[list[tuple[float, float]]]
"""Per item, per choice: (summed log-likelihood after the question, after the neutral prompt)."""


@dataclass(frozen=True)
class ChoiceResult:
    acc: float
    """Fraction of items whose correct choice has the highest summed log-likelihood."""
    acc_norm: float
    """The same with log-likelihoods divided by the continuation's length in characters (lm-eval: len of " " + choice)."""
    acc_calibrated: float
    """The same with log-likelihoods minus each continuation's log-likelihood after the neutral prompt."""
    chance: float
    """Expected accuracy of a uniform guess (mean of 1 / number of choices)."""
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def choice_continuation(choice: str) -> str:
    """The text scored for a choice: the choice after one space (lm-eval's default target delimiter)."""
    return " " + choice


def choice_loglikelihoods(
    lm: LoadedModel,
    quiz: Quiz,
    hooks: Sequence[Hook] = (),
    max_seq_len: int = 256,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: ProgressCallback | None = None,
    template: str = QUIZ_TEMPLATE,
    neutral_prompt: str = NEUTRAL_PROMPT,
    should_stop: StopCheck | None = None,
) -> ChoiceLogLikelihoods:
    """For every item and choice, the summed log-likelihood of the choice's continuation after the question's prompt
    and after ``neutral_prompt``, in one batched pass (identical sequences are scored once)."""
    limit = min(max_seq_len, lm.n_ctx)
    if limit < 3:
        raise InputError("max_seq_len for multiple-choice probes must be at least 3 (BOS, prompt, choice)")
    if not quiz.items:
        raise InputError(f"quiz {quiz.name} has no items")
    tokenize = lm.tokenizer
    neutral_ids = tokenize(neutral_prompt, add_special_tokens=False)["input_ids"] if neutral_prompt else []
    index: dict[tuple[int, ...], int] = {}  # unique sequence -> position in ``sequences``
    sequences: list[list[int]] = []

    def add(prompt_ids: list[int], cont_ids: list[int]) -> int:
        seq = (lm.bos_token_id, *(prompt_ids + cont_ids)[-(limit - 1) :])
        if seq not in index:
            index[seq] = len(sequences)
            sequences.append(list(seq))
        return index[seq]

    # per item, per choice: (conditional sequence, neutral sequence, number of continuation tokens)
    plan: list[list[tuple[int, int, int]]] = []
    for i, item in enumerate(quiz.items):
        prompt_ids = tokenize(_prompt(template, item), add_special_tokens=False)["input_ids"]
        row: list[tuple[int, int, int]] = []
        for j, choice in enumerate(item.choices):
            cont_ids = tokenize(choice_continuation(choice), add_special_tokens=False)["input_ids"]
            if not cont_ids or len(cont_ids) > limit - 2:
                raise InputError(
                    f"quiz {quiz.name}: choice {j} of item {item.id or i} has {len(cont_ids)} tokens, "
                    f"which does not fit max_seq_len {limit} with BOS and a prompt"
                )
            row.append((add(prompt_ids, cont_ids), add(neutral_ids, cont_ids), len(cont_ids)))
        plan.append(row)
    scores = score_tokens(lm, sequences, hooks, batch_tokens, progress, should_stop)

    def summed(seq: int, n_cont: int) -> float:
        return float(scores[seq].logprobs[-n_cont:].double().sum())

    return [[(summed(cond, n), summed(neutral, n)) for cond, neutral, n in item_plan] for item_plan in plan]


def choice_scores(
    lm: LoadedModel,
    quiz: Quiz,
    hooks: Sequence[Hook] = (),
    max_seq_len: int = 256,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: ProgressCallback | None = None,
    template: str = QUIZ_TEMPLATE,
    neutral_prompt: str = NEUTRAL_PROMPT,
    should_stop: StopCheck | None = None,
) -> ChoiceResult:
    """``acc``, ``acc_norm`` and ``acc_calibrated`` of a quiz under ``hooks`` (see the module docstring); a
    ``should_stop`` that says so ends it between batches (:class:`~unlearn_core.errors.Stopped`)."""
    lls = choice_loglikelihoods(lm, quiz, hooks, max_seq_len, batch_tokens, progress, template, neutral_prompt,
                                should_stop)
    return accuracies(quiz, lls)


def accuracies(quiz: Quiz, lls: ChoiceLogLikelihoods) -> ChoiceResult:
    """The three accuracies from per-choice log-likelihoods (as returned by :func:`choice_loglikelihoods`)."""
    if len(lls) != len(quiz.items) or not lls:
        raise InputError(f"need one row of log-likelihoods per item of quiz {quiz.name}")
    acc = acc_norm = acc_calibrated = 0
    for item, row in zip(quiz.items, lls, strict=True):
        conditional = np.array([c for c, _ in row], dtype=np.float64)
        neutral = np.array([u for _, u in row], dtype=np.float64)
        n_chars = np.array([len(choice_continuation(c)) for c in item.choices], dtype=np.float64)
        acc += int(np.argmax(conditional)) == item.answer
        acc_norm += int(np.argmax(conditional / n_chars)) == item.answer
        acc_calibrated += int(np.argmax(conditional - neutral)) == item.answer
    n = len(quiz.items)
    return ChoiceResult(acc=acc / n, acc_norm=acc_norm / n, acc_calibrated=acc_calibrated / n, chance=quiz.chance, n=n)


def _prompt(template: str, item: QuizItem) -> str:
    try:
        return template.format(question=item.question)
    except (KeyError, IndexError, ValueError) as exc:
        raise InputError(f"quiz template {template!r} must contain only the field {{question}} ({exc})") from exc
