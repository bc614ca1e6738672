"""Conditional gating of an intervention: edit only where the chosen latents are strongly on.

A gated intervention applies its edit (zero, clamp, scale) at a position only when the summed activation of the
SAE's chosen latents there, before the edit, exceeds that SAE's threshold; every other position (and BOS, always)
is left exactly as it was. The thresholds are calibrated per SAE as a high quantile (``quantile``) of that sum over
the non-BOS tokens of retain text (``corpus``, a dev split; ``tokens`` of it), by
:func:`unlearn_core.selection.gating.calibrate_gate`, and are stored by SAE hook name. A gate is per position, so it
stays causal and works unchanged in incremental decoding.

Threshold ``+inf`` gives the unedited model exactly, ``-inf`` the ungated intervention exactly (tests/test_gating.py).

In a feature list the gate is the ``"gate"`` key of ``"intervention"`` (absent when ungated, so older lists read
and re-save unchanged)::

    "gate": {"quantile": 0.99, "corpus": "wikitext2:dev", "tokens": 16384,
             "thresholds": {"blocks.5.hook_resid_post": 41.2, ...}}

In a spec, ``@gate`` (default quantile) or ``@gate:Q`` follows the edit: ``clamp:4x@gate``, ``zero@gate:0.999``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from unlearn_core.errors import InputError

DEFAULT_GATE_QUANTILE = 0.99
DEFAULT_GATE_CORPUS = "wikitext2:dev"
DEFAULT_GATE_TOKENS = 16384
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
GATE_SPEC_RE = re.compile(rf"^gate(?::({_NUMBER}))?$")
_GATE_KEYS = frozenset({"quantile", "corpus", "tokens", "thresholds"})


@dataclass(frozen=True)
class Gate:
    """Where a gated intervention applies: per SAE (by hook name), where the chosen latents' summed activation
    exceeds ``thresholds[hook]``, calibrated as the ``quantile`` of that sum on ``tokens`` tokens of ``corpus``."""

    quantile: float = DEFAULT_GATE_QUANTILE
    corpus: str = DEFAULT_GATE_CORPUS
    tokens: int = DEFAULT_GATE_TOKENS
    thresholds: tuple[tuple[str, float], ...] = ()
    """``(hook_name, threshold)`` pairs, sorted by hook name; empty until calibrated. ``+-inf`` are allowed in
    memory (tests); a feature list needs finite ones."""

    def __post_init__(self) -> None:
        if isinstance(self.quantile, bool) or not isinstance(self.quantile, (int, float)) or not 0 < self.quantile < 1:
            raise InputError(f"gate quantile must be a number in (0, 1), got {self.quantile!r}")
        if not isinstance(self.corpus, str) or not self.corpus.strip():
            raise InputError("gate corpus must be a non-empty text-set name")
        if isinstance(self.tokens, bool) or not isinstance(self.tokens, int) or self.tokens < 1:
            raise InputError(f"gate tokens must be an integer >= 1, got {self.tokens!r}")
        hooks = [h for h, _ in self.thresholds]
        if len(set(hooks)) != len(hooks):
            raise InputError("gate thresholds name a hook twice")
        if any(math.isnan(float(t)) for _, t in self.thresholds):
            raise InputError("gate thresholds must be numbers, not NaN")
        object.__setattr__(self, "thresholds", tuple(sorted((str(h), float(t)) for h, t in self.thresholds)))

    @property
    def calibrated(self) -> bool:
        return bool(self.thresholds)

    def threshold_for(self, hook_name: str) -> float:
        """The threshold of the SAE at ``hook_name``; :class:`InputError` if the gate was not calibrated for it."""
        for hook, value in self.thresholds:
            if hook == hook_name:
                return value
        raise InputError(
            f"the gated intervention has no threshold for the SAE at {hook_name}: calibrate it first "
            f"(unlearn_core.selection.gating.calibrate_gate; `select --intervention ...@gate` does it)"
        )

    def with_thresholds(self, thresholds: dict[str, float]) -> Gate:
        return Gate(self.quantile, self.corpus, self.tokens, tuple(thresholds.items()))

    def spec_suffix(self) -> str:
        return "@gate" if self.quantile == DEFAULT_GATE_QUANTILE else f"@gate:{self.quantile:g}"

    def describe(self) -> str:
        return (f"only where the chosen latents' summed activation exceeds its {self.quantile:g} quantile on "
                f"{self.corpus}" + ("" if self.calibrated else " (not yet calibrated)"))

    def to_dict(self) -> dict[str, Any]:
        return {"quantile": self.quantile, "corpus": self.corpus, "tokens": self.tokens,
                "thresholds": dict(self.thresholds)}

    @classmethod
    def from_dict(cls, data: Any, source: str = "gate") -> Gate:
        if not isinstance(data, dict):
            raise InputError(f"{source}: 'gate' must be an object like {{\"quantile\": 0.99}}")
        unknown = set(data) - _GATE_KEYS
        if unknown:
            raise InputError(f"{source}: unknown gate field(s) {sorted(unknown)}")
        thresholds = data.get("thresholds", {})
        if not isinstance(thresholds, dict):
            raise InputError(f"{source}: gate 'thresholds' must be an object {{hook_name: number}}")
        for hook, value in thresholds.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputError(f"{source}: gate threshold for {hook} must be a finite number, got {value!r}")
        try:
            return cls(quantile=data.get("quantile", DEFAULT_GATE_QUANTILE),
                       corpus=data.get("corpus", DEFAULT_GATE_CORPUS), tokens=data.get("tokens", DEFAULT_GATE_TOKENS),
                       thresholds=tuple(thresholds.items()))
        except InputError as exc:
            raise InputError(f"{source}: {exc}") from None

    @classmethod
    def from_spec(cls, text: str) -> Gate:
        match = GATE_SPEC_RE.match(text)
        if match is None:
            raise InputError(f"cannot read gate {text!r}; use @gate or @gate:0.99")
        return cls(quantile=float(match.group(1))) if match.group(1) else cls()
