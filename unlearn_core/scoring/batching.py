"""Batched per-token scoring, the core of perplexity and probe scores.

Every text gets BOS prepended. Sequences are sorted by length and right-padded (causal attention means padding after
a text cannot change its scores, so no attention mask is needed), and the vocabulary projection is done only for
real positions, in cache-sized tiles (:mod:`unlearn_core.scoring.vocab_logprobs`), so a 262k-token vocabulary never
materialises as one huge logits tensor.

Sharing and stopping, for every scoring loop of this stage: each batch takes the model's lock (and adds its hooks)
on its own, so other callers of the same model get their turn between two batches; and before each batch the job
asks ``should_stop`` (and any :func:`stoppable` scope around the call), raising :class:`~unlearn_core.errors.Stopped`
when told to, so a caller can end any job within one batch.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from unlearn_core.ablation.interventions import Hook, intervened
from unlearn_core.errors import InputError, Stopped
from unlearn_core.models.loading import LoadedModel
from unlearn_core.scoring.vocab_logprobs import final_normed, output_stage, unembed_logprobs

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(done, total)``; units are tokens for scoring and steps for generation."""
StopCheck = Callable[[], bool]
"""Asked between batches; True ends the job with :class:`~unlearn_core.errors.Stopped`."""

_SCOPED_STOPS: contextvars.ContextVar[tuple[StopCheck, ...]] = contextvars.ContextVar("scoped_stops", default=())

DEFAULT_MAX_SEQ_LEN = 1024
DEFAULT_BATCH_TOKENS = 2048
BATCH_OVERHEAD_TOKENS = 64
"""What one more batch costs, in padded tokens: a memory-bound pass over the weights and the Python per-call work."""
UNEMBED_GROUP_ROWS = 1024
"""Scored positions gathered (from one or more batches) before each pass of the vocabulary projection."""


def tokenize_with_bos(lm: LoadedModel, texts: Sequence[str], max_seq_len: int = DEFAULT_MAX_SEQ_LEN) -> list[list[int]]:
    """Token ids of each text with BOS prepended, truncated to ``max_seq_len`` tokens (BOS included)."""
    if max_seq_len < 2:
        raise InputError("max_seq_len must be at least 2 (BOS plus one token)")
    max_seq_len = min(max_seq_len, lm.n_ctx)
    encoded = lm.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [([lm.bos_token_id] + ids)[:max_seq_len] for ids in encoded]


@contextlib.contextmanager
def stoppable(should_stop: StopCheck) -> Iterator[None]:
    """Within this block, every scoring loop of this stage run by this thread also asks ``should_stop`` between
    batches, including those inside functions that take no ``should_stop`` of their own (probe and quiz scores)."""
    token = _SCOPED_STOPS.set((*_SCOPED_STOPS.get(), should_stop))
    try:
        yield
    finally:
        _SCOPED_STOPS.reset(token)


def check_stop(should_stop: StopCheck | None = None) -> None:
    """Raise :class:`~unlearn_core.errors.Stopped` if ``should_stop`` or an enclosing :func:`stoppable` says so."""
    if (should_stop is not None and should_stop()) or any(check() for check in _SCOPED_STOPS.get()):
        raise Stopped("stopped on request")


@dataclass(frozen=True)
class TokenScores:
    """For one sequence of T tokens: log p(token_t | tokens_<t) for t = 1..T-1, and whether token_t was the argmax."""

    logprobs: torch.Tensor
    is_argmax: torch.Tensor


def batches_by_length(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Group sequence indices, longest first, so each padded batch has at most ``batch_tokens`` tokens (a longer
    sequence gets a batch of its own) and the padded tokens plus ``BATCH_OVERHEAD_TOKENS`` per batch are fewest.

    Each batch is a run of the length-sorted sequences, and the runs are chosen by dynamic programming: padding
    every short text to the longest one's width wastes forward passes, while each extra batch costs a pass over all
    weights (memory-bound) and the per-call overhead.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    width = np.array([lengths[i] for i in order], dtype=np.int64)
    n = len(order)
    best = np.zeros(n + 1)
    cut = np.zeros(n + 1, dtype=np.int64)
    for i in range(n - 1, -1, -1):
        rows = max(1, min(n - i, batch_tokens // max(1, int(width[i]))))
        sizes = np.arange(1, rows + 1)
        costs = sizes * width[i] + BATCH_OVERHEAD_TOKENS + best[i + sizes]
        k = int(np.argmin(costs))
        best[i], cut[i] = costs[k], i + k + 1
    batches, i = [], 0
    while i < n:
        batches.append(order[i : cut[i]])
        i = int(cut[i])
    return batches


def right_padded(
    lm: LoadedModel, sequences: Sequence[Sequence[int]], batch: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``sequences[batch]`` right-padded into one [rows, longest] tensor, with each column's position and each
    row's length (so masks are ``positions < lengths[:, None]`` and friends)."""
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    batch_lengths = torch.tensor([len(sequences[i]) for i in batch])
    width = int(batch_lengths.max())
    tokens = torch.full((len(batch), width), pad_id, dtype=torch.long)
    for row, i in enumerate(batch):
        tokens[row, : len(sequences[i])] = torch.tensor(list(sequences[i]), dtype=torch.long)
    return tokens, torch.arange(width).expand(len(batch), width), batch_lengths


def score_tokens(
    lm: LoadedModel,
    sequences: Sequence[Sequence[int]],
    hooks: Sequence[Hook] = (),
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
) -> list[TokenScores]:
    """Per-token log-probabilities and argmax hits for each sequence, batched, under ``hooks``.

    Each batch holds the model (with ``hooks``) on its own; ``should_stop`` is asked before each batch
    (:class:`~unlearn_core.errors.Stopped` when it says so).
    """
    results: list[TokenScores | None] = [None] * len(sequences)
    total = sum(len(s) - 1 for s in sequences)
    done = 0
    for group in iter_token_scores(lm, sequences, hooks, batch_tokens, should_stop):
        for i, scores in group:
            results[i] = scores
            done += scores.logprobs.numel()
        if progress is not None:
            progress(done, total)
    return [r for r in results if r is not None]


def iter_token_scores(
    lm: LoadedModel,
    sequences: Sequence[Sequence[int]],
    hooks: Sequence[Hook] = (),
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    should_stop: StopCheck | None = None,
) -> Iterator[list[tuple[int, TokenScores]]]:
    """:func:`score_tokens` as it goes: yields ``(sequence index, scores)`` pairs, group by group.

    The layers run one length-sorted batch at a time, each holding the model with ``hooks`` (final norm included).
    The vocabulary projection, which no hook touches, runs once per ``UNEMBED_GROUP_ROWS`` scored positions (at most
    ``batch_tokens``) gathered from one or more batches, after the model is released: a pass over the 262k-entry
    unembedding costs nearly the same for 50 rows as for 1,000, and other callers need not wait for it.
    """
    if any(len(s) < 2 for s in sequences):
        raise InputError("every sequence needs at least two tokens (BOS and one more)")
    lengths = [len(s) for s in sequences]
    batches = batches_by_length(lengths, batch_tokens)
    pending: list[tuple[list[int], torch.Tensor, torch.Tensor]] = []
    for k, batch in enumerate(batches):
        check_stop(should_stop)
        tokens, positions, batch_lengths = right_padded(lm, sequences, batch)
        tokens = tokens.to(lm.device)
        with torch.inference_mode(), intervened(lm, hooks) as model:
            resid = model(tokens, stop_at_layer=model.cfg.n_layers)
            # Positions 0..n-2 of each row predict tokens 1..n-1; gather them all into one flat list.
            keep = (positions < (batch_lengths - 1)[:, None]).to(resid.device)
            pending.append((batch, final_normed(model, resid[keep]), tokens[:, 1:][keep[:, :-1]]))
        if k < len(batches) - 1 and sum(p[1].shape[0] for p in pending) < min(UNEMBED_GROUP_ROWS, batch_tokens):
            continue
        with torch.inference_mode():
            logp, hits = unembed_logprobs(lm.model, torch.cat([p[1] for p in pending]), torch.cat([p[2] for p in pending]))
        group, offset = [], 0
        for i in (i for p in pending for i in p[0]):
            n = lengths[i] - 1
            group.append((i, TokenScores(logp[offset : offset + n].cpu(), hits[offset : offset + n].cpu())))
            offset += n
        pending = []
        yield group


def unembed(model: Any, x: torch.Tensor) -> torch.Tensor:
    """Unembedding, output bias and soft-cap of final-norm residuals ``x`` [rows, d_model] -> [rows, d_vocab], in
    float32 (differentiable; for a few rows: :func:`~unlearn_core.scoring.vocab_logprobs.final_logprobs` scores many
    rows without the full logits)."""
    bias, cap = output_stage(model)
    logits = (x @ model.W_U).float()
    if bias is not None:
        logits = logits + bias.float()
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits
