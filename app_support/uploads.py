"""Uploaded files: size-checked, then decoded once per file content and session.

Streamlit hands a page the uploaded bytes again on every rerun (each click, each widget change). Decoding them
(UTF-8 checks, paragraph splitting, JSON parsing, validation) on every rerun costs time on every interaction, and a
big upload costs it on *every* visitor's interaction through the shared process. :func:`decoded` checks the file's
size against :data:`MAX_UPLOAD_BYTES` for its kind (the server's ``maxUploadSize`` bounds only the transfer, and
is the same for every kind), then keeps the decoded value, or the error message, in the session under the digest
of the bytes: the same content is decoded once, a changed file again.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import streamlit as st

from unlearn_core.data.texts import MAX_FILE_BYTES
from unlearn_core.errors import InputError, UnlearnError

T = TypeVar("T")
MB = 2**20
MAX_UPLOAD_BYTES: dict[str, int] = {
    "text": MAX_FILE_BYTES,  # a book, or a corpus of them
    "probes": 50 * MB,
    "feature list": 20 * MB,  # a list of every latent of several 1M-latent SAEs stays well below this
    "sweep": 20 * MB,
}
"""The largest file accepted per kind of upload."""
CACHE_KEY = "_unlearn_uploads"
MAX_CACHED = 16
"""Decoded uploads kept per session (least recently used dropped first)."""


class Upload(Protocol):
    """What the pages get from ``st.file_uploader`` (``UploadedFile``)."""

    name: str
    size: int

    def getvalue(self) -> bytes: ...


def check_size(upload: Upload, kind: str) -> None:
    """Refuse an upload larger than :data:`MAX_UPLOAD_BYTES` for ``kind`` (:class:`InputError`)."""
    limit = MAX_UPLOAD_BYTES[kind]
    size = int(getattr(upload, "size", None) or len(upload.getvalue()))
    if size > limit:
        raise InputError(f"{upload.name} is {_size(size)}, larger than the {_size(limit)} this app accepts for a {kind}; "
                         "split it or use the command line")


def _size(n: int) -> str:
    return f"{n / MB:.1f} MB" if n >= MB else f"{n:,} bytes"


def decoded(upload: Upload, kind: str, decode: Callable[..., T], *params: Any) -> T:
    """``decode(bytes, name, *params)`` of an upload, size-checked first; the result (or the :class:`UnlearnError`
    it raised) is reused for the same content, name, kind, decoder and ``params`` for the rest of the session."""
    check_size(upload, kind)
    data = upload.getvalue()
    key = (kind, upload.name, hashlib.sha256(data).hexdigest(), getattr(decode, "__qualname__", repr(decode)), params)
    cache: OrderedDict[tuple[Any, ...], tuple[bool, Any]] = st.session_state.setdefault(CACHE_KEY, OrderedDict())
    if key not in cache:
        try:
            cache[key] = (True, decode(data, upload.name, *params))
        except UnlearnError as exc:
            cache[key] = (False, exc)
        while len(cache) > MAX_CACHED:
            cache.popitem(last=False)
    cache.move_to_end(key)
    ok, value = cache[key]
    if not ok:
        raise type(value)(*value.args)
    return value
