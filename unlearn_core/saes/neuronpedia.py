"""Latent explanations from Neuronpedia, fetched over HTTP and cached on disk.

Neuronpedia's public API answers ``GET {base}/api/feature/{modelId}/{source}/{index}`` with a JSON object whose
``explanations[0].description`` is the human-readable explanation of one SAE latent, next to ``frac_nonzero``
(how often it fires) and ``maxActApprox`` (its largest activation). This package names an SAE on Neuronpedia by
one string, ``"<modelId>/<source>"`` (e.g. ``"gemma-3-270m/12-gemmascope-2-res-16k"``), plus a latent index.

:class:`NeuronpediaClient` fetches those answers:

* Configuration: the base URL comes from the argument, else ``$NEURONPEDIA_API_URL``, else
  :data:`DEFAULT_BASE_URL`; the API key from the argument, else ``$NEURONPEDIA_API_KEY`` (see
  :func:`api_key_from` for the app's secrets). The key is only ever sent as the ``x-api-key`` header, and only to
  the configured origin (never along a redirect to another host); it never appears in reprs, logs, error strings
  or the cache.
* Failures never raise: HTTP 429 and 5xx, timeouts and connection errors are retried ``retries`` times with
  exponential backoff (``backoff * 2**attempt``, at most 8 s, or a numeric ``Retry-After`` up to 8 s); when
  nothing is listening the retries wait a flat ``backoff``, so a down server costs little. Other 4xx answers are
  not retried. What finally went wrong is returned as :attr:`Explanation.error`, a short human reason. Only bad
  arguments raise (:class:`~unlearn_core.errors.InputError`).
* Caching: successful answers (including "this latent has no explanation") are kept in memory and in one JSON
  file per Neuronpedia id under ``cache_dir()/neuronpedia``, written atomically; failures are never cached, so
  a later call tries again. A corrupt cache file is ignored.
* :meth:`NeuronpediaClient.explanations` fetches many latents on a thread pool. Once one of them finds the
  server unreachable or timing out, the rest of that batch stop retrying and report the same reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import operator
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter

from unlearn_core.errors import InputError
from unlearn_core.files import write_json_atomic

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://www.neuronpedia.org"
BASE_URL_ENV = "NEURONPEDIA_API_URL"
API_KEY_ENV = "NEURONPEDIA_API_KEY"

MAX_WAIT = 8.0
"""Longest single wait between two tries, in seconds (backoff and ``Retry-After`` alike)."""

_MAX_REDIRECTS = 3
_NEURONPEDIA_ID_RE = re.compile(r"^[^/\s]+/[^/\s]+$")

ProgressFn = Callable[[int, int], None]
"""Receives ``(done, total)`` while :meth:`NeuronpediaClient.explanations` works through its latents."""


@dataclass(frozen=True)
class Explanation:
    """What Neuronpedia says about one latent, or why it could not be asked."""

    neuronpedia_id: str
    index: int
    description: str | None  # explanations[0].description; None when the latent has no explanation
    frac_nonzero: float | None
    max_activation: float | None  # Neuronpedia's maxActApprox
    error: str | None = None  # None when fetched fine, else a short human reason
    site: str = DEFAULT_BASE_URL  # where the human-readable page lives

    @property
    def ok(self) -> bool:
        """True when Neuronpedia answered (with or without an explanation)."""
        return self.error is None

    def text(self) -> str:
        """The explanation, or a short sentence saying there is none or why it is unavailable."""
        if self.error is not None:
            return f"explanation unavailable ({self.error})"
        return self.description if self.description is not None else "no explanation on Neuronpedia"

    @property
    def url(self) -> str:
        """The latent's page on Neuronpedia."""
        return neuronpedia_page_url(self.neuronpedia_id, self.index, base_url=self.site)


def api_key_from(secrets: Mapping[str, Any] | None = None) -> str | None:
    """The Neuronpedia API key: ``$NEURONPEDIA_API_KEY``, else ``secrets["NEURONPEDIA_API_KEY"]``, else None.

    ``secrets`` is any mapping; the app passes ``st.secrets``.
    """
    key = os.environ.get(API_KEY_ENV, "").strip()
    if key:
        return key
    if secrets is None:
        return None
    try:
        value = secrets.get(API_KEY_ENV)
    except Exception:  # st.secrets raises (not KeyError) when no secrets file exists at all
        return None
    return value.strip() or None if isinstance(value, str) else None


def neuronpedia_page_url(neuronpedia_id: str, index: int, base_url: str = DEFAULT_BASE_URL) -> str:
    """The human-readable page of one latent, e.g. ``https://www.neuronpedia.org/gemma-2-2b/12-gemmascope-res-16k/7``."""
    model_id, source = _split_id(neuronpedia_id)
    return f"{base_url.rstrip('/')}/{quote(model_id, safe='')}/{quote(source, safe='')}/{_check_index(index)}"


class NeuronpediaClient:
    """Fetches and caches latent explanations from Neuronpedia (see the module docstring for the behaviour)."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        cache_dir: Path | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_workers: int = 8,
        session: requests.Session | None = None,
    ) -> None:
        """Configure the client.

        Args:
            base_url: Neuronpedia site, default ``$NEURONPEDIA_API_URL`` or :data:`DEFAULT_BASE_URL`.
            api_key: sent as ``x-api-key``; default ``$NEURONPEDIA_API_KEY``, else no key.
            cache_dir: folder of the on-disk cache, default ``unlearn_core.models.loading.cache_dir() / "neuronpedia"``.
            timeout: seconds to wait for the connection and for each read.
            retries: further tries after the first one, for rate limiting, server errors and network errors.
            backoff: first wait between tries, in seconds; doubles on each retry (at most 8 s).
            max_workers: parallel requests in :meth:`explanations`.
            session: a ``requests.Session`` to use instead of a new one (its adapters are left as they are).
        """
        base = (base_url or os.environ.get(BASE_URL_ENV, "").strip() or DEFAULT_BASE_URL).rstrip("/")
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InputError(f"Neuronpedia URL must start with http:// or https://, got {base!r}")
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise InputError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if not (isinstance(retries, int) and retries >= 0):
            raise InputError(f"retries must be a non-negative integer, got {retries!r}")
        if not (isinstance(backoff, (int, float)) and backoff >= 0):
            raise InputError(f"backoff must be a non-negative number of seconds, got {backoff!r}")
        if not (isinstance(max_workers, int) and max_workers >= 1):
            raise InputError(f"max_workers must be a positive integer, got {max_workers!r}")
        self.base_url = base
        self.timeout = float(timeout)
        self.retries = retries
        self.backoff = float(backoff)
        self.max_workers = max_workers
        self._api_key = (api_key or os.environ.get(API_KEY_ENV, "")).strip() or None
        if cache_dir is None:
            from unlearn_core.models.loading import cache_dir as default_cache_dir  # lazy: models imports torch

            cache_dir = default_cache_dir() / "neuronpedia"
        self.cache_dir = Path(cache_dir)
        if session is None:
            session = requests.Session()
            # one pooled connection per worker, so parallel fetches do not discard connections
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max(10, max_workers))
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        self._session = session
        self._lock = threading.RLock()
        self._memory: dict[str, dict[int, dict[str, Any]]] = {}

    def __repr__(self) -> str:
        return f"NeuronpediaClient(base_url={self.base_url!r})"

    __str__ = __repr__

    @property
    def has_api_key(self) -> bool:
        """Whether requests carry an API key (the key itself is never exposed)."""
        return self._api_key is not None

    def close(self) -> None:
        """Close the HTTP connections (the client can still be used; it reconnects)."""
        self._session.close()

    def __enter__(self) -> NeuronpediaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def explanation(self, neuronpedia_id: str, index: int) -> Explanation:
        """One latent's explanation: from the cache if known, else from Neuronpedia. Never raises for network,
        HTTP or JSON problems (see :attr:`Explanation.error`); raises InputError for a malformed id or index."""
        _split_id(neuronpedia_id)
        index = _check_index(index)
        cached = self._cached(neuronpedia_id, index)
        if cached is not None:
            return cached
        result = self._fetch(neuronpedia_id, index, _Breaker())
        if result.ok:
            self._remember(result)
            self._flush(neuronpedia_id)
        return result

    def explanations(
        self, neuronpedia_id: str, indices: Iterable[int], progress: ProgressFn | None = None
    ) -> dict[int, Explanation]:
        """Explanations of many latents of one SAE, keyed by index in first-seen order (duplicates fetched once).

        Cached latents are answered without HTTP; the rest are fetched on ``max_workers`` threads. ``progress``
        is called from the calling thread with ``(done, total)``, first for the cached ones, last with
        ``(total, total)``.
        """
        _split_id(neuronpedia_id)
        unique = list(dict.fromkeys(_check_index(i) for i in indices))
        total = len(unique)
        found: dict[int, Explanation] = {}
        todo: list[int] = []
        for index in unique:
            cached = self._cached(neuronpedia_id, index)
            if cached is not None:
                found[index] = cached
            else:
                todo.append(index)
        done = len(found)
        if progress is not None:
            progress(done, total)
        if todo:
            breaker = _Breaker()
            pool = ThreadPoolExecutor(max_workers=min(self.max_workers, len(todo)), thread_name_prefix="neuronpedia")
            try:
                futures = {pool.submit(self._fetch, neuronpedia_id, i, breaker): i for i in todo}
                for future in as_completed(futures):
                    result = future.result()
                    found[result.index] = result
                    if result.ok:
                        self._remember(result)
                    done += 1
                    if progress is not None:
                        progress(done, total)
            finally:
                # if progress raised (e.g. the app rerun), stop the remaining work quickly
                breaker.trip("cancelled")
                pool.shutdown(wait=True, cancel_futures=True)
                self._flush(neuronpedia_id)
        return {i: found[i] for i in unique}

    # --- HTTP -------------------------------------------------------------------------------------------

    def _fetch(self, neuronpedia_id: str, index: int, breaker: _Breaker) -> Explanation:
        model_id, source = _split_id(neuronpedia_id)
        url = f"{self.base_url}/api/feature/{quote(model_id, safe='')}/{quote(source, safe='')}/{index}"
        error = "not attempted"
        outcome = _Outcome()
        for attempt in range(self.retries + 1):
            if breaker.reason is not None:
                return self._failed(neuronpedia_id, index, breaker.reason)
            outcome = self._attempt(url)
            if outcome.error is None:
                description, frac_nonzero, max_activation = outcome.parsed
                return Explanation(neuronpedia_id, index, description, frac_nonzero, max_activation, site=self.base_url)
            error = outcome.error
            if not outcome.retryable or attempt == self.retries:
                break
            if outcome.retry_after is not None:
                wait = outcome.retry_after
            elif outcome.refused:
                wait = self.backoff  # nothing is listening: growing waits would not help
            else:
                wait = self.backoff * 2**attempt
            breaker.wait(min(wait, MAX_WAIT))
        if outcome.network:
            breaker.trip(error)
        return self._failed(neuronpedia_id, index, error)

    def _failed(self, neuronpedia_id: str, index: int, error: str) -> Explanation:
        return Explanation(neuronpedia_id, index, None, None, None, error=error, site=self.base_url)

    def _attempt(self, url: str) -> _Outcome:
        """One GET (following a few redirects by hand), classified."""
        try:
            response = self._get(url)
        except requests.exceptions.Timeout:
            return _Outcome(error=f"timed out after {self.timeout:g} s", retryable=True, network=True)
        except requests.exceptions.SSLError:
            return _Outcome(error="Neuronpedia unreachable (TLS error)")
        except requests.exceptions.ConnectionError as exc:
            reason = _connection_reason(exc)
            return _Outcome(
                error=f"Neuronpedia unreachable ({reason})",
                retryable=True,
                network=reason != "network error",  # a reset connection is worth retrying, but is no verdict
                refused=reason == "connection refused",
            )
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError):
            return _Outcome(error="connection broken while reading the answer", retryable=True)
        except requests.exceptions.RequestException as exc:
            return _Outcome(error=f"request failed ({type(exc).__name__})")
        except ValueError:  # e.g. a malformed redirect Location header
            return _Outcome(error="malformed response")
        status = response.status_code
        if status == 200:
            try:
                return _Outcome(parsed=_parse(response.json()))
            except ValueError:
                return _Outcome(error="malformed response")
        if status == 429:
            return _Outcome(error="rate limited (HTTP 429)", retryable=True, retry_after=_retry_after(response))
        if status >= 500:
            return _Outcome(error=f"server error (HTTP {status})", retryable=True, retry_after=_retry_after(response))
        if status == 404:
            return _Outcome(error="not found (HTTP 404)")
        if status in (401, 403):
            return _Outcome(error=f"access denied (HTTP {status}); check {API_KEY_ENV}")
        if 400 <= status < 500:
            return _Outcome(error=f"request rejected (HTTP {status})")
        return _Outcome(error=f"unexpected answer (HTTP {status})")

    def _get(self, url: str) -> requests.Response:
        # Redirects are followed by hand: requests would forward a custom header such as x-api-key to any host.
        for _ in range(_MAX_REDIRECTS + 1):
            headers = {"Accept": "application/json"}
            if self._api_key is not None and _same_origin(url, self.base_url):
                headers["x-api-key"] = self._api_key
            started = time.monotonic()
            response = self._session.get(url, headers=headers, timeout=self.timeout, allow_redirects=False)
            log.debug("GET %s -> HTTP %d (%.2f s)", url, response.status_code, time.monotonic() - started)
            location = response.headers.get("Location")
            if not (response.is_redirect and location):
                return response
            response.close()
            url = urljoin(url, location)
        return response

    # --- cache ------------------------------------------------------------------------------------------

    def _cache_path(self, neuronpedia_id: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", neuronpedia_id.replace("/", "__"))
        # the hash keeps ids apart that the substitution would merge (e.g. "a_/b" and "a/_b")
        digest = hashlib.sha256(neuronpedia_id.encode("utf-8")).hexdigest()[:10]
        return self.cache_dir / f"{safe}-{digest}.json"

    def _entries(self, neuronpedia_id: str) -> dict[int, dict[str, Any]]:
        """The in-memory cache of one id, loaded from disk on first use. Call with the lock held."""
        entries = self._memory.get(neuronpedia_id)
        if entries is None:
            entries = self._memory[neuronpedia_id] = self._read_disk(neuronpedia_id)
        return entries

    def _read_disk(self, neuronpedia_id: str) -> dict[int, dict[str, Any]]:
        path = self._cache_path(neuronpedia_id)
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
        entries: dict[int, dict[str, Any]] = {}
        for key, value in raw.items():
            entry = _valid_entry(value)
            if entry is not None and isinstance(key, str) and key.isdigit():
                entries[int(key)] = entry
        return entries

    def _cached(self, neuronpedia_id: str, index: int) -> Explanation | None:
        with self._lock:
            entry = self._entries(neuronpedia_id).get(index)
        if entry is None:
            return None
        description, frac_nonzero, max_activation = entry["description"], entry["frac_nonzero"], entry["max_activation"]
        return Explanation(neuronpedia_id, index, description, frac_nonzero, max_activation, site=self.base_url)

    def _remember(self, result: Explanation) -> None:
        entry = {
            "description": result.description,
            "frac_nonzero": result.frac_nonzero,
            "max_activation": result.max_activation,
            "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        with self._lock:
            self._entries(result.neuronpedia_id)[result.index] = entry

    def _flush(self, neuronpedia_id: str) -> None:
        """Write one id's entries to disk, merged with whatever another process wrote there meanwhile."""
        with self._lock:
            merged = {**self._read_disk(neuronpedia_id), **self._entries(neuronpedia_id)}
            if not merged:
                return
            path = self._cache_path(neuronpedia_id)
            try:
                write_json_atomic(path, {str(i): merged[i] for i in sorted(merged)})
            except OSError as exc:
                log.warning("could not write the Neuronpedia cache %s (%s); keeping it in memory", path, exc.strerror)


@dataclass(frozen=True)
class _Outcome:
    """One request, classified."""

    parsed: tuple[str | None, float | None, float | None] = (None, None, None)
    error: str | None = None
    retryable: bool = False
    retry_after: float | None = None
    network: bool = False  # unreachable or timed out: the rest of a batch would fare no better
    refused: bool = False


class _Breaker:
    """Shared by the fetches of one batch: once tripped, the others stop retrying and report its reason."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None
        self._lock = threading.Lock()

    def trip(self, reason: str) -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason
                self._event.set()

    def wait(self, seconds: float) -> None:
        """Sleep, but wake up as soon as the breaker trips."""
        if seconds > 0:
            self._event.wait(seconds)


def _split_id(neuronpedia_id: object) -> tuple[str, str]:
    if not isinstance(neuronpedia_id, str) or not _NEURONPEDIA_ID_RE.match(neuronpedia_id):
        raise InputError(
            f'Neuronpedia id must be "<modelId>/<source>" with one slash and no spaces '
            f'(e.g. "gemma-2-2b/12-gemmascope-res-16k"), got {neuronpedia_id!r}'
        )
    model_id, source = neuronpedia_id.split("/")
    if model_id in (".", "..") or source in (".", ".."):
        raise InputError(f"Neuronpedia id parts cannot be '.' or '..', got {neuronpedia_id!r}")
    return model_id, source


def _check_index(index: object) -> int:
    if isinstance(index, bool):
        raise InputError(f"latent index must be a non-negative integer, got {index!r}")
    try:
        value = operator.index(index)  # accepts numpy and 0-d torch integers
    except TypeError:
        raise InputError(f"latent index must be a non-negative integer, got {index!r}") from None
    if value < 0:
        raise InputError(f"latent index must be a non-negative integer, got {value}")
    return value


def _same_origin(url: str, base_url: str) -> bool:
    a, b = urlsplit(url), urlsplit(base_url)
    return a.scheme == b.scheme and a.netloc.lower() == b.netloc.lower()


def _retry_after(response: requests.Response) -> float | None:
    """A numeric ``Retry-After`` in seconds (HTTP dates are ignored: the usual backoff applies)."""
    try:
        seconds = float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _connection_reason(exc: BaseException) -> str:
    """Why a connection failed, from the exception chain requests and urllib3 build."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
        if isinstance(current, socket.gaierror) or type(current).__name__ == "NameResolutionError":
            return "could not resolve host"
        linked = (current.__cause__, current.__context__, getattr(current, "reason", None), *current.args)
        todo.extend(e for e in linked if isinstance(e, BaseException))
    text = str(exc)
    if "Connection refused" in text or "Errno 111" in text:
        return "connection refused"
    return "network error"


def _number(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"not a number: {value!r}")
    return float(value) if math.isfinite(value) else None


def _parse(payload: object) -> tuple[str | None, float | None, float | None]:
    """``(description, frac_nonzero, max_activation)`` from a feature answer; ValueError if its shape is wrong."""
    if not isinstance(payload, dict):
        raise ValueError("not an object")
    explanations = payload.get("explanations")
    if not isinstance(explanations, list):
        raise ValueError("explanations is not a list")
    description = None
    if explanations:
        first = explanations[0]
        if not isinstance(first, dict):
            raise ValueError("explanation is not an object")
        text = first.get("description")
        if text is not None and not isinstance(text, str):
            raise ValueError("description is not a string")
        description = text.strip() or None if text else None
    return description, _number(payload.get("frac_nonzero")), _number(payload.get("maxActApprox"))


def _valid_entry(value: object) -> dict[str, Any] | None:
    """A cache entry with the expected fields, or None for anything else (skipped, not fatal)."""
    if not isinstance(value, dict):
        return None
    description = value.get("description")
    if description is not None and not isinstance(description, str):
        return None
    try:
        frac_nonzero, max_activation = _number(value.get("frac_nonzero")), _number(value.get("max_activation"))
    except ValueError:
        return None
    fetched_at = value.get("fetched_at")
    return {
        "description": description,
        "frac_nonzero": frac_nonzero,
        "max_activation": max_activation,
        "fetched_at": fetched_at if isinstance(fetched_at, str) else None,
    }
