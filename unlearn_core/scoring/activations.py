"""Activations at several hook points from one batched forward pass, stopped after the deepest hook needed.

This is what Explore (top latents per prompt), latent selection (firing rates on forget vs retain text) and SAE
training (activation caches) are built on. Batches are streamed, so a large corpus never has to fit in memory.
Each batch holds the model on its own (other callers get their turn in between) and ``should_stop`` is asked before
each one (see :mod:`unlearn_core.scoring.batching`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from unlearn_core.ablation.interventions import Hook, intervened
from unlearn_core.errors import InputError
from unlearn_core.models.loading import LoadedModel
from unlearn_core.saes.loading import layer_of_hook
from unlearn_core.scoring.batching import (
    DEFAULT_BATCH_TOKENS,
    ProgressCallback,
    StopCheck,
    batches_by_length,
    check_stop,
    right_padded,
)


@dataclass(frozen=True)
class ActivationBatch:
    """Activations of the real (non-pad) positions of some sequences, flattened across sequences.

    ``acts[hook_name]`` is [n, d]; ``tokens``, ``sequence_index`` and ``position`` are [n] and say, for each row,
    which token it is, which input sequence it came from and at which position (0 = BOS).
    """

    acts: dict[str, torch.Tensor]
    tokens: torch.Tensor
    sequence_index: torch.Tensor
    position: torch.Tensor


def stop_layer_for(hook_names: Sequence[str]) -> int:
    """The ``stop_at_layer`` that still runs every block the hooks live in (and never the unembedding)."""
    return max(layer_of_hook(h) for h in hook_names) + 1


def iter_activations(
    lm: LoadedModel,
    sequences: Sequence[Sequence[int]],
    hook_names: Sequence[str],
    include_bos: bool = False,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    extra_hooks: Sequence[Hook] = (),
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
) -> Iterator[ActivationBatch]:
    """Stream activations at ``hook_names`` for token sequences (BOS first), one padded batch at a time.

    ``extra_hooks`` (e.g. an intervention) run too, so activations can be read under an ablation; capture hooks
    are added after them and therefore see the edited activations. The model is held only while a batch runs
    (never while the caller works on a yielded batch); ``should_stop`` is asked before each batch.
    """
    if not hook_names:
        raise InputError("no hook names given")
    lengths = [len(s) for s in sequences]
    if any(n < 1 for n in lengths):
        raise InputError("empty token sequence")
    stop = stop_layer_for(hook_names)
    first = 0 if include_bos else 1
    total = sum(lengths)
    done = 0
    for batch in batches_by_length(lengths, batch_tokens):
        check_stop(should_stop)
        tokens, position_grid, batch_lengths = right_padded(lm, sequences, batch)
        keep = (position_grid >= first) & (position_grid < batch_lengths[:, None])
        captured: dict[str, torch.Tensor] = {}
        capture = _capture_hook(captured, keep)
        hooks = [*extra_hooks, *((name, capture) for name in hook_names)]
        with torch.inference_mode(), intervened(lm, hooks) as model:
            model(tokens.to(lm.device), stop_at_layer=stop)
        seq_index = torch.tensor(batch).repeat_interleave(keep.sum(dim=1))
        positions = position_grid[keep]
        done += sum(lengths[i] for i in batch)
        if progress is not None:
            progress(done, total)
        yield ActivationBatch(
            acts={name: captured[name] for name in hook_names},
            tokens=tokens[keep],
            sequence_index=seq_index,
            position=positions,
        )


def _capture_hook(store: dict[str, torch.Tensor], keep: torch.Tensor) -> Callable[[torch.Tensor, Any], None]:
    """A hook that stores the kept positions of its activation under the hook's name."""

    def capture(act: torch.Tensor, hook: Any) -> None:
        store[hook.name] = act[keep.to(act.device)].detach()

    return capture


def collect_activations(
    lm: LoadedModel,
    sequences: Sequence[Sequence[int]],
    hook_names: Sequence[str],
    include_bos: bool = False,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    extra_hooks: Sequence[Hook] = (),
    should_stop: StopCheck | None = None,
) -> ActivationBatch:
    """All activations at once, rows in input order (sequence, then position). For small inputs such as prompts."""
    parts = list(iter_activations(lm, sequences, hook_names, include_bos, batch_tokens, extra_hooks,
                                  should_stop=should_stop))
    seq = torch.cat([p.sequence_index for p in parts])
    pos = torch.cat([p.position for p in parts])
    order = torch.argsort(seq * (max(len(s) for s in sequences) + 1) + pos)
    return ActivationBatch(
        acts={h: torch.cat([p.acts[h] for p in parts])[order] for h in hook_names},
        tokens=torch.cat([p.tokens for p in parts])[order],
        sequence_index=seq[order],
        position=pos[order],
    )
