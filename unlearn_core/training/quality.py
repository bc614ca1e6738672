"""SAE quality on held-out text: L0, fraction of variance explained, dead latents and cross-entropy loss recovered.

Definitions (BOS is excluded everywhere; the SAEs are neither trained on nor applied to it):

* L0    - mean number of active latents per token;
* FVE   - 1 - sum |x - x_hat|^2 / sum |x - mean(x)|^2 (mean-centred, over all tokens);
* dead  - fraction of latents that never fire on the measured tokens;
* CE loss recovered - (CE_zero - CE_spliced) / (CE_zero - CE_clean), where CE_spliced is the model's next-token loss
  with the SAE reconstruction replacing the activation at the SAE's hook and CE_zero with that activation zeroed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from unlearn_core.models.loading import LoadedModel
from unlearn_core.scoring.activations import iter_activations
from unlearn_core.scoring.batching import ProgressCallback, score_tokens, tokenize_with_bos

ENCODE_CHUNK = 4096


@dataclass(frozen=True)
class SaeQuality:
    """Quality numbers of one SAE; ``n_tokens`` for L0/FVE/dead and ``ce_tokens`` for the loss numbers."""

    hook_name: str
    width: int
    n_tokens: int
    l0: float
    fve: float
    dead_fraction: float
    ce_tokens: int
    ce_clean: float
    ce_spliced: float
    ce_zero: float

    @property
    def ce_loss_recovered(self) -> float:
        return (self.ce_zero - self.ce_spliced) / (self.ce_zero - self.ce_clean)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ce_loss_recovered": self.ce_loss_recovered}


@dataclass
class _Running:
    n: int = 0
    l0_sum: float = 0.0
    err_sum: float = 0.0
    x_sum: torch.Tensor | None = None
    x_sq_sum: float = 0.0
    fired: torch.Tensor | None = None

    def add(self, x: torch.Tensor, sae: Any) -> None:
        for start in range(0, x.shape[0], ENCODE_CHUNK):
            chunk = x[start : start + ENCODE_CHUNK].to(sae.W_enc.dtype)
            feats = sae.encode(chunk)
            recon = sae.decode(feats)
            active = feats > 0
            fired = active.any(dim=0)
            self.fired = fired if self.fired is None else self.fired | fired
            self.l0_sum += float(active.sum())
            self.err_sum += float((chunk - recon).double().pow(2).sum())
            xd = chunk.double()
            self.x_sum = xd.sum(0) if self.x_sum is None else self.x_sum + xd.sum(0)
            self.x_sq_sum += float(xd.pow(2).sum())
            self.n += chunk.shape[0]

    def fve(self) -> float:
        assert self.x_sum is not None
        centred_total = self.x_sq_sum - float(self.x_sum.pow(2).sum()) / self.n
        return 1.0 - self.err_sum / centred_total


def measure_quality(
    lm: LoadedModel,
    saes: Mapping[str, Any],
    texts: Sequence[str],
    max_seq_len: int = 256,
    max_tokens: int | None = None,
    ce_max_tokens: int = 8192,
    progress: ProgressCallback | None = None,
) -> dict[str, SaeQuality]:
    """Quality of each SAE in ``saes`` (hook name -> sae_lens SAE) on ``texts``.

    One activation pass serves every SAE for L0/FVE/dead (on up to ``max_tokens`` tokens); the loss numbers use the
    first texts up to ``ce_max_tokens`` scored tokens, with one clean pass shared by all SAEs (0 skips them: NaN).
    """
    sequences = [s for s in tokenize_with_bos(lm, texts, max_seq_len) if len(s) >= 2]
    if max_tokens is not None:
        sequences = _first_tokens(sequences, max_tokens)
    running = {h: _Running() for h in saes}
    with torch.inference_mode():
        for batch in iter_activations(lm, sequences, list(saes), progress=progress):
            for hook_name, sae in saes.items():
                running[hook_name].add(batch.acts[hook_name], sae)
    ce_sequences = _first_tokens(sequences, ce_max_tokens) if ce_max_tokens > 0 else []
    ce_clean, ce_tokens = _mean_loss(lm, ce_sequences, [])
    results: dict[str, SaeQuality] = {}
    for hook_name, sae in saes.items():
        spliced, _ = _mean_loss(lm, ce_sequences, [(hook_name, _splice_hook(sae))])
        zero, _ = _mean_loss(lm, ce_sequences, [(hook_name, _zero_hook)])
        r = running[hook_name]
        assert r.fired is not None
        results[hook_name] = SaeQuality(
            hook_name=hook_name,
            width=int(sae.cfg.d_sae),
            n_tokens=r.n,
            l0=r.l0_sum / r.n,
            fve=r.fve(),
            dead_fraction=float((~r.fired).float().mean()),
            ce_tokens=ce_tokens,
            ce_clean=ce_clean,
            ce_spliced=spliced,
            ce_zero=zero,
        )
    return results


def _first_tokens(sequences: list[list[int]], max_tokens: int) -> list[list[int]]:
    """Leading sequences holding about ``max_tokens`` non-BOS tokens (the last one cut to fit)."""
    out: list[list[int]] = []
    left = max_tokens
    for s in sequences:
        if left <= 0:
            break
        out.append(s[: left + 1])
        left -= len(out[-1]) - 1
    return [s for s in out if len(s) >= 2]


def _mean_loss(lm: LoadedModel, sequences: list[list[int]], hooks: list[Any]) -> tuple[float, int]:
    """Mean next-token loss (nats) and the number of scored tokens; NaN and 0 when there is nothing to score."""
    if not sequences:
        return float("nan"), 0
    scores = score_tokens(lm, sequences, hooks)
    n = sum(int(s.logprobs.numel()) for s in scores)
    return -sum(float(s.logprobs.double().sum()) for s in scores) / n, n


def _splice_hook(sae: Any) -> Any:
    def splice(act: torch.Tensor, hook: Any) -> torch.Tensor:
        out = act.clone()
        x = act[:, 1:].to(sae.W_enc.dtype)
        out[:, 1:] = sae.decode(sae.encode(x)).to(act.dtype)
        return out

    return splice


def _zero_hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
    out = act.clone()
    out[:, 1:] = 0.0
    return out
