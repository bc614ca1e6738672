"""Choosing latents to forget by contrasting their activations on forget text against retain text.

Two rules, both BOS-free and both computed from :class:`~unlearn_core.selection.stats.LatentStats`:

* ``frequency`` - SAEBench's unlearning rule (Farrell et al. 2024): drop latents whose firing rate on retain
  text is >= ``retain_threshold``, rank the rest by firing rate on forget text.
* ``ratio`` - this project's rule: among latents that fire on forget text at least ``min_forget_freq`` of the time
  and on retain text less than ``retain_threshold``, rank by ``p_f * ln(p_f / p_r)``, where ``p_f``, ``p_r`` are
  the forget and retain firing rates (``p_r`` add-one smoothed). That is the latent's term of the KL divergence
  between its firing on the two corpora: it prefers latents that are both specific to the forget text (large
  ratio) and common in it (large ``p_f``), where SAEBench's rule only asks for the latter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from unlearn_core.errors import InputError
from unlearn_core.selection.stats import LatentStats

Method = Literal["frequency", "ratio", "attribution"]
METHODS: tuple[str, ...] = ("ratio", "frequency", "attribution")
"""Every selection method ``select`` offers. ``attribution`` (:mod:`unlearn_core.selection.attribution`) needs
model passes over knowledge items besides the statistics; the others are computed from statistics alone."""
STATS_METHODS: tuple[str, ...] = ("ratio", "frequency")
DEFAULT_METHOD: Method = "ratio"
DEFAULT_TOP = 20
"""Latents per SAE."""
DEFAULT_RETAIN_THRESHOLDS = {"frequency": 0.01, "ratio": 0.001, "attribution": 0.01}
"""Retain firing rate at or above which a latent is never chosen (SAEBench uses 0.01 and 0.001)."""
DEFAULT_MIN_FORGET_FREQ = 0.0005


@dataclass(frozen=True)
class ScoredLatent:
    """A chosen latent with the statistics that chose it."""

    id: int
    score: float
    forget_freq: float
    retain_freq: float
    forget_mean_act: float
    retain_mean_act: float
    forget_max_act: float

    def note(self, method: str) -> str:
        return (
            f"{method} rule: fires on {self.forget_freq:.3%} of forget tokens vs {self.retain_freq:.3%} of retain "
            f"tokens; mean activation {self.forget_mean_act:.3g} (forget) / {self.retain_mean_act:.3g} (retain); "
            f"score {self.score:.4g}"
        )

    def stats(self) -> dict[str, float]:
        return {
            "score": round(self.score, 8),
            "forget_freq": round(self.forget_freq, 8),
            "retain_freq": round(self.retain_freq, 8),
            "forget_mean_act": round(self.forget_mean_act, 6),
            "retain_mean_act": round(self.retain_mean_act, 6),
            "forget_max_act": round(self.forget_max_act, 6),
        }


def latent_scores(
    forget: LatentStats,
    retain: LatentStats,
    method: str = DEFAULT_METHOD,
    retain_threshold: float | None = None,
    min_forget_freq: float = DEFAULT_MIN_FORGET_FREQ,
) -> torch.Tensor:
    """One score per latent (higher = more worth forgetting); ``-inf`` for latents the rule excludes."""
    if method not in METHODS:
        raise InputError(f"unknown selection method {method!r}; choose one of {list(METHODS)}")
    if method not in STATS_METHODS:
        raise InputError(f"the {method} method needs the model, not only statistics: use selection.suggest.suggest")
    if forget.fire_count.numel() != retain.fire_count.numel():
        raise InputError("forget and retain statistics come from SAEs of different widths")
    if forget.n_tokens < 1 or retain.n_tokens < 1:
        raise InputError("statistics over zero tokens: give forget and retain text")
    threshold = DEFAULT_RETAIN_THRESHOLDS[method] if retain_threshold is None else retain_threshold
    if not 0 < threshold <= 1:
        raise InputError(f"retain threshold must be in (0, 1], got {threshold}")
    p_f = forget.frequency
    p_r = retain.frequency
    excluded = (p_r >= threshold) | (forget.fire_count == 0)
    if method == "frequency":
        score = p_f.clone()
    else:
        p_r_smooth = (retain.fire_count.double() + 1) / (retain.n_tokens + 1)
        score = p_f * torch.log(p_f.clamp(min=1e-12) / p_r_smooth)
        excluded |= (p_f < min_forget_freq) | (score <= 0)
    return torch.where(excluded, torch.full_like(score, -math.inf), score)


def select_latents(
    forget: LatentStats,
    retain: LatentStats,
    top: int = DEFAULT_TOP,
    method: str = DEFAULT_METHOD,
    retain_threshold: float | None = None,
    min_forget_freq: float = DEFAULT_MIN_FORGET_FREQ,
) -> list[ScoredLatent]:
    """The ``top`` best latents of one SAE under ``method`` (fewer if fewer qualify), best first."""
    if top < 1:
        raise InputError("top must be at least 1")
    score = latent_scores(forget, retain, method, retain_threshold, min_forget_freq)
    order = torch.argsort(score, descending=True, stable=True)
    f_mean, r_mean = forget.mean_activation, retain.mean_activation
    chosen = []
    for idx in order.tolist():
        if len(chosen) == top or not math.isfinite(float(score[idx])):
            break
        chosen.append(
            ScoredLatent(
                id=idx,
                score=float(score[idx]),
                forget_freq=float(forget.frequency[idx]),
                retain_freq=float(retain.frequency[idx]),
                forget_mean_act=float(f_mean[idx]),
                retain_mean_act=float(r_mean[idx]),
                forget_max_act=float(forget.act_max[idx]),
            )
        )
    return chosen


def ranked_candidates(
    forget: dict[str, LatentStats],
    retain: dict[str, LatentStats],
    top: int,
    method: str = DEFAULT_METHOD,
    retain_threshold: float | None = None,
    min_forget_freq: float = DEFAULT_MIN_FORGET_FREQ,
    refs: Sequence[str] | None = None,
) -> dict[str, list[ScoredLatent]]:
    """:func:`select_latents` for every SAE (by reference) present in both statistics."""
    refs = list(refs) if refs is not None else [r for r in forget if r in retain]
    missing = [r for r in refs if r not in forget or r not in retain]
    if missing:
        raise InputError(f"no statistics for SAE(s) {missing}")
    return {r: select_latents(forget[r], retain[r], top, method, retain_threshold, min_forget_freq) for r in refs}
