"""log p(target) and argmax hits over a large vocabulary, without materialising the logits.

The vocabulary projection dominates the cost of scoring (262k x 640 for Gemma 3). :func:`target_logprobs` runs it
in tiles of up to ``TILE_ROWS`` rows x ``TILE_COLS`` vocabulary entries (16 MB in float32, held by the CPU's
last-level cache) and reduces each tile, ``BLOCK_ROWS`` rows at a time (in L2), to its maximum and its sum of
exponentials (an online log-sum-exp, as flash attention does for its softmax). Streaming whole 512 x 262k chunks
through memory instead spent more time on the elementwise passes (max, subtract, exp, sum) than on the product
itself, in bfloat16 most of all. A block whose maxima are moderate (:data:`UNSHIFTED_RANGE`) takes ``exp`` of the
values themselves, one pass fewer (and no rounding of a subtraction).

Precision: each tile is reduced in float32 whatever the model's dtype. In a bfloat16 model the tile's products are
rounded to bfloat16 (as the hardware's matrix units return them), which moves the log-sum-exp over 262k entries very
little, while the target's own logit is a float32 dot product of the same bf16 inputs, not a rounded one.
The argmax hit is exact for the values the tiles hold: token ``t`` is the argmax (first index on ties, as
``torch.argmax``) when its value equals the row maximum and every earlier entry is smaller.
"""

from __future__ import annotations

from typing import Any

import torch

TILE_ROWS = 2048
TILE_COLS = 2048
BLOCK_ROWS = 128
"""Rows of a tile reduced together: 128 x 2048 float32 values (1 MB) stay in a core's L2 cache through the
elementwise passes, which then run about a third faster than over the whole tile (``scripts/scoring_check.py``)."""
UNSHIFTED_RANGE = 60.0
"""A block whose rows' maxima all lie within +-this skips the subtraction of the maximum before ``exp`` (the sum
of up to 2048 terms below e^60 cannot overflow float32, and the largest term stays far from underflow)."""


def _logit_transform(logits: torch.Tensor, bias: torch.Tensor | None, cap: float | None) -> torch.Tensor:
    """Bias and soft-cap applied in place to float32 ``logits`` (the unembedding's output stage)."""
    if bias is not None:
        logits.add_(bias)
    if cap is not None:
        logits.div_(cap).tanh_().mul_(cap)  # = apply_softcap, without a tile-sized temporary
    return logits


def target_logprobs(
    x: torch.Tensor, w_u: torch.Tensor, targets: torch.Tensor, bias: torch.Tensor | None = None,
    softcap: float | None = None, tile_rows: int = TILE_ROWS, tile_cols: int = TILE_COLS,
    block_rows: int = BLOCK_ROWS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For rows ``x`` [n, d] (already final-normed), the unembedding ``w_u`` [d, vocab], optional output ``bias``
    [vocab] and logit ``softcap``: float32 log p(``targets``) [n] and whether each target is the argmax [n].

    Each tile's product covers up to ``tile_rows`` rows; its float32 values are then reduced ``block_rows`` rows
    at a time (the max, then the sum of ``exp`` of the values, shifted by the max unless :data:`UNSHIFTED_RANGE`
    makes that unnecessary)."""
    n, vocab = x.shape[0], w_u.shape[1]
    dev = x.device
    if n == 0:
        return torch.zeros(0, device=dev), torch.zeros(0, dtype=torch.bool, device=dev)
    x = x.to(w_u.dtype)
    tile_rows = -(-n // -(-n // tile_rows))  # rows split evenly over the fewest chunks (no 20-row last chunk)
    block_rows = min(block_rows, tile_rows)
    chunks = [(start, min(n, start + tile_rows)) for start in range(0, n, tile_rows)]
    blocks = [[(b, min(stop, b + block_rows)) for b in range(start, stop, block_rows)] for start, stop in chunks]
    bias = bias.float() if bias is not None else None
    n_tiles = -(-vocab // tile_cols)
    # per tile, one contiguous row of every row's maximum, shift (what the exponentials were taken relative to)
    # and sum of exponentials
    tile_max = torch.empty(n_tiles, n, device=dev)
    tile_shift = torch.zeros(n_tiles, n, device=dev)
    tile_sum = torch.empty(n_tiles, n, device=dev)
    target_value = torch.empty(n, device=dev)  # the target's logit as the tiles hold it
    before_in_tile = torch.full((n,), -torch.inf, device=dev)  # max over the target's tile before the target
    target_tile = torch.div(targets, tile_cols, rounding_mode="floor")
    rows_per_block = _rows_by_tile(target_tile, [b for chunk in blocks for b in chunk])
    out = torch.empty(min(tile_rows, n), tile_cols, dtype=w_u.dtype, device=dev)
    wide = None if w_u.dtype == torch.float32 else torch.empty(block_rows, tile_cols, device=dev)
    for j in range(n_tiles):
        cols = slice(j * tile_cols, min(vocab, (j + 1) * tile_cols))
        w = w_u[:, cols]
        width = w.shape[1]
        tile_bias = bias[cols] if bias is not None else None
        for (start, stop), chunk_blocks in zip(chunks, blocks, strict=True):
            product = out[: stop - start, :width]
            torch.mm(x[start:stop], w, out=product)
            for b_start, b_stop in chunk_blocks:
                rows = product[b_start - start : b_stop - start]
                logits = rows if wide is None else wide[: b_stop - b_start, :width].copy_(rows)
                _logit_transform(logits, tile_bias, softcap)
                here = rows_per_block.get((b_start, j))
                if here is not None:
                    offset = targets[b_start + here] - j * tile_cols
                    values = logits[here]
                    target_value[b_start + here] = values.gather(1, offset[:, None])[:, 0]
                    earlier = torch.arange(width, device=dev)[None, :] >= offset[:, None]
                    before_in_tile[b_start + here] = values.masked_fill_(earlier, -torch.inf).amax(1)
                top = torch.amax(logits, 1, out=tile_max[j, b_start:b_stop])
                if not float(top.abs().amax()) < UNSHIFTED_RANGE:  # (NaN included)
                    tile_shift[j, b_start:b_stop] = top
                    logits.sub_(top[:, None])
                torch.sum(logits.exp_(), 1, out=tile_sum[j, b_start:b_stop])
    tile_max, tile_shift, tile_sum = tile_max.t(), tile_shift.t(), tile_sum.t()
    row_max = tile_max.amax(1)
    logsumexp = row_max + (tile_sum * (tile_shift - row_max[:, None]).exp()).sum(1).log()
    earlier_tiles = torch.arange(n_tiles, device=dev)[None, :] < target_tile[:, None]
    before = torch.maximum(tile_max.masked_fill(~earlier_tiles, -torch.inf).amax(1), before_in_tile)
    hits = (target_value == row_max) & (before < target_value)
    if w_u.dtype != torch.float32:
        target_value = (x.float() * w_u[:, targets].t().float()).sum(1)
        _logit_transform(target_value[:, None], bias[targets][:, None] if bias is not None else None, softcap)
    return target_value - logsumexp, hits


def _rows_by_tile(target_tile: torch.Tensor, blocks: list[tuple[int, int]]) -> dict[tuple[int, int], torch.Tensor]:
    """(row block's first row, vocabulary tile) -> the block-relative rows whose target lies in that tile."""
    groups: dict[tuple[int, int], torch.Tensor] = {}
    for start, stop in blocks:
        tiles = target_tile[start:stop]
        order = torch.argsort(tiles, stable=True)
        uniq, counts = torch.unique_consecutive(tiles[order], return_counts=True)
        for tile, rows in zip(uniq.tolist(), torch.split(order, counts.tolist()), strict=True):
            groups[(start, tile)] = rows
    return groups


def final_normed(model: Any, resid: torch.Tensor) -> torch.Tensor:
    """A TransformerLens ``model``'s final norm of [N, d_model] final-layer residuals (its hooks fire)."""
    if resid.shape[0] and model.cfg.normalization_type is not None:
        return model.ln_final(resid.unsqueeze(0))[0]
    return resid


def output_stage(model: Any) -> tuple[torch.Tensor | None, float | None]:
    """A TransformerLens ``model``'s output bias (None when all zero) and logit soft-cap (None when disabled)."""
    from transformer_lens.utilities.activation_functions import softcap_enabled

    cap = model.cfg.output_logits_soft_cap
    return (model.b_U if bool(model.b_U.any()) else None), (cap if softcap_enabled(cap) else None)


def unembed_logprobs(model: Any, normed: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`target_logprobs` with a TransformerLens ``model``'s unembedding and :func:`output_stage`, for
    final-normed rows."""
    return target_logprobs(normed, model.W_U, targets, *output_stage(model))


def final_logprobs(model: Any, resid: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) and argmax hit for [N, d_model] final-layer residuals: :func:`final_normed`, then
    :func:`unembed_logprobs`."""
    return unembed_logprobs(model, final_normed(model, resid), targets)
