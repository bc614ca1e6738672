"""Compare: the baseline model against the forget set's ablation and its controls, one cell at a time.

A comparison is a grid of cells (condition x text set, condition x probe set, condition x prompt). Each cell has a
key that depends only on what determines its number (model, the condition's SAEs, latents and intervention, the
exact texts and limits), so a caller can cache cells: the baseline is computed once however often the forget set
changes, and a run that was stopped resumes where it left off.

The conditions come from :func:`unlearn_core.ablation.conditions.build_conditions` with ``per_layer=True``
(baseline, all layers together, each layer alone, and the controls), the same builder ``evaluate`` and ``sweep``
use; a condition equal to the baseline (:attr:`Condition.same_as_baseline`) is reported as such, not re-run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence

__all__ = ["ABLATED", "BASELINE", "CONTROLS", "RANDOM_CONTROL", "RECONSTRUCTION_ONLY", "per_layer_name"]

from unlearn_core.ablation.conditions import (
    ABLATED,
    BASELINE,
    CONTROLS,
    RANDOM_CONTROL,
    RECONSTRUCTION_ONLY,
    Condition,
    build_conditions,
    per_layer_name,
)
from unlearn_core.ablation.interventions import Intervention, LatentSelection
from unlearn_core.data.probes import ProbeSet
from unlearn_core.data.quizzes import Quiz
from unlearn_core.data.texts import TextSet
from unlearn_core.errors import InputError
from unlearn_core.models.loading import LoadedModel
from unlearn_core.scoring.batching import DEFAULT_BATCH_TOKENS
from unlearn_core.scoring.choices import choice_scores
from unlearn_core.scoring.generation import generate
from unlearn_core.scoring.perplexity import PerplexityResult, iter_perplexity
from unlearn_core.scoring.probes import ProbeResult, probe_scores

DEFAULT_COMPARE_TEXTS = 48
"""Texts per set scored by default in the app. Measured by ``scripts/compare_sample_size.py``
(docs/compare-sample-size.json, the shipped ``select`` list): the WikiText-2 perplexity ratio's bootstrap spread is
1.2% at 16 texts, 0.67% at 48 (the first 48 are within 0.9% of 160); the fan-wiki set has 40 texts and all of them
are needed (its ratio varies by paragraph: spread 26% at 16, 16% at 32). The first number still comes after one
batch (a few seconds)."""
DEFAULT_COMPARE_SEQ_LEN = 256
DEFAULT_NEW_TOKENS = 40


def comparison_conditions(
    selections: Sequence[LatentSelection],
    intervention: Intervention,
    *,
    per_layer: bool = True,
    controls: Sequence[str] = CONTROLS,
    seed: int = 0,
) -> list[Condition]:
    """Baseline, the forget set's ablations (all SAEs together, and each alone with ``per_layer``) and the
    requested controls. SAEs with no chosen latents are left out."""
    unknown = [c for c in controls if c not in CONTROLS]
    if unknown:
        raise InputError(f"unknown control(s) {unknown}; choose from {list(CONTROLS)}")
    chosen = tuple(s for s in selections if s.latents)
    if not chosen:
        return [Condition(BASELINE)]
    names = (BASELINE, ABLATED, *[c for c in CONTROLS if c in controls])
    return build_conditions(names, chosen, intervention, seed, per_layer=per_layer)


def same_as_baseline(condition: Condition) -> bool:
    """True when a condition provably computes the baseline (see :attr:`Condition.same_as_baseline`)."""
    return condition.same_as_baseline


def _digest(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def condition_key(lm: LoadedModel, condition: Condition) -> str:
    """What determines a condition's outputs: the model, and (unless it equals the baseline) every SAE, site,
    latent and the intervention. Two conditions with the same key give the same numbers."""
    model = [lm.preset.name, str(lm.dtype), lm.device]
    if condition.same_as_baseline:
        return _digest({"model": model, "condition": BASELINE})
    from unlearn_core.ablation.interventions import hook_name_for

    iv = condition.intervention
    parts = [
        [s.sae.ref, hook_name_for(s, iv.hook_site), list(s.latents)]
        + ([[repr(r) for r in s.reference or ()]] if iv.relative else [])
        for s in condition.selections
    ]
    return _digest({"model": model, "selections": parts, "mode": iv.mode, "strength": repr(iv.strength),
                    "hook_site": iv.hook_site, "relative": iv.relative,
                    "gate": None if iv.gate is None else {k: repr(v) for k, v in iv.gate.to_dict().items()}})


def text_set_key(texts: TextSet, max_seq_len: int) -> str:
    """The exact texts scored and the truncation: a file edited under the same name gets a new key."""
    return _digest({"name": texts.name, "texts": _digest(list(texts.texts)), "max_seq_len": max_seq_len})


def probe_set_key(probes: ProbeSet | Quiz) -> str:
    """The exact items of a cloze/QA probe set or a multiple-choice quiz."""
    if isinstance(probes, Quiz):
        items = [[i.question, list(i.choices), i.answer] for i in probes.items]
        return _digest({"name": probes.name, "quiz": _digest(items)})
    return _digest({"name": probes.name, "items": _digest([[p.prompt, list(p.answers)] for p in probes.probes])})


def generation_key(prompt: str, max_new_tokens: int, temperature: float, seed: int) -> str:
    return _digest({"prompt": prompt, "new": max_new_tokens, "t": temperature, "seed": seed})


def perplexity_cell(
    lm: LoadedModel,
    condition: Condition,
    texts: TextSet,
    max_seq_len: int = DEFAULT_COMPARE_SEQ_LEN,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
) -> Iterator[PerplexityResult]:
    """Running perplexity of one condition on one text set, one value per batch (the last is final)."""
    yield from iter_perplexity(lm, texts.texts, condition.hooks(), max_seq_len, batch_tokens)


def probe_cell(lm: LoadedModel, condition: Condition, probes: ProbeSet, batch_tokens: int = DEFAULT_BATCH_TOKENS) -> ProbeResult:
    """Knowledge-probe scores of one condition."""
    return probe_scores(lm, probes, condition.hooks(), batch_tokens=batch_tokens)


def knowledge_cell(
    lm: LoadedModel, condition: Condition, probes: ProbeSet | Quiz, batch_tokens: int = DEFAULT_BATCH_TOKENS
) -> dict[str, float]:
    """One condition's scores on a cloze/QA set (``top1``, ``mean_logprob``, ``n``) or a multiple-choice quiz
    (``acc``, ``acc_norm``, ``acc_calibrated``, ``chance``, ``n``), as the typed results hold them."""
    if isinstance(probes, Quiz):
        return choice_scores(lm, probes, condition.hooks(), batch_tokens=batch_tokens).to_dict()
    res = probe_cell(lm, condition, probes, batch_tokens)
    return {"top1": res.top1, "mean_logprob": res.mean_logprob, "n": res.n}


def generation_cell(
    lm: LoadedModel,
    condition: Condition,
    prompt: str,
    max_new_tokens: int = DEFAULT_NEW_TOKENS,
    temperature: float = 0.0,
    seed: int = 0,
) -> str:
    """One continuation; greedy unless ``temperature`` > 0 (then seeded, so it is reproducible)."""
    return generate(lm, prompt, condition, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
