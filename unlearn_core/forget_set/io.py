"""Reading and writing feature-list files: every problem is a :class:`~unlearn_core.errors.FeatureListError`."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

from unlearn_core.errors import FeatureListError
from unlearn_core.files import write_text_atomic
from unlearn_core.forget_set.schema import FeatureList, now_iso


def _allow_constant(name: str) -> float:
    """``NaN``/``Infinity`` literals are read, then refused with their JSON path by the schema's finite-number check."""
    return float(name.lower().replace("infinity", "inf"))


def parse_json_bytes(raw: bytes, source: str, what: str = "feature list") -> Any:
    """Decode a JSON file's bytes (UTF-8, a BOM allowed); binary data or bad JSON is a :class:`FeatureListError`."""
    if b"\x00" in raw[:65536]:
        raise FeatureListError(f"{source}: looks like a binary file, not a JSON {what}")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FeatureListError(
            f"{source}: not a UTF-8 text file (invalid byte at offset {exc.start}); save it as UTF-8 JSON"
        ) from None
    try:
        return json.loads(text, parse_constant=_allow_constant)
    except json.JSONDecodeError as exc:
        raise FeatureListError(f"{source}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except ValueError as exc:
        raise FeatureListError(f"{source}: malformed JSON: {exc}") from None
    except RecursionError:
        raise FeatureListError(f"{source}: malformed JSON: nested too deeply") from None


def read_json_file(path: Path, what: str = "feature list") -> Any:
    """The parsed JSON of the file at ``path``; a missing, unreadable or malformed file is a :class:`FeatureListError`."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FeatureListError(f"{path}: {what} file not found") from None
    except IsADirectoryError:
        raise FeatureListError(f"{path}: is a directory, not a {what} file") from None
    except OSError as exc:
        raise FeatureListError(f"{path}: cannot read {what} file: {exc.strerror or exc}") from None
    return parse_json_bytes(raw, str(path), what)


def load_feature_list(path: str | os.PathLike[str], *, check_model: bool = True) -> FeatureList:
    """Read and validate a feature-list file; every problem is a :class:`FeatureListError`."""
    return FeatureList.from_dict(read_json_file(Path(path)), source=str(path), check_model=check_model)


def feature_list_from_bytes(data: bytes, source: str, *, check_model: bool = True) -> FeatureList:
    """Parse and validate an uploaded feature list; every problem (binary, not UTF-8, bad JSON, bad schema) is a
    :class:`FeatureListError` naming ``source``."""
    return FeatureList.from_dict(parse_json_bytes(data, source), source=source, check_model=check_model)


def feature_list_json(fl: FeatureList) -> str:
    """The exact text :func:`save_feature_list` writes for ``fl`` (JSON, indent 1, trailing newline)."""
    try:
        return json.dumps(fl.to_dict(), indent=1, ensure_ascii=False, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise FeatureListError(f"feature list {fl.name!r} cannot be written as JSON: {exc}") from None


def save_feature_list(
    fl: FeatureList,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    check_model: bool = True,
    touch: bool = True,
) -> Path:
    """Validate ``fl`` and write it to ``path`` atomically and durably; returns the path written.

    ``updated`` is set to now (unless ``touch=False``; ``fl.updated`` changes only once the write succeeded).
    The write goes through :func:`unlearn_core.files.write_text_atomic` (a temporary file, fsynced, then moved into
    place), so a crash never leaves a half-written file. An existing file is never replaced unless
    ``overwrite=True``, even one created by another program meanwhile. Raises :class:`FeatureListError` on any problem.
    """
    target = Path(path)
    updated = now_iso() if touch else fl.updated
    snapshot = copy.copy(fl)
    snapshot.updated = updated
    FeatureList.from_dict(snapshot.to_dict(), source=str(path), check_model=check_model)
    text = feature_list_json(snapshot)

    if target.is_dir():
        raise FeatureListError(f"{path}: is a directory; give a file name ending in .json")
    if not target.parent.is_dir():
        raise FeatureListError(f"{path}: directory {str(target.parent)!r} does not exist")
    try:
        write_text_atomic(target, text, durable=True, exclusive=not overwrite)
    except FileExistsError:
        raise FeatureListError(f"{path}: file already exists; choose another name or allow overwriting") from None
    except OSError as exc:
        raise FeatureListError(f"{path}: cannot write feature list: {exc.strerror or exc}") from None
    fl.updated = updated
    return target


def list_feature_lists(directory: str | os.PathLike[str]) -> list[Path]:
    """The ``*.json`` files directly in ``directory``, sorted by name (``[]`` if the directory does not exist)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(p for p in d.glob("*.json") if p.is_file() and not p.name.startswith("."))
