"""The token windows SAEs are trained on: a stated mix of local text sources, cut into fixed-length windows.

Default mix (fractions of the token budget), all from ``../shared/data`` in development (``--data-dir`` elsewhere):

* ``gutenberg``   0.45 - 36 public-domain books, an even share of random excerpts from each;
* ``wikitext2``   0.30 - WikiText-2 raw *train* (the test split stays unseen: SAE quality is measured on it);
* ``hp-fanwiki``  0.25 - Harry Potter Wiki character articles, so that the concept we unlearn is represented.

Every window is BOS + ``context - 1`` tokens of one source; windows are shuffled with a seed, so the same
arguments always give the same corpus.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unlearn_core.data.texts import read_text_file
from unlearn_core.errors import InputError, TextSourceError
from unlearn_core.models.presets import REPO_ROOT

DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
DEFAULT_MIX: dict[str, float] = {"gutenberg": 0.45, "wikitext2": 0.30, "hp-fanwiki": 0.25}
SOURCE_FILES: dict[str, str] = {
    "gutenberg": "gutenberg/*.txt",
    "wikitext2": "wikitext2/wiki.train*.raw",
    "hp-fanwiki": "hp_fanwiki/*.txt",
}
_CHARS_PER_TOKEN_GUESS = 3.5
_PG_START = re.compile(r"\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG[^\n]*\n", re.IGNORECASE)
_PG_END = re.compile(r"\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG", re.IGNORECASE)


@dataclass(frozen=True)
class TrainingCorpus:
    """Token windows (each starting with BOS) and where each came from."""

    windows: list[list[int]]
    sources: list[str]
    mix: dict[str, float]
    tokens_per_source: dict[str, int]

    def describe(self) -> dict[str, Any]:
        return {"mix": self.mix, "tokens_per_source": self.tokens_per_source, "windows": len(self.windows)}


def strip_gutenberg_boilerplate(text: str) -> str:
    """The book without Project Gutenberg's licence header and footer, with Unix line endings."""
    text = text.replace("\r\n", "\n")
    start = _PG_START.search(text)
    if start:
        text = text[start.end():]
    end = _PG_END.search(text)
    if end:
        text = text[: end.start()]
    return text.strip()


def source_documents(name: str, data_dir: Path = DEFAULT_DATA_DIR) -> list[str]:
    """The documents of one source (one per file), read from ``data_dir``."""
    if name not in SOURCE_FILES:
        raise TextSourceError(f"unknown training source {name!r}; known: {', '.join(SOURCE_FILES)}")
    paths = sorted(Path(data_dir).glob(SOURCE_FILES[name]))
    if not paths:
        raise TextSourceError(f"no files for training source {name!r} ({SOURCE_FILES[name]}) under {data_dir}")
    docs = [read_text_file(p) for p in paths]
    if name == "gutenberg":
        docs = [strip_gutenberg_boilerplate(d) for d in docs]
    return [d for d in docs if d.strip()]


def build_training_corpus(
    tokenizer: Any,
    bos_token_id: int,
    total_tokens: int,
    context: int = 256,
    mix: Mapping[str, float] | None = None,
    data_dir: Path = DEFAULT_DATA_DIR,
    seed: int = 0,
) -> TrainingCorpus:
    """About ``total_tokens`` non-BOS tokens in windows of ``context`` tokens, split across sources by ``mix``.

    Each source's budget is shared evenly across its documents: a random contiguous excerpt of each document
    (the whole document when it is short), cut into windows. A source smaller than its budget gives all it has.
    """
    mix = dict(DEFAULT_MIX if mix is None else mix)
    if context < 2:
        raise InputError("context must be at least 2 (BOS + one token)")
    if total_tokens < context - 1:
        raise InputError(f"total_tokens ({total_tokens}) is smaller than one window ({context - 1} tokens)")
    if abs(sum(mix.values()) - 1.0) > 1e-6 or any(f < 0 for f in mix.values()):
        raise InputError(f"mix fractions must be non-negative and sum to 1, got {mix}")
    rng = random.Random(seed)
    span = context - 1
    windows: list[list[int]] = []
    sources: list[str] = []
    tokens_per_source: dict[str, int] = {}
    for name, fraction in mix.items():
        n_windows = round(total_tokens * fraction / span)
        if n_windows == 0:
            continue
        picked = _source_windows(tokenizer, source_documents(name, data_dir), n_windows, span, rng)
        windows.extend([bos_token_id, *w] for w in picked)
        sources.extend([name] * len(picked))
        tokens_per_source[name] = len(picked) * span
    order = list(range(len(windows)))
    rng.shuffle(order)
    return TrainingCorpus(
        windows=[windows[i] for i in order],
        sources=[sources[i] for i in order],
        mix=mix,
        tokens_per_source=tokens_per_source,
    )


def _source_windows(tokenizer: Any, docs: Sequence[str], n_windows: int, span: int, rng: random.Random) -> list[list[int]]:
    per_doc = -(-n_windows // len(docs))
    chars = int(per_doc * span * _CHARS_PER_TOKEN_GUESS * 1.3)
    pool: list[list[int]] = []
    for doc in docs:
        start = rng.randrange(0, max(1, len(doc) - chars))
        ids = tokenizer(doc[start : start + chars], add_special_tokens=False)["input_ids"]
        cut = [ids[i : i + span] for i in range(0, len(ids) - span + 1, span)]
        pool.extend(cut[:per_doc])
    rng.shuffle(pool)
    return pool[:n_windows]
