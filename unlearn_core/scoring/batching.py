"""Batched per-token scoring, the core of perplexity and probe scores.

Every text gets BOS prepended. Sequences are sorted by length and right-padded (causal attention means padding after
a text cannot change its scores, so no attention mask is needed), and the vocabulary projection is done only for
real positions, in chunks, so a 262k-token vocabulary never materialises as one huge logits tensor.

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

import torch

from unlearn_core.ablation.interventions import Hook, intervened
from unlearn_core.errors import InputError, Stopped
from unlearn_core.models.loading import LoadedModel

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(done, total)``; units are tokens for scoring and steps for generation."""
StopCheck = Callable[[], bool]
"""Asked between batches; True ends the job with :class:`~unlearn_core.errors.Stopped`."""

_SCOPED_STOPS: contextvars.ContextVar[tuple[StopCheck, ...]] = contextvars.ContextVar("scoped_stops", default=())

DEFAULT_MAX_SEQ_LEN = 1024
DEFAULT_BATCH_TOKENS = 2048
UNEMBED_CHUNK = 512


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
    """Group sequence indices, longest first, so each padded batch has at most ``batch_tokens`` tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = lengths[current[0]] if current else lengths[i]
        if current and width * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
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
    if any(len(s) < 2 for s in sequences):
        raise InputError("every sequence needs at least two tokens (BOS and one more)")
    lengths = [len(s) for s in sequences]
    total = sum(n - 1 for n in lengths)
    done = 0
    results: list[TokenScores | None] = [None] * len(sequences)
    for batch in batches_by_length(lengths, batch_tokens):
        check_stop(should_stop)
        tokens, positions, batch_lengths = right_padded(lm, sequences, batch)
        tokens = tokens.to(lm.device)
        with torch.inference_mode(), intervened(lm, hooks) as model:
            resid = model(tokens, stop_at_layer=model.cfg.n_layers)
            # Positions 0..n-2 of each row predict tokens 1..n-1; gather them all into one flat list.
            keep = (positions < (batch_lengths - 1)[:, None]).to(resid.device)
            targets = tokens[:, 1:][keep[:, :-1]]
            logp, hits = _final_logprobs(model, resid[keep], targets)
        offset = 0
        for i in batch:
            n = lengths[i] - 1
            results[i] = TokenScores(logp[offset : offset + n].cpu(), hits[offset : offset + n].cpu())
            offset += n
        done += sum(lengths[i] - 1 for i in batch)
        if progress is not None:
            progress(done, total)
    return [r for r in results if r is not None]


def unembed(model: Any, x: torch.Tensor) -> torch.Tensor:
    """Unembedding, output bias and soft-cap of final-norm residuals ``x`` [rows, d_model] -> [rows, d_vocab], in
    float32 (differentiable; for a few rows: :func:`_final_logprobs` streams many rows through one buffer)."""
    from transformer_lens.utilities.activation_functions import softcap_enabled

    logits = (x @ model.W_U).float()
    if bool(model.b_U.any()):
        logits = logits + model.b_U.float()
    cap = model.cfg.output_logits_soft_cap
    if softcap_enabled(cap):
        logits = torch.tanh(logits / cap) * cap
    return logits


def _final_logprobs(model: Any, resid: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) and argmax hit for [N, d_model] final-layer residuals.

    The vocabulary projection dominates the cost of scoring (262k x 640 for Gemma 3), so it is done in chunks into
    one reused buffer, and the log-sum-exp is computed in place: no 1 GB temporaries, no page-fault storms.
    """
    from transformer_lens.utilities.activation_functions import softcap_enabled

    n = resid.shape[0]
    if n == 0:
        return torch.zeros(0), torch.zeros(0, dtype=torch.bool)
    if model.cfg.normalization_type is not None:
        resid = model.ln_final(resid.unsqueeze(0))[0]
    w_u = model.W_U
    b_u = model.b_U if bool(model.b_U.any()) else None
    cap = model.cfg.output_logits_soft_cap
    buf = torch.empty(min(UNEMBED_CHUNK, n), w_u.shape[1], dtype=torch.float32, device=resid.device)
    logps, hits = [], []
    for start in range(0, n, UNEMBED_CHUNK):
        x = resid[start : start + UNEMBED_CHUNK]
        logits = buf[: x.shape[0]]
        if w_u.dtype == torch.float32:
            torch.mm(x.float(), w_u, out=logits)
        else:
            logits.copy_(x @ w_u)
        if b_u is not None:
            logits.add_(b_u.float())
        if softcap_enabled(cap):
            logits.div_(cap).tanh_().mul_(cap)  # = apply_softcap, without a chunk-sized temporary
        tgt = targets[start : start + UNEMBED_CHUNK]
        tgt_logits = logits.gather(1, tgt[:, None])[:, 0]
        top, arg = logits.max(dim=-1)
        logits.sub_(top[:, None]).exp_()
        logsumexp = top + logits.sum(dim=-1).log()
        logps.append(tgt_logits - logsumexp)
        hits.append(arg == tgt)
    return torch.cat(logps), torch.cat(hits)
