"""Greedy/sampled decoding of one row without TransformerLens' per-call machinery: a speed patch of
:mod:`unlearn_core.models.patches` (behind its switch, used by :mod:`unlearn_core.scoring.generation`).

After the prompt pass, generating one token runs every block on one position. Through ``HookedTransformer``
that costs, besides the weight matrices (memory-bound), its forward's input handling, a module call and hook
checks for every block, attention, MLP, norm and hook point, a ``torch.cat`` of every layer's whole key and
value cache, and the rotary embedding of *every* cached key again (the library caches keys before rotation): about
an eighth of a token's time here (``python scripts/gen_speed_check.py`` times ours with and without this loop).
:class:`LeanDecode` keeps one row's keys and values in preallocated buffers - the keys both as the library caches
them and rotated, since rotation acts on each position alone and so gives the same numbers whether applied to one
key or to all of them - and runs the blocks in one loop with the very ops of
:mod:`unlearn_core.models.fast_forward` (float32 is therefore still the library's result bit for bit, bfloat16 the
fast path's).

It applies only while nothing could see the difference: every step checks that gradients are off, that there is
no global hook, no SAE attached through sae_lens and that the fast forward is still installed; and, whenever a hook
was registered anywhere since the last clean check, that no module has a hook and none was swapped since the
decoding started (:meth:`LeanDecode.untouched`). Otherwise it hands back a library cache holding everything so far
(:meth:`LeanDecode.to_cache`) and the caller goes on the library's way. One row only (no padding to mask): the
batched grids of the Compare page keep the library's path. ``tests/test_lean_decode.py`` checks residuals, caches
and tokens against the library.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any

import torch
import torch.nn.functional as F

from unlearn_core.models import exact_ops
from unlearn_core.models import fast_forward as ff

_GROW = 64
_HOOK_DICTS = tuple(attrgetter(name) for name in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                                                  "_backward_pre_hooks"))
_CHILDREN = attrgetter("_modules")


def _norm(plan: tuple[Any, ...], x: torch.Tensor) -> torch.Tensor:
    """:func:`ff._norm` from a :meth:`LeanDecode._norm_plan`: the same ops, no checks (the loop made them)."""
    return plan[0](x) if len(plan) == 1 else exact_ops.rms_norm(x, *plan)


def _rotate(attn: Any, x: torch.Tensor, pos: int, table: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """:func:`exact_ops.rotate` of one position from its rows of the tables, or the library's rotation."""
    return attn.apply_rotary(x, pos, None) if table is None else exact_ops.rotate_rows(x, *table, attn.cfg.rotary_dim)


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
        self.plans: list[tuple[Any, ...]] | None = None
        self.refs: list[tuple[Any, ...]] = []
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
            rotated[:, : self.n] = exact_ops.rotate(block.attn, k, 0) if self.n <= block.attn.rotary_cos.shape[0] \
                and k.device == block.attn.rotary_cos.device else block.attn.apply_rotary(k, 0, None)
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
        from transformer_lens.hook_points import HookPoint

        if any(name.rsplit(".", 1)[-1].startswith("hook_") and type(m) is not HookPoint
               for name, m in model.named_modules()):
            return None  # something in a hook point's place (the loop skips hook points: they would be identities)
        state = cls(model, cache, capacity)
        return state if state.untouched() else None

    def untouched(self) -> bool:
        """No hook anywhere, no module swapped, gradients off: the loop computes what the library would.

        The full check walks every module (hooks, and children compared by identity with the start); it is
        repeated whenever a hook was registered anywhere since the last clean check (each registration takes the
        next ``RemovableHandle`` id) or sae_lens has an SAE attached (``acts_to_saes``), and is skipped otherwise:
        removing a hook cannot make a clean model unclean. (Swapping a module by hand between two steps of one
        decoding, from another thread, is the one change this does not see.)"""
        if torch.is_grad_enabled() or ff._global_hooks() or getattr(self.model, "acts_to_saes", None) \
                or not all(ff._SAVED in b.__dict__ and ff._SAVED in b.attn.__dict__ for b in self.blocks):
            return False
        epoch = ff._HANDLES.next_id
        if epoch == self.clean_epoch:
            return True
        modules = self.modules
        clean = not any(any(map(get, modules)) for get in _HOOK_DICTS) and self._children() == self.children
        self.clean_epoch = epoch if clean else None
        return clean

    def _children(self) -> list[list[Any]]:
        """Every module's children, in order (compared by identity: modules do not define ``==``)."""
        return list(map(list, map(dict.values, map(_CHILDREN, self.modules))))

    def _grow(self) -> None:
        def bigger(t: torch.Tensor) -> torch.Tensor:
            out = t.new_empty((1, t.shape[1] + _GROW, *t.shape[2:]))
            out[:, : self.n] = t[:, : self.n]
            return out

        self.keys = [bigger(t) for t in self.keys]
        self.values = [bigger(t) for t in self.values]
        self.rotated = [bigger(t) for t in self.rotated]

    def _plan(self) -> list[tuple[Any, ...]]:
        """Per block what the loop uses, looked up once (modules, weight views, norms, rotary tables) and the
        tensors it was built from (:meth:`_plan_current` checks them each step)."""
        plans, refs = [], []
        for block in self.blocks:
            attn, mlp = block.attn, block.mlp
            own = attn._parameters
            qkv = [(own[w], own[b]) for w, b in attn.__dict__["_unlearn_qkv_names"]]
            views = [(w.permute(0, 2, 1).reshape(-1, w.shape[1]), b.reshape(-1)) for w, b in qkv]
            w_o = own["W_O"]
            refs += [(own, name) for pair in attn.__dict__["_unlearn_qkv_names"] for name in pair]
            refs += [(own, "W_O"), (own, "b_O"), (attn._buffers, "rotary_cos"), (attn._buffers, "rotary_sin")]
            fast_mlp = ff._SAVED in mlp.__dict__
            mlp_own = mlp._parameters
            if fast_mlp:
                refs += [(mlp_own, name) for name in ("W_gate", "W_in", "W_out", "b_in", "b_out")]
            norms = [block.ln1, block.ln1_post if block.cfg.use_normalization_before_and_after else None, block.ln2,
                     block.ln2_post if block.cfg.use_normalization_before_and_after else None,
                     attn.q_norm if attn.cfg.use_qk_norm else None, attn.k_norm if attn.cfg.use_qk_norm else None]
            for norm in norms:
                if norm is not None:
                    refs += [(norm._parameters, "w")]
            plans.append((
                attn, mlp, [None if n is None else self._norm_plan(n) for n in norms], qkv, views, w_o,
                w_o.permute(2, 0, 1).reshape(w_o.shape[2], -1), own["b_O"],
                (mlp_own["W_gate"], mlp_own["W_in"], mlp_own["W_out"], mlp_own["b_in"], mlp_own["b_out"], mlp.act_fn)
                if fast_mlp else None,
                attn.rotary_cos, exact_ops.signed_sin(attn),
            ))
        self.refs = [(d, name, d[name], d[name].data_ptr()) for d, name in refs]
        return plans

    @staticmethod
    def _norm_plan(norm: Any) -> tuple[Any, ...]:
        """``(w, eps, dtype)`` of a TransformerLens RMSNorm computed inline by :func:`ff._norm`, else ``(module,)``."""
        plan = ff._norm_plan(norm)
        return (plan[1], plan[5], plan[6]) if plan[4] else (norm,)

    def _plan_current(self) -> bool:
        return all(d.get(name) is t and t.data_ptr() == ptr for d, name, t, ptr in self.refs)

    def step(self, model: Any, token: int) -> torch.Tensor | None:
        """The residual stream after the last block for the next token [1, 1, d_model], or None when the loop no
        longer applies (call :meth:`to_cache` and go on with the library)."""
        if not self.untouched():
            return None
        if self.plans is None or not self._plan_current():
            self.plans = self._plan()
        if self.n >= self.keys[0].shape[1]:
            self._grow()
        pos = self.n
        x = model.embed(torch.tensor([[token]], dtype=torch.long, device=model.W_E.device))
        tables: dict[tuple[int, str], tuple[Any, ...]] = {}
        for i, plan in enumerate(self.plans):
            attn, mlp, norms, qkv, views, w_o, w_o_view, b_o, mlp_params, cos, sin = plan
            key = (id(cos), attn.attn_type)
            if key not in tables:  # the position's rotary row and mask, shared by the layers of one attention type
                usable = pos + 1 <= cos.shape[0] and x.device == cos.device
                rows = (cos[None, pos : pos + 1, None, :], sin[None, pos : pos + 1, None, :]) if usable else None
                _, mask, causal, _ = ff._mask_info(attn, None, 1, pos)
                tables[key] = (rows, mask, causal)
            attn_out = self._attention(attn, _norm(norms[0], x), i, pos, norms, qkv, views, w_o, w_o_view, b_o,
                                       *tables[key])
            if norms[1] is not None:
                attn_out = _norm(norms[1], attn_out)
            x = x + attn_out
            h = _norm(norms[2], x)
            mlp_out = mlp(h) if mlp_params is None else self._mlp(mlp, h, mlp_params)
            if norms[3] is not None:
                mlp_out = _norm(norms[3], mlp_out)
            x = x + mlp_out
        self.n += 1
        return x

    @staticmethod
    def _mlp(mlp: Any, x: torch.Tensor, params: tuple[Any, ...]) -> torch.Tensor:
        """``_gated_mlp_forward`` with no hook attached (``hook_in`` and the rest are identities then)."""
        w_gate, w_in, w_out, b_in, b_out, act_fn = params
        if x.dtype in ff.EXACT_DTYPES:  # ff._linear is F.linear of the contiguous weight there
            return F.linear(act_fn(F.linear(x, w_gate.T.contiguous())) * F.linear(x, w_in.T.contiguous()) + b_in,
                            w_out.T.contiguous(), b_out)
        if ff.fuses_gated_mlp(mlp, x):
            return ff._linear(mlp, "out", ff.fused_gate_and_in(mlp, x, w_gate, w_in, b_in), w_out.T, b_out, (w_out,))
        pre_act = ff._linear(mlp, "gate", x, w_gate.T, None, (w_gate,))
        pre_linear = ff._linear(mlp, "in", x, w_in.T, None, (w_in,))
        return ff._linear(mlp, "out", act_fn(pre_act) * pre_linear + b_in, w_out.T, b_out, (w_out,))

    def _attention(self, attn: Any, x: torch.Tensor, layer: int, pos: int, norms: list[Any], qkv: list[Any],
                   views: list[Any], w_o: torch.Tensor, w_o_view: torch.Tensor, b_o: torch.Tensor,
                   table: tuple[torch.Tensor, torch.Tensor] | None, mask: torch.Tensor | None, causal: bool
                   ) -> torch.Tensor:
        """``_attention_forward`` for one new position, keys and values from the buffers."""
        d_head = attn.cfg.d_head
        if x.dtype != torch.bfloat16 or not ff._PACKING or x.device.type != "cpu":
            q, k, v = (F.linear(x, w, b) for w, b in views)
        else:
            n_q, n_k = views[0][0].shape[0], views[1][0].shape[0]
            fused = ff._linear(attn, "qkv", x, views, None, tuple(p for pair in qkv for p in pair))
            q, k, v = fused[..., :n_q], fused[..., n_q : n_q + n_k], fused[..., n_q + n_k :]
        q, k, v = q.reshape(1, 1, -1, d_head), k.reshape(1, 1, -1, d_head), v.reshape(1, 1, -1, d_head)
        if norms[4] is not None:
            q = _norm(norms[4], q.reshape(-1, d_head)).reshape(q.shape)
            k = _norm(norms[5], k.reshape(-1, d_head)).reshape(k.shape)
        rotated = _rotate(attn, k, pos, table)
        self.keys[layer][:, pos : pos + 1] = k
        self.values[layer][:, pos : pos + 1] = v
        self.rotated[layer][:, pos : pos + 1] = rotated
        q = _rotate(attn, q, pos, table)
        keys, values = self.rotated[layer][:, : pos + 1], self.values[layer][:, : pos + 1]
        if q.dtype in ff.EXACT_DTYPES:
            z = exact_ops.exact_attention(attn, q, keys, values, mask)
        else:
            z = F.scaled_dot_product_attention(
                q.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2).to(q.dtype),
                attn_mask=None if causal else mask, is_causal=causal, scale=1.0 / attn.attn_scale,
                enable_gqa=keys.size(2) != q.size(2),
            ).transpose(1, 2)
        z = z.reshape(1, 1, -1)
        if z.dtype in ff.EXACT_DTYPES:
            return F.linear(z, w_o_view.contiguous(), b_o)
        return ff._linear(attn, "out", z.to(w_o_view.dtype), w_o_view, b_o, (w_o,))

    def to_cache(self) -> Any:
        """A library key-value cache holding every position so far (keys as the library caches them)."""
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
        from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

        entries = [TransformerLensKeyValueCacheEntry(past_keys=k[:, : self.n].clone(), past_values=v[:, : self.n].clone())
                   for k, v in zip(self.keys, self.values, strict=True)]
        mask = torch.ones((1, self.n), dtype=torch.long, device=self.keys[0].device)
        return TransformerLensKeyValueCache(entries=entries, previous_attention_mask=mask)
