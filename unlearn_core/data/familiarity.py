"""Familiarity probes: Harry Potter completion prompts and the term list that marks a continuation as familiar.

Both were written for this project (``probes/hp_familiarity_prompts.json``: 60 prompts in our own words, split
30 dev / 30 test; ``probes/hp_terms.txt``: ~200 Harry-Potter-specific names, places, coined words and spells, no
ordinary English words). A continuation is *familiar* when it uses at least one term (Eldan & Russinovich's
familiarity, measured by a term list instead of a judge model).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache

from unlearn_core.data.texts import DATA_DIR
from unlearn_core.errors import TextSourceError

PROMPTS_FILE = DATA_DIR / "probes" / "hp_familiarity_prompts.json"
TERMS_FILE = DATA_DIR / "probes" / "hp_terms.txt"
SPLITS = ("dev", "test")


@dataclass(frozen=True)
class FamiliarityPrompt:
    id: str
    split: str
    prompt: str


def familiarity_prompts(split: str | None = "test") -> tuple[FamiliarityPrompt, ...]:
    """The built-in completion prompts of one split (``None``: all)."""
    if split is not None and split not in SPLITS:
        raise TextSourceError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    items = tuple(FamiliarityPrompt(r["id"], r["split"], r["prompt"]) for r in json.loads(PROMPTS_FILE.read_text("utf-8")))
    return tuple(p for p in items if split is None or p.split == split)


@lru_cache(maxsize=1)
def hp_terms() -> tuple[str, ...]:
    """The Harry Potter term list (lowercase, comments dropped)."""
    lines = TERMS_FILE.read_text("utf-8").splitlines()
    return tuple(dict.fromkeys(t.strip().lower() for t in lines if t.strip() and not t.lstrip().startswith("#")))


@lru_cache(maxsize=4)
def _pattern(terms: tuple[str, ...]) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True))
    return re.compile(rf"(?<![\w'])(?:{alternatives})(?![\w])", re.IGNORECASE)


def familiar_terms(text: str, terms: tuple[str, ...] | None = None) -> list[str]:
    """The Harry Potter terms ``text`` uses (whole words, case-insensitive), in order of appearance."""
    terms = hp_terms() if terms is None else terms
    if not terms:
        return []
    return [m.group(0).lower() for m in _pattern(terms).finditer(text)]
