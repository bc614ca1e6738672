"""Text corpora for perplexity: the built-in sets and any user text file.

Built-ins (shipped in ``unlearn_core/data``, see its NOTICE.md):

* ``wikitext2``        - WikiText-2 raw test rows 0-999, non-empty rows: the reference study's 681 texts;
* ``wikitext2-clean``  - the same rows with every whitespace-split word whose lower-case form is one of the
                         study's Harry Potter keywords removed (the study's "cleaned WikiText-2");
* ``hp-fanwiki``       - Harry Potter Wiki character articles (CC BY-SA), one paragraph per text: the 4 held-out
                         articles (40 paragraphs) that latent selection never sees;
* ``hp-fanwiki-select`` - the other 8 articles (240 paragraphs): the forget text latents are selected on;
* ``wikitext2-train``  - the first 1 MB of WikiText-2 raw *train*, one row per text: retain text for selection.

Selection uses the ``*-select``/``*-train`` split of a built-in set (:func:`selection_split`), evaluation the
held-out one, so reported numbers are never measured on the text the latents were picked on.

A path to a UTF-8 text file gives its paragraphs (split on blank lines).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

from unlearn_core.errors import TextSourceError

DATA_DIR = Path(__file__).resolve().parent
BUILTIN_TEXTS: dict[str, str] = {
    "wikitext2": "WikiText-2 test rows 0-999 (the reference study's set)",
    "wikitext2-clean": "WikiText-2 test rows 0-999 with the study's Harry Potter keywords removed",
    "hp-fanwiki": "Harry Potter Wiki character articles (CC BY-SA), held-out articles, one paragraph per text",
    "hp-fanwiki-select": "Harry Potter Wiki character articles (CC BY-SA) used for latent selection",
    "wikitext2-train": "WikiText-2 raw train split (first 1 MB), used as retain text for latent selection",
}
TEXT_SPLIT_ALIASES: dict[str, str] = {"hp-fanwiki:dev": "hp-fanwiki-select", "hp-fanwiki:test": "hp-fanwiki",
                                      "wikitext2:dev": "wikitext2-train", "wikitext2:test": "wikitext2"}
"""``NAME:dev`` / ``NAME:test`` for the two text sets that have both: dev (selection and sweeps tune on it) and
test (held out, for reporting)."""
TEXT_SPLITS: dict[str, str] = {"hp-fanwiki-select": "dev", "wikitext2-train": "dev", "hp-fanwiki": "test",
                               "wikitext2": "test", "wikitext2-clean": "test",
                               **{alias: alias.rpartition(":")[2] for alias in TEXT_SPLIT_ALIASES}}
"""Which split each built-in text set belongs to: ``dev`` (selection and sweeps tune on it) or ``test``."""
HP_FANWIKI_HELD_OUT_ARTICLES = (1, 4, 8, 11)
"""Articles (0-based, in file order) kept for evaluation; the rest are for selection."""
_SELECTION_SPLITS = {"hp-fanwiki": "hp-fanwiki-select", "wikitext2": "wikitext2-train", "wikitext2-clean": "wikitext2-train",
                     "hp-fanwiki:test": "hp-fanwiki-select", "wikitext2:test": "wikitext2-train"}


def selection_split(name_or_path: str) -> str:
    """The text set to select latents on for ``name_or_path``: a built-in's selection split, else itself."""
    return _SELECTION_SPLITS.get(name_or_path, name_or_path)
MAX_FILE_BYTES = 200 * 1024 * 1024

_BLANK_LINES = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class TextSet:
    """A named list of texts to score."""

    name: str
    texts: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.texts)


def load_texts(name_or_path: str, max_texts: int | None = None) -> TextSet:
    """A built-in text set by name, or the paragraphs of a text file; optionally only the first ``max_texts``."""
    builtin = TEXT_SPLIT_ALIASES.get(name_or_path, name_or_path)
    if builtin in BUILTIN_TEXTS:
        texts = _builtin(builtin)
        name, source = name_or_path, BUILTIN_TEXTS[builtin]
    else:
        path = Path(name_or_path).expanduser()
        if not path.exists():
            raise TextSourceError(
                f"{name_or_path!r} is neither a built-in text set ({', '.join(BUILTIN_TEXTS)}) nor an existing file"
            )
        return _paragraph_set(read_text_file(path), path.stem, str(path), max_texts)
    return TextSet(name=name, texts=_first(texts, max_texts), source=source)


def texts_from_bytes(data: bytes, filename: str, max_texts: int | None = None) -> TextSet:
    """The paragraphs of an uploaded file (same rules and errors as a file given to :func:`load_texts`)."""
    return _paragraph_set(decode_text(data, filename), Path(filename).stem, f"upload:{filename}", max_texts)


def _paragraph_set(text: str, name: str, source: str, max_texts: int | None) -> TextSet:
    texts = tuple(split_paragraphs(text))
    if not texts:
        raise TextSourceError(f"{source.removeprefix('upload:')} contains no text")
    return TextSet(name=name, texts=_first(texts, max_texts), source=source)


def _first(texts: tuple[str, ...], max_texts: int | None) -> tuple[str, ...]:
    if max_texts is None:
        return texts
    if max_texts < 1:
        raise TextSourceError("max_texts must be at least 1")
    return texts[:max_texts]


def read_text_file(path: Path) -> str:
    """Read a UTF-8 text file, with clear errors for directories, binary data and other encodings."""
    try:
        if path.is_dir():
            raise TextSourceError(f"{path} is a folder, not a text file")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise TextSourceError(f"{path} is larger than {MAX_FILE_BYTES // 2**20} MB; split it first")
        data = path.read_bytes()
    except OSError as exc:
        raise TextSourceError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return decode_text(data, str(path))


def decode_text(data: bytes, source: str) -> str:
    """Decode uploaded/read bytes as UTF-8 text (BOM allowed, CRLF normalised); refuse binary data."""
    if b"\x00" in data[:65536]:
        raise TextSourceError(f"{source} looks like a binary file, not text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TextSourceError(
            f"{source} is not UTF-8 text (byte {exc.start}); save it as UTF-8 and try again"
        ) from exc
    return text.replace("\r\n", "\n").replace("\r", "\n")


def split_paragraphs(text: str) -> list[str]:
    """Paragraphs separated by blank lines, stripped, empty ones dropped."""
    return [p.strip() for p in _BLANK_LINES.split(text) if p.strip()]


def clean_keywords(texts: tuple[str, ...] | list[str], keywords: frozenset[str]) -> list[str]:
    """The study's cleaning: drop whitespace-split words whose lower-case form is a keyword; re-join with spaces."""
    cleaned = [" ".join(w for w in t.split() if w.lower() not in keywords) for t in texts]
    return [t for t in cleaned if t]


@lru_cache(maxsize=1)
def hp_keywords() -> frozenset[str]:
    """The reference study's Harry Potter keyword list (lower case)."""
    lines = (DATA_DIR / "hp_keywords.txt").read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip().lower() for line in lines if line.strip())


def wikitext2_rows() -> list[str]:
    """WikiText-2 raw test rows 0-999 as the Hugging Face dataset gives them (each row ends with a newline)."""
    raw = (DATA_DIR / "wikitext2" / "wiki.test.rows0-999.raw").read_text(encoding="utf-8")
    return [line + "\n" for line in raw.split("\n")[:1000]]


@cache
def _builtin(name: str) -> tuple[str, ...]:
    if name == "wikitext2":
        return tuple(row for row in wikitext2_rows() if row.strip())
    if name == "wikitext2-clean":
        return tuple(clean_keywords(_builtin("wikitext2"), hp_keywords()))
    if name in ("hp-fanwiki", "hp-fanwiki-select"):
        raw = (DATA_DIR / "hp_fanwiki" / "hp_fanwiki_characters.txt").read_text(encoding="utf-8")
        # Blank lines separate articles; within an article each line is one paragraph.
        articles = split_paragraphs(raw)
        held_out = name == "hp-fanwiki"
        return tuple(
            line.strip()
            for index, article in enumerate(articles)
            if (index in HP_FANWIKI_HELD_OUT_ARTICLES) == held_out
            for line in article.splitlines()
            if line.strip()
        )
    if name == "wikitext2-train":
        raw = (DATA_DIR / "wikitext2" / "wiki.train.first1MB.raw").read_text(encoding="utf-8")
        return tuple(line for line in raw.split("\n") if line.strip() and not line.strip().startswith("="))
    raise TextSourceError(f"unknown built-in text set {name!r}")
