"""Hugging Face hub access: whether a token is configured, and one-line explanations of failed downloads.

:func:`describe_hub_error` classifies by exception *type* along the exception chain (``__cause__`` /
``__context__``): huggingface_hub's typed errors (``GatedRepoError``, ``RepositoryNotFoundError``,
``LocalEntryNotFoundError``, ``OfflineModeIsEnabled``, ``HfHubHTTPError`` ...), any error carrying an HTTP
``response`` (requests' and httpx' ``HTTPError``; sae_lens fetches some files with requests), and the network
errors of the standard library, requests, urllib3 and httpx. Only an exception that carries none of that falls
back to its message (the ``"503 Server Error: ..."`` text that ``raise_for_status`` writes, or "out of memory").
"""

from __future__ import annotations

import importlib
import os
import re
import socket
from collections.abc import Iterator

import requests
import torch
import urllib3.exceptions
from huggingface_hub import errors as hub_errors


def _transport_errors(*modules: str) -> tuple[type[BaseException], ...]:
    """``TransportError`` (connect, read, timeout ...) of the httpx flavours installed: huggingface_hub 1.x talks
    HTTP through ``httpx``, 2.x through ``httpx2``, older ones through requests only."""
    found = []
    for name in modules:
        try:
            found.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(found)


_NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,  # builtin: refused, reset, aborted
    TimeoutError,
    socket.gaierror,
    requests.exceptions.ConnectionError,  # also covers requests' ConnectTimeout
    requests.exceptions.Timeout,
    urllib3.exceptions.NewConnectionError,
    urllib3.exceptions.MaxRetryError,
    urllib3.exceptions.TimeoutError,
    *_transport_errors("httpx", "httpx2"),
)
_NOT_FOUND = (hub_errors.RepositoryNotFoundError, hub_errors.RevisionNotFoundError, hub_errors.RemoteEntryNotFoundError)
_OFFLINE = (hub_errors.OfflineModeIsEnabled, hub_errors.LocalEntryNotFoundError)
_STATUS_IN_TEXT = re.compile(r"\b([45]\d\d) (?:Client|Server) Error\b")
"""What ``raise_for_status`` writes (``"404 Client Error: Not Found for url: ..."``), for untyped wrappers."""


def hf_token_available() -> bool:
    """True when an HF token is configured (``HF_TOKEN`` or the huggingface_hub login); never returns it."""
    if os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"):
        return True
    try:
        from huggingface_hub import get_token

        return get_token() is not None
    except Exception:
        return False


def exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception it was raised from or while handling (``__cause__``, else ``__context__``)."""
    chain, seen = [], set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _http_status(chain: list[BaseException]) -> int | None:
    """The HTTP status of the first error in the chain that has one (``error.response.status_code``)."""
    for err in chain:
        status = getattr(getattr(err, "response", None), "status_code", None)
        if isinstance(status, int):
            return status
    for err in chain:  # an untyped wrapper that only kept the text
        match = _STATUS_IN_TEXT.search(str(err))
        if match:
            return int(match.group(1))
    return None


def _any(chain: list[BaseException], types: type[BaseException] | tuple[type[BaseException], ...]) -> bool:
    return any(isinstance(e, types) for e in chain)


def _messages(chain: list[BaseException]) -> Iterator[str]:
    return (str(e).lower() for e in chain)


def describe_hub_error(what: str, exc: BaseException) -> str:
    """A one-line, actionable explanation of a failure to fetch ``what`` from the Hugging Face hub.

    Never includes the token: only exception types, HTTP statuses and the first line of the message are used.
    """
    chain = exception_chain(exc)
    status = _http_status(chain)
    offline = f"{what} is not in the local Hugging Face cache and hub access is off (HF_HUB_OFFLINE=1)"
    no_network = f"could not reach the Hugging Face hub to fetch {what} (no network?); the offline preset needs none"
    if _any(chain, (MemoryError, torch.OutOfMemoryError)) or any("out of memory" in m for m in _messages(chain)):
        return f"not enough memory to load {what}: try bfloat16, a GPU, or a smaller model"
    # GatedRepoError is a RepositoryNotFoundError: test it first
    if _any(chain, hub_errors.GatedRepoError) or (status in (401, 403) and not _any(chain, _NOT_FOUND)):
        return (
            f"access to {what} was refused by the Hugging Face hub: set HF_TOKEN to a token whose account "
            "has accepted the model's licence"
        )
    if status == 429:
        return f"the Hugging Face hub is rate-limiting requests for {what} (HTTP 429); wait a minute and try again"
    if status is not None and status >= 500:
        return f"the Hugging Face hub answered with a server error (HTTP {status}) for {what}; try again later"
    if _any(chain, _NOT_FOUND) or status == 404:
        return f"{what} was not found on the Hugging Face hub (HTTP 404): check the name"
    # OfflineModeIsEnabled is a ConnectionError, and LocalEntryNotFoundError also ends a failed look-up: both
    # mean "offline" unless a real network error sits below them
    network = any(isinstance(e, _NETWORK_ERRORS) and not isinstance(e, _OFFLINE) for e in chain)
    if _any(chain, _OFFLINE) and not network:
        return offline
    if network:
        return no_network
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return offline
    first = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    return f"could not load {what} from the Hugging Face hub ({first})"
