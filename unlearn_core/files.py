"""Atomic file writes: a temporary file in the same folder, then one rename, so a crash never leaves half a file."""

from __future__ import annotations

import errno
import json
import os
import secrets
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | Path, text: str, *, durable: bool = False, exclusive: bool = False) -> Path:
    """Write ``text`` (UTF-8, ``\\n`` line ends) to ``path`` atomically, creating the folder; returns ``path``.

    The text goes to a temporary file next to ``path`` (created with the usual permissions, like ``open``), which
    is then moved into place; it never outlives a failure. ``durable=True`` also fsyncs the file before the move and
    the folder after it, so the write survives a power cut. ``exclusive=True`` never replaces an existing file:
    :class:`FileExistsError` if ``path`` exists, even if another process created it while this one was writing
    (the file is hard-linked into place, which refuses to clobber; where links are unsupported, checked just
    before a rename). Other failures raise :class:`OSError`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if exclusive and os.path.lexists(path):
        raise FileExistsError(errno.EEXIST, "file already exists", str(path))
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        if exclusive:
            _link_into_place(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        _fsync_dir(path.parent)
    return path


def write_json_atomic(path: str | Path, data: Any, indent: int = 2) -> Path:
    """``data`` as JSON (plus a final newline), written atomically."""
    return write_text_atomic(path, json.dumps(data, indent=indent) + "\n")


def _link_into_place(tmp: Path, path: Path) -> None:
    """Give ``tmp``'s file the name ``path`` unless that name exists (the caller removes ``tmp``)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links on this file system (some network and FAT drives)
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "file already exists", str(path)) from None
        os.replace(tmp, path)


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX only; best effort)."""
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
