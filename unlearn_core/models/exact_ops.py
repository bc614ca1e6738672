"""The arithmetic of decoding, op for op as TransformerLens does it (so the library's bits in float32; the norm in
lower precisions differs, see :func:`rms_norm`), shared by
:mod:`unlearn_core.models.fast_forward` and :mod:`unlearn_core.models.lean_decode`: norms, rotary embeddings
and the attention pattern."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float, dtype: torch.dtype) -> torch.Tensor:
    """TransformerLens' ``RMSNorm``: op for op in float32 and float64 (the library's bits). In lower precisions
    (where the library upcasts to float32, normalises, rounds, then multiplies by ``w`` in the low dtype) the same
    float32 math in fewer passes, rounded once at the end: the mean square from one float32 norm of ``x``, the scale
    and ``w`` applied in float32 (closer to the float32 result; ``scripts/scoring_check.py`` times it)."""
    if dtype in (torch.float32, torch.float64):
        return (x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()).to(dtype) * w
    wide = x.float()  # one cast up front: a bfloat16-times-float32 product takes PyTorch's slower mixed-dtype path
    mean_square = torch.linalg.vector_norm(wide, dim=-1, keepdim=True).square_().div_(x.shape[-1])
    return wide.mul_(mean_square.add_(eps).rsqrt_()).mul_(w.float()).to(dtype)


def rotate(self: Any, x: torch.Tensor, offset: int) -> torch.Tensor:
    """``apply_rotary`` for consecutive positions from ``offset`` (no padding), the same arithmetic: TransformerLens'
    ``x * cos + rotate_every_two(x) * sin`` with ``rotate_every_two(x) * sin`` as ``roll(x) * (sign * sin)`` (a sign
    flip is exact, so the products are the same numbers)."""
    n, cos, sin = x.size(1), self.rotary_cos, signed_sin(self)
    return rotate_rows(x, cos[None, offset : offset + n, None, :], sin[None, offset : offset + n, None, :],
                       self.cfg.rotary_dim)


def rotate_rows(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rd: int) -> torch.Tensor:
    """:func:`rotate`'s arithmetic with the positions' rows of the cos and signed-sin tables."""
    if rd == x.size(-1):
        return x * cos + x.roll(rd // 2, dims=-1) * sin
    x_rot = x[..., :rd]
    return torch.cat([x_rot * cos + x_rot.roll(rd // 2, dims=-1) * sin, x[..., rd:]], dim=-1)


def signed_sin(self: Any) -> torch.Tensor:
    """``rotary_sin`` with its first half negated (kept until the table is rebuilt)."""
    table = self.rotary_sin
    cached = self.__dict__.get("_unlearn_signed_sin")
    if cached is None or cached[0] is not table:
        half = table.size(-1) // 2
        cached = self.__dict__["_unlearn_signed_sin"] = (table, torch.cat([-table[..., :half], table[..., half:]], -1))
    return cached[1]


def exact_attention(self: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
                     ) -> torch.Tensor:
    """The library's scores, soft-cap, mask, softmax and weighted values, op for op (so bit for bit), minus what
    changes nothing here: the mask where every key is visible, the NaN-to-zero of rows that see no key, a disabled
    soft-cap (``apply_softcap`` is the identity then) and a cast to the dtype the pattern already has."""
    if k.size(2) != q.size(2):  # GroupedQueryAttention: expand the key-value heads
        k = torch.repeat_interleave(k, dim=2, repeats=q.size(2) // k.size(2))
        v = torch.repeat_interleave(v, dim=2, repeats=q.size(2) // v.size(2))
    scores = q.permute(0, 2, 1, 3) @ k.permute(0, 2, 3, 1) / self.attn_scale
    cap = self.cfg.attn_scores_soft_cap
    if cap is not None and cap > 0:  # apply_softcap's own test and formula
        scores = cap * torch.tanh(scores / cap)
    if mask is not None:
        scores = torch.where(mask, scores, self.IGNORE)
    pattern = F.softmax(scores, dim=-1)
    pattern = pattern if pattern.dtype == v.dtype else pattern.to(v.dtype)
    return (pattern @ v.permute(0, 2, 1, 3)).permute(0, 2, 1, 3)
