"""Exact greedy next tokens without reading the whole unembedding: a speed patch (see
:mod:`unlearn_core.models.patches`, whose switch it follows).

Decoding one token multiplies one residual vector by the unembedding, 262k x 640 for Gemma 3 (670 MB per token in
float32), the largest single cost of greedy generation on a CPU. Only the arg-max is needed, so
:class:`GreedyScreen` first scores every token with an int8 copy of the matrix (one scale per row) and an int8
rounding of the input, in oneDNN's int8 matrix product (exact integer sums, a quarter of the bytes), with a proven
bound ``delta`` on how far each screened logit ``a`` can be from the model's own one. Only tokens whose interval
reaches the best lower bound (a few dozen of 262k on real text) can be the arg-max; those are scored again in the
model's dtype, from the same rows with the same kernel as the full product (candidates padded to a multiple of
:data:`PAD`, which keeps each column in a full vector block; for one row the full and the candidate products then
agreed bit for bit in every check on this CPU, float32 and bfloat16), and the first maximum wins, as ``argmax``
does. So the greedy tokens are the full product's (``tests/test_fast_forward.py``, and its real-model test). For
a batch of rows the kernel may sum in another order for some batch sizes (float32, 8 rows here), so two logits
equal to the last bit could be told apart differently - as batching itself already does.

The bound, for token i with row w_i, its int8 row v_i (times its scale), input x and its rounding y to two int8
terms (x ~ s1 q1 + s2 q2, the second for what the first leaves), g = (d + 2) 2^-24 (float32 sums of d terms):
``delta_i = 2 (c |a_i| + (||y - x|| + c ||y||) ||v_i|| + ||x|| (||w_i - v_i|| + g ||w_i||))`` (the screen's float32
scaling, c = 2^-20; the two roundings; the reference's float32 sums; Cauchy-Schwarz for every sum of
|x_k| |w_ik|), plus the reference's own output rounding in bfloat16 models (u = 2^-8: ``delta += u (|a| +
delta)``), doubled for margin. Used for float32 and bfloat16 models on the CPU with no output bias or soft-cap;
anything else (or more than :data:`MAX_CANDIDATES` candidates) takes the full product. The int8 copy (168 MB for
Gemma 3, a quarter of the float32 matrix) is built on first use, in a few seconds, and again when ``W_U`` changes.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from unlearn_core.models.fast_forward import tensor_version

PAD = 64
"""Candidate count granularity (see above)."""
MAX_CANDIDATES = 4096
"""Above this many candidates in a row, the full product is cheaper."""
MAX_ROWS = 64
"""Batches of more rows take the full product."""
_CHUNK = 8192
_ATTR = "_unlearn_greedy_screen"
_BUILD_LOCK = threading.Lock()
_U16 = 2.0**-8 / (1 - 2.0**-8)
_C_OUT = 2.0**-20


class GreedyScreen:
    """The int8 screen of one unembedding: ``rows`` is ``W_U.T`` ([d_vocab, d_model], the model's dtype)."""

    def __init__(self, rows: torch.Tensor) -> None:
        n_vocab, d_model = rows.shape
        self.rows = rows
        q = torch.empty(n_vocab, d_model, dtype=torch.int8)
        self.scales = torch.empty(n_vocab)
        self.v_norm = torch.empty(n_vocab)
        self.q_err = torch.empty(n_vocab)
        gamma = (d_model + 2) * 2.0**-24
        self.bf16_reference = rows.dtype == torch.bfloat16
        with torch.no_grad():
            for start in range(0, n_vocab, _CHUNK):
                w = rows[start : start + _CHUNK].float()
                scale = (w.abs().amax(1) / 127).clamp_min(1e-30)
                q_w = torch.round(w / scale[:, None]).clamp_(-127, 127)
                v = q_w * scale[:, None]
                q[start : start + _CHUNK] = q_w.to(torch.int8)
                self.scales[start : start + _CHUNK] = scale
                self.v_norm[start : start + _CHUNK] = v.norm(dim=1)
                self.q_err[start : start + _CHUNK] = (w - v).norm(dim=1) + gamma * w.norm(dim=1)
        self.packed = torch.ops.onednn.qlinear_prepack(q, [1, d_model])
        self.zero_points = torch.zeros(n_vocab, dtype=torch.long)

    @classmethod
    def for_model(cls, model: Any) -> GreedyScreen | None:
        """The model's screen (built on first use, rebuilt when ``W_U`` changed), or None when it does not apply:
        not float32/bfloat16 on the CPU, an output bias or soft-cap, or no oneDNN int8 kernel here."""
        from transformer_lens.utilities.activation_functions import softcap_enabled

        w_u = model.W_U
        if w_u.dtype not in (torch.float32, torch.bfloat16) or w_u.device.type != "cpu" \
                or softcap_enabled(model.cfg.output_logits_soft_cap) or bool(model.b_U.any()):
            return None
        key = (w_u.data_ptr(), tuple(w_u.shape), tuple(w_u.stride()), w_u.dtype, tensor_version(w_u))
        cached = model.__dict__.get(_ATTR)
        if cached is not None and cached[0] == key:
            return cached[1]
        with _BUILD_LOCK:
            cached = model.__dict__.get(_ATTR)
            if cached is None or cached[0] != key:
                try:
                    screen: GreedyScreen | None = cls(w_u.detach().T)
                    screen._screen(torch.ones(1, w_u.shape[0]))  # the kernel exists and runs here
                except (RuntimeError, AttributeError, NotImplementedError):
                    screen = None
                cached = model.__dict__[_ATTR] = (key, screen)
            return cached[1]

    def _screen(self, q_x: torch.Tensor) -> torch.Tensor:
        """``q_x @ (int8 rows x scales).T`` for int8-valued ``q_x`` (exact integer sums, then the row scales)."""
        return torch.ops.onednn.qlinear_pointwise(q_x.to(torch.int8), 1.0, 0, self.packed, self.scales,
                                                  self.zero_points, None, 1.0, 0, torch.float32, "none", [], "")

    def argmax(self, x: torch.Tensor) -> torch.Tensor | None:
        """``argmax(x @ rows.T, -1)`` for ``x`` [rows, d_model] in the rows' dtype, or None when the full product
        is the way (too many rows or candidates, a non-finite input)."""
        n = x.shape[0]
        if n > MAX_ROWS or x.dtype != self.rows.dtype:
            return None
        xd = x.double()
        if not bool(torch.isfinite(xd).all()):
            return None
        # x ~ s1 q1 + s2 q2: int8 q1, and q2 for what q1 leaves (two rows of one int8 product, per-row scales).
        s1 = (xd.abs().amax(1, keepdim=True) / 127).clamp_min(1e-300)
        q1 = torch.round(xd / s1).clamp_(-127, 127)
        rest = xd - q1 * s1
        s2 = (rest.abs().amax(1, keepdim=True) / 127).clamp_min(1e-300)
        q2 = torch.round(rest / s2).clamp_(-127, 127)
        x_hat = q1 * s1 + q2 * s2
        alpha = ((x_hat - xd).norm(dim=1, keepdim=True) + _C_OUT * x_hat.norm(dim=1, keepdim=True)).float()
        beta = xd.norm(dim=1, keepdim=True).float()
        both = self._screen(torch.cat([q1, q2]))
        screened = both[:n].mul_(s1.float()).addcmul_(both[n:], s2.float())
        delta = screened.abs().mul_(_C_OUT).addcmul_(alpha, self.v_norm[None]).addcmul_(beta, self.q_err[None])
        if self.bf16_reference:  # the reference rounds its logits to bfloat16
            delta.mul_(1 + _U16).add_(screened.abs(), alpha=_U16)
        delta.mul_(2.0)
        lower = (screened - delta).amax(dim=1, keepdim=True)
        candidates = (screened + delta >= lower).any(dim=0).nonzero()[:, 0]
        count = int(candidates.numel())
        if count == 0 or count > MAX_CANDIDATES:
            return None
        padded = -(-count // PAD) * PAD
        index = torch.cat([candidates, candidates.new_zeros(padded - count)])
        exact = (x @ self.rows[index].T)[:, :count]  # the same rows, layout and kernel as x @ W_U
        return candidates[exact.argmax(dim=1)]


def greedy_tokens(model: Any, x: torch.Tensor) -> torch.Tensor | None:
    """Greedy next tokens for normalised final residuals ``x`` [rows, d_model], or None (use the full logits)."""
    screen = GreedyScreen.for_model(model)
    return None if screen is None else screen.argmax(x)
