"""Leaner TransformerLens blocks for decoding: a speed patch of :mod:`unlearn_core.models.patches`.

Generating one token runs every block on one position, so a forward pass is dominated by TransformerLens' per-op
work (it re-arranges and copies the attention weights on every call, normalises the attention input three times,
calls dozens of hook points), not by arithmetic. Two changes, per model and behind the patches' switch
(``load_model(..., speed_patches=False)`` or ``UNLEARN_SPEED_PATCHES=0`` leave the library untouched;
:func:`uninstall_fast_forward` undoes the second on a model):

* :func:`store_attention_weights_for_linear` - ``W_Q``, ``W_K``, ``W_V`` and ``W_O`` are stored so that the
  library's own per-forward ``rearrange(...)`` of each is a view instead of a copy of the matrix (same values and
  shapes, and the product sees the same contiguous layout the copy had: the library computes the same bits).
* :func:`install_fast_forward` - blocks, attention and gated MLPs get a forward doing the library's arithmetic op
  for op with fewer calls: ``ln1`` once, rotary embeddings from the tables directly, the attention pattern without
  the no-op mask and NaN clean-up. float32 gives the library's bits (:data:`EXACT_DTYPES`); bfloat16 uses one fused
  Q/K/V product, SDPA (float32 sums, closer to transformers') and oneDNN's pre-packed weights (the same bits as
  ``F.linear``, about twice as fast on the CPU, twice their memory).

Every hook point still fires, with the library's tensors (``hook_resid_*``, ``hook_q/k/v``, the norms' hooks,
``hook_rot_q/k``, ``hook_z``, ``hook_attn_out``, ``hook_mlp_*``, sae_lens' ``mlp.hook_in``); a plain ``HookPoint``
with nothing attached is skipped rather than called, and a module put in a hook point's place (sae_lens'
``add_sae``) is always called. The attention scores and pattern are never materialised as hook inputs, so when a
hook is attached to ``hook_attn_scores``, ``hook_pattern`` or ``ln1`` (or a global module hook exists, gradients are
on, the weights were replaced, or the configuration is one this module does not cover) the library's own forward
runs for that block. ``tests/test_fast_forward.py`` checks all of this against the library.
"""

from __future__ import annotations

import threading
import types
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.modules import module as nn_module

from unlearn_core.models.exact_ops import exact_attention as _exact_attention
from unlearn_core.models.exact_ops import rms_norm
from unlearn_core.models.exact_ops import rotate as _rotate

_QKV = (("W_Q", "b_Q"), ("W_K", "b_K"), ("W_V", "b_V"))
_FALLBACK_HOOKS = ("hook_attn_scores", "hook_pattern", "hook_result")
_PACKED = "_unlearn_packed_weights"
_RMS_MODULE = "transformer_lens.components.rms_norm"
EXACT_DTYPES = (torch.float32, torch.float64)
"""Attention in these dtypes is computed op for op as TransformerLens does (same bits); in others (bfloat16,
float16) by ``F.scaled_dot_product_attention``, which sums in float32 and so differs from the library's bfloat16
products."""
_HOOK_POINT: list[type] = [type(None)]
"""TransformerLens' ``HookPoint`` class, resolved by :func:`install_fast_forward` (importing it is slow)."""
_PACKING = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def _qkv_names(attn: Any) -> list[tuple[str, str]]:
    """Parameter names of Q, K, V (grouped-query attention keeps K and V under ``_W_K``/``_W_V``)."""
    grouped = attn.cfg.n_key_value_heads is not None and not attn.cfg.ungroup_grouped_query_attention
    return [(("_" + w, "_" + b) if grouped and w != "W_Q" else (w, b)) for w, b in _QKV]


def _attention_modules(model: Any) -> list[Any]:
    from transformer_lens.components import Attention, GroupedQueryAttention

    blocks = getattr(model, "blocks", [])
    return [b.attn for b in blocks if type(getattr(b, "attn", None)) in (Attention, GroupedQueryAttention)
            and not b.attn.cfg.load_in_4bit]


def store_attention_weights_for_linear(model: Any) -> int:
    """Store ``W_Q``, ``W_K``, ``W_V`` and ``W_O`` so that TransformerLens' per-forward ``rearrange`` of each is a view,
    not a copy (same values, shapes and, for the product, the same contiguous layout the copy had); returns how many
    matrices changed. A matrix whose rearrange already is a view (one key-value head) is left as it is: its view has
    transposed strides, and the product with a contiguous copy would sum in another order."""
    changed = 0
    with torch.no_grad():
        for attn in _attention_modules(model):
            for name, _ in _qkv_names(attn):
                w = getattr(attn, name)
                if isinstance(w, torch.nn.Parameter) and w.dim() == 3 and w.shape[0] > 1 \
                        and not w.permute(0, 2, 1).is_contiguous():
                    w.data = w.data.permute(0, 2, 1).contiguous().permute(0, 2, 1)
                    changed += 1
            w_o = attn.W_O
            if isinstance(w_o, torch.nn.Parameter) and w_o.dim() == 3 and not w_o.permute(2, 0, 1).is_contiguous():
                w_o.data = w_o.data.permute(2, 0, 1).contiguous().permute(1, 2, 0)
                changed += 1
    return changed


def _hooked(module: Any) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks)


def _global_hooks() -> bool:
    return bool(nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks
                or nn_module._global_backward_hooks or nn_module._global_backward_pre_hooks)


def _linear(owner: Any, slot: str, x: torch.Tensor, weight: Any, bias: torch.Tensor | None,
            sources: tuple[torch.Tensor, ...], post: str = "none", other: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight.contiguous(), bias)``; for bfloat16 on the CPU with oneDNN's copy of ``weight`` packed
    once for its kernel (the same result, bit for bit; kept until one of ``sources`` changes). ``weight`` may be a
    list of ``(weight, bias)`` pairs: their products side by side, from one packed matrix. ``post`` (packed path
    only, see :func:`_packs`): ``"gelu_tanh"`` applies the tanh GELU, ``"mul"`` multiplies by ``other``, both on
    oneDNN's float32 accumulator before the rounding to bfloat16."""
    fused = isinstance(weight, list)
    if not _packs(x, weight[0][0] if fused else weight):
        if fused:
            return torch.cat([F.linear(x, w, b) for w, b in weight], dim=-1)
        return F.linear(x, weight.contiguous(), bias)
    key = (*(p.data_ptr() for p in sources), *(tensor_version(p) for p in sources), x.device)
    packed = owner.__dict__.setdefault(_PACKED, {})
    hit = packed.get(slot)
    if hit is None or hit[0] != key:
        w = torch.cat([w for w, _ in weight]) if fused else weight
        b = torch.cat([b for _, b in weight]) if fused else bias
        hit = packed[slot] = (key, torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), 1), b)
    b = hit[2] if fused else bias
    if post == "mul":
        return torch.ops.mkldnn._linear_pointwise.binary(x, other, hit[1], b, "mul")
    if post == "gelu_tanh":
        return torch.ops.mkldnn._linear_pointwise(x, hit[1], b, "gelu", [], "tanh")
    return torch.ops.mkldnn._linear_pointwise(x, hit[1], b, "none", [], "")


def _packs(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`_linear` takes oneDNN's packed bfloat16 path for this input and weight."""
    return weight.dtype == torch.bfloat16 and x.device.type == "cpu" and _PACKING and not torch.is_grad_enabled()


def tensor_version(t: torch.Tensor) -> int:
    """``t._version`` (bumped by every in-place change), or -1 for an inference tensor: a cache of something derived
    from ``t`` keys on it with ``t.data_ptr()``."""
    try:
        return int(t._version)
    except RuntimeError:  # an inference tensor: no version counter, and it cannot change in place
        return -1


def _supported_block(block: Any) -> bool:
    from transformer_lens.components import Attention, GroupedQueryAttention
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

    cfg = block.cfg
    attn = getattr(block, "attn", None)
    return (type(attn) in (Attention, GroupedQueryAttention) and not cfg.load_in_4bit and not cfg.use_attn_in
            and not cfg.use_split_qkv_input and not cfg.use_attn_result and not cfg.attn_only
            and not cfg.parallel_attn_mlp and cfg.original_architecture not in POST_NORM_ARCHITECTURES
            and cfg.original_architecture not in ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")
            and cfg.positional_embedding_type in ("rotary", "standard") and cfg.clip_qkv is None
            and not cfg.use_logn_attn and not cfg.use_attention_sinks and not cfg.use_dynamic_ntk_rope
            and cfg.attention_dir == "causal" and cfg.n_devices == 1 and not cfg.ungroup_grouped_query_attention)


_SAVED = "_unlearn_saved_forward"
_SAE_LENS_MLP_WRAPPER = "add_hook_in_to_mlp.<locals>.<lambda>"
"""sae_lens' HookedSAETransformer wraps each MLP's forward to call ``mlp.hook_in`` first (its transcoders' site)."""


def _replace_forward(module: Any, forward: Any, allowed: tuple[str, ...] = ()) -> bool:
    """Set ``module.forward``, keeping what it replaces for :func:`uninstall_fast_forward`; refuses to replace
    another wrapper (an instance ``forward`` not named in ``allowed``)."""
    current = module.__dict__.get("forward")
    if _SAVED in module.__dict__:
        return True  # already installed
    if current is not None and getattr(current, "__qualname__", None) not in allowed:
        return False
    module.__dict__[_SAVED] = current
    module.forward = types.MethodType(forward, module)
    return True


def install_fast_forward(model: Any) -> int:
    """Give every supported block, its attention and gated MLP the lean forward (instance attributes); returns how
    many blocks."""
    from transformer_lens.components.mlps.gated_mlp import GatedMLP
    from transformer_lens.hook_points import HookPoint

    _HOOK_POINT[0] = HookPoint
    installed = 0
    for block in getattr(model, "blocks", []):
        if _supported_block(block) and "forward" not in block.attn.__dict__ and _replace_forward(block, _block_forward):
            block.attn.__dict__["_unlearn_qkv_names"] = _qkv_names(block.attn)
            _replace_forward(block.attn, _attention_forward)
            installed += 1
            if type(block.mlp) is GatedMLP and not block.cfg.is_layer_norm_activation():
                _replace_forward(block.mlp, _gated_mlp_forward, (_SAE_LENS_MLP_WRAPPER,))
    return installed


def uninstall_fast_forward(model: Any) -> int:
    """Back to the library's forward (the weight layout stays: it computes the same); returns how many blocks."""
    removed = 0
    for block in getattr(model, "blocks", []):
        for module in (block, getattr(block, "attn", None), getattr(block, "mlp", None)):
            if module is not None and _SAVED in module.__dict__:
                saved = module.__dict__.pop(_SAVED)
                del module.__dict__["forward"]
                if saved is not None:
                    module.forward = saved
                removed += module is block
    return removed


# --- the block --------------------------------------------------------------------------------------------------


def _block_forward(self: Any, resid_pre: torch.Tensor, shortformer_pos_embed: torch.Tensor | None = None,
                   past_kv_cache_entry: Any = None, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``TransformerBlock.forward`` for pre-norm blocks, normalising the attention input once."""
    ln1 = self.ln1
    if shortformer_pos_embed is not None or _hooked(ln1) or any(_hooked(m) for m in ln1._modules.values()) \
            or _global_hooks():
        return type(self).forward(self, resid_pre, shortformer_pos_embed, past_kv_cache_entry, attention_mask)
    resid_pre = _fire(self.hook_resid_pre, resid_pre)
    x = _norm(ln1, resid_pre)
    attn_out = self.attn(query_input=x, key_input=x, value_input=x, past_kv_cache_entry=past_kv_cache_entry,
                         attention_mask=attention_mask)
    post_norms = self.cfg.use_normalization_before_and_after
    if post_norms:
        attn_out = _norm(self.ln1_post, attn_out)
    attn_out = _fire(self.hook_attn_out, attn_out)
    resid_mid = _fire(self.hook_resid_mid, resid_pre + attn_out)
    mlp_in = resid_mid if not self.cfg.use_hook_mlp_in else self.hook_mlp_in(resid_mid.clone())
    mlp_out = self.mlp(_norm(self.ln2, mlp_in))
    if post_norms:
        mlp_out = _norm(self.ln2_post, mlp_out)
    mlp_out = _fire(self.hook_mlp_out, mlp_out)
    return _fire(self.hook_resid_post, resid_mid + mlp_out)


def _fire(hook_point: Any, x: torch.Tensor) -> torch.Tensor:
    """``hook_point(x)``; skips the call of a plain ``HookPoint`` with nothing attached (callers checked the global
    hooks). Anything else put in its place (sae_lens' ``add_sae`` puts an SAE there) is always called."""
    return x if type(hook_point) is _HOOK_POINT[0] and not _hooked(hook_point) else hook_point(x)


def _norm(norm: Any, x: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    """``norm(x)``, or with ``rows`` ``norm(x.reshape(-1, rows)).reshape(x.shape)``; TransformerLens' ``RMSNorm``
    with no hook attached is computed inline, with the same ops (in low precision of ``x`` as it is: no copy)."""
    plan = norm.__dict__.get(_NORM_PLAN)
    if plan is None or plan[0] != _HANDLES.next_id or plan[1] is not norm._parameters.get("w") \
            or plan[2] is not norm._modules.get("hook_scale") or plan[3] is not norm._modules.get("hook_normalized"):
        plan = _norm_plan(norm)
    inline = plan[4] and x.device == plan[7]
    if rows is not None and (not inline or x.dtype in EXACT_DTYPES):
        return _norm(norm, x.reshape(-1, rows)).reshape(x.shape)
    return rms_norm(x, plan[1], plan[5], plan[6]) if inline else norm(x)


_NORM_PLAN, _HANDLES = "_unlearn_norm_plan", torch.utils.hooks.RemovableHandle  # hook registrations take its next id


def _norm_plan(norm: Any) -> tuple[Any, ...]:
    """``(hook epoch, w, hook_scale, hook_normalized, inline?, eps, dtype, device)`` of a norm, for :func:`_norm`."""
    epoch, w = _HANDLES.next_id, norm._parameters.get("w")
    scale_hook, normalized_hook = norm._modules.get("hook_scale"), norm._modules.get("hook_normalized")
    inline = (type(norm).__name__ == "RMSNorm" and type(norm).__module__ == _RMS_MODULE and w is not None
              and scale_hook is not None and normalized_hook is not None and not _hooked(norm)
              and not _hooked(scale_hook) and not _hooked(normalized_hook))
    norm.__dict__[_NORM_PLAN] = plan = (epoch, w, scale_hook, normalized_hook, inline, getattr(norm, "eps", None),
                                         getattr(norm.cfg, "dtype", None), None if w is None else w.device)
    return plan


def _gated_mlp_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    """``GatedMLP.forward`` (non-LayerNorm activations) with :func:`_linear`, after sae_lens' ``hook_in``. In
    bfloat16 with the tanh GELU and nothing on ``hook_pre`` or ``hook_pre_linear``, the GELU and the product with
    the linear branch run inside oneDNN's two products, on their float32 accumulators (fewer roundings to bfloat16,
    and no separate passes over the [tokens, d_mlp] activations)."""
    if "hook_in" in self._modules:
        x = self.hook_in(x)
    w_gate, w_in, w_out = self.W_gate, self.W_in, self.W_out
    if fuses_gated_mlp(self, x) and _plain_unhooked(self.hook_pre) and _plain_unhooked(self.hook_pre_linear):
        post_act = _fire(self.hook_post, fused_gate_and_in(self, x, w_gate, w_in, self.b_in))
        return _linear(self, "out", post_act, w_out.T, self.b_out, (w_out,))
    pre_act = _fire(self.hook_pre, _linear(self, "gate", x, w_gate.T, None, (w_gate,)))
    pre_linear = _fire(self.hook_pre_linear, _linear(self, "in", x, w_in.T, None, (w_in,)))
    post_act = _fire(self.hook_post, (self.act_fn(pre_act) * pre_linear) + self.b_in)
    return _linear(self, "out", post_act, w_out.T, self.b_out, (w_out,))


def fuses_gated_mlp(mlp: Any, x: torch.Tensor) -> bool:
    """Whether :func:`fused_gate_and_in` applies to this MLP and input (tanh GELU, packed bfloat16 products)."""
    return mlp.cfg.act_fn == "gelu_pytorch_tanh" and _packs(x, mlp.W_gate) and mlp.W_in.dtype == mlp.W_gate.dtype


def fused_gate_and_in(mlp: Any, x: torch.Tensor, w_gate: torch.Tensor, w_in: torch.Tensor, b_in: torch.Tensor
                      ) -> torch.Tensor:
    """``gelu_tanh(x @ w_gate) * (x @ w_in) + b_in`` with the GELU and the product inside oneDNN's kernels."""
    act = _linear(mlp, "gate", x, w_gate.T, None, (w_gate,), post="gelu_tanh")
    post_act = _linear(mlp, "in", x, w_in.T, None, (w_in,), post="mul", other=act)
    return post_act + b_in if bool(b_in.any()) else post_act


def _plain_unhooked(hook_point: Any) -> bool:
    """A plain ``HookPoint`` with nothing attached (what :func:`_fire` skips)."""
    return type(hook_point) is _HOOK_POINT[0] and not _hooked(hook_point)


# --- attention --------------------------------------------------------------------------------------------------

_MASKS = threading.local()
"""Per thread: the last attention mask seen and what was derived from it (shared by the blocks of one forward)."""


def _mask_info(self: Any, attention_mask: torch.Tensor | None, n_query: int, offset: int
               ) -> tuple[bool, torch.Tensor | None, bool, bool]:
    """``(no padding, mask, plain causal, usable)`` for this layer's attention type: the boolean mask of visible
    keys (None when all are), whether it is exactly SDPA's ``is_causal`` mask, and False when a query row would
    attend to nothing (the library's NaN-to-zero handling then applies)."""
    key = (n_query, offset, self.attn_type, self.cfg.window_size)
    memo = getattr(_MASKS, "memo", None)
    if memo is None or len(memo) > 32 or not _same_mask(memo["mask"], attention_mask):
        stored = None if attention_mask is None else attention_mask.clone()
        all_ones = attention_mask is None or bool(attention_mask.all())
        memo = _MASKS.memo = {"mask": stored, "all_ones": all_ones}
    if key not in memo:
        local = self.attn_type == "local"
        n_key = offset + n_query
        q_pos = torch.arange(offset, n_key, device=self.IGNORE.device)
        k_pos = torch.arange(n_key, device=self.IGNORE.device)
        mask = k_pos[None, :] <= q_pos[:, None]  # AbstractAttention._make_causal_mask
        if local:
            mask = mask & (k_pos[None, :] > q_pos[:, None] - self.cfg.window_size)
        mask = mask[None, None]
        if attention_mask is not None:
            mask = mask & attention_mask[:, None, None, :].to(mask.device).bool()
        causal = offset == 0 and memo["all_ones"] and (not local or n_query <= self.cfg.window_size)
        memo[key] = (None if bool(mask.all()) else mask, causal, bool(mask.any(-1).all()))
    mask, causal, usable = memo[key]
    return memo["all_ones"], mask, causal, usable


def _same_mask(stored: torch.Tensor | None, mask: torch.Tensor | None) -> bool:
    if stored is None or mask is None:
        return stored is None and mask is None
    return stored.shape == mask.shape and stored.device == mask.device and torch.equal(stored, mask)


def _attention_forward(self: Any, query_input: torch.Tensor, key_input: torch.Tensor, value_input: torch.Tensor,
                       past_kv_cache_entry: Any = None, additive_attention_mask: torch.Tensor | None = None,
                       attention_mask: torch.Tensor | None = None, position_bias: torch.Tensor | None = None
                       ) -> torch.Tensor:
    """``AbstractAttention.forward``: op for op in :data:`EXACT_DTYPES`, else one packed Q/K/V product and SDPA; the
    library's own forward when this cannot apply."""
    x = query_input
    offset = 0 if past_kv_cache_entry is None else past_kv_cache_entry.past_keys.size(1)
    plain = (torch.is_grad_enabled() or key_input is not x or value_input is not x or x.dim() != 3
             or additive_attention_mask is not None or position_bias is not None
             or (self.cfg.attn_scores_soft_cap or 0) > 0 and x.dtype not in EXACT_DTYPES  # SDPA has no soft-cap
             or self._attention_dir_override is not None
             or (attention_mask is not None and attention_mask.shape[-1] != offset + x.size(1))
             or any(_hooked(getattr(self, name)) for name in _FALLBACK_HOOKS) or _global_hooks())
    if not plain:
        all_ones, mask, causal, usable = _mask_info(self, attention_mask, x.size(1), offset)
        plain = not usable
    if plain:
        return type(self).forward(self, query_input, key_input, value_input, past_kv_cache_entry,
                                  additive_attention_mask, attention_mask, position_bias)
    batch, pos = x.shape[:2]
    d_head = self.cfg.d_head
    params = [(getattr(self, w), getattr(self, b)) for w, b in self.__dict__["_unlearn_qkv_names"]]
    # simple_attn_linear's weight and bias: views, with the layout of store_attention_weights_for_linear
    weights = [(w.permute(0, 2, 1).reshape(-1, w.shape[1]), b.reshape(-1)) for w, b in params]
    if x.dtype != torch.bfloat16 or not _PACKING or x.device.type != "cpu":  # the library's three products
        q, k, v = (F.linear(x, w, b) for w, b in weights)
    else:  # one packed product (another summation order)
        n_q, n_k = weights[0][0].shape[0], weights[1][0].shape[0]
        qkv = _linear(self, "qkv", x, weights, None, tuple(p for pair in params for p in pair))
        q, k, v = qkv[..., :n_q], qkv[..., n_q : n_q + n_k], qkv[..., n_q + n_k :]
    q = _fire(self.hook_q, q.reshape(batch, pos, -1, d_head))
    k = _fire(self.hook_k, k.reshape(batch, pos, -1, d_head))
    v = _fire(self.hook_v, v.reshape(batch, pos, -1, d_head))
    if self.cfg.use_qk_norm:  # AbstractAttention._apply_qk_norm
        q, k = _norm(self.q_norm, q, d_head), _norm(self.k_norm, k, d_head)
    if past_kv_cache_entry is not None:
        k, v = past_kv_cache_entry.append(k, v)
    if self.cfg.positional_embedding_type == "rotary":
        n_key = k.size(1)
        if all_ones and n_key <= self.rotary_cos.shape[0] and x.device == self.rotary_cos.device \
                and not self.cfg.rotary_adjacent_pairs:
            q, k = _rotate(self, q, offset), _rotate(self, k, 0)
        else:
            q, k = self.apply_rotary(q, offset, attention_mask), self.apply_rotary(k, 0, attention_mask)
        q, k = _fire(self.hook_rot_q, q), _fire(self.hook_rot_k, k)
    if q.dtype in EXACT_DTYPES:
        z = _exact_attention(self, q, k, v, mask)
    else:
        z = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2).to(q.dtype), attn_mask=None if causal else mask,
            is_causal=causal, scale=1.0 / self.attn_scale, enable_gqa=k.size(2) != q.size(2),
        ).transpose(1, 2)
    z = _fire(self.hook_z, z)  # [batch, pos, head_index, d_head]
    w_o = self.W_O
    w = w_o.permute(2, 0, 1).reshape(w_o.shape[2], -1)  # a view with the stored layout
    return _linear(self, "out", z.reshape(batch, pos, -1).to(w.dtype), w, self.b_O, (w_o,))
