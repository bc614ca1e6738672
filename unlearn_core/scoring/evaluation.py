"""Compatibility re-exports: scoring is split by what it computes.

* :mod:`unlearn_core.scoring.batching`: tokenising with BOS, length-sorted batches, batched per-token scores;
* :mod:`unlearn_core.scoring.perplexity`: the study's perplexity, batched, streamed, or one text at a time;
* :mod:`unlearn_core.scoring.probes`: knowledge-probe scores;
* :mod:`unlearn_core.scoring.generation`: generation under a condition;
* conditions live in :mod:`unlearn_core.ablation.conditions`.

Import from those modules; the names are repeated here only so older imports keep working.
"""

from __future__ import annotations

from unlearn_core.ablation.conditions import CONDITIONS, Condition, build_conditions, random_selections
from unlearn_core.scoring.batching import (
    DEFAULT_BATCH_TOKENS,
    DEFAULT_MAX_SEQ_LEN,
    UNEMBED_CHUNK,
    ProgressCallback,
    TokenScores,
    batches_by_length,
    right_padded,
    score_tokens,
    tokenize_with_bos,
)
from unlearn_core.scoring.generation import generate, prompt_token_ids
from unlearn_core.scoring.perplexity import PerplexityResult, iter_perplexity, perplexity, perplexity_one_at_a_time
from unlearn_core.scoring.probes import ProbeResult, probe_scores

__all__ = [
    "CONDITIONS",
    "DEFAULT_BATCH_TOKENS",
    "DEFAULT_MAX_SEQ_LEN",
    "UNEMBED_CHUNK",
    "Condition",
    "PerplexityResult",
    "ProbeResult",
    "ProgressCallback",
    "TokenScores",
    "batches_by_length",
    "build_conditions",
    "generate",
    "iter_perplexity",
    "perplexity",
    "perplexity_one_at_a_time",
    "probe_scores",
    "prompt_token_ids",
    "random_selections",
    "right_padded",
    "score_tokens",
    "tokenize_with_bos",
]
