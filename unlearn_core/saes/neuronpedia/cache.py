"""The Neuronpedia client's cache: answers in memory, and one JSON file per site and Neuronpedia id on disk.

Only successful answers are kept (including "this latent has no explanation"). Files are named after the site
(the client's base URL) as well as the id, so two sites never share answers. They are written atomically
(a temporary file in the same folder, then a rename) and merged with whatever another process wrote meanwhile;
a corrupt file, or a corrupt entry in one, is ignored and rewritten on the next success. Temporary files of a
write killed over an hour ago are removed when the cache is opened.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from unlearn_core.files import write_json_atomic
from unlearn_core.models.offline import remove_stale_temp_files
from unlearn_core.saes.neuronpedia.explanation import Parsed, number

log = logging.getLogger("unlearn_core.saes.neuronpedia")

Entry = dict[str, Any]
"""``{"description", "frac_nonzero", "max_activation", "fetched_at"}``."""


class ExplanationCache:
    """Thread-safe cache of one site's parsed answers, keyed by Neuronpedia id and latent index."""

    def __init__(self, folder: Path, site: str) -> None:
        self.folder = Path(folder)
        self.site = site.rstrip("/")
        self._lock = threading.RLock()
        self._memory: dict[str, dict[int, Entry]] = {}
        remove_stale_temp_files(self.folder, (".*.tmp",))

    def path(self, neuronpedia_id: str) -> Path:
        """The file of one id: readable, file-system-safe names of the site and the id, plus a hash of both."""
        host = _safe(urlsplit(self.site).netloc or self.site)
        safe = _safe(neuronpedia_id.replace("/", "__"))
        # the hash keeps sites and ids apart that the substitution would merge (e.g. "a_/b" and "a/_b")
        digest = hashlib.sha256(f"{self.site}\n{neuronpedia_id}".encode()).hexdigest()[:10]
        return self.folder / f"{host}__{safe}-{digest}.json"

    def get(self, neuronpedia_id: str, index: int) -> Parsed | None:
        """The cached ``(description, frac_nonzero, max_activation)``, or None if this latent is not cached."""
        with self._lock:
            entry = self._entries(neuronpedia_id).get(index)
        if entry is None:
            return None
        return entry["description"], entry["frac_nonzero"], entry["max_activation"]

    def put(self, neuronpedia_id: str, index: int, parsed: Parsed) -> None:
        """Remember one answer in memory (see :meth:`flush` for the disk)."""
        description, frac_nonzero, max_activation = parsed
        entry = {
            "description": description,
            "frac_nonzero": frac_nonzero,
            "max_activation": max_activation,
            "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        with self._lock:
            self._entries(neuronpedia_id)[index] = entry

    def flush(self, neuronpedia_id: str) -> None:
        """Write one id's entries to disk, merged with whatever another process wrote there meanwhile."""
        with self._lock:
            merged = {**self._read_disk(neuronpedia_id), **self._entries(neuronpedia_id)}
            if not merged:
                return
            path = self.path(neuronpedia_id)
            try:
                write_json_atomic(path, {str(i): merged[i] for i in sorted(merged)})
            except OSError as exc:
                log.warning("could not write the Neuronpedia cache %s (%s); keeping it in memory", path, exc.strerror)

    def _entries(self, neuronpedia_id: str) -> dict[int, Entry]:
        """The in-memory entries of one id, loaded from disk on first use. Call with the lock held."""
        entries = self._memory.get(neuronpedia_id)
        if entries is None:
            entries = self._memory[neuronpedia_id] = self._read_disk(neuronpedia_id)
        return entries

    def _read_disk(self, neuronpedia_id: str) -> dict[int, Entry]:
        path = self.path(neuronpedia_id)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:  # ValueError covers bad JSON and bad UTF-8
            log.warning("ignoring unreadable Neuronpedia cache %s (%s)", path, type(exc).__name__)
            return {}
        if not isinstance(raw, dict):
            log.warning("ignoring malformed Neuronpedia cache %s", path)
            return {}
        entries: dict[int, Entry] = {}
        for key, value in raw.items():
            entry = _valid_entry(value)
            if entry is not None and isinstance(key, str) and key.isdigit():
                entries[int(key)] = entry
        return entries


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def _valid_entry(value: object) -> Entry | None:
    """A cache entry with the expected fields, or None for anything else (skipped, not fatal)."""
    if not isinstance(value, dict):
        return None
    description = value.get("description")
    if description is not None and not isinstance(description, str):
        return None
    try:
        frac_nonzero, max_activation = number(value.get("frac_nonzero")), number(value.get("max_activation"))
    except ValueError:
        return None
    fetched_at = value.get("fetched_at")
    return {
        "description": description,
        "frac_nonzero": frac_nonzero,
        "max_activation": max_activation,
        "fetched_at": fetched_at if isinstance(fetched_at, str) else None,
    }
