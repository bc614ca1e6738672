"""Showing text the app did not write (feature-list names, Neuronpedia explanations, prompts, generations, sweep
labels) inside Markdown without it being read as Markdown: no links, images, HTML or formatting get through."""

from __future__ import annotations

import re

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")


def md_escape(text: object) -> str:
    """``text`` with every Markdown-significant character backslash-escaped and newlines kept as spaces."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))
