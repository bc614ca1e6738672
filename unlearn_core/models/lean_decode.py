"""Greedy/sampled decoding of one row without TransformerLens' per-call machinery: a speed patch of
:mod:`unlearn_core.models.patches` (behind its switch, used by :mod:`unlearn_core.scoring.generation`).

After the prompt pass, generating one token runs every block on one position. Through ``HookedTransformer``
that costs, besides the weight matrices (memory-bound), its forward's input handling, a module call and hook
checks for every block, attention, MLP, norm and hook point, a ``torch.cat`` of every layer's whole key and
value cache, and the rotary embedding of *every* cached key again (the library caches keys before rotation).
Measured here, that is a fifth of a token's time. :class:`LeanDecode` keeps one row's keys and values in
preallocated buffers - the keys both as the library caches them and rotated, since rotation acts on each position
alone and so gives the same numbers whether applied to one key or to all of them - and runs the blocks in one
loop with the very ops of :mod:`unlearn_core.models.fast_forward` (its norms, products, rotation and attention
functions; float32 is therefore still the library's result bit for bit, bfloat16 the fast path's).

It applies only while nothing could see the difference: every step first checks that no module of the model has
a hook (nor is there a global one), that no module was swapped for another since the decoding started (sae_lens'
``add_sae`` swaps hook points for SAEs), that gradients are off, and that the fast forward is still installed;
otherwise it hands back a library cache holding everything so far (:meth:`LeanDecode.to_cache`) and the caller
goes on the library's way. One row only (no padding to mask): the batched grids of the Compare page keep the
library's path. ``tests/test_fast_forward.py`` checks tokens and residuals against the library.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any

import torch
import torch.nn.functional as F

from unlearn_core.models import fast_forward as ff

_GROW = 64
_HOOK_DICTS = tuple(attrgetter(name) for name in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                                                  "_backward_pre_hooks"))
_CHILDREN = attrgetter("_modules")


def _supported(model: Any) -> bool:
    """The configurations the loop below reproduces: the fast forward's, with rotary positions."""
    cfg = model.cfg
    if cfg.positional_embedding_type != "rotary" or cfg.rotary_adjacent_pairs or cfg.n_devices != 1:
        return False
    for block in getattr(model, "blocks", []):
        if ff._SAVED not in block.__dict__ or ff._SAVED not in block.attn.__dict__ or not ff._supported_block(block) \
                or getattr(block.attn, "_attention_dir_override", None) is not None \
                or (cfg.attn_scores_soft_cap or 0) > 0 and cfg.dtype not in ff.EXACT_DTYPES:  # SDPA has no soft-cap
            return False
    return len(getattr(model, "blocks", [])) == cfg.n_layers


class LeanDecode:
    """One row's decoding state: per layer the cached keys (before and after rotation) and values, and the count
    of positions so far."""

    def __init__(self, model: Any, cache: Any, capacity: int) -> None:
        self.model = model
        self.clean_epoch: int | None = None
        self.blocks = list(model.blocks)
        self.modules = list(model.modules())
        self.children = self._children()
        self.n = int(cache.entries[0].past_keys.shape[1])
        size = max(capacity, self.n + 1)
        self.keys, self.rotated, self.values = [], [], []
        for block, entry in zip(self.blocks, cache.entries, strict=True):
            k, v = entry.past_keys, entry.past_values
            keys = k.new_empty((1, size, *k.shape[2:]))
            values = v.new_empty((1, size, *v.shape[2:]))
            rotated = k.new_empty((1, size, *k.shape[2:]))
            keys[:, : self.n], values[:, : self.n] = k, v
            rotated[:, : self.n] = self._rotate(block.attn, k, 0)
            self.keys.append(keys)
            self.values.append(values)
            self.rotated.append(rotated)

    @classmethod
    def start(cls, model: Any, cache: Any, capacity: int) -> LeanDecode | None:
        """The state after a prompt pass that filled the library ``cache`` (one row, no padding), or None when this
        model or that cache is not one the loop covers (or something is hooked now)."""
        if not _supported(model) or len(cache.entries) != model.cfg.n_layers:
            return None
        first = cache.entries[0].past_keys
        if first.shape[0] != 1 or not bool(cache.previous_attention_mask.all()):
            return None
        state = cls(model, cache, capacity)
        return state if state.untouched() else None

    def untouched(self) -> bool:
        """No hook anywhere, no module swapped, gradients off: the loop computes what the library would.

        The full check walks every module (hooks, and children compared by identity with the start); it is
        repeated whenever a hook was registered anywhere since the last clean check (each registration takes the
        next ``RemovableHandle`` id) or sae_lens has an SAE attached (``acts_to_saes``), and is skipped otherwise:
        removing a hook cannot make a clean model unclean. (Swapping a module by hand between two steps of one
        decoding, from another thread, is the one change this does not see.)"""
        if torch.is_grad_enabled() or ff._global_hooks():
            return False
        epoch = ff._HANDLES.next_id
        if epoch == self.clean_epoch and not getattr(self.model, "acts_to_saes", None):
            return True
        modules = self.modules
        clean = not any(any(map(get, modules)) for get in _HOOK_DICTS) and self._children() == self.children \
            and not getattr(self.model, "acts_to_saes", None) \
            and all(ff._SAVED in b.__dict__ and ff._SAVED in b.attn.__dict__ for b in self.blocks)
        self.clean_epoch = epoch if clean else None
        return clean

    def _children(self) -> list[list[Any]]:
        """Every module's children, in order (compared by identity: modules do not define ``==``)."""
        return list(map(list, map(dict.values, map(_CHILDREN, self.modules))))

    @staticmethod
    def _rotate(attn: Any, k: torch.Tensor, offset: int) -> torch.Tensor:
        if k.size(1) + offset <= attn.rotary_cos.shape[0] and k.device == attn.rotary_cos.device:
            return ff._rotate(attn, k, offset)
        return attn.apply_rotary(k, offset, None)

    def _grow(self) -> None:
        def bigger(t: torch.Tensor) -> torch.Tensor:
            out = t.new_empty((1, t.shape[1] + _GROW, *t.shape[2:]))
            out[:, : self.n] = t[:, : self.n]
            return out

        self.keys = [bigger(t) for t in self.keys]
        self.values = [bigger(t) for t in self.values]
        self.rotated = [bigger(t) for t in self.rotated]

    def step(self, model: Any, token: int) -> torch.Tensor | None:
        """The residual stream after the last block for the next token [1, 1, d_model], or None when the loop no
        longer applies (call :meth:`to_cache` and go on with the library)."""
        if not self.untouched():
            return None
        if self.n >= self.keys[0].shape[1]:
            self._grow()
        pos = self.n
        x = model.embed(torch.tensor([[token]], dtype=torch.long, device=model.W_E.device))
        for i, block in enumerate(self.blocks):
            attn = block.attn
            attn_out = self._attention(attn, ff._norm(block.ln1, x), i, pos)
            if block.cfg.use_normalization_before_and_after:
                attn_out = ff._norm(block.ln1_post, attn_out)
            x = x + attn_out
            mlp = block.mlp
            h = ff._norm(block.ln2, x)
            mlp_out = ff._gated_mlp_forward(mlp, h) if ff._SAVED in mlp.__dict__ else mlp(h)
            if block.cfg.use_normalization_before_and_after:
                mlp_out = ff._norm(block.ln2_post, mlp_out)
            x = x + mlp_out
        self.n += 1
        return x

    def _attention(self, attn: Any, x: torch.Tensor, layer: int, pos: int) -> torch.Tensor:
        """``_attention_forward`` for one new position, keys and values from the buffers."""
        d_head = attn.cfg.d_head
        own = attn._parameters
        params = [(own[w], own[b]) for w, b in attn.__dict__["_unlearn_qkv_names"]]
        weights = [(w.permute(0, 2, 1).reshape(-1, w.shape[1]), b.reshape(-1)) for w, b in params]
        if x.dtype != torch.bfloat16 or not ff._PACKING or x.device.type != "cpu":
            q, k, v = (F.linear(x, w, b) for w, b in weights)
        else:
            n_q, n_k = weights[0][0].shape[0], weights[1][0].shape[0]
            qkv = ff._linear(attn, "qkv", x, weights, None, tuple(p for pair in params for p in pair))
            q, k, v = qkv[..., :n_q], qkv[..., n_q : n_q + n_k], qkv[..., n_q + n_k :]
        q, k, v = (t.reshape(1, 1, -1, d_head) for t in (q, k, v))
        if attn.cfg.use_qk_norm:
            q = ff._norm(attn.q_norm, q.reshape(-1, d_head)).reshape(q.shape)
            k = ff._norm(attn.k_norm, k.reshape(-1, d_head)).reshape(k.shape)
        self.keys[layer][:, pos] = k[:, 0]
        self.values[layer][:, pos] = v[:, 0]
        self.rotated[layer][:, pos] = self._rotate(attn, k, pos)[:, 0]
        q = self._rotate(attn, q, pos)
        keys, values = self.rotated[layer][:, : pos + 1], self.values[layer][:, : pos + 1]
        _, mask, causal, usable = ff._mask_info(attn, None, 1, pos)
        if q.dtype in ff.EXACT_DTYPES:
            z = ff._exact_attention(attn, q, keys, values, mask)
        else:
            z = F.scaled_dot_product_attention(
                q.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2).to(q.dtype),
                attn_mask=None if causal else mask, is_causal=causal, scale=1.0 / attn.attn_scale,
                enable_gqa=keys.size(2) != q.size(2),
            ).transpose(1, 2)
        w_o = own["W_O"]
        w = w_o.permute(2, 0, 1).reshape(w_o.shape[2], -1)
        return ff._linear(attn, "out", z.reshape(1, 1, -1).to(w.dtype), w, own["b_O"], (w_o,))

    def to_cache(self) -> Any:
        """A library key-value cache holding every position so far (keys as the library caches them)."""
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
        from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

        entries = [TransformerLensKeyValueCacheEntry(past_keys=k[:, : self.n].clone(), past_values=v[:, : self.n].clone())
                   for k, v in zip(self.keys, self.values, strict=True)]
        mask = torch.ones((1, self.n), dtype=torch.long, device=self.keys[0].device)
        return TransformerLensKeyValueCache(entries=entries, previous_attention_mask=mask)
