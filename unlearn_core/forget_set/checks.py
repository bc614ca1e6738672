"""Validation helpers shared by the feature-list parsers: error messages of the form ``<file>: <JSON path> <problem>``.

Internal to :mod:`unlearn_core.forget_set`; the format itself is described in docs/feature-lists.md.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from unlearn_core.errors import FeatureListError

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def show(value: Any) -> str:
    """A short JSON-ish rendering of a value for an error message."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 160 else text[:157] + "..."


def type_name(value: Any) -> str:
    """``"a string"``, ``"a list"``, ``"null"`` ...: the JSON kind of ``value``, for error messages."""
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


def is_int(value: Any) -> bool:
    """An integer that is not a boolean."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or float that is not a boolean."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def join_path(path: str, key: Any) -> str:
    """``saes[0]`` + ``latents`` -> ``saes[0].latents``; odd keys are quoted: ``x["a b"]``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    key = str(key)
    if not _IDENTIFIER.match(key):
        return f"{path}[{json.dumps(key, ensure_ascii=False)}]"
    return f"{path}.{key}" if path else key


def extra_keys(data: Mapping[str, Any], known: Iterable[str], keep_nulls: Iterable[str] = ()) -> dict[str, Any]:
    """Deep copies of the keys of ``data`` that are not in ``known``, in file order, plus the ``null`` of each key
    of ``keep_nulls`` (optional typed fields) the file set to ``null``: see :func:`put_optional`."""
    known_set = set(known)
    nulls = set(keep_nulls)
    return {k: copy.deepcopy(v) for k, v in data.items() if k not in known_set or (k in nulls and v is None)}


def with_extra(known: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Known keys first, then copies of the unknown keys a file carried (never overriding a known one)."""
    for key, value in extra.items():
        known.setdefault(key, copy.deepcopy(value))
    return known


def put_optional(out: dict[str, Any], key: str, value: Any, extra: Mapping[str, Any]) -> None:
    """Write an optional typed value at its place: ``value`` if set, else a ``null`` the file had under ``key``.

    A typed field that the file set to ``null`` is ``None`` in Python and its ``null`` is kept in ``extra``, so
    the key is written back where it was.
    """
    if value is not None:
        out[key] = value
    elif key in extra:
        out[key] = copy.deepcopy(extra[key])


def first_non_finite(data: Any) -> tuple[str, float] | None:
    """The JSON path and value of the first NaN or infinite float anywhere in ``data`` (in document order)."""
    stack: list[tuple[str, Any]] = [("", data)]
    seen: set[int] = set()
    while stack:
        path, value = stack.pop()
        if isinstance(value, float):
            if not math.isfinite(value):
                return path, value
            continue
        if isinstance(value, (dict, list, tuple)):
            if id(value) in seen:
                continue  # a structure built in Python that contains itself: checked once
            seen.add(id(value))
            items = value.items() if isinstance(value, dict) else enumerate(value)
            stack.extend(reversed([(join_path(path, k), v) for k, v in items]))
    return None


class Checker:
    """Builds and raises :class:`FeatureListError` messages of the form ``<source>: <json path> <problem>``."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, problem: str) -> FeatureListError:
        where = f"{path} " if path else ""
        return FeatureListError(f"{self.source}: {where}{problem}")

    def finite(self, data: Any) -> None:
        """Refuse NaN and infinities anywhere (``1e999`` reads as infinity), naming the JSON path."""
        found = first_non_finite(data)
        if found is None:
            return
        path, value = found
        literal = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        hint = " (a number too large for a float, such as 1e999, reads as Infinity)" if math.isinf(value) else ""
        raise self.fail(path or "the top level", f"must be a finite number: {literal} is not valid JSON{hint}")

    def obj(self, value: Any, path: str) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path or "the top level", f"must be a JSON object, got {type_name(value)}")
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
            raise self.fail(path, f"must be {kind}, got {type_name(value)} {show(value)}".rstrip())
        if nonempty and not value.strip():
            raise self.fail(path, "must not be empty")
        return value

    def integer(self, value: Any, path: str, *, minimum: int | None = None) -> int:
        if not is_int(value):
            raise self.fail(path, f"must be an integer, got {show(value)}")
        if minimum is not None and value < minimum:
            raise self.fail(path, f"must be >= {minimum}, got {value}")
        return value

    def number(self, value: Any, path: str, *, low: float | None = None, high: float | None = None,
               low_open: bool = False) -> float:
        """A finite number (int or float, kept as given), optionally within ``[low, high]`` (``(low, high]``)."""
        if not is_number(value) or not math.isfinite(value):
            raise self.fail(path, f"must be a finite number, got {show(value)}")
        too_low = low is not None and (value <= low if low_open else value < low)
        if too_low or (high is not None and value > high):
            if high is None:
                wanted = f"{'>' if low_open else '>='} {low:g}"
            elif low is None:
                wanted = f"<= {high:g}"
            else:
                wanted = f"in {'(' if low_open else '['}{low:g}, {high:g}]"
            raise self.fail(path, f"must be {wanted}, got {show(value)}")
        return value

    def timestamp(self, value: Any, path: str) -> str:
        text = self.string(value, path)
        assert text is not None
        try:
            datetime.fromisoformat(text)
        except ValueError:
            raise self.fail(
                path, f'must be an ISO-8601 timestamp like "2025-01-01T00:00:00+00:00", got {show(value)}'
            ) from None
        return text
