"""Feature lists: the JSON files in which users curate and share the SAE latents to ablate.

A feature list names a model (its Hugging Face id), and for each SAE it uses, the SAE reference, the hook site,
the layer, an optional Neuronpedia source and the chosen latents (each with an optional label and note)::

    {"format_version": 1, "name": "...", "description": "...", "model": "google/gemma-2-2b",
     "saes": [{"sae": "gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical",
               "hook_name": "blocks.12.hook_resid_post", "layer": 12,
               "neuronpedia": "gemma-2-2b/12-gemmascope-res-16k",
               "latents": [{"id": 1234, "label": "wizards", "note": null}]}],
     "created": "2025-01-01T00:00:00+00:00", "updated": "2025-01-01T00:00:00+00:00"}

Keys this module does not know (at the top level, in an SAE entry or in a latent) are kept and written back,
so a file edited by a newer tool or by hand never loses data.

Every problem with a file is raised as :class:`~unlearn_core.errors.FeatureListError` with a message naming the
file and the JSON path of the offending value, e.g. ``my.json: saes[1].latents[3].id must be an integer, got "12"``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from unlearn_core.errors import FeatureListError, InputError
from unlearn_core.models import presets

FORMAT_VERSION = 1
"""The feature-list format version this module reads and writes."""

SUPPORTED_FORMAT_VERSIONS: tuple[int, ...] = (1,)

_TOP_KEYS = ("format_version", "name", "description", "model", "saes", "created", "updated")
_ENTRY_KEYS = ("sae", "hook_name", "layer", "neuronpedia", "latents")
_ENTRY_REQUIRED = ("sae", "hook_name", "layer", "latents")
_LATENT_KEYS = ("id", "label", "note")

_NEURONPEDIA_RE = re.compile(r"^[^/\s]+/[^/\s]+$")
_WIDTH_RE = re.compile(r"(?:^|[/_])width_(\d+)([km]?)(?=$|[/_])", re.IGNORECASE)
_HOOK_LAYER_RE = re.compile(r"^blocks\.(\d+)\.")
_UNITS = {"": 1, "k": 1024, "m": 1024 * 1024}


# ----------------------------------------------------------------------------------------------------------------
# Data classes


def _with_extra(known: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Known keys first, then copies of the unknown keys a file carried (never overriding a known one)."""
    for key, value in extra.items():
        known.setdefault(key, copy.deepcopy(value))
    return known


@dataclass
class Latent:
    """One chosen SAE latent: its index in the SAE, and an optional human label and note."""

    id: int
    label: str | None = None
    note: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Unknown keys found in the file, kept so they are written back unchanged."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON object for this latent (known keys first, then ``extra``)."""
        out: dict[str, Any] = {"id": self.id, "label": self.label, "note": self.note}
        return _with_extra(out, self.extra)


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
        return _with_extra(out, self.extra)


@dataclass
class FeatureList:
    """A named, shareable set of SAE latents for one model (see the module docstring for the file format)."""

    name: str
    description: str
    model: str
    """Hugging Face model id, e.g. ``"google/gemma-2-2b"``."""
    saes: list[SaeEntry]
    created: str
    """ISO-8601 timestamp."""
    updated: str
    """ISO-8601 timestamp, refreshed by :func:`save_feature_list`."""
    format_version: int = FORMAT_VERSION
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
        return _with_extra(out, self.extra)

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


def _show(value: Any) -> str:
    """A short JSON-ish rendering of a value for an error message."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 160 else text[:157] + "..."


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Ctx:
    """Builds error messages of the form ``<source>: <json path> <problem>``."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, problem: str) -> FeatureListError:
        where = f"{path} " if path else ""
        return FeatureListError(f"{self.source}: {where}{problem}")

    def obj(self, value: Any, path: str) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path or "the top level", f"must be a JSON object, got {_type_name(value)}")
        return value

    def required(self, data: Mapping[str, Any], keys: Iterable[str], path: str) -> None:
        missing = [k for k in keys if k not in data]
        if missing:
            where = path or "top level"
            raise FeatureListError(
                f"{self.source}: {where}: missing required key{'s' if len(missing) > 1 else ''} "
                + ", ".join(f'"{k}"' for k in missing)
            )

    def string(self, value: Any, path: str, *, nonempty: bool = True, nullable: bool = False) -> str | None:
        if value is None and nullable:
            return None
        if not isinstance(value, str):
            kind = "a string or null" if nullable else "a string"
            raise self.fail(path, f"must be {kind}, got {_type_name(value)} {_show(value)}".rstrip())
        if nonempty and not value.strip():
            raise self.fail(path, "must not be empty")
        return value

    def integer(self, value: Any, path: str) -> int:
        if not _is_int(value):
            raise self.fail(path, f"must be an integer, got {_show(value)}")
        return value

    def timestamp(self, value: Any, path: str) -> str:
        text = self.string(value, path)
        assert text is not None
        try:
            datetime.fromisoformat(text)
        except ValueError:
            raise self.fail(
                path, f'must be an ISO-8601 timestamp like "2025-01-01T00:00:00+00:00", got {_show(value)}'
            ) from None
        return text


def _extra(data: Mapping[str, Any], known: Iterable[str]) -> dict[str, Any]:
    known_set = set(known)
    return {k: copy.deepcopy(v) for k, v in data.items() if k not in known_set}


def _parse_latent(value: Any, path: str, ctx: _Ctx) -> Latent:
    if _is_int(value):
        raise ctx.fail(path, f'must be an object like {{"id": {value}, "label": null, "note": null}}, got {value}')
    data = ctx.obj(value, path)
    ctx.required(data, ("id",), path)
    lat_id = ctx.integer(data["id"], f"{path}.id")
    if lat_id < 0:
        raise ctx.fail(f"{path}.id", f"must be >= 0, got {lat_id}")
    label = ctx.string(data.get("label"), f"{path}.label", nonempty=False, nullable=True)
    note = ctx.string(data.get("note"), f"{path}.note", nonempty=False, nullable=True)
    return Latent(id=lat_id, label=label, note=note, extra=_extra(data, _LATENT_KEYS))


def _parse_entry(value: Any, path: str, ctx: _Ctx) -> SaeEntry:
    data = ctx.obj(value, path)
    ctx.required(data, _ENTRY_REQUIRED, path)
    sae = ctx.string(data["sae"], f"{path}.sae")
    hook_name = ctx.string(data["hook_name"], f"{path}.hook_name")
    assert sae is not None and hook_name is not None
    layer = data["layer"]
    if not _is_int(layer) or layer < 0:
        raise ctx.fail(f"{path}.layer", f"must be a non-negative integer, got {_show(layer)}")
    m = _HOOK_LAYER_RE.match(hook_name)
    if m and int(m.group(1)) != layer:
        raise ctx.fail(
            f"{path}.layer", f"is {layer} but hook_name {_show(hook_name)} is in block {m.group(1)}; make them agree"
        )
    neuronpedia = data.get("neuronpedia")
    if neuronpedia is not None and (not isinstance(neuronpedia, str) or not _NEURONPEDIA_RE.match(neuronpedia)):
        raise ctx.fail(
            f"{path}.neuronpedia",
            f'must be null or "<modelId>/<source>" (e.g. "gemma-2-2b/12-gemmascope-res-16k"), got {_show(neuronpedia)}',
        )
    raw_latents = data["latents"]
    if not isinstance(raw_latents, list):
        raise ctx.fail(f"{path}.latents", f"must be a list, got {_type_name(raw_latents)}")
    width = sae_width(sae)
    latents: list[Latent] = []
    seen: dict[int, int] = {}
    for i, raw in enumerate(raw_latents):
        lpath = f"{path}.latents[{i}]"
        lat = _parse_latent(raw, lpath, ctx)
        if width is not None and lat.id >= width:
            raise ctx.fail(
                f"{lpath}.id",
                f"{lat.id} is out of range: SAE {_show(sae)} has {width} latents (ids 0 to {width - 1})",
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
        extra=_extra(data, _ENTRY_KEYS),
    )


def _parse_feature_list(
    data: Any, *, source: str, known_models: Iterable[str] | None, check_model: bool
) -> FeatureList:
    ctx = _Ctx(source)
    if not isinstance(data, dict):
        raise FeatureListError(f"{source}: the top level must be a JSON object, got {_type_name(data)}")
    if "format_version" in data:
        version = data["format_version"]
        if not _is_int(version) or version not in SUPPORTED_FORMAT_VERSIONS:
            supported = ", ".join(str(v) for v in SUPPORTED_FORMAT_VERSIONS)
            raise ctx.fail(
                "format_version",
                f"{_show(version)} is not supported; this version of unlearn_core reads format_version {supported}",
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
                f"{_show(model)} is not a known model; known models: {', '.join(sorted(known))}",
            )
    created = ctx.timestamp(data["created"], "created")
    updated = ctx.timestamp(data["updated"], "updated")
    raw_saes = data["saes"]
    if not isinstance(raw_saes, list):
        raise ctx.fail("saes", f"must be a list, got {_type_name(raw_saes)}")
    entries: list[SaeEntry] = []
    by_hook: dict[str, int] = {}
    by_sae: dict[str, int] = {}
    for i, raw in enumerate(raw_saes):
        entry = _parse_entry(raw, f"saes[{i}]", ctx)
        if entry.hook_name in by_hook:
            raise ctx.fail(
                f"saes[{i}].hook_name",
                f"{_show(entry.hook_name)} duplicates saes[{by_hook[entry.hook_name]}]; "
                "put all latents for one hook site in one entry",
            )
        if entry.sae in by_sae:
            raise ctx.fail(
                f"saes[{i}].sae",
                f"{_show(entry.sae)} duplicates saes[{by_sae[entry.sae]}]; put all latents for one SAE in one entry",
            )
        by_hook[entry.hook_name] = i
        by_sae[entry.sae] = i
        entries.append(entry)
    return FeatureList(
        name=name,
        description=description,
        model=model,
        saes=entries,
        created=created,
        updated=updated,
        format_version=data["format_version"],
        extra=_extra(data, _TOP_KEYS),
    )


# ----------------------------------------------------------------------------------------------------------------
# SAE widths


def _preset_widths() -> dict[str, int]:
    widths: dict[str, int] = {}
    for preset in presets.PRESETS.values():
        for fam in preset.sae_families:
            for layer in fam.layers:
                widths[fam.ref(layer)] = fam.width
    return widths


def _cfg_width(directory: Path) -> int | None:
    cfg = directory / "cfg.json"
    if not cfg.is_file():
        return None
    try:
        d_sae = json.loads(cfg.read_text(encoding="utf-8")).get("d_sae")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None
    return d_sae if _is_int(d_sae) and d_sae > 0 else None


def sae_width(ref: str) -> int | None:
    """The number of latents of the SAE ``ref`` when it is known without loading weights, else ``None``.

    Tried in order: (1) ``ref`` is a local directory (absolute, relative to the working directory, or relative to
    the project checkout) holding a sae_lens ``cfg.json`` -> its ``d_sae``; (2) ``ref`` is one of the presets' SAE
    family references -> the family's width; (3) ``ref`` contains ``width_16k`` / ``width_65k`` / ``width_262k`` /
    ``width_1m`` ... as a path or name component -> 16384 / 65536 / 262144 / 1048576 ("k" = 1024, "m" = 1024**2;
    such names round a power of two, so a power of two within 3% is preferred: 65k -> 65536, not 66560).
    """
    if not ref:
        return None
    candidates = [Path(ref).expanduser()]
    if not candidates[0].is_absolute():
        candidates.append(presets.REPO_ROOT / ref)
    for cand in candidates:
        try:
            if cand.is_dir():
                width = _cfg_width(cand)
                if width is not None:
                    return width
        except OSError:
            continue
    width = _preset_widths().get(ref)
    if width is not None:
        return width
    m = _WIDTH_RE.search(ref)
    if m:
        return _width_from_name(int(m.group(1)), m.group(2).lower())
    return None


def _width_from_name(number: int, unit: str) -> int | None:
    """``width_<number><unit>`` -> latents. Names round powers of two ("65k" = 65536, "262k" = 262144), so a
    power of two within 3% of ``number * 1024**unit`` is taken; otherwise the literal product."""
    value = number * _UNITS[unit]
    if value <= 0:
        return None
    if unit:
        nearest = 1 << round(math.log2(value))
        if abs(nearest - value) <= 0.03 * value:
            return nearest
    return value


def check_latents_fit(entry: SaeEntry, d_sae: int, *, source: str | None = None) -> None:
    """Check every latent id of ``entry`` is below ``d_sae`` (the loaded SAE's real width).

    Raises :class:`FeatureListError` listing the offending ids.
    """
    bad = [lat.id for lat in entry.latents if lat.id >= d_sae]
    if not bad:
        return
    shown = ", ".join(str(i) for i in bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
    prefix = f"{source}: " if source else ""
    raise FeatureListError(
        f"{prefix}SAE {_show(entry.sae)} ({entry.hook_name}) has {d_sae} latents (ids 0 to {d_sae - 1}), "
        f"but the feature list uses {len(bad)} id{'s' if len(bad) > 1 else ''} out of range: {shown}"
    )


# ----------------------------------------------------------------------------------------------------------------
# Files


def now_iso() -> str:
    """The current UTC time as an ISO-8601 string with seconds, e.g. ``"2025-01-01T00:00:00+00:00"``."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_feature_list(name: str, model: str, description: str = "") -> FeatureList:
    """An empty feature list for ``model`` (an HF model id), timestamped now."""
    stamp = now_iso()
    return FeatureList(name=name, description=description, model=model, saes=[], created=stamp, updated=stamp)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _read_json(path: Path, what: str = "feature list") -> Any:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FeatureListError(f"{path}: {what} file not found") from None
    except IsADirectoryError:
        raise FeatureListError(f"{path}: is a directory, not a {what} file") from None
    except OSError as exc:
        raise FeatureListError(f"{path}: cannot read {what} file: {exc.strerror or exc}") from None
    return _parse_json_bytes(raw, str(path), what)


def _parse_json_bytes(raw: bytes, path: str, what: str = "feature list") -> Any:
    if b"\x00" in raw[:65536]:
        raise FeatureListError(f"{path}: looks like a binary file, not a JSON {what}")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FeatureListError(
            f"{path}: not a UTF-8 text file (invalid byte at offset {exc.start}); save it as UTF-8 JSON"
        ) from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise FeatureListError(f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except ValueError as exc:
        raise FeatureListError(f"{path}: malformed JSON: {exc}") from None
    except RecursionError:
        raise FeatureListError(f"{path}: malformed JSON: nested too deeply") from None


def load_feature_list(path: str | os.PathLike[str], *, check_model: bool = True) -> FeatureList:
    """Read and validate a feature-list file; every problem is a :class:`FeatureListError`."""
    p = Path(path)
    return FeatureList.from_dict(_read_json(p), source=str(path), check_model=check_model)


def feature_list_json(fl: FeatureList) -> str:
    """The exact text :func:`save_feature_list` writes for ``fl`` (JSON, indent 1, trailing newline)."""
    try:
        return json.dumps(fl.to_dict(), indent=1, ensure_ascii=False, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise FeatureListError(f"feature list {fl.name!r} cannot be written as JSON: {exc}") from None


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_feature_list(
    fl: FeatureList,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    check_model: bool = True,
    touch: bool = True,
) -> Path:
    """Validate ``fl`` and write it to ``path`` atomically; returns the path written.

    ``updated`` is set to now (unless ``touch=False``; ``fl.updated`` changes only once the write succeeded).
    The text goes to a temporary file in the same directory, is fsynced, then moved into place, so a crash
    never leaves a half-written file and the temporary file is removed on failure. An existing file is never
    replaced unless ``overwrite=True``. Raises :class:`FeatureListError` on any problem.
    """
    target = Path(path)
    updated = now_iso() if touch else fl.updated
    snapshot = copy.copy(fl)
    snapshot.updated = updated
    FeatureList.from_dict(snapshot.to_dict(), source=str(path), check_model=check_model)
    text = feature_list_json(snapshot)

    if target.is_dir():
        raise FeatureListError(f"{path}: is a directory; give a file name ending in .json")
    directory = target.parent
    if not directory.is_dir():
        raise FeatureListError(f"{path}: directory {str(directory)!r} does not exist")
    if target.exists() and not overwrite:
        raise FeatureListError(f"{path}: file already exists; choose another name or allow overwriting")

    tmp = directory / f".{target.name}.{secrets.token_hex(6)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if overwrite:
            os.replace(tmp, target)
        else:
            # os.link refuses to clobber a file created since the check above; fall back where links are unsupported.
            try:
                os.link(tmp, target)
            except FileExistsError:
                raise FeatureListError(
                    f"{path}: file already exists; choose another name or allow overwriting"
                ) from None
            except OSError:
                if target.exists():
                    raise FeatureListError(
                        f"{path}: file already exists; choose another name or allow overwriting"
                    ) from None
                os.replace(tmp, target)
            tmp.unlink(missing_ok=True)
    except FeatureListError:
        tmp.unlink(missing_ok=True)
        raise
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise FeatureListError(f"{path}: cannot write feature list: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(directory)
    fl.updated = updated
    return target


def list_feature_lists(directory: str | os.PathLike[str]) -> list[Path]:
    """The ``*.json`` files directly in ``directory``, sorted by name (``[]`` if the directory does not exist)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(p for p in d.glob("*.json") if p.is_file() and not p.name.startswith("."))


# ----------------------------------------------------------------------------------------------------------------
# The reference study

REFERENCE_TIMESTAMP = "2025-01-01T00:00:00+00:00"
"""Fixed ``created``/``updated`` of the reference lists, so regenerating them is byte-identical."""


def _reference_description(layers: list[int], counts: dict[int, int], origin: str, study_desc: str) -> str:
    layer_text = ", ".join(f"layer {lay} ({counts[lay]} latents)" for lay in layers)
    site = f"blocks.{layers[0]}" if len(layers) == 1 else "blocks.{L}"
    return (
        f"Reference study (the seed article), {layer_text}. Study notes: {study_desc.strip()} "
        f"Origin: {origin}. "
        "Labels are empty because the study's labels were placeholders. "
        f"The study hooked {site}.hook_resid_pre and replaced the activation with the SAE reconstruction; "
        f"this list records the SAEs' trained site {site}.hook_resid_post. "
        "To reproduce the study exactly, use --mode replace --hook-site resid_pre."
    )


def from_reference_study(path: str | os.PathLike[str]) -> list[FeatureList]:
    """Convert the reference study's latent file (``reference_feature_lists.json``) into feature lists.

    Returns one list per layer (sorted: 0, 12, 25) and then one list with all layers together. Entries use the
    Gemma Scope SAEs at their trained hook site ``blocks.{L}.hook_resid_post``; timestamps are fixed
    (:data:`REFERENCE_TIMESTAMP`) so the output is reproducible. Raises :class:`FeatureListError` if the file does
    not have the expected shape.
    """
    p = Path(path)
    data = _read_json(p, what="reference study")
    try:
        model = data["model"]
        release = data["sae_release"]
        sae_ids = {int(k): v for k, v in data["sae_ids"].items()}
        np_model = data["neuronpedia"]["modelId"]
        np_sources = {int(k): v for k, v in data["neuronpedia"]["sources"].items()}
        latents = {int(k): list(v) for k, v in data["latents"].items()}
        origin = str(data.get("origin", "the reference study"))
        study_desc = str(data.get("description", ""))
        counts_claimed = {int(k): v for k, v in data.get("counts", {}).items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise FeatureListError(f"{path}: not a reference-study latent file ({type(exc).__name__}: {exc})") from None

    layers = sorted(latents)
    counts = {lay: len(latents[lay]) for lay in layers}
    for lay, claimed in counts_claimed.items():
        if counts.get(lay) != claimed:
            raise FeatureListError(f"{path}: layer {lay} lists {counts.get(lay)} latents but counts says {claimed}")

    def entry(lay: int) -> SaeEntry:
        try:
            sae_ref = f"{release}/{sae_ids[lay]}"
            neuronpedia = f"{np_model}/{np_sources[lay]}" if lay in np_sources else None
        except KeyError:
            raise FeatureListError(f"{path}: no sae_id for layer {lay}") from None
        return SaeEntry(
            sae=sae_ref,
            hook_name=f"blocks.{lay}.hook_resid_post",
            layer=lay,
            neuronpedia=neuronpedia,
            latents=[Latent(id=i) for i in latents[lay]],
        )

    def make(lays: list[int], name: str) -> FeatureList:
        fl = FeatureList(
            name=name,
            description=_reference_description(lays, counts, origin, study_desc),
            model=model,
            saes=[entry(lay) for lay in lays],
            created=REFERENCE_TIMESTAMP,
            updated=REFERENCE_TIMESTAMP,
        )
        fl.validate(source=str(path))
        return fl

    result = [make([lay], f"Reference study - Gemma 2 2B layer {lay} ({counts[lay]} latents)") for lay in layers]
    total = sum(counts.values())
    result.append(make(layers, f"Reference study - Gemma 2 2B layers {', '.join(map(str, layers))} ({total} latents)"))
    return result


# ----------------------------------------------------------------------------------------------------------------
# Editing (what the app's Explore and Forget set pages do to the current list)

MAX_BULK_IDS = 100_000
_ID_TOKEN = re.compile(r"^(\d+)(?:\s*-\s*(\d+))?$")


def feature_list_from_bytes(data: bytes, source: str, *, check_model: bool = True) -> FeatureList:
    """Parse and validate an uploaded feature list; every problem (binary, not UTF-8, bad JSON, bad schema) is a
    :class:`FeatureListError` naming ``source``."""
    return FeatureList.from_dict(_parse_json_bytes(data, source), source=source, check_model=check_model)


def check_model_matches(fl: FeatureList, model_id: str, source: str | None = None) -> None:
    """Refuse a list made for another model, naming both models."""
    if fl.model != model_id:
        raise FeatureListError(
            f"{source or fl.name!r} is a feature list for {fl.model}, but the current model is {model_id}; "
            "choose a model preset for that model first"
        )


def parse_latent_ids(text: str, width: int | None = None) -> list[int]:
    """Latent ids typed by a user: numbers and ranges separated by commas or spaces (``"12, 40-45 3000"``).

    Returns them de-duplicated in the order given; raises :class:`InputError` on anything else, a reversed or huge
    range, or (with ``width``) an id outside ``0..width-1``.
    """
    out: dict[int, None] = {}
    tokens = [t for t in re.split(r"[,;\s]+", re.sub(r"\s*-\s*", "-", text)) if t]
    if not tokens:
        raise InputError("enter latent ids, e.g. 12, 40-45")
    for tok in tokens:
        match = _ID_TOKEN.match(tok.strip())
        if match is None:
            raise InputError(f"{tok!r} is not a latent id or range (write e.g. 12 or 40-45)")
        lo = int(match.group(1))
        hi = int(match.group(2)) if match.group(2) is not None else lo
        if hi < lo:
            raise InputError(f"range {tok!r} runs backwards")
        if hi - lo + 1 + len(out) > MAX_BULK_IDS:
            raise InputError(f"at most {MAX_BULK_IDS:,} ids at once")
        for i in range(lo, hi + 1):
            out[i] = None
    ids = list(out)
    if width is not None:
        bad = [i for i in ids if i >= width]
        if bad:
            raise InputError(f"latent {bad[0]} is out of range: this SAE has latents 0..{width - 1}")
    return ids


def add_latents(
    fl: FeatureList,
    *,
    sae: str,
    hook_name: str,
    layer: int,
    neuronpedia: str | None,
    ids: Iterable[int],
    labels: Mapping[int, str | None] | None = None,
    notes: Mapping[int, str | None] | None = None,
    width: int | None = None,
) -> list[int]:
    """Add latents of one SAE to ``fl`` (creating its entry if needed); ids already there are left as they are.

    Returns the ids newly added. With ``width``, refuses (:class:`FeatureListError`) ids outside the SAE before
    changing anything.
    """
    ids = list(dict.fromkeys(int(i) for i in ids))
    if width is not None:
        bad = [i for i in ids if not 0 <= i < width]
        if bad:
            raise FeatureListError(f"latent {bad[0]} is out of range: {sae} has latents 0..{width - 1}")
    entry = next((e for e in fl.saes if e.sae == sae and e.hook_name == hook_name), None)
    if entry is None:
        entry = SaeEntry(sae=sae, hook_name=hook_name, layer=layer, neuronpedia=neuronpedia, latents=[])
        fl.saes.append(entry)
        fl.saes.sort(key=lambda e: (e.layer, e.hook_name, e.sae))
    have = set(entry.latent_ids)
    added = [i for i in ids if i not in have]
    for i in added:
        entry.latents.append(Latent(id=i, label=(labels or {}).get(i), note=(notes or {}).get(i)))
    return added


def remove_latents(fl: FeatureList, *, sae: str, ids: Iterable[int], hook_name: str | None = None) -> list[int]:
    """Remove latents of one SAE from ``fl``; an entry left with no latents is dropped. Returns the ids removed."""
    drop = set(int(i) for i in ids)
    removed: list[int] = []
    for entry in fl.saes:
        if entry.sae != sae or (hook_name is not None and entry.hook_name != hook_name):
            continue
        removed += [lat.id for lat in entry.latents if lat.id in drop]
        entry.latents = [lat for lat in entry.latents if lat.id not in drop]
    fl.saes = [e for e in fl.saes if e.latents]
    return removed


def content_signature(fl: FeatureList) -> str:
    """The list's content without its ``updated`` stamp: equal signatures mean nothing was edited."""
    data = fl.to_dict()
    data.pop("updated", None)
    return json.dumps(data, sort_keys=True, ensure_ascii=False)
