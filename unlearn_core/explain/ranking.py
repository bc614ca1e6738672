"""Which latents are *specific* to a set of prompts: contrast ranking against general text and against other prompts.

A latent that fires on the prompts is interesting when that is unexpected: when it rarely fires on general text
(and, with a contrast set, on the user's "other" prompts). The specificity score is a smoothed log lift::

    score_i = log( (k_i + 1) / n  /  r_i )

with ``k_i`` the number of prompt tokens on which latent ``i`` fires, ``n`` the number of prompt tokens, and ``r_i``
its firing rate on the reference, smoothed by one pseudo-firing (``(f_i * N + 1) / (N + 2)`` for a reference of
``N`` tokens), so a latent never seen on the reference is not infinitely specific. The reference is the largest of
the latent's rates on each *general* part of the dashboard corpus (for the bundled SAEs: Project Gutenberg books
and WikiText-2 train; the Harry Potter fan wiki is not general text and is never used), so a latent must be rare on
every kind of general text. Dashboards without per-source rates fall back to their whole corpus.

Two more things make a latent *expected*, and both raise ``r_i`` to the largest of the rates:

* **Prompt-like text.** General text is prose; prompts are questions and instructions ("Describe...", "Who is...").
  Latents of that form fire rarely on prose, so on prose alone they look specific to any prompt set. The
  :data:`unlearn_core.explain.explore.REFERENCE_PROMPTS_FILE` (a few hundred everyday prompts on many topics, written for this,
  none about Harry Potter or fantasy magic) gives each latent a raw rate on prompts (no pseudo-count: a few
  thousand tokens would otherwise floor every rate).
* **A contrast set** the user types: a latent firing as often on those prompts as on these is not specific to these.

Then the **theme**: prompts that share specific latents share a concept; a latent that fires only on prompts
sharing nothing with the others (an unrelated prompt in the set) is about that prompt, not about the set. Each
prompt's theme weight is its mean cosine similarity to the other prompts, over the specificity-weighted firings of
the :data:`THEME_CANDIDATES` most specific latents, relative to the best prompt; a latent's is the largest over the
prompts it fires on, and the score gains ``THEME_WEIGHT * log(weight)`` (floored at ``log 1e-3``). With one or two
prompts every weight is 1 and this changes nothing.

The pseudo-counts, the prompt reference and the theme (its weight among 1, 2 and 4, and the alternatives: prompt
coverage bonuses, a hard "fires on two prompts" rule, prompt-level counts) were chosen on development prompt sets
(three sets of four Harry Potter and three unrelated prompts, written for this, never the study's prompts) against
development text (``hp-fanwiki:dev`` vs ``wikitext2:dev``); plain max activation, activation-weighted lifts and
log-likelihood ratios did worse there. ``scripts/explore_specificity.py`` measures the ranking on the study's
prompts against test text (README, "How specific is the default ranking?").
"""

from __future__ import annotations

from dataclasses import dataclass, replace

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
THEME_WEIGHT = 2.0
"""How much a latent's theme weight counts (module docstring): ``score += THEME_WEIGHT * log(weight)``."""
THEME_CANDIDATES = 100
"""The most specific latents whose firings define the prompts' similarity."""
_THEME_FLOOR = 1e-3


@dataclass(frozen=True)
class ReferenceRates:
    """Per-latent firing rate on general text, and what it was measured on."""

    rate: torch.Tensor
    """[d_sae] float64 fraction of reference tokens on which each latent fires."""
    n_tokens: int
    description: str
    prompt_rate: torch.Tensor | None = None
    """[d_sae] float64 raw firing rate on the reference prompts (:func:`with_reference_prompts`), if measured."""
    prompt_tokens: int = 0

    def smoothed(self) -> torch.Tensor:
        """Rates with one pseudo-firing, so none is zero; at least the raw rate on the reference prompts."""
        n = max(self.n_tokens, 1)
        rate = (self.rate * n + REFERENCE_PSEUDO_COUNT) / (n + 2 * REFERENCE_PSEUDO_COUNT)
        return rate if self.prompt_rate is None else torch.maximum(rate, self.prompt_rate)


def with_reference_prompts(reference: ReferenceRates, counts: torch.Tensor, n_tokens: int) -> ReferenceRates:
    """``reference`` plus each latent's firing counts on the reference prompts (out of ``n_tokens`` tokens), e.g.
    from :func:`unlearn_core.explain.explore.reference_prompt_counts`."""
    if n_tokens < 1:
        raise InputError("the reference prompts have no tokens")
    if counts.shape != reference.rate.shape:
        raise InputError(f"{counts.numel()} latents counted on the reference prompts but the reference describes "
                         f"{reference.rate.numel()}")
    return replace(reference, prompt_rate=counts.double() / n_tokens, prompt_tokens=n_tokens,
                   description=f"{reference.description}, or on {n_tokens:,} tokens of everyday prompts")


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


def theme_weights(score: torch.Tensor, latent_prompt: torch.Tensor, n_prompts: int,
                  candidates: int = THEME_CANDIDATES) -> torch.Tensor:
    """Per latent, its theme weight in (0, 1] (module docstring); 1 where it does not fire.

    ``score``: [d_sae] specificity (``-inf`` for latents not considered); ``latent_prompt``: [n, 2] distinct
    ``(latent, prompt)`` pairs, one per prompt a latent fires on.
    """
    weights = torch.ones_like(score, dtype=torch.float64)
    finite = torch.isfinite(score)
    if n_prompts < 3 or not bool(finite.any()) or latent_prompt.numel() == 0:
        return weights
    top = torch.argsort(torch.where(finite, score, torch.full_like(score, -torch.inf)), descending=True)
    top = top[: min(candidates, int(finite.sum()))]
    column = torch.full((score.numel(),), -1, dtype=torch.long)
    column[top] = torch.arange(top.numel())
    latents, prompts = latent_prompt[:, 0], latent_prompt[:, 1]
    kept = column[latents] >= 0
    firing = torch.zeros(n_prompts, top.numel(), dtype=torch.float64)
    firing[prompts[kept], column[latents[kept]]] = score[latents[kept]].double().clamp_min(0.0)
    unit = firing / firing.norm(dim=1, keepdim=True).clamp_min(1e-12)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(0.0)
    theme = similarity.sum(dim=1) / (n_prompts - 1)
    best = float(theme.max())
    if best <= 0.0:
        return weights
    per_pair = (theme / best)[prompts]
    fired = torch.zeros_like(weights).scatter_reduce(0, latents, per_pair, reduce="amax", include_self=False)
    has = torch.zeros(score.numel(), dtype=torch.bool)
    has[latents] = True
    return torch.where(has, fired.clamp_min(_THEME_FLOOR), weights)


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
