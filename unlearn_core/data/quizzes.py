"""Multiple-choice knowledge probes: ``{"question": str, "choices": [str, ...], "answer": int}`` items.

Files are a JSON list or JSON Lines, like :mod:`unlearn_core.data.probes`. Optional keys are kept on the item:
``id`` and ``split`` (``"dev"``/``"test"``) as fields, everything else (``paraphrase``, ``translations``, ``topic``,
...) in :attr:`QuizItem.extra`. ``paraphrase`` is a reworded question with the same choices; ``translations`` maps a
language code to ``{"question": str, "choices": [str, ...]}`` in the original choice order. Scoring lives in
:mod:`unlearn_core.scoring.choices`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from unlearn_core.data.probes import BUILTIN_PROBES, SPLIT_PROBES, ProbeSet, _parse_records, load_probes, probes_from_bytes
from unlearn_core.data.texts import DATA_DIR, decode_text, read_text_file
from unlearn_core.errors import TextSourceError

MIN_CHOICES = 2
MAX_CHOICES = 10
QUIZ_SPLITS = ("dev", "test")

BUILTIN_QUIZZES: dict[str, list[Path]] = {
    "hp-quiz": [DATA_DIR / "probes" / "hp_quiz_a.json", DATA_DIR / "probes" / "hp_quiz_b.json"],
    "general-quiz": [DATA_DIR / "probes" / "general_quiz.json"],
    "adjacent-quiz": [DATA_DIR / "probes" / "adjacent_fiction_quiz.json"],
}
"""``hp-quiz``: Harry Potter facts (the forget side); ``general-quiz``: general knowledge (retain);
``adjacent-quiz``: other fantasy fiction (the neighbourhood an unlearning method should spare). A built-in may span
several files, concatenated in order. Each item has a ``split`` (dev/test): ``"hp-quiz:test"`` names one split."""


@dataclass(frozen=True)
class QuizItem:
    """One multiple-choice question; ``answer`` is the index of the correct choice."""

    question: str
    choices: tuple[str, ...]
    answer: int
    id: str | None = None
    split: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Quiz:
    """A named multiple-choice probe set."""

    name: str
    items: tuple[QuizItem, ...]
    source: str

    def __len__(self) -> int:
        return len(self.items)

    @property
    def chance(self) -> float:
        """Accuracy of guessing uniformly: the mean over items of 1 / number of choices."""
        if not self.items:
            return 0.0
        return sum(1.0 / len(item.choices) for item in self.items) / len(self.items)


def is_quiz_records(records: Sequence[Any]) -> bool:
    """True if ``records`` look multiple-choice: every one is an object with ``question``, a ``choices`` list and an
    integer ``answer`` (the fields that tell a quiz from a cloze/QA probe file; full validation is in the loader)."""
    return bool(records) and all(
        isinstance(r, dict)
        and "question" in r
        and isinstance(r.get("choices"), list)
        and isinstance(r.get("answer"), int)
        and not isinstance(r.get("answer"), bool)
        for r in records
    )


def looks_like_quiz(path_or_text: str | Path | bytes) -> bool:
    """True if a built-in quiz name, a file, uploaded bytes or a text holds multiple-choice records.

    For routing a file given as probes to the right loader: a string naming an existing file is read, any other
    string is taken as the file's contents. Unreadable or malformed input gives ``False`` (the loader it is then
    routed to reports the problem).
    """
    if isinstance(path_or_text, str) and path_or_text.partition(":")[0] in BUILTIN_QUIZZES:
        return True
    try:
        if isinstance(path_or_text, bytes):
            text = decode_text(path_or_text, "upload")
        elif isinstance(path_or_text, Path) or _is_file(path_or_text):
            text = read_text_file(Path(path_or_text).expanduser())
        else:
            text = path_or_text
        return is_quiz_records(_parse_records(text, "quiz"))
    except TextSourceError:
        return False


def load_quiz(name_or_path: str | Path, split: str | None = None, max_items: int | None = None) -> Quiz:
    """A built-in quiz by name (``"hp-quiz"``, or ``"hp-quiz:test"`` for one split) or a quiz file.

    ``split`` keeps only the items of that split. The quiz is named after the built-in (``"{name}:{split}"`` with a
    split) or the file's stem (likewise suffixed with the split).
    """
    builtin = _builtin_and_split(str(name_or_path)) if isinstance(name_or_path, str) else None
    if builtin is not None:
        name, named_split = builtin
        if split is not None and named_split is not None and split != named_split:
            raise TextSourceError(f"quiz {name_or_path!r} names split {named_split!r} but split={split!r} was asked for")
        split = split or named_split
        paths = BUILTIN_QUIZZES[name]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise TextSourceError(f"built-in quiz {name!r} is incomplete: {', '.join(missing)} not found")
        items = [item for p in paths for item in _items(read_text_file(p), str(p))]
        source = ", ".join(str(p) for p in paths)
    else:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise TextSourceError(f"quiz file {str(name_or_path)!r} not found (built-in quizzes: {', '.join(BUILTIN_QUIZZES)})")
        name, source = path.stem, str(path)
        items = _items(read_text_file(path), source)
    return _quiz(items, name, source, split, max_items)


def quiz_from_bytes(data: bytes, name: str, split: str | None = None, max_items: int | None = None) -> Quiz:
    """A quiz from an uploaded file's bytes (same formats and errors as :func:`load_quiz`)."""
    return _quiz(_items(decode_text(data, name), name), Path(name).stem, f"upload:{name}", split, max_items)


def paraphrased(quiz: Quiz) -> Quiz:
    """The items that have a ``paraphrase``, asked with it instead of the question (same choices, ids, answers)."""
    items = tuple(replace(item, question=item.extra["paraphrase"]) for item in quiz.items if "paraphrase" in item.extra)
    return Quiz(name=f"{quiz.name}+paraphrase", items=items, source=quiz.source)


def translated(quiz: Quiz, lang: str) -> Quiz:
    """The items that have a ``translations[lang]``, asked with its question and choices (same ids and answers)."""
    items = []
    for item in quiz.items:
        translation = item.extra.get("translations", {}).get(lang)
        if translation is not None:
            items.append(replace(item, question=translation["question"], choices=tuple(translation["choices"])))
    return Quiz(name=f"{quiz.name}+{lang}", items=tuple(items), source=quiz.source)


def _builtin_and_split(name: str) -> tuple[str, str | None] | None:
    if name in BUILTIN_QUIZZES:
        return name, None
    base, sep, split = name.rpartition(":")
    if sep and base in BUILTIN_QUIZZES:
        if split not in QUIZ_SPLITS:
            raise TextSourceError(f"unknown split {split!r} in {name!r} (splits: {', '.join(QUIZ_SPLITS)})")
        return base, split
    return None


def _is_file(text: str) -> bool:
    try:
        return "\n" not in text and len(text) < 4096 and Path(text).expanduser().is_file()
    except (OSError, ValueError):
        return False


def _quiz(items: list[QuizItem], name: str, source: str, split: str | None, max_items: int | None) -> Quiz:
    where = source.removeprefix("upload:")
    if not items:
        raise TextSourceError(f"{where} contains no questions")
    seen: set[str] = set()
    for item in items:
        if item.id is not None:
            if item.id in seen:
                raise TextSourceError(f"{where}: item id {item.id!r} is used twice")
            seen.add(item.id)
    if split is not None:
        items = [item for item in items if item.split == split]
        if not items:
            raise TextSourceError(f"{where} has no items in split {split!r}")
        name = f"{name}:{split}"
    if max_items is not None:
        if max_items < 1:
            raise TextSourceError("max_items must be at least 1")
        items = items[:max_items]
    return Quiz(name=name, items=tuple(items), source=source)


def _items(text: str, source: str) -> list[QuizItem]:
    return [_to_item(record, i, source) for i, record in enumerate(_parse_records(text, source))]


def _to_item(record: Any, index: int, source: str) -> QuizItem:
    where = f"{source}: item {index}"
    if not isinstance(record, dict):
        raise TextSourceError(f"{where} must be an object with 'question', 'choices' and 'answer'")
    question = _text(record.get("question"), f"{where}: 'question'")
    choices = _choices(record.get("choices"), f"{where}: 'choices'")
    answer = record.get("answer")
    if not isinstance(answer, int) or isinstance(answer, bool):
        raise TextSourceError(f"{where}: 'answer' must be the integer index of the correct choice")
    if not 0 <= answer < len(choices):
        raise TextSourceError(f"{where}: 'answer' {answer} is out of range for {len(choices)} choices")
    item_id, split = record.get("id"), record.get("split")
    if item_id is not None and (isinstance(item_id, bool) or not isinstance(item_id, str | int)):
        raise TextSourceError(f"{where}: 'id' must be a string or an integer")
    if split is not None and not isinstance(split, str):
        raise TextSourceError(f"{where}: 'split' must be a string such as 'dev' or 'test'")
    extra = {k: v for k, v in record.items() if k not in ("question", "choices", "answer", "id", "split")}
    if "paraphrase" in extra:
        extra["paraphrase"] = _text(extra["paraphrase"], f"{where}: 'paraphrase'")
    if "translations" in extra:
        extra["translations"] = _translations(extra["translations"], len(choices), where)
    return QuizItem(
        question=question,
        choices=choices,
        answer=answer,
        id=None if item_id is None else str(item_id),
        split=split,
        extra=extra,
    )


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise TextSourceError(f"{where} must be a non-empty string")
    return value.strip()


def _choices(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not MIN_CHOICES <= len(value) <= MAX_CHOICES:
        raise TextSourceError(f"{where} must be a list of {MIN_CHOICES} to {MAX_CHOICES} strings")
    choices = tuple(_text(c, f"{where}[{i}]") for i, c in enumerate(value))
    if len(set(choices)) != len(choices):
        duplicate = next(c for c in choices if choices.count(c) > 1)
        raise TextSourceError(f"{where} lists {duplicate!r} more than once")
    return choices


def _translations(value: Any, n_choices: int, where: str) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict):
        raise TextSourceError(f"{where}: 'translations' must map a language code to {{'question', 'choices'}}")
    out = {}
    for lang, tr in value.items():
        at = f"{where}: 'translations.{lang}'"
        if not isinstance(tr, dict):
            raise TextSourceError(f"{at} must be an object with 'question' and 'choices'")
        choices = _choices(tr.get("choices"), f"{at}.choices")
        if len(choices) != n_choices:
            raise TextSourceError(f"{at}.choices has {len(choices)} choices, the question has {n_choices}")
        out[lang] = {**tr, "question": _text(tr.get("question"), f"{at}.question"), "choices": list(choices)}
    return out


def load_knowledge_probes(name_or_path: str, max_items: int | None = None) -> ProbeSet | Quiz:
    """A built-in or file probe set of either kind: multiple-choice (recognised by its fields or its built-in
    name) as a :class:`Quiz`, cloze/QA as a :class:`~unlearn_core.data.probes.ProbeSet`."""
    cloze_builtin = name_or_path in BUILTIN_PROBES or name_or_path in SPLIT_PROBES
    if _builtin_and_split(name_or_path) is not None or (not cloze_builtin and looks_like_quiz(name_or_path)):
        return load_quiz(name_or_path, max_items=max_items)
    return load_probes(name_or_path, max_items)


def knowledge_set_names() -> list[str]:
    """Every built-in knowledge-probe name, test splits first: quizzes, the project's cloze splits, QA sets."""
    quizzes = [f"{name}:{split}" for split in ("test", "dev") for name in BUILTIN_QUIZZES]
    return quizzes + list(SPLIT_PROBES) + list(BUILTIN_PROBES)


def knowledge_probes_from_bytes(data: bytes, name: str, max_items: int | None = None) -> ProbeSet | Quiz:
    """An uploaded probe file of either kind, recognised by its fields (multiple choice, cloze or QA)."""
    if looks_like_quiz(data):
        return quiz_from_bytes(data, name, max_items=max_items)
    return probes_from_bytes(data, name, max_items)
