"""Drafts: the session's forget set with its unsaved edits, autosaved so a refresh or a server restart loses nothing.

Each browser session has a draft id: 32 hex digits kept in the page's URL (``?draft=...``), so a refreshed tab, or
the same URL after the server restarted, finds it again. At the end of every run (:func:`autosave`, called by the
shell's frame) a forget set with unsaved changes is written to ``<drafts dir>/<id>.json`` atomically (a temporary
file, then one rename: :func:`unlearn_core.files.write_json_atomic`); once nothing is unsaved (saved, or discarded)
the draft is removed. Drafts are never written over the user's own files: they live in their own folder
(``$UNLEARN_DRAFTS_DIR``, default ``<cache dir>/drafts``), and restoring one only makes it the current forget set,
still unsaved, remembering which file it came from so Save asks before overwriting a file changed since.

A new session whose id has a draft is *offered* it (:func:`pending`): the Forget set page shows "Restore the unsaved
draft of <name> (N latents, saved <time>)" with Restore and Discard, and the sidebar says a draft is waiting. Until
the user chooses, the session does not autosave, so the draft cannot be overwritten by the new, empty session.
Drafts older than :data:`MAX_AGE_DAYS` days are pruned when a session starts. A draft that cannot be read (cut short,
edited, another format) is removed, never trusted.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from unlearn_core.errors import UnlearnError
from unlearn_core.files import write_json_atomic
from unlearn_core.forget_set import FeatureList, content_signature
from unlearn_core.models.loading import cache_dir

from . import state

log = logging.getLogger(__name__)
DRAFTS_ENV = "UNLEARN_DRAFTS_DIR"
QUERY_KEY = "draft"
MAX_AGE_DAYS = 7
DRAFT_FORMAT = "unlearn-app-draft"
_ID = re.compile(r"[0-9a-f]{32}")


def drafts_dir() -> Path:
    """Where drafts are kept: ``$UNLEARN_DRAFTS_DIR``, else ``drafts/`` in the package's cache folder."""
    configured = os.environ.get(DRAFTS_ENV)
    return Path(configured).expanduser() if configured else cache_dir() / "drafts"


@dataclass(frozen=True)
class Draft:
    """A saved draft: the forget set and where it stood relative to its file."""

    feature_list: FeatureList
    saved_at: float
    """``time.time()`` of the write."""
    source_path: Path | None
    saved_signature: str | None
    file_digest: str | None

    def describe(self, now: float | None = None) -> str:
        """``<name> (N latents, saved <how long ago>)``; the name is foreign text (escape it for Markdown)."""
        return f"{self.feature_list.name} ({self.feature_list.total_latents} latents, saved {ago(self.saved_at, now)})"


def ago(when: float, now: float | None = None) -> str:
    """How long ago ``when`` was, in words (the visitor's time zone is unknown to the server)."""
    seconds = max(0.0, (time.time() if now is None else now) - when)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "just now"


def _path(draft_id: str) -> Path:
    if not _ID.fullmatch(draft_id):  # the id comes from the URL: never a path
        raise ValueError(f"not a draft id: {draft_id!r}")
    return drafts_dir() / f"{draft_id}.json"


def draft_id() -> str:
    """This session's draft id (from the URL on the session's first run, else a new one), kept in the URL."""
    s = state.session()
    if s.draft_id is None:
        given = st.query_params.get(QUERY_KEY)
        s.draft_id = given if isinstance(given, str) and _ID.fullmatch(given) else secrets.token_hex(16)
    if st.query_params.get(QUERY_KEY) != s.draft_id:
        st.query_params[QUERY_KEY] = s.draft_id  # page switches clear the query string
    return s.draft_id


def begin_run() -> None:
    """At the start of every run: make sure the session has its id; on its first run, prune old drafts and look for
    this id's draft (offered until restored or discarded)."""
    s = state.session()
    ident = draft_id()
    if s.draft_checked:
        return
    s.draft_checked = True
    prune()
    s.draft_pending = read_draft(ident)


def read_draft(ident: str) -> Draft | None:
    """The draft saved under ``ident``, or None (none, or unreadable: an unreadable one is removed)."""
    path = _path(ident)
    if not path.is_file():
        return None
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != DRAFT_FORMAT:
            raise ValueError("not an app draft")
        fl = FeatureList.from_dict(data["feature_list"], source=f"draft {ident}")
        source = data.get("source_path")
        return Draft(fl, float(data["saved_at"]), Path(source) if isinstance(source, str) else None,
                     _str_or_none(data.get("saved_signature")), _str_or_none(data.get("file_digest")))
    except (OSError, ValueError, KeyError, TypeError, UnlearnError) as exc:
        log.warning("ignoring the unreadable draft %s: %s", path, exc)
        path.unlink(missing_ok=True)
        return None


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def pending() -> Draft | None:
    """The draft this session was offered and has not restored or discarded yet."""
    return state.session().draft_pending


def restore() -> None:
    """Make the pending draft the current forget set (unsaved; its file, if any, is remembered, never written)."""
    s = state.session()
    draft = s.draft_pending
    if draft is None:
        return
    source = draft.source_path if draft.source_path is not None and draft.source_path.is_file() else None
    state.restore_forget_set(draft.feature_list, source, draft.saved_signature, draft.file_digest)
    s.draft_pending = None
    s.draft_written = None  # written again at the end of this run, under this session's id
    state.flash(f"Restored the unsaved draft ({draft.feature_list.total_latents} latents). It is not saved yet: "
                "Save or Export it.")


def discard() -> None:
    """Forget the pending draft and delete its file."""
    s = state.session()
    s.draft_pending = None
    if s.draft_id is not None:
        _path(s.draft_id).unlink(missing_ok=True)
    s.draft_written = None


def autosave() -> None:
    """At the end of every run: write the forget set when it has unsaved changes (and changed since the last write),
    remove the draft once nothing is unsaved. Never raises: a draft that cannot be written only loses the draft."""
    s = state.session()
    if s.draft_id is None or s.draft_pending is not None or s.forget_set is None:
        return
    try:
        path = _path(s.draft_id)
        if not state.has_unsaved_changes():
            if s.draft_written is not None:
                path.unlink(missing_ok=True)
                s.draft_written = None
            return
        fl = s.forget_set
        mark = json.dumps([content_signature(fl), str(s.forget_set_path), s.saved_signature])
        if mark == s.draft_written and path.is_file():
            return
        write_json_atomic(path, {
            "format": DRAFT_FORMAT, "version": 1, "saved_at": time.time(),
            "source_path": str(s.forget_set_path) if s.forget_set_path else None,
            "saved_signature": s.saved_signature, "file_digest": s.file_digest, "feature_list": fl.to_dict(),
        }, indent=1)
        s.draft_written = mark
    except (OSError, ValueError, TypeError, UnlearnError) as exc:
        log.warning("could not autosave the draft of session %s: %s", s.draft_id, exc)


def prune(now: float | None = None) -> int:
    """Remove drafts older than :data:`MAX_AGE_DAYS` (and temporary files of writes cut short); how many."""
    folder = drafts_dir()
    if not folder.is_dir():
        return 0
    limit = (time.time() if now is None else now) - MAX_AGE_DAYS * 86400
    removed = 0
    for path in folder.iterdir():
        stale_tmp = path.name.startswith(".") and path.name.endswith(".tmp")
        try:
            old = path.stat().st_mtime < (limit if not stale_tmp else (time.time() if now is None else now) - 3600)
            if path.is_file() and (path.suffix == ".json" or stale_tmp) and old:
                path.unlink()
                removed += 1
        except OSError:
            continue
    return removed
