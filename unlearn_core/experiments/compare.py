"""Compare: the baseline model against the forget set's ablation and its controls, one cell at a time.

A comparison is a grid of cells (condition x text set, condition x probe set, condition x prompt). Each cell has a
key that depends only on what determines its number (model, the condition's SAEs, latents and intervention, the
exact texts and limits), so a caller can cache cells: the baseline is computed once however often the forget set
changes, and a run that was stopped resumes where it left off.

Conditions offered (see :func:`comparison_conditions`):

* ``baseline``: the unhooked model;
* ``ablated: all layers``: the whole forget set edited at once (only when it spans several SAEs);
* ``ablated: layer L``: each SAE's part of the forget set on its own;
* ``reconstruction only``: the SAEs spliced in with nothing edited. With the error term kept this *is* the
  baseline (x + decode(f) - decode(f) = x), so it is reported as identical without re-running; in the study's
  ``replace`` mode it measures the SAEs' reconstruction error alone;
* ``random control``: per SAE as many random latents (seeded, disjoint from the forget set), edited the same way.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Sequence

from unlearn_core.ablation.interventions import Intervention, LatentSelection
from unlearn_core.data.probes import ProbeSet
from unlearn_core.data.texts import TextSet
from unlearn_core.errors import InputError
from unlearn_core.models.loading import LoadedModel
from unlearn_core.scoring.evaluation import (
    DEFAULT_BATCH_TOKENS,
    Condition,
    PerplexityResult,
    ProbeResult,
    generate,
    iter_perplexity,
    probe_scores,
    random_selections,
)

BASELINE = "baseline"
ALL_LAYERS = "ablated: all layers"
RECONSTRUCTION_ONLY = "reconstruction only"
RANDOM_CONTROL = "random control"
CONTROLS: tuple[str, ...] = (RECONSTRUCTION_ONLY, RANDOM_CONTROL)

DEFAULT_COMPARE_TEXTS = 16
"""Texts per set scored by default in the app: enough for a stable ratio, fast enough to watch."""
DEFAULT_COMPARE_SEQ_LEN = 256
DEFAULT_NEW_TOKENS = 40


def per_layer_name(layer: int) -> str:
    return f"ablated: layer {layer}"


def comparison_conditions(
    selections: Sequence[LatentSelection],
    intervention: Intervention,
    *,
    all_layers: bool = True,
    per_layer: bool = True,
    controls: Sequence[str] = CONTROLS,
    seed: int = 0,
) -> list[Condition]:
    """Baseline, the forget set's ablations (all SAEs together and/or each alone) and the requested controls.

    SAEs with no chosen latents are left out. With a single SAE, "all layers" and its per-layer condition coincide,
    so only the per-layer one is returned.
    """
    unknown = [c for c in controls if c not in CONTROLS]
    if unknown:
        raise InputError(f"unknown control(s) {unknown}; choose from {list(CONTROLS)}")
    chosen = tuple(s for s in selections if s.latents)
    out = [Condition(BASELINE)]
    if not chosen:
        return out
    if all_layers and len(chosen) > 1:
        out.append(Condition(ALL_LAYERS, chosen, intervention))
    if per_layer or len(chosen) == 1:
        for sel in chosen:
            name = per_layer_name(sel.sae.layer)
            if any(c.name == name for c in out):  # two SAEs at one layer (different sites): name them by hook
                name = f"ablated: {sel.sae.hook_name}"
            out.append(Condition(name, (sel,), intervention))
    if RECONSTRUCTION_ONLY in controls:
        out.append(Condition(RECONSTRUCTION_ONLY, tuple(LatentSelection(s.sae, ()) for s in chosen), intervention))
    if RANDOM_CONTROL in controls:
        out.append(Condition(RANDOM_CONTROL, random_selections(chosen, seed), intervention))
    return out


def same_as_baseline(condition: Condition) -> bool:
    """True when a condition provably computes the baseline: no latent edited and the error term kept."""
    return condition.name == BASELINE or (condition.n_latents == 0 and condition.intervention.keeps_error_term)


def _digest(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def condition_key(lm: LoadedModel, condition: Condition) -> str:
    """What determines a condition's outputs: the model, and (unless it equals the baseline) every SAE, site,
    latent and the intervention. Two conditions with the same key give the same numbers."""
    model = [lm.preset.name, str(lm.dtype), lm.device]
    if same_as_baseline(condition):
        return _digest({"model": model, "condition": BASELINE})
    from unlearn_core.ablation.interventions import hook_name_for

    iv = condition.intervention
    parts = [
        [s.sae.ref, hook_name_for(s, iv.hook_site), list(s.latents)]
        + ([[repr(r) for r in s.reference or ()]] if iv.relative else [])
        for s in condition.selections
    ]
    return _digest({"model": model, "selections": parts, "mode": iv.mode, "strength": repr(iv.strength),
                    "hook_site": iv.hook_site, "relative": iv.relative})


def text_set_key(texts: TextSet, max_seq_len: int) -> str:
    """The exact texts scored and the truncation: a file edited under the same name gets a new key."""
    return _digest({"name": texts.name, "texts": _digest(list(texts.texts)), "max_seq_len": max_seq_len})


def probe_set_key(probes: ProbeSet) -> str:
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


def selectivity(forget_ratio: float, retain_ratio: float) -> float | None:
    """ln(forget perplexity ratio) / ln(retain perplexity ratio): how much more the forget text is hurt.

    None when the retain ratio is 1 (undefined) or either ratio is not positive.
    """
    if forget_ratio <= 0 or retain_ratio <= 0 or math.isclose(retain_ratio, 1.0, abs_tol=1e-12):
        return None
    return math.log(forget_ratio) / math.log(retain_ratio)
