"""The feature-list format: data classes and the validating parser. The format is documented in docs/feature-lists.md.

A feature list names a model and, per SAE, the hook site, the layer, an optional Neuronpedia source and the chosen
latents; lists written by ``select`` also carry typed ``intervention``, ``selection`` and per-latent ``stats``.
Keys this package does not know (at any level) are kept in ``extra`` and written back, so a file edited by a newer
tool or by hand never loses data.

Every problem is raised as :class:`~unlearn_core.errors.FeatureListError` with a message naming the file and the
JSON path of the offending value, e.g. ``my.json: saes[1].latents[3].id must be an integer, got "12"``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from unlearn_core.ablation.interventions import Intervention
from unlearn_core.errors import FeatureListError, InputError
from unlearn_core.forget_set.checks import Checker, extra_keys, is_int, put_optional, show, type_name, with_extra
from unlearn_core.forget_set.records import LatentStats, SelectionRecord, parse_selection, parse_stats
from unlearn_core.forget_set.widths import sae_width
from unlearn_core.models import presets

FORMAT_VERSION = 1
"""The feature-list format version this package reads and writes."""

SUPPORTED_FORMAT_VERSIONS: tuple[int, ...] = (1,)

_TOP_KEYS = ("format_version", "name", "description", "model", "saes", "created", "updated")
_TOP_OPTIONAL = ("selection", "intervention")
_ENTRY_KEYS = ("sae", "hook_name", "layer", "neuronpedia", "latents")
_ENTRY_REQUIRED = ("sae", "hook_name", "layer", "latents")
_LATENT_KEYS = ("id", "label", "note", "stats")

_NEURONPEDIA_RE = re.compile(r"^[^/\s]+/[^/\s]+$")
_HOOK_LAYER_RE = re.compile(r"^blocks\.(\d+)\.")


def now_iso() -> str:
    """The current UTC time as an ISO-8601 string with seconds, e.g. ``"2025-01-01T00:00:00+00:00"``."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class Latent:
    """One chosen SAE latent: its index in the SAE, an optional human label and note, and the stats that chose it."""

    id: int
    label: str | None = None
    note: str | None = None
    stats: LatentStats | None = None
    """Written by ``select`` / "Suggest latents"; ``None`` for latents added by hand."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Unknown keys found in the file, kept so they are written back unchanged."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON object for this latent (known keys first, then ``extra``)."""
        out: dict[str, Any] = {"id": self.id, "label": self.label, "note": self.note}
        put_optional(out, "stats", None if self.stats is None else self.stats.to_dict(), self.extra)
        return with_extra(out, self.extra)


@dataclass
class SaeEntry:
    """The latents chosen in one SAE, with where that SAE is hooked into the model."""

    sae: str
    """``"<sae_lens release>/<sae_id>"`` or a path to a local sae_lens directory."""
    hook_name: str
    """TransformerLens hook point, e.g. ``"blocks.12.hook_resid_post"``."""
    layer: int
    neuronpedia: str | None
    """``"<modelId>/<source>"`` on Neuronpedia, e.g. ``"gemma-2-2b/12-gemmascope-res-16k"``, or ``None``."""
    latents: list[Latent] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    """Unknown keys found in the file, kept so they are written back unchanged."""

    @property
    def latent_ids(self) -> list[int]:
        """The latent indices, in file order."""
        return [lat.id for lat in self.latents]

    def to_dict(self) -> dict[str, Any]:
        """The JSON object for this SAE entry (known keys first, then ``extra``)."""
        out: dict[str, Any] = {
            "sae": self.sae,
            "hook_name": self.hook_name,
            "layer": self.layer,
            "neuronpedia": self.neuronpedia,
            "latents": [lat.to_dict() for lat in self.latents],
        }
        return with_extra(out, self.extra)


@dataclass
class FeatureList:
    """A named, shareable set of SAE latents for one model (the file format: docs/feature-lists.md)."""

    name: str
    description: str
    model: str
    """Hugging Face model id, e.g. ``"google/gemma-2-2b"``."""
    saes: list[SaeEntry]
    created: str
    """ISO-8601 timestamp."""
    updated: str
    """ISO-8601 timestamp, refreshed by :func:`~unlearn_core.forget_set.io.save_feature_list`."""
    format_version: int = FORMAT_VERSION
    selection: SelectionRecord | None = None
    """How the latents were chosen (lists from ``select`` / "Suggest latents"), or ``None``."""
    intervention: Intervention | None = None
    """The intervention the list recommends; ``evaluate`` and the app apply it unless told otherwise."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Unknown top-level keys found in the file, kept so they are written back unchanged."""

    @property
    def total_latents(self) -> int:
        """Number of latents over all SAE entries."""
        return sum(len(entry.latents) for entry in self.saes)

    def entry_for(self, layer: int | None = None, hook_name: str | None = None) -> SaeEntry | None:
        """The SAE entry matching ``layer`` and/or ``hook_name``, or ``None`` if there is none.

        Raises :class:`FeatureListError` if neither criterion is given, or if several entries match
        (e.g. two hook sites at one layer: pass ``hook_name`` too).
        """
        if layer is None and hook_name is None:
            raise FeatureListError("entry_for() needs a layer or a hook_name")
        found = [
            e
            for e in self.saes
            if (layer is None or e.layer == layer) and (hook_name is None or e.hook_name == hook_name)
        ]
        if len(found) > 1:
            raise FeatureListError(
                f"feature list {self.name!r} has {len(found)} SAE entries at layer {layer} "
                f"({', '.join(e.hook_name for e in found)}); say which hook_name to use"
            )
        return found[0] if found else None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object for this feature list (known keys in format order, then ``extra``)."""
        out: dict[str, Any] = {
            "format_version": self.format_version,
            "name": self.name,
            "description": self.description,
            "model": self.model,
            "saes": [entry.to_dict() for entry in self.saes],
            "created": self.created,
            "updated": self.updated,
        }
        put_optional(out, "selection", None if self.selection is None else self.selection.to_dict(), self.extra)
        put_optional(out, "intervention", None if self.intervention is None else self.intervention.to_dict(), self.extra)
        return with_extra(out, self.extra)

    @classmethod
    def from_dict(
        cls,
        data: Any,
        *,
        source: str = "<dict>",
        known_models: Iterable[str] | None = None,
        check_model: bool = True,
    ) -> FeatureList:
        """Validate parsed JSON and build a :class:`FeatureList` from it.

        ``source`` names the data in error messages (normally the file path). ``known_models`` defaults to
        :func:`unlearn_core.models.presets.known_model_ids`; with ``check_model=False`` any model id is accepted.
        Raises :class:`FeatureListError` on the first problem found. ``data`` is not modified or shared.
        """
        return _parse_feature_list(data, source=source, known_models=known_models, check_model=check_model)

    def validate(self, *, source: str = "<feature list>", check_model: bool = True) -> None:
        """Re-run all checks on this (possibly edited) feature list; raises :class:`FeatureListError`."""
        FeatureList.from_dict(self.to_dict(), source=source, check_model=check_model)


# ----------------------------------------------------------------------------------------------------------------
# Validation


def _parse_latent(value: Any, path: str, ctx: Checker) -> Latent:
    if is_int(value):
        raise ctx.fail(path, f'must be an object like {{"id": {value}, "label": null, "note": null}}, got {value}')
    data = ctx.obj(value, path)
    ctx.required(data, ("id",), path)
    lat_id = ctx.integer(data["id"], f"{path}.id", minimum=0)
    label = ctx.string(data.get("label"), f"{path}.label", nonempty=False, nullable=True)
    note = ctx.string(data.get("note"), f"{path}.note", nonempty=False, nullable=True)
    stats = None if data.get("stats") is None else parse_stats(data["stats"], f"{path}.stats", ctx)
    return Latent(id=lat_id, label=label, note=note, stats=stats, extra=extra_keys(data, _LATENT_KEYS, ("stats",)))


def _parse_entry(value: Any, path: str, ctx: Checker) -> SaeEntry:
    data = ctx.obj(value, path)
    ctx.required(data, _ENTRY_REQUIRED, path)
    sae = ctx.string(data["sae"], f"{path}.sae")
    hook_name = ctx.string(data["hook_name"], f"{path}.hook_name")
    assert sae is not None and hook_name is not None
    layer = data["layer"]
    if not is_int(layer) or layer < 0:
        raise ctx.fail(f"{path}.layer", f"must be a non-negative integer, got {show(layer)}")
    m = _HOOK_LAYER_RE.match(hook_name)
    if m and int(m.group(1)) != layer:
        raise ctx.fail(
            f"{path}.layer", f"is {layer} but hook_name {show(hook_name)} is in block {m.group(1)}; make them agree"
        )
    neuronpedia = data.get("neuronpedia")
    if neuronpedia is not None and (not isinstance(neuronpedia, str) or not _NEURONPEDIA_RE.match(neuronpedia)):
        raise ctx.fail(
            f"{path}.neuronpedia",
            f'must be null or "<modelId>/<source>" (e.g. "gemma-2-2b/12-gemmascope-res-16k"), got {show(neuronpedia)}',
        )
    raw_latents = data["latents"]
    if not isinstance(raw_latents, list):
        raise ctx.fail(f"{path}.latents", f"must be a list, got {type_name(raw_latents)}")
    width = sae_width(sae)
    latents: list[Latent] = []
    seen: dict[int, int] = {}
    for i, raw in enumerate(raw_latents):
        lpath = f"{path}.latents[{i}]"
        lat = _parse_latent(raw, lpath, ctx)
        if width is not None and lat.id >= width:
            raise ctx.fail(
                f"{lpath}.id",
                f"{lat.id} is out of range: SAE {show(sae)} has {width} latents (ids 0 to {width - 1})",
            )
        if lat.id in seen:
            raise ctx.fail(
                f"{lpath}.id",
                f"{lat.id} is a duplicate: latent {lat.id} already appears at {path}.latents[{seen[lat.id]}]",
            )
        seen[lat.id] = i
        latents.append(lat)
    return SaeEntry(
        sae=sae,
        hook_name=hook_name,
        layer=layer,
        neuronpedia=neuronpedia,
        latents=latents,
        extra=extra_keys(data, _ENTRY_KEYS),
    )


def _parse_intervention(value: Any, ctx: Checker) -> Intervention:
    ctx.obj(value, "intervention")
    try:
        return Intervention.from_dict(value, source=f"{ctx.source}: intervention")
    except InputError as exc:
        raise FeatureListError(str(exc)) from None


def _parse_entries(raw_saes: Any, ctx: Checker) -> list[SaeEntry]:
    if not isinstance(raw_saes, list):
        raise ctx.fail("saes", f"must be a list, got {type_name(raw_saes)}")
    entries: list[SaeEntry] = []
    by_hook: dict[str, int] = {}
    by_sae: dict[str, int] = {}
    for i, raw in enumerate(raw_saes):
        entry = _parse_entry(raw, f"saes[{i}]", ctx)
        if entry.hook_name in by_hook:
            raise ctx.fail(
                f"saes[{i}].hook_name",
                f"{show(entry.hook_name)} duplicates saes[{by_hook[entry.hook_name]}]; "
                "put all latents for one hook site in one entry",
            )
        if entry.sae in by_sae:
            raise ctx.fail(
                f"saes[{i}].sae",
                f"{show(entry.sae)} duplicates saes[{by_sae[entry.sae]}]; put all latents for one SAE in one entry",
            )
        by_hook[entry.hook_name] = i
        by_sae[entry.sae] = i
        entries.append(entry)
    return entries


def _parse_feature_list(
    data: Any, *, source: str, known_models: Iterable[str] | None, check_model: bool
) -> FeatureList:
    ctx = Checker(source)
    if not isinstance(data, dict):
        raise FeatureListError(f"{source}: the top level must be a JSON object, got {type_name(data)}")
    ctx.finite(data)
    if "format_version" in data:
        version = data["format_version"]
        if not is_int(version) or version not in SUPPORTED_FORMAT_VERSIONS:
            supported = ", ".join(str(v) for v in SUPPORTED_FORMAT_VERSIONS)
            raise ctx.fail(
                "format_version",
                f"{show(version)} is not supported; this version of unlearn_core reads format_version {supported}",
            )
    ctx.required(data, _TOP_KEYS, "")
    name = ctx.string(data["name"], "name")
    description = ctx.string(data["description"], "description", nonempty=False)
    model = ctx.string(data["model"], "model")
    assert name is not None and description is not None and model is not None
    if check_model:
        known = set(presets.known_model_ids() if known_models is None else known_models)
        if model not in known:
            raise ctx.fail(
                "model",
                f"{show(model)} is not a known model; known models: {', '.join(sorted(known))}",
            )
    created = ctx.timestamp(data["created"], "created")
    updated = ctx.timestamp(data["updated"], "updated")
    entries = _parse_entries(data["saes"], ctx)
    selection = None if data.get("selection") is None else parse_selection(data["selection"], "selection", ctx)
    intervention = None if data.get("intervention") is None else _parse_intervention(data["intervention"], ctx)
    return FeatureList(
        name=name,
        description=description,
        model=model,
        saes=entries,
        created=created,
        updated=updated,
        format_version=data["format_version"],
        selection=selection,
        intervention=intervention,
        extra=extra_keys(data, _TOP_KEYS + _TOP_OPTIONAL, _TOP_OPTIONAL),
    )
