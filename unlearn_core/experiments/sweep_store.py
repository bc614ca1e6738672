"""What makes a sweep resumable and shareable between processes: conditions by value, their keys, the point store.

* :class:`ConditionSpec` is a condition by value (SAE references, latent ids, reference activations, the
  intervention): small, picklable, rebuilt by any process that holds the same SAEs (:meth:`ConditionSpec.build`);
* :class:`SweepKeys` digests everything a measurement depends on: the model (preset, dtype, device, shape), each
  SAE's reference and weights, the condition's latents and reference values, the intervention, the exact
  text/probe/quiz contents and limits, and :data:`SCORING_VERSION`;
* :class:`PointStore` keeps one JSON file per finished measurement, ``points/<key>.json``, written atomically;
  a file that does not parse or whose key does not match is ignored (and the point recomputed);
* :func:`measure_jobs` measures what the store lacks through a :class:`Runner` (in this process, or Ray actors),
  saving each result the moment it arrives, so an interrupted sweep loses at most the points in flight.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from unlearn_core.ablation.conditions import Condition
from unlearn_core.ablation.interventions import Intervention, LatentSelection
from unlearn_core.data.probes import ProbeSet
from unlearn_core.data.quizzes import Quiz
from unlearn_core.data.texts import TextSet
from unlearn_core.errors import InputError
from unlearn_core.files import write_json_atomic
from unlearn_core.models.loading import LoadedModel
from unlearn_core.saes.loading import LoadedSae

SCORING_VERSION = 1
"""Part of every point's key: bump it whenever scoring changes, so stored points are recomputed, never reused."""
POINT_FORMAT = 1

SelectionSpec = tuple[str, tuple[int, ...], tuple[float, ...] | None]
"""(SAE reference, latent ids, reference activations or None)."""


@dataclass(frozen=True)
class ConditionSpec:
    """A condition by value: what another process needs to rebuild it on its own copy of the same SAEs."""

    name: str
    selections: tuple[SelectionSpec, ...] = ()
    intervention: Intervention = field(default_factory=Intervention)

    @classmethod
    def of(cls, condition: Condition) -> ConditionSpec:
        sels = tuple((s.sae.ref, tuple(int(i) for i in s.latents),
                      None if s.reference is None else tuple(float(r) for r in s.reference)) for s in condition.selections)
        return cls(condition.name, sels, condition.intervention)

    def build(self, saes: Mapping[str, LoadedSae]) -> Condition:
        """The condition on ``saes`` (by reference); :class:`InputError` if one of its SAEs is missing."""
        missing = [ref for ref, _, _ in self.selections if ref not in saes]
        if missing:
            raise InputError(f"condition {self.name} needs SAE(s) {missing}, which this process has not loaded")
        sels = tuple(LatentSelection(saes[ref], latents, reference) for ref, latents, reference in self.selections)
        return Condition(self.name, sels, self.intervention)


@dataclass(frozen=True)
class SweepData:
    """The fixed sets every point is measured on: (forget, retain) texts, (forget, retain) probes, and the quizzes
    by :class:`~unlearn_core.experiments.sweep.Measurement` field. Loaded once by the driver and shipped to workers,
    so every process scores exactly the same items."""

    text_sets: tuple[TextSet, TextSet]
    probe_sets: tuple[ProbeSet, ProbeSet]
    quizzes: dict[str, Quiz]


def sae_digest(sae: LoadedSae) -> str:
    """A digest of an SAE's reference, site and every weight tensor (float32 bytes, by name)."""
    h = hashlib.sha256(json.dumps([sae.ref, sae.hook_name, sae.width]).encode())
    with torch.inference_mode():
        for name, tensor in sorted(sae.sae.state_dict().items()):
            h.update(name.encode())
            h.update(json.dumps(list(tensor.shape)).encode())
            h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


class SweepKeys:
    """Keys of measurements: a digest of the measuring context (computed once) plus the condition's contents."""

    def __init__(self, lm: LoadedModel, saes: Sequence[LoadedSae], data: SweepData, limits: Mapping[str, Any]) -> None:
        cfg = lm.model.cfg
        shape = [getattr(cfg, name, None) for name in ("n_layers", "d_model", "d_vocab", "n_heads", "d_mlp")]
        context = {
            "scoring_version": SCORING_VERSION,
            "model": [lm.preset.name, lm.preset.loader, lm.preset.model_id, str(lm.dtype), str(lm.device), shape],
            "limits": dict(sorted(limits.items())),
            "texts": [[ts.name, len(ts.texts), _digest(list(ts.texts))] for ts in data.text_sets],
            "probes": [[ps.name, _digest([asdict(p) for p in ps.probes])] for ps in data.probe_sets],
            "quizzes": {f: [q.name, _digest([[i.question, list(i.choices), i.answer] for i in q.items])]
                        for f, q in sorted(data.quizzes.items())},
        }
        self.context = _digest(context)
        self.saes = {s.ref: sae_digest(s) for s in saes}

    def key(self, spec: ConditionSpec) -> str:
        """The condition's key (its name is not part of it: it changes no number)."""
        sels = [[ref, self.saes.get(ref), list(latents), None if ref_acts is None else [float(r) for r in ref_acts]]
                for ref, latents, ref_acts in spec.selections]
        return _digest([self.context, sels, spec.intervention.to_dict()])


class PointStore:
    """Finished measurements, one file each: ``<directory>/<key>.json``, written atomically."""

    def __init__(self, directory: str | Path, fields: Sequence[str]) -> None:
        self.directory = Path(directory)
        self.fields = tuple(fields)

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def load(self, key: str) -> dict[str, float | None] | None:
        """The stored measurement, or None if absent, unreadable, of another key or not a measurement."""
        try:
            data = json.loads(self.path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("key") != key or data.get("format") != POINT_FORMAT:
            return None
        m = data.get("measurement")
        if not isinstance(m, dict) or set(m) != set(self.fields):
            return None
        if not all(v is None or (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v))
                   for v in m.values()):
            return None
        return m

    def save(self, key: str, spec: ConditionSpec, measurement: Mapping[str, float | None]) -> None:
        write_json_atomic(self.path(key), {"format": POINT_FORMAT, "key": key, "scoring_version": SCORING_VERSION,
                                           "condition": spec.name, "measurement": dict(measurement)}, indent=1)


Job = tuple[str, ConditionSpec]
"""(key, condition)."""
DoneFn = Callable[[str, dict[str, Any], int | None], None]
"""Called by a runner as ``done(key, measurement, worker)`` for each finished job (worker: actor slot or None)."""


class Runner(Protocol):
    """Measures jobs somewhere; calls ``done`` for each as it finishes (in any order)."""

    def run(self, jobs: Sequence[Job], done: DoneFn) -> None: ...


@dataclass(frozen=True)
class PointDone:
    """One finished job, as reported to a sweep's ``on_point`` callback."""

    done: int
    total: int
    name: str
    key: str
    worker: int | None
    """The actor slot that measured it (None: measured in this process)."""
    measurement: dict[str, Any]


def measure_jobs(
    jobs: Sequence[Job],
    runner: Runner,
    store: PointStore | None = None,
    on_point: Callable[[PointDone], None] | None = None,
    status: Callable[[str], None] | None = None,
    what: str = "points",
) -> dict[str, dict[str, Any]]:
    """Every job's measurement by key: from the store when it has it (``status`` hears "reusing N of M finished
    points"), else measured by ``runner`` and stored as each arrives (before ``on_point`` is told, so an exception
    there loses nothing)."""
    unique = list(dict(jobs).items())
    results: dict[str, dict[str, Any]] = {}
    for key, _ in unique:
        found = store.load(key) if store is not None else None
        if found is not None:
            results[key] = found
    reused = len(results)
    todo = [(key, spec) for key, spec in unique if key not in results]
    names = dict(todo)
    if reused and status:
        status(f"reusing {reused} of {len(unique)} finished {what}")

    def done(key: str, measurement: dict[str, Any], worker: int | None) -> None:
        if store is not None:
            store.save(key, names[key], measurement)
        results[key] = measurement
        if on_point is not None:
            on_point(PointDone(len(results) - reused, len(todo), names[key].name, key, worker, measurement))

    if todo:
        runner.run(todo, done)
    return results


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:32]
