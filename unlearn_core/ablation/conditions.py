"""Conditions: the named ways of running the model that every evaluation compares (one builder, one set of names).

* ``baseline``: the unhooked model;
* ``ablated``: the whole forget set edited at once;
* ``ablated_layer_L``: one SAE's part of the forget set on its own (the Compare page's per-layer view);
* ``reconstruction_only``: the same SAEs spliced in with nothing edited. With the error term kept this *is* the
  baseline (x + decode(f) - decode(f) = x), so callers report it as identical without re-running
  (:attr:`Condition.same_as_baseline`); in the study's ``replace`` mode it measures the SAEs' reconstruction error;
* ``random_control``: per SAE as many random latents (seeded, disjoint from the forget set), edited the same way
  (a relative clamp reuses the chosen latents' clamp values, shuffled onto the random ones). Reports call it
  *unmatched*: random latents fire on general text far more often than chosen ones, so it over-states damage;
* ``random_control_matched``: per chosen latent, a random latent of the same SAE that fires about as often on
  retain text and as strongly (:func:`matched_random_selections`, from each SAE's :class:`LatentProfile`),
  edited the same way - the control that separates "about Harry Potter" from "rare on general text".

``evaluate``, ``sweep`` and the Compare page all build their conditions here; names are identifiers (JSON keys),
:attr:`Condition.label` is what a page shows.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from unlearn_core.ablation.interventions import Hook, Intervention, LatentSelection, intervention_hooks
from unlearn_core.errors import InputError

BASELINE = "baseline"
ABLATED = "ablated"
RECONSTRUCTION_ONLY = "reconstruction_only"
RANDOM_CONTROL = "random_control"
RANDOM_MATCHED = "random_control_matched"
CONDITIONS: tuple[str, ...] = (BASELINE, ABLATED, RECONSTRUCTION_ONLY, RANDOM_CONTROL, RANDOM_MATCHED)
CONTROLS: tuple[str, ...] = (RECONSTRUCTION_ONLY, RANDOM_CONTROL)
"""The controls the Compare page offers without latent statistics."""
MATCH_CANDIDATES = 8
"""A matched latent is drawn among this many latents closest to the chosen one."""

_LABELS = {BASELINE: "baseline", ABLATED: "ablated: all layers", RECONSTRUCTION_ONLY: "reconstruction only",
           RANDOM_CONTROL: "random control", RANDOM_MATCHED: "random control (matched)"}
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
    profiles: Mapping[str, LatentProfile] | None = None,
) -> list[Condition]:
    """The requested conditions for a forget set, in the order of ``names`` (each one of :data:`CONDITIONS`).

    With ``per_layer``, ``ablated`` expands into each SAE's own ablation (``ablated_layer_L``), preceded by the
    all-layers ablation when the forget set spans several SAEs (with one SAE the two coincide, so only the
    per-layer one is kept). Callers that show a page pass only SAEs with chosen latents. ``random_control_matched``
    needs each SAE's :class:`LatentProfile` (by SAE reference) in ``profiles``.
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
        elif name == RANDOM_CONTROL:
            out.append(Condition(RANDOM_CONTROL, random_selections(selections, seed), intervention))
        else:
            if profiles is None:
                raise InputError("the matched random control needs latent statistics on retain text (profiles)")
            out.append(Condition(RANDOM_MATCHED, matched_random_selections(selections, profiles, seed), intervention))
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


@dataclass(frozen=True)
class LatentProfile:
    """What the matched control matches on, for every latent of one SAE: how often it fires on retain text and how
    strongly (mean activation where it fires), measured over ``n_tokens`` tokens."""

    retain_rate: tuple[float, ...]
    mean_activation: tuple[float, ...]
    n_tokens: int

    def log_features(self) -> torch.Tensor:
        """[width, 2]: log firing rate and log activation scale, each floored so "never" is a finite value."""
        rate = torch.tensor(self.retain_rate, dtype=torch.float64)
        act = torch.tensor(self.mean_activation, dtype=torch.float64)
        rate_eps = 1.0 / max(self.n_tokens, 1)  # below one token in n a rate is indistinguishable from 0
        act_eps = 1e-3 * (float(act.max()) if act.numel() and float(act.max()) > 0 else 1.0)
        return torch.stack([torch.log(rate + rate_eps), torch.log(act + act_eps)], dim=1)


def matched_random_selections(
    selections: Sequence[LatentSelection], profiles: Mapping[str, LatentProfile], seed: int
) -> tuple[LatentSelection, ...]:
    """Per chosen latent, a random other latent of the same SAE among the :data:`MATCH_CANDIDATES` closest to it in
    retain firing rate and activation scale (seeded; no latent used twice, none from the forget set).

    A relative clamp gives each matched latent the chosen latent's clamp value scaled by their activation ratio,
    so it is pushed as far below its own typical activation as the chosen one is below its own.
    """
    rng = random.Random(seed)
    out = []
    for sel in selections:
        profile = profiles.get(sel.sae.ref)
        if profile is None or len(profile.retain_rate) != sel.sae.width:
            raise InputError(f"no latent statistics of width {sel.sae.width} for SAE {sel.sae.ref}")
        features = profile.log_features()
        free = torch.ones(sel.sae.width, dtype=torch.bool)
        free[list(sel.latents)] = False
        latents, reference = [], []
        for k, chosen in enumerate(sel.latents):
            if not bool(free.any()):
                break
            distance = (features - features[chosen]).abs().sum(dim=1)
            distance[~free] = math.inf
            nearest = torch.argsort(distance, stable=True)[: min(MATCH_CANDIDATES, int(free.sum()))]
            pick = int(nearest[rng.randrange(len(nearest))])
            free[pick] = False
            latents.append(pick)
            if sel.reference is not None:
                own, theirs = profile.mean_activation[pick], profile.mean_activation[chosen]
                scale = own / theirs if own > 0 and theirs > 0 else 1.0
                reference.append(sel.reference[k] * scale)
        order = sorted(range(len(latents)), key=lambda i: latents[i])
        out.append(LatentSelection(sel.sae, tuple(latents[i] for i in order),
                                   tuple(reference[i] for i in order) if sel.reference is not None else None))
    return tuple(out)
