"""Perplexity as the reference study computes it.

Every text gets BOS prepended, the NLL of each predicted token is summed over all texts and divided by the number of
predicted tokens (token-weighted), then exponentiated. :func:`perplexity` does it in batches
(:mod:`unlearn_core.scoring.batching`); :func:`perplexity_one_at_a_time` is the study's own one-text loop.
Every loop holds the model per batch (or per text) only, and asks ``should_stop`` before each one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from unlearn_core.ablation.interventions import Hook, intervened
from unlearn_core.errors import InputError
from unlearn_core.models.loading import LoadedModel
from unlearn_core.scoring.batching import (
    DEFAULT_BATCH_TOKENS,
    DEFAULT_MAX_SEQ_LEN,
    ProgressCallback,
    StopCheck,
    check_stop,
    iter_token_scores,
    tokenize_with_bos,
)


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    nll_sum: float
    n_tokens: int
    n_texts: int


def perplexity(
    lm: LoadedModel,
    texts: Sequence[str],
    hooks: Sequence[Hook] = (),
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
) -> PerplexityResult:
    """The study's perplexity (BOS prepended, token-weighted mean NLL over all texts, exp), batched."""
    *_, final = iter_perplexity(lm, texts, hooks, max_seq_len, batch_tokens, progress, should_stop)
    return final


def iter_perplexity(
    lm: LoadedModel,
    texts: Sequence[str],
    hooks: Sequence[Hook] = (),
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
) -> Iterator[PerplexityResult]:
    """:func:`perplexity`, yielding the running result after each group of batches scored together (about
    ``UNEMBED_GROUP_ROWS`` tokens; the last one is the final answer).

    Lets a caller show a first number early and stop between batches; ``n_texts`` counts the texts scored so far.
    Each batch takes the model's lock separately, so other sessions' work interleaves with a long run;
    ``should_stop`` is asked before each batch (:class:`~unlearn_core.errors.Stopped`).
    """
    sequences = [s for s in tokenize_with_bos(lm, texts, max_seq_len) if len(s) >= 2]
    if not sequences:
        raise InputError("no text with at least one token to score")
    total = sum(len(s) - 1 for s in sequences)
    nll, n, n_texts = 0.0, 0, 0
    for group in iter_token_scores(lm, sequences, hooks, batch_tokens, should_stop=should_stop):
        nll -= sum(float(s.logprobs.double().sum()) for _, s in group)
        n += sum(int(s.logprobs.numel()) for _, s in group)
        n_texts += len(group)
        if progress is not None:
            progress(n, total)
        yield PerplexityResult(perplexity=float(torch.tensor(nll / n).exp()), nll_sum=nll, n_tokens=n, n_texts=n_texts)


def perplexity_one_at_a_time(
    lm: LoadedModel,
    texts: Sequence[str],
    hooks: Sequence[Hook] = (),
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
    should_stop: StopCheck | None = None,
) -> PerplexityResult:
    """The reference study's loop: one text per forward with ``return_type="loss"``. For checks and benchmarks.

    The model is held per text; ``should_stop`` is asked before each one."""
    sequences = [s for s in tokenize_with_bos(lm, texts, max_seq_len) if len(s) >= 2]
    nll, n = 0.0, 0
    for seq in sequences:
        check_stop(should_stop)
        tokens = torch.tensor([seq], dtype=torch.long, device=lm.device)
        with torch.inference_mode(), intervened(lm, hooks) as model:
            loss = model(tokens, return_type="loss")
        nll += float(loss) * (len(seq) - 1)
        n += len(seq) - 1
    return PerplexityResult(perplexity=float(torch.tensor(nll / n).exp()), nll_sum=nll, n_tokens=n, n_texts=len(sequences))
