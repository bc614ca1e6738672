"""What the matched random control is matched on: every latent's firing rate and activation scale on retain text.

The statistics are the same cached pass ``select`` runs on its retain corpus (``wikitext2:dev`` =
``wikitext2-train``, the same tokens), so after ``select`` they are read from the on-disk cache, not recomputed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from unlearn_core.ablation.conditions import RANDOM_MATCHED, Condition, LatentProfile
from unlearn_core.data.texts import load_texts, selection_split
from unlearn_core.models.loading import LoadedModel
from unlearn_core.saes.loading import LoadedSae
from unlearn_core.scoring.batching import DEFAULT_BATCH_TOKENS, ProgressCallback
from unlearn_core.selection.stats import DEFAULT_STATS_SEQ_LEN, DEFAULT_STATS_TOKENS, cached_latent_stats, stats_sequences

DEFAULT_MATCH_CORPUS = "wikitext2"
"""Retain text the matched control is matched on (its selection split, as ``select`` uses it)."""


def latent_profiles(
    lm: LoadedModel,
    saes: Sequence[LoadedSae],
    corpus: str = DEFAULT_MATCH_CORPUS,
    stats_tokens: int = DEFAULT_STATS_TOKENS,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: ProgressCallback | None = None,
) -> dict[str, LatentProfile]:
    """Each SAE's :class:`LatentProfile` on ``corpus`` (a built-in's selection split, or a text file)."""
    texts = load_texts(selection_split(corpus)).texts
    sequences = stats_sequences(lm, texts, stats_tokens, DEFAULT_STATS_SEQ_LEN)
    stats = cached_latent_stats(lm, saes, sequences, batch_tokens, progress)
    return {
        ref: LatentProfile(tuple(st.frequency.tolist()), tuple(st.mean_activation.double().tolist()), st.n_tokens)
        for ref, st in stats.items()
    }


def matching_report(conditions: Sequence[Condition], profiles: dict[str, LatentProfile]) -> dict[str, Any]:
    """How well the matched control matches: per SAE, the mean retain firing rate and activation of the chosen
    latents and of the matched ones (the numbers a reader checks the control by)."""
    by_name = {c.name: c for c in conditions}
    matched = by_name.get(RANDOM_MATCHED)
    chosen = by_name.get("ablated")
    if matched is None or chosen is None:
        return {}
    out = {}
    for sel_c, sel_m in zip(chosen.selections, matched.selections, strict=True):
        prof = profiles[sel_c.sae.ref]

        def mean(values: tuple[float, ...], ids: tuple[int, ...]) -> float:
            return sum(values[i] for i in ids) / max(len(ids), 1)

        out[sel_c.sae.ref] = {
            "chosen_retain_rate": mean(prof.retain_rate, sel_c.latents),
            "matched_retain_rate": mean(prof.retain_rate, sel_m.latents),
            "chosen_mean_activation": mean(prof.mean_activation, sel_c.latents),
            "matched_mean_activation": mean(prof.mean_activation, sel_m.latents),
            "matched_latents": list(sel_m.latents),
            "tokens": prof.n_tokens,
        }
    return out
