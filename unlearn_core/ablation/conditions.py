"""Conditions: the named ways of running the model that every evaluation compares (one builder, one set of names).

* ``baseline``: the unhooked model;
* ``ablated``: the whole forget set edited at once;
* ``ablated_layer_L``: one SAE's part of the forget set on its own (the Compare page's per-layer view);
* ``reconstruction_only``: the same SAEs spliced in with nothing edited. With the error term kept this *is* the
  baseline (x + decode(f) - decode(f) = x), so callers report it as identical without re-running
  (:attr:`Condition.same_as_baseline`); in the study's ``replace`` mode it measures the SAEs' reconstruction error;
* ``random_control``: per SAE as many random latents (seeded, disjoint from the forget set), edited the same way
  (a relative clamp reuses the chosen latents' clamp values, shuffled onto the random ones).

``evaluate``, ``sweep`` and the Compare page all build their conditions here; names are identifiers (JSON keys),
:attr:`Condition.label` is what a page shows.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from unlearn_core.ablation.interventions import Hook, Intervention, LatentSelection, intervention_hooks
from unlearn_core.errors import InputError

BASELINE = "baseline"
ABLATED = "ablated"
RECONSTRUCTION_ONLY = "reconstruction_only"
RANDOM_CONTROL = "random_control"
CONDITIONS: tuple[str, ...] = (BASELINE, ABLATED, RECONSTRUCTION_ONLY, RANDOM_CONTROL)
CONTROLS: tuple[str, ...] = (RECONSTRUCTION_ONLY, RANDOM_CONTROL)

_LABELS = {BASELINE: "baseline", ABLATED: "ablated: all layers", RECONSTRUCTION_ONLY: "reconstruction only",
           RANDOM_CONTROL: "random control"}
_PER_LAYER = re.compile(r"^ablated_layer_(\d+)$")


def per_layer_name(layer: int) -> str:
    """The name of the condition that ablates only one layer's part of the forget set."""
    return f"ablated_layer_{layer}"


def condition_label(name: str) -> str:
    """What a page shows for a condition name (``ablated_layer_12`` -> ``ablated: layer 12``)."""
    if name in _LABELS:
        return _LABELS[name]
    match = _PER_LAYER.match(name)
    if match:
        return f"ablated: layer {match.group(1)}"
    if name.startswith("ablated_at_"):
        return f"ablated: {name.removeprefix('ablated_at_')}"
    return name


@dataclass(frozen=True)
class Condition:
    """A named way of running the model: which latents of which SAEs are edited, and how."""

    name: str
    selections: tuple[LatentSelection, ...] = ()
    intervention: Intervention = field(default_factory=Intervention)

    def hooks(self, protect_first_position: bool = True) -> list[Hook]:
        if not self.selections:
            return []
        return intervention_hooks(self.selections, self.intervention, protect_first_position)

    @property
    def n_latents(self) -> int:
        return sum(len(s.latents) for s in self.selections)

    @property
    def label(self) -> str:
        return condition_label(self.name)

    @property
    def same_as_baseline(self) -> bool:
        """True when the condition provably computes the baseline: no latent edited and the error term kept."""
        return self.name == BASELINE or (self.n_latents == 0 and self.intervention.keeps_error_term)


def build_conditions(
    names: Sequence[str],
    selections: Sequence[LatentSelection],
    intervention: Intervention,
    seed: int = 0,
    *,
    per_layer: bool = False,
) -> list[Condition]:
    """The requested conditions for a forget set, in the order of ``names`` (each one of :data:`CONDITIONS`).

    With ``per_layer``, ``ablated`` expands into each SAE's own ablation (``ablated_layer_L``), preceded by the
    all-layers ablation when the forget set spans several SAEs (with one SAE the two coincide, so only the
    per-layer one is kept). Callers that show a page pass only SAEs with chosen latents.
    """
    unknown = [n for n in names if n not in CONDITIONS]
    if unknown:
        raise InputError(f"unknown condition(s) {unknown}; choose from {list(CONDITIONS)}")
    out: list[Condition] = []
    for name in names:
        if name == BASELINE:
            out.append(Condition(BASELINE))
        elif name == ABLATED:
            if not per_layer or len(selections) > 1:
                out.append(Condition(ABLATED, tuple(selections), intervention))
            if per_layer:
                out += _per_layer_conditions(selections, intervention)
        elif name == RECONSTRUCTION_ONLY:
            empty = tuple(LatentSelection(s.sae, ()) for s in selections)
            out.append(Condition(RECONSTRUCTION_ONLY, empty, intervention))
        else:
            out.append(Condition(RANDOM_CONTROL, random_selections(selections, seed), intervention))
    return out


def _per_layer_conditions(selections: Sequence[LatentSelection], intervention: Intervention) -> list[Condition]:
    out: list[Condition] = []
    for sel in selections:
        name = per_layer_name(sel.sae.layer)
        if any(c.name == name for c in out):  # two SAEs at one layer (different sites): name them by hook
            name = f"ablated_at_{sel.sae.hook_name}"
        out.append(Condition(name, (sel,), intervention))
    return out


def random_selections(selections: Sequence[LatentSelection], seed: int) -> tuple[LatentSelection, ...]:
    """Same-size random latent sets per SAE, disjoint from the chosen ones; deterministic in ``seed``."""
    rng = random.Random(seed)
    out = []
    for sel in selections:
        chosen = set(sel.latents)
        pool = [i for i in range(sel.sae.width) if i not in chosen]
        latents = tuple(sorted(rng.sample(pool, min(len(chosen), len(pool)))))
        reference = None
        if sel.reference is not None:
            # the chosen latents' clamp values, shuffled onto the random ones: the same strength, elsewhere
            reference = list(sel.reference)[: len(latents)]
            rng.shuffle(reference)
            reference = tuple(reference)
        out.append(LatentSelection(sel.sae, latents, reference))
    return tuple(out)
