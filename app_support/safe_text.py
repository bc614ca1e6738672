"""Showing text the app did not write (feature-list names, file names, Neuronpedia explanations, prompts,
generations, sweep labels and commands, error messages that quote them) inside Markdown without it being read as
Markdown: no links, images, HTML, formatting, Streamlit directives or automatic links get through.

Streamlit renders ``st.markdown``, ``st.caption``, ``st.error``/``warning``/``info``/``success``, widget labels and
help texts as GitHub-flavoured Markdown. Foreign text goes either to an element that does not (``st.text``,
``st.code``, ``st.dataframe``) or through :func:`md_escape`.
"""

from __future__ import annotations

import re

import torch

from unlearn_core.errors import UnlearnError

# Backslash-escaped everywhere: code, emphasis, links/images, HTML and autolinks (<...>), headings, tables,
# strikethrough, math, Streamlit directives and shortcodes (:red[...], :material/x:), entities and e-mail autolinks.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*\[\]<>#|~$:!&@])")
# ``_`` only emphasises next to a non-alphanumeric character (``snake_case_names`` stay as they are).
_UNDERSCORE = re.compile(r"_(?![^\W_])|(?<![^\W_])_")
# Only special where a line starts (the escaped text may start the Markdown): lists, block quotes, setext rules.
_LINE_START = re.compile(r"^([-+=]|\d+[.)])")
WORD_JOINER = "\u2060"
"""Invisible, and neither a word character nor punctuation: splits ``http://`` and ``www.`` so GitHub-flavoured
Markdown's automatic links (found in the text *after* escapes are resolved) cannot match."""
_AUTOLINK = re.compile(r"(\\:)(//)|(www)(\.)|(\\@)()", re.IGNORECASE)


def md_escape(text: object) -> str:
    """``text`` as literal Markdown text: one line, every Markdown-significant character backslash-escaped and
    automatic links broken by an invisible :data:`WORD_JOINER`. Reads the same on the page."""
    flat = " ".join(str(text).split())
    escaped = _UNDERSCORE.sub(r"\\_", _MARKDOWN_SPECIAL.sub(r"\\\1", flat))
    escaped = _LINE_START.sub(lambda m: "".join("\\" + c if not c.isdigit() else c for c in m.group(1)), escaped)
    return _AUTOLINK.sub(_join, escaped)


def _join(match: re.Match[str]) -> str:
    """The two halves of an autolink trigger (``\\:`` and ``//``, ``www`` and ``.``, ``\\@`` and what follows) with
    the word joiner between them."""
    before, after = [g for g in match.groups() if g is not None]
    return before + WORD_JOINER + after


def md_error(prefix: str, exc: BaseException | str, suffix: str = "") -> str:
    """App-written Markdown ``prefix`` and ``suffix`` around a message that may quote foreign text (escaped)."""
    return f"{prefix}{md_escape(exc)}{suffix}"


RUN_FAILURES: tuple[type[BaseException], ...] = (UnlearnError, MemoryError, torch.OutOfMemoryError)
"""What a long computation on a page reports as a message instead of a traceback: bad input or settings, and running
out of memory (RAM or GPU)."""


def failure_message(exc: BaseException, advice: str = "try fewer or shorter texts") -> str:
    """A one-line Markdown-safe message for one of :data:`RUN_FAILURES` (out of memory gets ``advice``)."""
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return f"Out of memory: {advice}. Results so far are kept; the forget set is unchanged."
    return md_escape(exc)
