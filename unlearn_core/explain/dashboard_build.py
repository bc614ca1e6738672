"""Computing latent dashboards (:class:`~unlearn_core.explain.dashboards.Dashboards`) from model activations."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from unlearn_core.errors import InputError
from unlearn_core.explain.dashboards import (
    CONTEXTS_PER_LATENT,
    LOGIT_TOKENS,
    TOKENS_AFTER,
    TOKENS_BEFORE,
    Dashboards,
    bfloat16_round,
)
from unlearn_core.models.loading import LoadedModel

ENCODE_CHUNK = 8192


def compute_dashboards(
    sae: Any,
    acts: Any,
    tokens: np.ndarray,
    sequence_index: np.ndarray,
    unembed: torch.Tensor,
    decode_token: Callable[[int], str],
    corpus: str,
    progress: Callable[[str, int, int], None] | None = None,
    row_source: np.ndarray | None = None,
    source_names: Sequence[str] = (),
) -> Dashboards:
    """Dashboards for every latent of ``sae`` from activations ``acts`` [N, d_in] (array or memmap).

    Rows of one sequence must be contiguous and in position order (BOS excluded); ``tokens`` and
    ``sequence_index`` give each row's token and sequence. ``unembed`` is the model's W_U [d_in, vocab].
    ``row_source`` (each row's index into ``source_names``) adds the firing frequency on each source.
    """
    n_rows = int(tokens.shape[0])
    d_sae = int(sae.cfg.d_sae)
    keep = 2 * CONTEXTS_PER_LATENT
    count = torch.zeros(d_sae, dtype=torch.long)
    per_source = torch.zeros(len(source_names), d_sae, dtype=torch.long)
    best_vals = torch.zeros(keep, d_sae)
    best_rows = torch.full((keep, d_sae), -1, dtype=torch.long)
    dtype = sae.W_enc.dtype
    with torch.inference_mode():
        for start in range(0, n_rows, ENCODE_CHUNK):
            x = torch.from_numpy(np.array(acts[start : start + ENCODE_CHUNK], dtype=np.float32)).to(sae.W_enc.device, dtype)
            feats = sae.encode(x).float().cpu()
            count += (feats > 0).sum(0)
            if row_source is not None:
                src = torch.from_numpy(row_source[start : start + ENCODE_CHUNK]).long()
                per_source.index_add_(0, src, (feats > 0).long())
            vals, rows = _best_row_per_sequence(feats, torch.from_numpy(sequence_index[start : start + ENCODE_CHUNK]), keep)
            merged_vals = torch.cat([best_vals, vals])
            merged_rows = torch.cat([best_rows, torch.where(rows >= 0, rows + start, -1)])
            best_vals, pick = merged_vals.topk(keep, dim=0)
            best_rows = merged_rows.gather(0, pick)
            if progress is not None:
                progress("activations", min(start + ENCODE_CHUNK, n_rows), n_rows)
        chosen = _distinct_sequence_rows(best_vals, best_rows, sequence_index)
        ctx_tokens, ctx_values, ctx_focus = _context_arrays(sae, acts, tokens, sequence_index, chosen, progress)
        promoted, promoted_v, suppressed, suppressed_v = _logit_effects(sae, unembed, progress)
    used = np.unique(np.concatenate([ctx_tokens[ctx_tokens >= 0].ravel(), promoted.ravel(), suppressed.ravel()]))
    index = {int(t): j for j, t in enumerate(used)}
    remap = np.vectorize(lambda t: index[int(t)] if t >= 0 else -1, otypes=[np.int32])
    return Dashboards(
        frequency=(count.float() / max(n_rows, 1)).numpy().astype(np.float32),
        max_activation=best_vals[0].clamp(min=0).numpy().astype(np.float32),
        context_tokens=remap(ctx_tokens) if ctx_tokens.size else ctx_tokens,
        context_values=bfloat16_round(ctx_values),
        context_focus=ctx_focus,
        promoted_tokens=remap(promoted),
        promoted_values=bfloat16_round(promoted_v),
        suppressed_tokens=remap(suppressed),
        suppressed_values=bfloat16_round(suppressed_v),
        vocab=[decode_token(int(t)) for t in used],
        meta={"corpus": corpus, "n_tokens": n_rows, "hook_name": sae.cfg.metadata.hook_name, "d_sae": d_sae,
              "sources": list(source_names)},
        source_frequency=_source_frequency(per_source, row_source, len(source_names)),
    )


def _source_frequency(per_source: torch.Tensor, row_source: np.ndarray | None, n_sources: int) -> np.ndarray | None:
    if row_source is None:
        return None
    rows = np.bincount(row_source, minlength=n_sources).clip(min=1)
    return (per_source.float() / torch.from_numpy(rows).float()[:, None]).T.contiguous().numpy()


def _best_row_per_sequence(feats: torch.Tensor, sequence: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per latent, the ``keep`` best sequences of a chunk: each one's max value and the row holding it (-1 if none).

    Taking the best row of each sequence first means a latent that fires on every token of one text cannot fill
    all its top contexts with that one text.
    """
    n, d = feats.shape
    _, inverse = torch.unique(sequence, return_inverse=True)
    n_seq = int(inverse.max()) + 1
    index = inverse[:, None].expand(n, d)
    seq_max = torch.zeros(n_seq, d).scatter_reduce(0, index, feats, "amax", include_self=True)
    is_max = (feats == seq_max[inverse]) & (feats > 0)
    rows = torch.where(is_max, torch.arange(n)[:, None].expand(n, d), n)
    seq_row = torch.full((n_seq, d), n).scatter_reduce(0, index, rows, "amin", include_self=True)
    k = min(keep, n_seq)
    vals, pick = seq_max.topk(k, dim=0)
    best_rows = torch.where(vals > 0, seq_row.gather(0, pick), -1)
    if k < keep:
        vals = torch.cat([vals, torch.zeros(keep - k, d)])
        best_rows = torch.cat([best_rows, torch.full((keep - k, d), -1)])
    return vals, best_rows


def _distinct_sequence_rows(vals: torch.Tensor, rows: torch.Tensor, sequence_index: np.ndarray) -> np.ndarray:
    """Per latent, up to CONTEXTS_PER_LATENT top rows from distinct sequences with positive value; -1 pads."""
    keep, d_sae = vals.shape
    chosen = np.full((d_sae, CONTEXTS_PER_LATENT), -1, dtype=np.int64)
    vals_np, rows_np = vals.numpy(), rows.numpy()
    for i in range(d_sae):
        seen: set[int] = set()
        j = 0
        for r in range(keep):
            row = int(rows_np[r, i])
            if vals_np[r, i] <= 0 or row < 0:
                break
            seq = int(sequence_index[row])
            if seq in seen:
                continue
            seen.add(seq)
            chosen[i, j] = row
            j += 1
            if j == CONTEXTS_PER_LATENT:
                break
    return chosen


def _context_arrays(
    sae: Any,
    acts: Any,
    tokens: np.ndarray,
    sequence_index: np.ndarray,
    chosen: np.ndarray,
    progress: Callable[[str, int, int], None] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d_sae, n_ctx = chosen.shape
    width = TOKENS_BEFORE + 1 + TOKENS_AFTER
    offsets = np.arange(-TOKENS_BEFORE, TOKENS_AFTER + 1)
    grid = chosen[:, :, None] + offsets[None, None, :]  # rows of each context window
    n_rows = tokens.shape[0]
    centre_seq = np.where(chosen >= 0, sequence_index[np.clip(chosen, 0, n_rows - 1)], -2)
    clipped = np.clip(grid, 0, n_rows - 1)
    valid = (chosen[:, :, None] >= 0) & (grid >= 0) & (grid < n_rows) & (sequence_index[clipped] == centre_seq[:, :, None])
    ctx_tokens = np.where(valid, tokens[clipped], -1).astype(np.int32)
    ctx_values = np.zeros((d_sae, n_ctx, width), dtype=np.float32)
    block = max(1, ENCODE_CHUNK // (n_ctx * width))
    dtype = sae.W_enc.dtype
    for start in range(0, d_sae, block):
        stop = min(start + block, d_sae)
        unique_rows = np.unique(clipped[start:stop])  # sorted
        x = torch.from_numpy(np.array(acts[unique_rows], dtype=np.float32)).to(sae.W_enc.device, dtype)
        feats = sae.encode(x).float().cpu().numpy()
        where = np.searchsorted(unique_rows, clipped[start:stop])  # [b, C, W]
        latent_ids = np.arange(start, stop)[:, None, None]
        ctx_values[start:stop] = feats[where, latent_ids]
        if progress is not None:
            progress("contexts", stop, d_sae)
    ctx_values = np.where(valid, ctx_values, 0.0)
    focus = np.where(chosen >= 0, _tokens_before(valid), -1).astype(np.int8)
    # Left-align each window: drop the invalid (other-sequence) slots in front of the first real token.
    shift = TOKENS_BEFORE - _tokens_before(valid)
    for i, c in zip(*np.nonzero(shift > 0), strict=True):
        s = shift[i, c]
        ctx_tokens[i, c] = np.concatenate([ctx_tokens[i, c, s:], np.full(s, -1, np.int32)])
        ctx_values[i, c] = np.concatenate([ctx_values[i, c, s:], np.zeros(s, np.float32)])
    return ctx_tokens, ctx_values, focus


def _tokens_before(valid: np.ndarray) -> np.ndarray:
    """How many valid slots precede the centre slot in each window."""
    return valid[:, :, :TOKENS_BEFORE].sum(axis=2)


def _logit_effects(
    sae: Any, unembed: torch.Tensor, progress: Callable[[str, int, int], None] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    d_sae = int(sae.cfg.d_sae)
    w_u = unembed.float()
    block = 256
    out = [np.zeros((d_sae, LOGIT_TOKENS), np.int64), np.zeros((d_sae, LOGIT_TOKENS), np.float32),
           np.zeros((d_sae, LOGIT_TOKENS), np.int64), np.zeros((d_sae, LOGIT_TOKENS), np.float32)]
    for start in range(0, d_sae, block):
        direction = sae.W_dec[start : start + block].float().to(w_u.device)
        direction = direction / direction.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        logits = direction @ w_u
        top = logits.topk(LOGIT_TOKENS, dim=-1)
        bottom = logits.topk(LOGIT_TOKENS, dim=-1, largest=False)
        stop = start + direction.shape[0]
        out[0][start:stop], out[1][start:stop] = top.indices.cpu().numpy(), top.values.cpu().numpy()
        out[2][start:stop], out[3][start:stop] = bottom.indices.cpu().numpy(), bottom.values.cpu().numpy()
        if progress is not None:
            progress("logits", stop, d_sae)
    return out[0], out[1], out[2], out[3]


def default_dashboard_texts() -> tuple[list[str], str]:
    from unlearn_core.data.texts import load_texts

    wiki = load_texts("wikitext2").texts
    hp = load_texts("hp-fanwiki").texts
    mixed = [t for pair in zip(wiki, hp, strict=False) for t in pair] + list(wiki[len(hp):])
    return mixed, "WikiText-2 test rows 0-999 interleaved with Harry Potter fan-wiki paragraphs"


def compute_dashboards_from_texts(
    lm: LoadedModel,
    loaded: Any,
    texts: Sequence[str],
    corpus: str,
    max_tokens: int = 40_000,
    progress: Callable[[str, int, int], None] | None = None,
) -> Dashboards:
    """Run the model over ``texts`` (up to ``max_tokens`` tokens), then compute the dashboards of ``loaded``."""
    from unlearn_core.scoring.activations import collect_activations
    from unlearn_core.scoring.batching import tokenize_with_bos

    sequences = []
    total = 0
    for seq in tokenize_with_bos(lm, texts, 256):
        if len(seq) < 2:
            continue
        sequences.append(seq)
        total += len(seq) - 1
        if total >= max_tokens:
            break
    if not sequences:
        raise InputError("no text to compute dashboards on")
    batch = collect_activations(lm, sequences, [loaded.hook_name])
    acts = batch.acts[loaded.hook_name].float().cpu().numpy()
    return compute_dashboards(
        loaded.sae,
        acts,
        batch.tokens.numpy(),
        batch.sequence_index.numpy(),
        lm.model.W_U.detach(),
        lambda t: lm.tokenizer.decode([t]),
        corpus,
        progress,
    )

