"""Which latents are *specific* to a set of prompts: contrast ranking against general text and against other prompts.

A latent that fires on the prompts is interesting when that is unexpected: when it rarely fires on general text
(and, with a contrast set, on the user's "other" prompts). The specificity score is a smoothed log lift::

    score_i = log( (k_i + 1) / n  /  r_i )

with ``k_i`` the number of prompt tokens on which latent ``i`` fires, ``n`` the number of prompt tokens, and ``r_i``
its firing rate on the reference, smoothed by one pseudo-firing (``(f_i * N + 1) / (N + 2)`` for a reference of
``N`` tokens), so a latent never seen on the reference is not infinitely specific. The reference is the largest of
the latent's rates on each *general* part of the dashboard corpus (for the bundled SAEs: Project Gutenberg books
and WikiText-2 train; the Harry Potter fan wiki is not general text and is never used), so a latent must be rare on
every kind of general text. Dashboards without per-source rates fall back to their whole corpus. With a contrast
set, the reference rate is the larger of the general rate and the latent's (raw) rate on the contrast prompts.

The pseudo-counts (one firing on the prompts, one on the reference) were chosen on development prompt sets (three
sets of four Harry Potter and three unrelated prompts, written for this, never the study's prompts) against
development text (``hp-fanwiki:dev`` vs ``wikitext2:dev``); plain max activation, activation-weighted lifts,
prompt-coverage bonuses and log-likelihood ratios did worse there. ``scripts/explore_specificity.py`` measures the
ranking on the study's prompts against test text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from unlearn_core.errors import InputError
from unlearn_core.explain.dashboards import Dashboards

GENERAL_SOURCES: tuple[str, ...] = ("gutenberg", "wikitext2")
"""Dashboard corpus parts that count as general text for the reference rate."""
DENSE_FREQUENCY = 0.10
"""Latents firing on more of the dashboard corpus than this are *dense*: hidden by default (they fire on anything)."""
PROMPT_PSEUDO_COUNT = 1.0
REFERENCE_PSEUDO_COUNT = 1.0


@dataclass(frozen=True)
class ReferenceRates:
    """Per-latent firing rate on general text, and what it was measured on."""

    rate: torch.Tensor
    """[d_sae] float64 fraction of reference tokens on which each latent fires."""
    n_tokens: int
    description: str

    def smoothed(self) -> torch.Tensor:
        """Rates with one pseudo-firing, so none is zero."""
        n = max(self.n_tokens, 1)
        return (self.rate * n + REFERENCE_PSEUDO_COUNT) / (n + 2 * REFERENCE_PSEUDO_COUNT)


def general_reference(board: Dashboards) -> ReferenceRates:
    """The reference rates of a dashboard: the largest rate over its general sources, else its whole corpus."""
    n_tokens = int(board.meta.get("n_tokens", 0))
    sources = list(board.meta.get("sources", ()))
    general = [i for i, name in enumerate(sources) if name in GENERAL_SOURCES]
    if board.source_frequency is not None and general:
        rates = torch.from_numpy(np.asarray(board.source_frequency[:, general], dtype=np.float64)).amax(dim=1)
        share = n_tokens * len(general) // max(len(sources), 1)  # the general parts' size, roughly
        names = ", ".join(sources[i] for i in general)
        return ReferenceRates(rates, share, f"largest firing rate on general text ({names}) of the dashboard corpus")
    rates = torch.from_numpy(np.asarray(board.frequency, dtype=np.float64))
    return ReferenceRates(rates, n_tokens, f"firing rate on the dashboard corpus ({board.meta.get('corpus', 'unknown')})")


def specificity(
    counts: torch.Tensor,
    n_tokens: int,
    reference: ReferenceRates,
    contrast_counts: torch.Tensor | None = None,
    contrast_tokens: int = 0,
) -> torch.Tensor:
    """Smoothed log lift of each latent's firing rate on the prompts over the reference (module docstring).

    ``counts[i]``: prompt tokens on which latent i fires, out of ``n_tokens``; ``contrast_counts``/``contrast_tokens``
    the same on a contrast prompt set. Latents that never fire on the prompts get ``-inf``.
    """
    if n_tokens < 1:
        raise InputError("no prompt tokens to rank latents on")
    if counts.shape != reference.rate.shape:
        raise InputError(f"{counts.numel()} latents counted but the reference describes {reference.rate.numel()}")
    ref = reference.smoothed()
    if contrast_counts is not None:
        if contrast_tokens < 1 or contrast_counts.shape != counts.shape:
            raise InputError("the contrast prompts have no tokens, or a different number of latents")
        # No pseudo-count here: a few contrast prompts would give every latent a rate of ~1/n and drown the general
        # reference; a latent that never fires on the contrast prompts keeps its general-text rate.
        ref = torch.maximum(ref, contrast_counts.double() / contrast_tokens)
    counts = counts.double()
    score = torch.log((counts + PROMPT_PSEUDO_COUNT) / n_tokens / ref)
    return torch.where(counts > 0, score, torch.full_like(score, -torch.inf))


def source_ratio(board: Dashboards, latent: int, concept_source: str = "hp-fanwiki") -> float | None:
    """How many times more often a latent fires on the dashboard's concept text than on its most frequent general
    source (``inf`` if never on general text, None when the dashboard has no per-source rates or no such source)."""
    sources = list(board.meta.get("sources", ()))
    if board.source_frequency is None or concept_source not in sources:
        return None
    row = board.source_frequency[latent]
    on = float(row[sources.index(concept_source)])
    off = max((float(row[i]) for i, name in enumerate(sources) if name in GENERAL_SOURCES), default=0.0)
    if on == 0.0:
        return 0.0
    return float("inf") if off == 0.0 else on / off


def dense_latents(board: Dashboards, threshold: float = DENSE_FREQUENCY) -> set[int]:
    """Latents firing on more than ``threshold`` of the dashboard corpus."""
    return set(np.flatnonzero(board.frequency > threshold).tolist())
