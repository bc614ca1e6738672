"""log p(target) and argmax hits over a large vocabulary, without materialising the logits.

The vocabulary projection dominates the cost of scoring (262k x 640 for Gemma 3). :func:`target_logprobs` runs it
in tiles of up to ``TILE_ROWS`` rows x ``TILE_COLS`` vocabulary entries (16 MB in float32, held by the CPU's
last-level cache) and reduces each tile at once to its maximum and its sum of exponentials (an online log-sum-exp,
as flash attention does for its softmax). Streaming whole 512 x 262k chunks through memory instead spent more time
on the elementwise passes (max, subtract, exp, sum) than on the product itself, in bfloat16 most of all.

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
) -> tuple[torch.Tensor, torch.Tensor]:
    """For rows ``x`` [n, d] (already final-normed), the unembedding ``w_u`` [d, vocab], optional output ``bias``
    [vocab] and logit ``softcap``: float32 log p(``targets``) [n] and whether each target is the argmax [n]."""
    n, vocab = x.shape[0], w_u.shape[1]
    dev = x.device
    if n == 0:
        return torch.zeros(0, device=dev), torch.zeros(0, dtype=torch.bool, device=dev)
    x = x.to(w_u.dtype)
    tile_rows = -(-n // -(-n // tile_rows))  # rows split evenly over the fewest chunks (no 20-row last chunk)
    bias = bias.float() if bias is not None else None
    n_tiles = -(-vocab // tile_cols)
    tile_max = torch.empty(n, n_tiles, device=dev)
    tile_sum = torch.empty(n, n_tiles, device=dev)
    target_value = torch.empty(n, device=dev)  # the target's logit as the tiles hold it
    before_in_tile = torch.full((n,), -torch.inf, device=dev)  # max over the target's tile before the target
    target_tile = torch.div(targets, tile_cols, rounding_mode="floor")
    rows_per_tile = _rows_by_tile(target_tile, tile_rows)
    out = torch.empty(min(tile_rows, n), tile_cols, dtype=w_u.dtype, device=dev)
    wide = out if w_u.dtype == torch.float32 else torch.empty(out.shape, device=dev)
    for j in range(n_tiles):
        cols = slice(j * tile_cols, min(vocab, (j + 1) * tile_cols))
        w = w_u[:, cols]
        width = w.shape[1]
        for chunk, start in enumerate(range(0, n, tile_rows)):
            stop = min(n, start + tile_rows)
            logits = wide[: stop - start, :width]
            if wide is out:
                torch.mm(x[start:stop], w, out=logits)
            else:
                torch.mm(x[start:stop], w, out=out[: stop - start, :width])
                logits.copy_(out[: stop - start, :width])
            _logit_transform(logits, bias[cols] if bias is not None else None, softcap)
            here = rows_per_tile.get((chunk, j))
            if here is not None:
                offset = targets[start + here] - j * tile_cols
                values = logits[here]
                target_value[start + here] = values.gather(1, offset[:, None])[:, 0]
                earlier = torch.arange(width, device=dev)[None, :] >= offset[:, None]
                before_in_tile[start + here] = values.masked_fill_(earlier, -torch.inf).amax(1)
            top = logits.amax(1)
            tile_max[start:stop, j] = top
            tile_sum[start:stop, j] = logits.sub_(top[:, None]).exp_().sum(1)
    row_max = tile_max.amax(1)
    logsumexp = row_max + (tile_sum * (tile_max - row_max[:, None]).exp()).sum(1).log()
    earlier_tiles = torch.arange(n_tiles, device=dev)[None, :] < target_tile[:, None]
    before = torch.maximum(tile_max.masked_fill(~earlier_tiles, -torch.inf).amax(1), before_in_tile)
    hits = (target_value == row_max) & (before < target_value)
    if w_u.dtype != torch.float32:
        target_value = (x.float() * w_u[:, targets].t().float()).sum(1)
        _logit_transform(target_value[:, None], bias[targets][:, None] if bias is not None else None, softcap)
    return target_value - logsumexp, hits


def _rows_by_tile(target_tile: torch.Tensor, tile_rows: int) -> dict[tuple[int, int], torch.Tensor]:
    """(row chunk, vocabulary tile) -> the chunk-relative rows whose target lies in that tile."""
    groups: dict[tuple[int, int], torch.Tensor] = {}
    for chunk, start in enumerate(range(0, target_tile.shape[0], tile_rows)):
        tiles = target_tile[start : start + tile_rows]
        order = torch.argsort(tiles, stable=True)
        uniq, counts = torch.unique_consecutive(tiles[order], return_counts=True)
        for tile, rows in zip(uniq.tolist(), torch.split(order, counts.tolist()), strict=True):
            groups[(chunk, tile)] = rows
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
