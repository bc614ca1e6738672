"""Neuronpedia lists through the official ``neuronpedia`` client (PyPI ``neuronpedia``): create one, fetch one.

The client (:class:`neuronpedia.requests.list_request.ListRequest`) POSTs JSON to ``{site}/api/list/<action>``
with the API key in the ``X-Api-Key`` header:

* ``new`` ``{"name", "description"}`` -> ``{"id", "name", "description", ...}``;
* ``add-features`` ``{"listId", "featuresToAdd": [{"modelId", "layer", "index", "description"}]}``, at most
  :data:`ADD_BATCH` at once -> the rows added;
* ``get`` ``{"listId"}`` -> ``{"id", "name", "description", "neurons": [{"modelId", "layer", "index",
  "description", ...}]}`` (sent through the client's ``send_request``, as ``ListRequest.get`` does, but keeping
  each feature's description, which ``ListRequest.get`` drops).

``layer`` is Neuronpedia's source id (``12-gemmascope-res-16k``) and ``index`` a string. Around the client:

* The site is this package's (the argument, else ``$NEURONPEDIA_API_URL``, else :data:`DEFAULT_BASE_URL`), not the
  client's built-in one. The key is the argument or ``$NEURONPEDIA_API_KEY``; it is required (:class:`InputError`
  without one) and appears in no message, log or repr.
* Every request has a timeout and follows no redirect (the client would send the key along to any host); an
  answer declaring more than :data:`MAX_RESPONSE_BYTES` is refused.
* HTTP 429 is retried ``retries`` times (``Retry-After`` up to :data:`MAX_WAIT` s, else ``backoff * 2**n``);
  fetching, which changes nothing, also retries 5xx, timeouts and connection errors. Creating never re-sends after
  those, so a list is never made twice. The site's circuit breaker (:mod:`.breaker`) is consulted and told.
* Failures raise :class:`RemoteServiceError` with a short reason (401/403 key, 404, 429, 5xx, network, malformed).
* The client prints every request to stdout; that is captured (one list request at a time) and logged at DEBUG.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import requests

from unlearn_core.errors import InputError, RemoteServiceError
from unlearn_core.saes.neuronpedia.breaker import breaker_for, retry_after_seconds
from unlearn_core.saes.neuronpedia.explanation import API_KEY_ENV, BASE_URL_ENV, DEFAULT_BASE_URL, check_index, split_id
from unlearn_core.saes.neuronpedia.transport import MAX_RESPONSE_BYTES, MAX_WAIT, failure_outcome

log = logging.getLogger("unlearn_core.saes.neuronpedia")
T = TypeVar("T")

ADD_BATCH = 100
"""Most features Neuronpedia's ``add-features`` takes at once."""
MAX_NAME = 200
MAX_DESCRIPTION = 2000
MAX_FEATURE_DESCRIPTION = 500
_LIST_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_RETRY_STATUSES = (500, 502, 503, 504)
_CLIENT_LOCK = threading.Lock()


@dataclass(frozen=True)
class ListFeature:
    """One feature of a Neuronpedia list."""

    model_id: str
    """Neuronpedia's model id, e.g. ``"gemma-2-2b"``."""
    source: str
    """Neuronpedia's source (its ``layer`` field), e.g. ``"12-gemmascope-res-16k"``."""
    index: int
    description: str = ""

    @property
    def neuronpedia_id(self) -> str:
        """``"<modelId>/<source>"``, as a feature list's ``neuronpedia`` field."""
        return f"{self.model_id}/{self.source}"


@dataclass(frozen=True)
class NeuronpediaList:
    """A list on Neuronpedia, as created or fetched."""

    id: str
    name: str
    description: str
    url: str
    features: tuple[ListFeature, ...]
    invalid: tuple[str, ...] = ()
    """Rows of a fetched list that are not features (each a short reason), reported rather than dropped."""


@dataclass(frozen=True)
class ListSite:
    """Where and how to reach Neuronpedia's list API (the key is kept out of the repr)."""

    base_url: str
    api_key: str
    timeout: float = 20.0
    retries: int = 2
    backoff: float = 1.0

    def __repr__(self) -> str:
        return f"ListSite(base_url={self.base_url!r})"

    __str__ = __repr__


def list_site(base_url: str | None = None, api_key: str | None = None, *, what: str = "this",
              timeout: float = 20.0, retries: int = 2, backoff: float = 1.0) -> ListSite:
    """The site and key to use (see the module docstring); :class:`InputError` without a usable key, for ``what``
    (e.g. ``"exporting a Neuronpedia list"``)."""
    base = (base_url or os.environ.get(BASE_URL_ENV, "").strip() or DEFAULT_BASE_URL).rstrip("/")
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError(f"Neuronpedia URL must start with http:// or https://, got {base!r}")
    key = (api_key or os.environ.get(API_KEY_ENV, "")).strip()
    if not key:
        raise InputError(
            f"{what} needs a Neuronpedia API key: set {API_KEY_ENV} (environment or the app's secrets); "
            "yours is under Settings on neuronpedia.org"
        )
    if not key.isascii() or not key.isprintable() or any(c.isspace() for c in key):
        raise InputError(f"the Neuronpedia API key ({API_KEY_ENV}) contains spaces or control characters; copy it again")
    if not (timeout > 0 and retries >= 0 and backoff >= 0):
        raise InputError("timeout must be positive, retries and backoff not negative")
    return ListSite(base, key, float(timeout), int(retries), float(backoff))


def list_page_url(list_id: str, base_url: str = DEFAULT_BASE_URL) -> str:
    """The page of a list, ``{site}/list/{id}``."""
    return f"{base_url.rstrip('/')}/list/{quote(list_id, safe='')}"


def parse_list_ref(text: str) -> str:
    """A list id from an id or a list URL (``https://www.neuronpedia.org/list/<id>``); :class:`InputError` else."""
    ref = text.strip() if isinstance(text, str) else ""
    if not ref:
        raise InputError("give a Neuronpedia list id or URL (https://www.neuronpedia.org/list/<id>)")
    if "/" in ref:
        parts = urlsplit(ref if "://" in ref else f"https://{ref}")
        segments = [s for s in parts.path.split("/") if s]
        if len(segments) >= 2 and segments[-2] == "list" and _LIST_ID.match(segments[-1]):
            return segments[-1]
        raise InputError(f"{ref[:120]!r} is not a Neuronpedia list URL (https://www.neuronpedia.org/list/<id>)")
    if not _LIST_ID.match(ref):
        raise InputError(f"{ref[:120]!r} is not a Neuronpedia list id (letters, digits, - and _)")
    return ref


def create_list(name: str, description: str, features: Sequence[ListFeature], site: ListSite,
                progress: Callable[[int, int], None] | None = None) -> NeuronpediaList:
    """Create a list named ``name`` holding ``features`` (duplicates once) on ``site``; returns it with its URL.

    ``progress`` gets ``(features added, total)`` after each batch. If adding fails after the list was created,
    the :class:`RemoteServiceError` names the list's URL and how many features it got."""
    from neuronpedia.np_list import NPListItem

    name = " ".join(str(name).split())[:MAX_NAME]
    if not name:
        raise InputError("a Neuronpedia list needs a name")
    unique = list({(f.model_id, f.source, check_index(f.index)): f for f in features}.values())
    for feature in unique:
        split_id(feature.neuronpedia_id)
    if not unique:
        raise InputError("nothing to export: the list has no latents on SAEs hosted on Neuronpedia")
    request = _request_class()(site)
    created = _call(site, "creating the Neuronpedia list", request,
                    functools.partial(request.new, name, str(description)[:MAX_DESCRIPTION]), idempotent=False)
    list_id = str(getattr(created, "id", ""))
    if not _LIST_ID.match(list_id):
        raise RemoteServiceError("creating the Neuronpedia list: Neuronpedia sent a malformed answer (no list id)")
    url = list_page_url(list_id, site.base_url)
    added = 0
    for start in range(0, len(unique), ADD_BATCH):
        items = [NPListItem(model_id=f.model_id, source=f.source, index=str(f.index),
                            description=f.description[:MAX_FEATURE_DESCRIPTION]) for f in unique[start:start + ADD_BATCH]]
        try:
            _call(site, "adding features to the Neuronpedia list", request,
                  functools.partial(request.add_items, created, items), idempotent=False)
        except RemoteServiceError as exc:
            raise RemoteServiceError(
                f"{exc} (list {url} was created with {added} of {len(unique)} features; delete it on Neuronpedia "
                "or try again)"
            ) from None
        added += len(items)
        if progress is not None:
            progress(added, len(unique))
    return NeuronpediaList(list_id, name, str(description)[:MAX_DESCRIPTION], url, tuple(unique))


def fetch_list(list_ref: str, site: ListSite) -> NeuronpediaList:
    """Fetch a list (by id or URL) with its features; rows that are not features are listed in ``invalid``."""
    list_id = parse_list_ref(list_ref)
    request = _request_class()(site)
    raw = _call(site, f"fetching Neuronpedia list {list_id}", request,
                functools.partial(request.send_request, uri="get", method="POST", json={"listId": list_id}),
                idempotent=True, not_found=f"Neuronpedia has no list {list_id!r} (HTTP 404); check the id or URL")
    malformed = RemoteServiceError(f"fetching Neuronpedia list {list_id}: Neuronpedia sent a malformed answer")
    if not isinstance(raw, dict) or not isinstance(raw.get("neurons"), list):
        raise malformed
    features: list[ListFeature] = []
    invalid: list[str] = []
    for i, row in enumerate(raw["neurons"]):
        try:
            features.append(_feature(row))
        except (TypeError, ValueError, InputError) as exc:
            invalid.append(f"feature {i + 1}: {exc}")
    name, description = raw.get("name"), raw.get("description")
    return NeuronpediaList(
        id=list_id,
        name=name.strip() if isinstance(name, str) and name.strip() else f"Neuronpedia list {list_id}",
        description=description if isinstance(description, str) else "",
        url=list_page_url(list_id, site.base_url),
        features=tuple(features),
        invalid=tuple(invalid),
    )


def _feature(row: Any) -> ListFeature:
    if not isinstance(row, dict):
        raise ValueError("not an object")
    model_id, source, index = row.get("modelId"), row.get("layer"), row.get("index")
    if not isinstance(model_id, str) or not isinstance(source, str):
        raise ValueError("modelId or layer missing")
    if isinstance(index, str) and index.isascii() and index.isdigit():
        index = int(index)
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise ValueError(f"index {str(index)[:20]!r} is not a latent index")
    split_id(f"{model_id}/{source}")
    description = row.get("description")
    return ListFeature(model_id, source, index, description.strip() if isinstance(description, str) else "")


# ----------------------------------------------------------------------------------------------------------------
# The client, configured, and its failures mapped


class _Refused(Exception):
    """An answer refused before the client reads it (a redirect, a body too large)."""


class _Capture:
    """The last answer the client got, seen by a ``requests`` response hook (before its body is read)."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.retry_after: float | None = None
        self.response: requests.Response | None = None

    def reset(self) -> None:
        self.status, self.retry_after, self.response = None, None, None

    def hook(self, response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        self.status, self.response = response.status_code, response
        self.retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        if 300 <= response.status_code < 400:
            host = urlsplit(response.headers.get("Location", "")).netloc or "another address"
            response.close()
            raise _Refused(f"Neuronpedia answered with a redirect (HTTP {response.status_code}) to {host}; "
                           f"set {BASE_URL_ENV} to the site it names")
        try:
            declared = int(response.headers.get("Content-Length", "0") or 0)
        except ValueError:
            declared = 0
        if declared > MAX_RESPONSE_BYTES:
            response.close()
            raise _Refused(f"response too large (over {MAX_RESPONSE_BYTES:,} bytes)")
        return response

    def detail(self) -> str:
        """The ``error``/``message`` of the last answer's JSON body, shortened, or ``""``."""
        try:
            body = self.response.json() if self.response is not None else None
        except Exception:  # not JSON, or not read
            return ""
        text = body.get("error") or body.get("message") if isinstance(body, dict) else None
        return f": {' '.join(text.split())[:200]}" if isinstance(text, str) and text.strip() else ""


@functools.cache
def _request_class() -> type:
    """The client's ``ListRequest`` aimed at our site, with a timeout, no redirects and the answers captured."""
    from neuronpedia.requests.list_request import ListRequest  # lazy: the client loads a .env file on import

    class SiteListRequest(ListRequest):  # type: ignore[misc]
        def __init__(self, site: ListSite) -> None:
            super().__init__(api_key=site.api_key)
            self.BASE_URL = f"{site.base_url}/api"
            self.timeout = site.timeout
            self.capture = _Capture()

        def __repr__(self) -> str:
            return f"SiteListRequest(base_url={self.BASE_URL!r})"

        def send_request(self, uri: str = "", method: str = "POST", **kwargs: Any) -> Any:
            kwargs.update(timeout=self.timeout, allow_redirects=False, hooks={"response": [self.capture.hook]})
            self.capture.reset()
            return super().send_request(uri=uri, method=method, **kwargs)

    return SiteListRequest


def _call(site: ListSite, what: str, request: Any, call: Callable[[], T], *, idempotent: bool,
          not_found: str | None = None) -> T:
    """Run one call of ``request`` (a ``SiteListRequest``) with the retries, breaker and error mapping of the module
    docstring."""
    breaker = breaker_for(site.base_url)
    capture: _Capture = request.capture
    for attempt in range(site.retries + 1):
        blocked = breaker.blocked()
        if blocked is not None:
            raise RemoteServiceError(f"{what}: {blocked}")
        try:
            result = _quietly(call)
        except _Refused as exc:
            breaker.record(None, str(exc), False, None)
            raise RemoteServiceError(_scrub(f"{what}: {exc}", site)) from None
        except Exception as exc:
            status = capture.status
            if status is None:
                if not isinstance(exc, requests.exceptions.RequestException):
                    raise
                outcome = failure_outcome(exc, site.timeout)
                if idempotent and attempt < site.retries:
                    time.sleep(min(MAX_WAIT, site.backoff * 2**attempt))
                    continue
                breaker.record(None, outcome.error, outcome.network, None)
                raise RemoteServiceError(_scrub(f"{what}: {outcome.error}", site)) from None
            if 200 <= status < 300:
                breaker.record(status, None, False, None)
                raise RemoteServiceError(f"{what}: Neuronpedia sent a malformed answer") from None
            wait = capture.retry_after if capture.retry_after is not None else min(MAX_WAIT, site.backoff * 2**attempt)
            retryable = status == 429 or (idempotent and status in _RETRY_STATUSES)
            if retryable and attempt < site.retries and wait <= MAX_WAIT:
                time.sleep(wait)
                continue
            message = _status_message(status, capture.detail(), attempt + 1, not_found)
            breaker.record(status, message, False, capture.retry_after)
            raise RemoteServiceError(_scrub(f"{what}: {message}", site)) from None
        breaker.record(200, None, False, None)
        return result
    raise AssertionError("unreachable")  # pragma: no cover


def _status_message(status: int, detail: str, tries: int, not_found: str | None) -> str:
    if status == 401:
        return f"Neuronpedia did not accept the API key (HTTP 401); check {API_KEY_ENV}"
    if status == 403:
        return f"Neuronpedia refused access (HTTP 403){detail}; the list may belong to another account"
    if status == 404:
        return not_found or "not found (HTTP 404); is the Neuronpedia URL right?"
    if status == 429:
        return f"Neuronpedia rate-limited the request (HTTP 429, {tries} tries); try again in a minute"
    if status >= 500:
        return f"Neuronpedia server error (HTTP {status}); try again later"
    return f"Neuronpedia rejected the request (HTTP {status}){detail}"


def _quietly(call: Callable[[], T]) -> T:
    """Run a client call with its prints captured (and logged at DEBUG); one at a time, since stdout is global."""
    out = io.StringIO()
    with _CLIENT_LOCK:
        try:
            with contextlib.redirect_stdout(out):
                return call()
        finally:
            for line in out.getvalue().splitlines():
                log.debug("neuronpedia client: %s", line[:300])


def _scrub(text: str, site: ListSite) -> str:
    """A message with the key removed, should anything ever have echoed it."""
    return text.replace(site.api_key, "***") if site.api_key else text
