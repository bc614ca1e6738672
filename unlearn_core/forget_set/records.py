"""The typed records a feature list may carry: per-latent ``"stats"`` and the top-level ``"selection"``.

Both are written by ``select`` and the app's "Suggest latents" (:mod:`unlearn_core.selection.suggest`); every field
is described in docs/feature-lists.md. Keys a record does not know are kept in its ``extra`` and written back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from unlearn_core.forget_set.checks import Checker, extra_keys, join_path, put_optional, with_extra

STATS_KEYS: tuple[str, ...] = ("score", "forget_freq", "retain_freq", "forget_mean_act", "retain_mean_act", "forget_max_act")
"""The keys of a latent's ``"stats"``, in the order they are written."""
_RATES = frozenset({"forget_freq", "retain_freq"})

SELECTION_STRINGS = ("forget", "retain", "method", "forget_corpus", "retain_corpus", "preset", "command")
SELECTION_COUNTS = ("top", "stats_tokens", "stats_seq_len", "batch_tokens")
SELECTION_KEYS: tuple[str, ...] = (
    "forget", "retain", "method", "top", "retain_threshold", "min_forget_freq", "stats_tokens", "stats_seq_len",
    "batch_tokens", "forget_corpus", "retain_corpus", "preset", "command",
)
"""The keys of ``"selection"``, in the order they are written (that of ``select``)."""


@dataclass(frozen=True)
class LatentStats:
    """A latent's ``"stats"``: the numbers that chose it (BOS-free, on the selection corpora).

    Every field is optional (``None``: not recorded); a recorded one is a finite number, a firing rate in [0, 1].
    """

    score: float | None = None
    """The selection rule's score (higher: more worth forgetting)."""
    forget_freq: float | None = None
    """Fraction of forget-text tokens on which the latent fires."""
    retain_freq: float | None = None
    """Fraction of retain-text tokens on which the latent fires."""
    forget_mean_act: float | None = None
    """Mean activation over the forget-text tokens where it fires: what a relative clamp (``clamp:Cx``) scales to."""
    retain_mean_act: float | None = None
    """Mean activation over the retain-text tokens where it fires."""
    forget_max_act: float | None = None
    """Largest activation on forget text."""
    extra: dict[str, Any] = field(default_factory=dict, hash=False)
    """Unknown keys found in the file, kept so they are written back unchanged."""

    def to_dict(self) -> dict[str, Any]:
        """The ``"stats"`` object: the recorded fields in :data:`STATS_KEYS` order, then ``extra``."""
        out = {key: value for key in STATS_KEYS if (value := getattr(self, key)) is not None}
        return with_extra(out, self.extra)

    @classmethod
    def from_dict(cls, data: Any, source: str = "stats") -> LatentStats:
        """Validate a ``"stats"`` object (e.g. ``ScoredLatent.stats()``); :class:`FeatureListError` names ``source``."""
        ctx = Checker(source)
        ctx.finite(data)
        return parse_stats(data, "", ctx)


@dataclass(frozen=True)
class SelectionRecord:
    """The top-level ``"selection"``: how the latents were chosen (``select`` records its settings here).

    Every field is optional (``None``: not recorded, or ``null`` in the file, which is written back as ``null``).
    """

    forget: str | None = None
    """The forget text as it was named: a built-in text set (``"hp-fanwiki"``) or a file."""
    retain: str | None = None
    """The retain text as it was named."""
    method: str | None = None
    """The selection rule: ``"ratio"`` or ``"frequency"`` (:mod:`unlearn_core.selection.rules`)."""
    top: int | None = None
    """Latents chosen per SAE (at most)."""
    retain_threshold: float | None = None
    """Retain firing rate at or above which a latent is never chosen, in (0, 1]; ``None``: the rule's default."""
    min_forget_freq: float | None = None
    """Smallest forget firing rate a ``ratio`` pick may have, in [0, 1]."""
    stats_tokens: int | None = None
    """Tokens of each corpus the statistics were computed on."""
    stats_seq_len: int | None = None
    """Tokens per sequence when computing the statistics."""
    batch_tokens: int | None = None
    """Tokens per forward pass when computing the statistics."""
    forget_corpus: str | None = None
    """The text the forget statistics were computed on (a built-in's selection split, e.g. ``"hp-fanwiki-select"``)."""
    retain_corpus: str | None = None
    """The text the retain statistics were computed on (e.g. ``"wikitext2-train"``)."""
    preset: str | None = None
    """The model preset the statistics were computed with (``evaluate`` prefers it)."""
    command: str | None = None
    """The command line that wrote the list."""
    extra: dict[str, Any] = field(default_factory=dict, hash=False)
    """Unknown keys (and the ``null`` of known keys the file set to ``null``), kept so they are written back."""

    def to_dict(self) -> dict[str, Any]:
        """The ``"selection"`` object: the recorded fields in :data:`SELECTION_KEYS` order, then ``extra``."""
        out: dict[str, Any] = {}
        for key in SELECTION_KEYS:
            put_optional(out, key, getattr(self, key), self.extra)
        return with_extra(out, self.extra)

    @classmethod
    def from_dict(cls, data: Any, source: str = "selection") -> SelectionRecord:
        """Validate a ``"selection"`` object (e.g. ``select``'s settings); :class:`FeatureListError` names ``source``."""
        ctx = Checker(source)
        ctx.finite(data)
        return parse_selection(data, "", ctx)


def parse_stats(value: Any, path: str, ctx: Checker) -> LatentStats:
    """Validate a ``"stats"`` object found at ``path`` (``ctx`` names the file in errors)."""
    data: Mapping[str, Any] = ctx.obj(value, path)
    fields: dict[str, Any] = {}
    for key in STATS_KEYS:
        if key in data:
            high = 1.0 if key in _RATES else None
            fields[key] = ctx.number(data[key], join_path(path, key), low=0.0 if high else None, high=high)
    return LatentStats(**fields, extra=extra_keys(data, STATS_KEYS))


def parse_selection(value: Any, path: str, ctx: Checker) -> SelectionRecord:
    """Validate a ``"selection"`` object found at ``path`` (``ctx`` names the file in errors)."""
    data: Mapping[str, Any] = ctx.obj(value, path)
    fields: dict[str, Any] = {}
    for key in SELECTION_KEYS:
        raw = data.get(key)
        if raw is None:
            continue
        where = join_path(path, key)
        if key in SELECTION_STRINGS:
            fields[key] = ctx.string(raw, where)
        elif key in SELECTION_COUNTS:
            fields[key] = ctx.integer(raw, where, minimum=1)
        elif key == "retain_threshold":
            fields[key] = ctx.number(raw, where, low=0.0, high=1.0, low_open=True)
        else:
            fields[key] = ctx.number(raw, where, low=0.0, high=1.0)
    return SelectionRecord(**fields, extra=extra_keys(data, SELECTION_KEYS, keep_nulls=SELECTION_KEYS))
