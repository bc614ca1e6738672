"""Knowledge probes: cloze ``{"prompt", "answer"}`` and QA ``{"question", "answer": str | [str]}`` items.

Files are a JSON list or JSON Lines (NQ-open uses JSON Lines; a QA benchmark you hold, e.g. one shipped as a JSON list
of ``{"question", "answer"}``, loads by path). A QA item becomes the prompt
``"Question: {question}\\nAnswer:"``; answers are scored as a continuation starting with a space, unless the
prompt already ends in whitespace. Scoring lives in :mod:`unlearn_core.scoring.probes`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from unlearn_core.data.texts import DATA_DIR, read_text_file
from unlearn_core.errors import TextSourceError

ProbeKind = Literal["cloze", "qa"]
QA_TEMPLATE = "Question: {question}\nAnswer:"

BUILTIN_PROBES: dict[str, Path] = {
    "hp-cloze": DATA_DIR / "probes" / "hp_cloze.json",
    "general-cloze": DATA_DIR / "probes" / "general_cloze.json",
    "nq-open": DATA_DIR / "qa" / "nq_open_efficientqa_dev.jsonl",
}
"""``hp-cloze`` / ``general-cloze``: this project's cloze sets (written for it, no book text), each with a dev split
(52 facts; the plain name, which earlier sweeps tuned on) and a test split (64 other facts, never tuned on);
NQ-open (EfficientQA dev) without its Harry Potter questions. Other projects' Harry Potter QA sets are not bundled
(external benchmarks are kept aside to check this work): pass your own copy by path."""
SPLIT_PROBES: dict[str, Path] = {
    "hp-cloze:dev": BUILTIN_PROBES["hp-cloze"],
    "hp-cloze:test": DATA_DIR / "probes" / "hp_cloze_test.json",
    "general-cloze:dev": BUILTIN_PROBES["general-cloze"],
    "general-cloze:test": DATA_DIR / "probes" / "general_cloze_test.json",
}
"""The dev (tune on it) and test (report on it) splits of the project's cloze sets, by ``NAME:SPLIT``."""
FORGET_PROBES = ("hp-cloze",)
RETAIN_PROBES = ("general-cloze",)

_HARRY_POTTER_TERMS = re.compile(
    r"harry potter|hogwarts|dumbledore|voldemort|hermione|weasley|quidditch|gryffindor|slytherin|hufflepuff|"
    r"ravenclaw|snape|hagrid|horcrux|muggle|deathly hallows|rowling|fantastic beasts|half.blood prince|"
    r"goblet of fire|azkaban|philosopher's stone|sorcerer's stone|order of (?:the )?phoenix|chamber of secrets|"
    r"malfoy|grindelwald|diagon|death eater|sirius black"
)


@dataclass(frozen=True)
class Probe:
    """One item: a prompt and the accepted answers (any alias counts)."""

    prompt: str
    answers: tuple[str, ...]
    kind: ProbeKind


@dataclass(frozen=True)
class ProbeSet:
    name: str
    probes: tuple[Probe, ...]
    source: str

    def __len__(self) -> int:
        return len(self.probes)


def mentions_harry_potter(probe: Probe) -> bool:
    """True if a probe's prompt or answers name the Harry Potter world (used to keep general sets general)."""
    text = " ".join((probe.prompt, *probe.answers)).lower()
    return _HARRY_POTTER_TERMS.search(text) is not None


def load_probes(name_or_path: str, max_items: int | None = None) -> ProbeSet:
    """Load a probe file (or a built-in probe set by name); the set is named after the file's stem."""
    if name_or_path in SPLIT_PROBES:
        return _probe_set(read_text_file(SPLIT_PROBES[name_or_path]), name_or_path, name_or_path,
                          str(SPLIT_PROBES[name_or_path]), max_items)
    if name_or_path in BUILTIN_PROBES:
        path = BUILTIN_PROBES[name_or_path]
        name = name_or_path
        if name == "nq-open":
            full = _probe_set(read_text_file(path), name, str(path), str(path), None)
            general = tuple(p for p in full.probes if not mentions_harry_potter(p))
            return ProbeSet(name=name, probes=general[:max_items] if max_items else general, source=full.source)
    else:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise TextSourceError(
                f"probe file {name_or_path!r} not found (built-in probe sets: {', '.join(BUILTIN_PROBES)})"
            )
        name = path.stem
    return _probe_set(read_text_file(path), name, str(path), str(path), max_items)


def probes_from_bytes(data: bytes, name: str, max_items: int | None = None) -> ProbeSet:
    """A probe set from an uploaded file's bytes (same formats as :func:`load_probes`); clear errors for binary,
    non-UTF-8, malformed or empty files."""
    from unlearn_core.data.texts import decode_text

    return _probe_set(decode_text(data, name), Path(name).stem, name, f"upload:{name}", max_items)


def _probe_set(text: str, name: str, where: str, source: str, max_items: int | None) -> ProbeSet:
    probes = tuple(_to_probe(rec, i, where) for i, rec in enumerate(_parse_records(text, where)))
    if not probes:
        raise TextSourceError(f"{where} contains no probes")
    if max_items is not None:
        probes = probes[:max_items]
    return ProbeSet(name=name, probes=probes, source=source)


def answer_continuation(prompt: str, answer: str) -> str:
    """The text scored after ``prompt``: the answer with one leading space unless the prompt ends in whitespace."""
    answer = answer.strip()
    return answer if prompt[-1:].isspace() else " " + answer


def _parse_records(text: str, source: str) -> list[Any]:
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TextSourceError(f"{source}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
        except RecursionError:
            raise TextSourceError(f"{source}: malformed JSON (nested too deeply)") from None
        if not isinstance(data, list):
            raise TextSourceError(f"{source}: expected a JSON list of probes")
        return data
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise TextSourceError(f"{source}: line {lineno} is not valid JSON ({exc.msg})") from exc
        except RecursionError:
            raise TextSourceError(f"{source}: line {lineno} is nested too deeply") from None
    return records


def _to_probe(record: Any, index: int, source: str) -> Probe:
    where = f"{source}: item {index}"
    if not isinstance(record, dict):
        raise TextSourceError(f"{where} must be an object with 'prompt' or 'question' and 'answer'")
    answers = record.get("answer", record.get("answers"))
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
        raise TextSourceError(f"{where}: 'answer' must be a non-empty string or list of strings")
    if isinstance(record.get("prompt"), str) and record["prompt"].strip():
        return Probe(prompt=record["prompt"], answers=tuple(answers), kind="cloze")
    if isinstance(record.get("question"), str) and record["question"].strip():
        prompt = QA_TEMPLATE.format(question=record["question"].strip())
        return Probe(prompt=prompt, answers=tuple(answers), kind="qa")
    raise TextSourceError(f"{where} has neither a 'prompt' (cloze) nor a 'question' (QA)")
