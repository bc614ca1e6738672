"""Calibrating a gated intervention's thresholds on retain text (see :mod:`unlearn_core.ablation.gating`).

For each SAE of a forget set, the threshold is the gate's ``quantile`` of the summed activation of that SAE's
chosen latents over the non-BOS tokens of retain text (``gate.corpus``, default ``wikitext2:dev``; ``gate.tokens``
of it, in 256-token windows): the edit then fires on at most ``1 - quantile`` of retain tokens. Calibration is
tuning, so it refuses test splits.

:class:`GateCalibrator` runs the model over the corpus once and keeps the residuals at each SAE's hook, so many
forget sets (a sweep's points, a script's conditions) are calibrated for the cost of one forward pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from unlearn_core.ablation.conditions import Condition
from unlearn_core.ablation.gating import Gate
from unlearn_core.ablation.interventions import Intervention, LatentSelection, encode_latents
from unlearn_core.data.texts import TEXT_SPLITS, load_texts
from unlearn_core.errors import InputError
from unlearn_core.models.loading import LoadedModel
from unlearn_core.scoring.activations import iter_activations
from unlearn_core.scoring.batching import DEFAULT_BATCH_TOKENS
from unlearn_core.selection.stats import DEFAULT_STATS_SEQ_LEN, stats_sequences


def check_dev_corpus(name: str) -> None:
    """Refuse a built-in test split (calibration tunes the intervention, so it may only see dev text)."""
    if TEXT_SPLITS.get(name) == "test" or name.endswith(":test"):
        raise InputError(f"gate calibration may only use dev text, and {name!r} is a test split; use e.g. wikitext2:dev")


class GateCalibrator:
    """Residuals at some SAE hooks over a calibration corpus, computed once; thresholds for any selections."""

    def __init__(
        self,
        lm: LoadedModel,
        hook_names: Sequence[str],
        texts: Sequence[str] | None = None,
        corpus: str = Gate().corpus,
        tokens: int = Gate().tokens,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
    ) -> None:
        if texts is None:
            check_dev_corpus(corpus)
            texts = load_texts(corpus).texts
        seqs = stats_sequences(lm, texts, tokens, min(DEFAULT_STATS_SEQ_LEN, lm.n_ctx))
        if not seqs:
            raise InputError("no calibration text")
        self.corpus, self.tokens = corpus, tokens
        hooks = sorted(set(hook_names))
        parts: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
        for batch in iter_activations(lm, seqs, hooks, include_bos=False, batch_tokens=batch_tokens):
            for h in hooks:
                parts[h].append(batch.acts[h].detach().float().cpu())
        self.residuals = {h: torch.cat(v) for h, v in parts.items()}
        self.n_tokens = int(next(iter(self.residuals.values())).shape[0])

    def summed_activation(self, selection: LatentSelection) -> torch.Tensor:
        """Per calibration token, the summed activation of the selection's latents (before any edit)."""
        resid = self.residuals.get(selection.sae.hook_name)
        if resid is None:
            raise InputError(f"the calibrator has no residuals at {selection.sae.hook_name}")
        sae = selection.sae.sae
        index = torch.tensor(selection.latents, dtype=torch.long, device=sae.W_dec.device)
        with torch.inference_mode():
            acts = encode_latents(sae, resid.to(sae.W_dec.device, sae.dtype), index)
        return acts.double().sum(dim=-1).cpu()

    def thresholds(self, selections: Sequence[LatentSelection], quantile: float) -> dict[str, float]:
        """Per SAE hook: the ``quantile`` of the selection's summed activation on the calibration tokens."""
        out = {}
        for sel in selections:
            if sel.latents:
                # "higher": an observed value, so at most 1 - quantile of the tokens lie strictly above it
                summed = self.summed_activation(sel)
                out[sel.sae.hook_name] = float(torch.quantile(summed, quantile, interpolation="higher"))
        return out

    def calibrate(self, selections: Sequence[LatentSelection], intervention: Intervention) -> Intervention:
        """``intervention`` with its gate's thresholds set for ``selections`` (unchanged if it is not gated)."""
        if intervention.gate is None:
            return intervention
        gate = dataclasses.replace(intervention.gate, corpus=self.corpus, tokens=self.tokens)
        gate = gate.with_thresholds(self.thresholds(selections, gate.quantile))
        return dataclasses.replace(intervention, gate=gate)


def calibrate_gate(
    lm: LoadedModel,
    selections: Sequence[LatentSelection],
    intervention: Intervention,
    texts: Sequence[str] | None = None,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
) -> Intervention:
    """``intervention`` with its gate calibrated for ``selections`` on ``gate.corpus`` (or the given ``texts``).

    An ungated intervention is returned as it is.
    """
    if intervention.gate is None:
        return intervention
    hooks = [s.sae.hook_name for s in selections if s.latents]
    if not hooks:
        return intervention
    calibrator = GateCalibrator(lm, hooks, texts, intervention.gate.corpus, intervention.gate.tokens, batch_tokens)
    return calibrator.calibrate(selections, intervention)


RECALIBRATED: tuple[str, ...] = ("random_control", "random_control_matched")
"""Conditions whose latents are not the forget set's, so a gate calibrated for the forget set does not fit them."""


def calibrated_conditions(lm: LoadedModel, conditions: Sequence[Condition], batch_tokens: int = DEFAULT_BATCH_TOKENS,
                          recalibrate: Sequence[str] = RECALIBRATED) -> list[Condition]:
    """The conditions with every gated, uncalibrated intervention calibrated for that condition's own latents
    (one forward pass over each calibration corpus for all of them), and gated ``recalibrate`` ones (the random
    controls) calibrated again on theirs; the others as they are."""
    calibrators: dict[tuple[str, int], GateCalibrator] = {}
    out = []
    for cond in conditions:
        gate = cond.intervention.gate
        if gate is None or (gate.calibrated and cond.name not in recalibrate) or not cond.n_latents:
            out.append(cond)
            continue
        key = (gate.corpus, gate.tokens)
        if key not in calibrators:
            hooks = sorted({s.sae.hook_name for c in conditions for s in c.selections})
            calibrators[key] = GateCalibrator(lm, hooks, None, gate.corpus, gate.tokens, batch_tokens)
        out.append(Condition(cond.name, cond.selections, calibrators[key].calibrate(cond.selections, cond.intervention)))
    return out
