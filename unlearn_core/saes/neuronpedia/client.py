"""The Neuronpedia client: configuration, one latent or many in parallel, cached (see the package docstring)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from concurrent.futures import TimeoutError as FuturesTimeout
from pathlib import Path
from urllib.parse import urlsplit

from unlearn_core.errors import InputError
from unlearn_core.saes.neuronpedia.breaker import breaker_for
from unlearn_core.saes.neuronpedia.cache import ExplanationCache
from unlearn_core.saes.neuronpedia.explanation import (
    API_KEY_ENV,
    BASE_URL_ENV,
    DEFAULT_BASE_URL,
    Explanation,
    check_index,
    feature_api_url,
    split_id,
)
from unlearn_core.saes.neuronpedia.transport import MAX_RESPONSE_BYTES, KeyedSession, get_feature

ProgressFn = Callable[[int, int], None]
"""Receives ``(done, total)`` while :meth:`NeuronpediaClient.explanations` works through its latents."""

BATCH_DEADLINE = 20.0
"""Default seconds :meth:`NeuronpediaClient.explanations` spends on one batch before giving up on the rest."""


class NeuronpediaClient:
    """Fetches and caches latent explanations from Neuronpedia (see the package docstring for the behaviour)."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        cache_dir: Path | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_workers: int = 8,
        batch_deadline: float = BATCH_DEADLINE,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
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
            batch_deadline: seconds one :meth:`explanations` call may take; latents not fetched by then are
                reported as unavailable (deadline).
            max_response_bytes: largest answer body accepted; a larger one is refused (``response too large``).
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
        if not (isinstance(batch_deadline, (int, float)) and batch_deadline > 0):
            raise InputError(f"batch_deadline must be a positive number of seconds, got {batch_deadline!r}")
        if not (isinstance(max_response_bytes, int) and max_response_bytes > 0):
            raise InputError(f"max_response_bytes must be a positive integer, got {max_response_bytes!r}")
        self.base_url = base
        self.timeout = float(timeout)
        self.retries = retries
        self.backoff = float(backoff)
        self.max_workers = max_workers
        self.batch_deadline = float(batch_deadline)
        self.max_response_bytes = max_response_bytes
        api_key = (api_key or os.environ.get(API_KEY_ENV, "")).strip() or None
        self._has_key = api_key is not None
        if cache_dir is None:
            from unlearn_core.models.loading import cache_dir as default_cache_dir  # lazy: models imports torch

            cache_dir = default_cache_dir() / "neuronpedia"
        self.cache_dir = Path(cache_dir)
        self._cache = ExplanationCache(self.cache_dir, base)
        self._session = KeyedSession(base, api_key, retries, self.backoff, pool_size=max(10, max_workers))

    def __repr__(self) -> str:
        return f"NeuronpediaClient(base_url={self.base_url!r})"

    __str__ = __repr__

    @property
    def has_api_key(self) -> bool:
        """Whether requests carry an API key (the key itself is never exposed)."""
        return self._has_key

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
        split_id(neuronpedia_id)
        index = check_index(index)
        cached = self._cached(neuronpedia_id, index)
        if cached is not None:
            return cached
        result = self._fetch(neuronpedia_id, index, _BatchStop())
        if result.ok:
            self._cache.flush(neuronpedia_id)
        return result

    def explanations(
        self,
        neuronpedia_id: str,
        indices: Iterable[int],
        progress: ProgressFn | None = None,
        deadline: float | None = None,
    ) -> dict[int, Explanation]:
        """Explanations of many latents of one SAE, keyed by index in first-seen order (duplicates fetched once).

        Cached latents are answered without HTTP; the rest are fetched on ``max_workers`` threads. ``progress``
        is called from the calling thread with ``(done, total)``, first for the cached ones, last with
        ``(total, total)``. After ``deadline`` seconds (default ``batch_deadline``) the latents not fetched yet
        are reported as unavailable (deadline); requests still in flight finish in the background, and what they
        fetch is kept in memory (and written to disk with the next successful look-up).
        """
        started = time.monotonic()
        limit = self.batch_deadline if deadline is None else float(deadline)
        split_id(neuronpedia_id)
        unique = list(dict.fromkeys(check_index(i) for i in indices))
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
        if not todo:
            return {i: found[i] for i in unique}
        blocked = breaker_for(self.base_url).blocked()
        if blocked is not None:  # the site is known to be failing: every look-up gets the same answer at once
            found.update((i, self._failed(neuronpedia_id, i, blocked)) for i in todo)
            if progress is not None:
                progress(total, total)
            return {i: found[i] for i in unique}
        stop = _BatchStop()
        pool = ThreadPoolExecutor(max_workers=min(self.max_workers, len(todo)), thread_name_prefix="neuronpedia")
        try:
            futures = {pool.submit(self._fetch, neuronpedia_id, i, stop): i for i in todo}
            try:
                for future in as_completed(futures, timeout=max(0.0, started + limit - time.monotonic())):
                    result = future.result()
                    found[result.index] = result
                    done += 1
                    if progress is not None:
                        progress(done, total)
            except FuturesTimeout:
                reason = f"deadline: {limit:g} s for this batch of {len(todo)} look-ups passed"
                stop.trip(reason)
                found.update((i, self._failed(neuronpedia_id, i, reason)) for i in todo if i not in found)
                if progress is not None:
                    progress(total, total)
        finally:
            # past the deadline, or if progress raised (e.g. the app rerun), the fetches not yet started give up
            # at once and those in flight finish in the background (caching what they get)
            stop.trip("cancelled")
            pool.shutdown(wait=False, cancel_futures=True)
            self._cache.flush(neuronpedia_id)
        return {i: found[i] for i in unique}

    def _fetch(self, neuronpedia_id: str, index: int, stop: _BatchStop) -> Explanation:
        """One latent from Neuronpedia (retried by the session), unless the batch gave up or the site's breaker
        is open; successes are remembered in memory, failures are told to the site's breaker."""
        if stop.reason is not None:
            return self._failed(neuronpedia_id, index, stop.reason)
        site = breaker_for(self.base_url)
        blocked = site.blocked()
        if blocked is not None:
            return self._failed(neuronpedia_id, index, blocked)
        url = feature_api_url(self.base_url, neuronpedia_id, index)
        outcome = get_feature(self._session, url, self.timeout, self.max_response_bytes)
        site.record(outcome.status, outcome.error, outcome.network, outcome.retry_after)
        if outcome.error is None:
            description, frac_nonzero, max_activation = outcome.parsed
            result = Explanation(neuronpedia_id, index, description, frac_nonzero, max_activation, site=self.base_url)
            self._remember(result)
            return result
        if outcome.network:
            stop.trip(outcome.error)
        return self._failed(neuronpedia_id, index, outcome.error)

    def _failed(self, neuronpedia_id: str, index: int, error: str) -> Explanation:
        return Explanation(neuronpedia_id, index, None, None, None, error=error, site=self.base_url)

    def _cached(self, neuronpedia_id: str, index: int) -> Explanation | None:
        parsed = self._cache.get(neuronpedia_id, index)
        if parsed is None:
            return None
        description, frac_nonzero, max_activation = parsed
        return Explanation(neuronpedia_id, index, description, frac_nonzero, max_activation, site=self.base_url)

    def _remember(self, result: Explanation) -> None:
        self._cache.put(result.neuronpedia_id, result.index, (result.description, result.frac_nonzero,
                                                              result.max_activation))


class _BatchStop:
    """Shared by the fetches of one batch: once tripped, the fetches not yet started report its reason."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._lock = threading.Lock()

    def trip(self, reason: str) -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason
