"""HTTP for the Neuronpedia client: a ``requests`` session with urllib3 retries, and answers classified.

* Retries are urllib3's :class:`~urllib3.util.Retry`, mounted on the session's adapters: GET only (a session may
  add a read-only POST such as a search), on HTTP 429, 500, 502, 503 and 504, on connection errors and on read
  errors (timeouts, dropped connections). The last answer is returned rather than raised
  (``raise_on_status=False``). :class:`_Backoff` keeps this client's wait schedule: ``backoff * 2**n`` from the
  first retry, a flat ``backoff`` when nothing is listening (a refused connection or an unknown host, where growing
  waits would not help), and ``Retry-After`` in whole or decimal seconds or as an HTTP date. Every wait is capped
  at :data:`MAX_WAIT`, so a server cannot stall a page; an answer whose ``Retry-After`` asks for longer is not
  retried at all (the site's circuit breaker, :mod:`.breaker`, then waits that long instead, without holding a
  request).
* Bodies are streamed and refused beyond a size cap (the declared ``Content-Length`` or the bytes read).
* The API key goes only to the configured origin (:class:`KeyedSession`): it is set on each request whose URL is
  that origin, and removed from (or restored on) each redirect hop, so a redirect to another host never sees it.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import takewhile
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import InvalidHeader, MaxRetryError, NewConnectionError, ReadTimeoutError, ResponseError
from urllib3.exceptions import TimeoutError as Urllib3Timeout
from urllib3.util import Retry

from unlearn_core.saes.neuronpedia.breaker import retry_after_seconds
from unlearn_core.saes.neuronpedia.explanation import API_KEY_ENV, Parsed, parse_feature

log = logging.getLogger("unlearn_core.saes.neuronpedia")

MAX_WAIT = 8.0
"""Longest single wait between two tries, in seconds (backoff and ``Retry-After`` alike)."""

MAX_REDIRECTS = 3
API_KEY_HEADER = "x-api-key"
RETRY_STATUSES = (429, 500, 502, 503, 504)
MAX_RESPONSE_BYTES = 4 * 2**20
"""Largest answer body read (4 MiB): a feature answer with its activation examples is a few hundred KB."""
_READ_CHUNK = 64 * 1024


class _Backoff(Retry):
    """urllib3's ``Retry`` with this client's waits (see the module docstring)."""

    def get_backoff_time(self) -> float:
        failures = list(takewhile(lambda h: h.redirect_location is None, reversed(self.history)))
        if not failures:
            return 0.0
        # urllib3 waits nothing before its first retry; here the first wait is backoff_factor, then doubling
        tries = 1 if isinstance(failures[0].error, NewConnectionError) else len(failures)
        return float(max(0.0, min(self.backoff_max, self.backoff_factor * 2 ** (tries - 1))))

    def get_retry_after(self, response: Any) -> float | None:
        """``Retry-After`` in seconds, capped at :data:`MAX_WAIT`; None when absent or unreadable (then the
        usual backoff applies). ``0`` means retry at once."""
        value = response.headers.get("Retry-After")
        if value is None:
            return None
        try:
            seconds = float(value)
        except ValueError:  # an HTTP date, which urllib3 parses
            try:
                seconds = super().get_retry_after(response) or 0.0
            except InvalidHeader:
                return None
        return min(max(seconds, 0.0), MAX_WAIT) if math.isfinite(seconds) else None

    def increment(self, method: str | None = None, url: str | None = None, response: Any = None,
                  error: Exception | None = None, _pool: Any = None, _stacktrace: Any = None) -> Retry:
        """urllib3's bookkeeping, except that an answer asking to wait longer than :data:`MAX_WAIT` ends the
        retries at once (urllib3 then returns that answer, as ``raise_on_status=False`` asks)."""
        if response is not None:
            wait = retry_after_seconds(response.headers.get("Retry-After"))
            if wait is not None and wait > MAX_WAIT:
                raise MaxRetryError(_pool, url or "", ResponseError(f"Retry-After {wait:g} s is longer than {MAX_WAIT:g} s"))
        return super().increment(method, url, response, error, _pool, _stacktrace)

    def sleep_for_retry(self, response: Any) -> bool:
        retry_after = self.get_retry_after(response)
        if retry_after is None:
            return False
        time.sleep(retry_after)  # urllib3 itself skips a zero wait and then applies the backoff instead
        return True


def same_origin(url: str, base_url: str) -> bool:
    """Whether two URLs have the same scheme, host and port."""
    a, b = urlsplit(url), urlsplit(base_url)
    return a.scheme == b.scheme and a.netloc.lower() == b.netloc.lower()


class KeyedSession(requests.Session):
    """A session that sends an API key to one origin only, on the first request and on every redirect hop."""

    def __init__(self, origin: str, api_key: str | None, retries: int, backoff: float, pool_size: int,
                 methods: Iterable[str] = ("GET",)) -> None:
        """``methods`` are those urllib3 retries (GET only by default; a read-only POST such as a search may be added)."""
        super().__init__()
        self._origin = origin
        self._api_key = api_key
        self.max_redirects = MAX_REDIRECTS
        retry = _Backoff(
            total=retries,
            backoff_factor=backoff,
            backoff_max=MAX_WAIT,
            status_forcelist=RETRY_STATUSES,
            allowed_methods=frozenset(m.upper() for m in methods),
            respect_retry_after_header=True,
            raise_on_status=False,
        )
        # one pooled connection per worker, so parallel fetches do not discard connections
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=retry)
        self.mount("http://", adapter)
        self.mount("https://", adapter)

    def __repr__(self) -> str:
        return f"KeyedSession(origin={self._origin!r})"

    def prepare_request(self, request: requests.Request) -> requests.PreparedRequest:
        prepared = super().prepare_request(request)
        self._place_key(prepared)
        return prepared

    def rebuild_auth(self, prepared_request: requests.PreparedRequest, response: requests.Response) -> None:
        super().rebuild_auth(prepared_request, response)  # requests strips Authorization, not custom headers
        self._place_key(prepared_request)

    def _place_key(self, prepared: requests.PreparedRequest) -> None:
        if self._api_key is not None and same_origin(prepared.url or "", self._origin):
            prepared.headers[API_KEY_HEADER] = self._api_key
        else:
            prepared.headers.pop(API_KEY_HEADER, None)


@dataclass(frozen=True)
class Outcome:
    """One fetch (with its retries), classified."""

    parsed: Parsed = (None, None, None)
    error: str | None = None
    network: bool = False  # unreachable or timed out: the rest of a batch would fare no better
    status: int | None = None  # the final HTTP status; None when no answer came
    retry_after: float | None = None  # the final answer's Retry-After, in seconds


def get_feature(
    session: requests.Session, url: str, timeout: float, max_bytes: int = MAX_RESPONSE_BYTES
) -> Outcome:
    """GET one feature answer (urllib3 retries inside) and classify it; never raises for HTTP or network trouble.

    A body larger than ``max_bytes`` is refused without reading it all."""
    payload, outcome = request_json(session, "GET", url, timeout, max_bytes)
    if outcome.error is not None:
        return outcome
    try:
        return Outcome(parsed=parse_feature(payload), status=200)
    except ValueError:  # the wrong shape
        return Outcome(error="malformed response", status=200)


def request_json(
    session: requests.Session,
    method: str,
    url: str,
    timeout: float,
    max_bytes: int = MAX_RESPONSE_BYTES,
    body: Any = None,
) -> tuple[Any, Outcome]:
    """Send one request (``body``, if not None, as JSON; urllib3 retries inside for the session's retried methods)
    and read a JSON answer: ``(parsed JSON, outcome)``, the JSON None unless ``outcome.error`` is None. Never
    raises for HTTP, network or JSON trouble; a body larger than ``max_bytes`` is refused without reading it all."""
    started = time.monotonic()
    extra = {} if body is None else {"json": body}
    try:
        response = session.request(method, url, headers={"Accept": "application/json"}, timeout=timeout,
                                   stream=True, **extra)
    except requests.exceptions.RequestException as exc:
        return None, failure_outcome(exc, timeout)
    except ValueError:  # e.g. a malformed redirect Location header
        return None, Outcome(error="malformed response")
    with response:
        status = response.status_code
        log.debug("%s %s -> HTTP %d (%.2f s)", method, url, status, time.monotonic() - started)
        if status == 200:
            return _read_json(response, timeout, max_bytes)
        retry_after = retry_after_seconds(response.headers.get("Retry-After"))
    return None, status_outcome(status, retry_after)


def status_outcome(status: int, retry_after: float | None = None) -> Outcome:
    """The outcome of a non-200 answer: its short human reason."""
    if status == 429:
        return Outcome(error="rate limited (HTTP 429)", status=status, retry_after=retry_after)
    if status >= 500:
        return Outcome(error=f"server error (HTTP {status})", status=status, retry_after=retry_after)
    if status == 404:
        return Outcome(error="not found (HTTP 404)", status=status)
    if status in (401, 403):
        return Outcome(error=f"access denied (HTTP {status}); check {API_KEY_ENV}", status=status)
    if 400 <= status < 500:
        return Outcome(error=f"request rejected (HTTP {status})", status=status)
    return Outcome(error=f"unexpected answer (HTTP {status})", status=status)


def _read_json(response: requests.Response, timeout: float, max_bytes: int) -> tuple[Any, Outcome]:
    """Read and decode a 200 answer's JSON body, at most ``max_bytes`` of it."""
    too_large = Outcome(error=f"response too large (over {max_bytes:,} bytes)", status=200)
    try:
        declared = int(response.headers.get("Content-Length", "0") or 0)
    except ValueError:
        declared = 0
    if declared > max_bytes:
        return None, too_large
    body = bytearray()
    try:
        for chunk in response.iter_content(_READ_CHUNK):
            body += chunk
            if len(body) > max_bytes:
                return None, too_large
    except requests.exceptions.RequestException as exc:
        return None, failure_outcome(exc, timeout)
    try:
        return json.loads(bytes(body)), Outcome(status=200)
    except (ValueError, RecursionError):  # bad JSON or bad UTF-8
        return None, Outcome(error="malformed response", status=200)


def failure_outcome(exc: requests.exceptions.RequestException, timeout: float) -> Outcome:
    """The outcome of a request that got no (complete) answer: timeouts, refused connections, TLS, redirects."""
    if isinstance(exc, requests.exceptions.TooManyRedirects):
        return Outcome(error=f"too many redirects (more than {MAX_REDIRECTS})")
    if isinstance(exc, requests.exceptions.SSLError):
        return Outcome(error="Neuronpedia unreachable (TLS error)")
    reason = _connection_reason(exc)
    if reason == "timed out" or isinstance(exc, requests.exceptions.Timeout):
        return Outcome(error=f"timed out after {timeout:g} s", network=True)
    if isinstance(exc, requests.exceptions.ConnectionError):
        # a reset connection was worth retrying, but is no verdict on the server
        return Outcome(error=f"Neuronpedia unreachable ({reason})", network=reason != "network error")
    if isinstance(exc, (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)):
        return Outcome(error="connection broken while reading the answer")
    return Outcome(error=f"request failed ({type(exc).__name__})")


def _connection_reason(exc: BaseException) -> str:
    """Why a request failed, from the exception chain requests and urllib3 build (``MaxRetryError.reason`` ...)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    timed_out = False
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
        if isinstance(current, socket.gaierror) or type(current).__name__ == "NameResolutionError":
            return "could not resolve host"
        if isinstance(current, (ReadTimeoutError, TimeoutError)) or (
            isinstance(current, Urllib3Timeout) and not isinstance(current, NewConnectionError)
        ):
            timed_out = True
        linked = (current.__cause__, current.__context__, getattr(current, "reason", None), *current.args)
        todo.extend(e for e in linked if isinstance(e, BaseException))
    if timed_out:
        return "timed out"
    text = str(exc)
    if "Connection refused" in text or "Errno 111" in text:
        return "connection refused"
    return "network error"
