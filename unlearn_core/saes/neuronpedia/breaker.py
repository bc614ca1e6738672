"""A process-wide circuit breaker per Neuronpedia site, so a rate-limited or failing site is not asked again and
again by every page rerun and every session.

A site's breaker *opens* (its look-ups fail at once, without HTTP, with a reason that says when it retries) when
the site, after urllib3's retries:

* answers HTTP 429, or any 5xx carrying ``Retry-After``: for ``Retry-After`` seconds;
* cannot be reached or times out: for :data:`DEFAULT_COOLDOWN`;
* answers 5xx (without ``Retry-After``) to :data:`SERVER_ERRORS_TO_OPEN` look-ups in a row: for
  :data:`DEFAULT_COOLDOWN` (one 5xx may be that latent's problem, not the site's).

Waits are capped at :data:`MAX_COOLDOWN`. Once the wait has passed, look-ups go through again; the first answer
the site gives (anything but 429 or 5xx) closes the breaker, another failure opens it again.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from datetime import timezone
from email.utils import parsedate_to_datetime

DEFAULT_COOLDOWN = 30.0
"""Seconds a site stays blocked when it gave no ``Retry-After``."""
MAX_COOLDOWN = 60.0
"""Longest block, whatever ``Retry-After`` asks for."""
SERVER_ERRORS_TO_OPEN = 2
"""Look-ups in a row answered 5xx (without ``Retry-After``) that open the breaker."""


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header in seconds (delay or HTTP date, never negative); None when absent or unreadable."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(seconds, 0.0) if math.isfinite(seconds) else None


class SiteBreaker:
    """The breaker of one site (thread-safe); see the module docstring."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._open_until = 0.0
        self._reason = ""
        self._server_errors = 0

    def blocked(self) -> str | None:
        """Why look-ups fail fast now (``"Neuronpedia rate-limited (HTTP 429); retrying after 27 s"``), or None."""
        with self._lock:
            remaining = self._open_until - self._clock()
            if remaining <= 0:
                return None
            return f"{self._reason}; retrying after {math.ceil(remaining)} s"

    def record(self, status: int | None, error: str | None, network: bool, retry_after: float | None) -> None:
        """Take note of one finished look-up: its final HTTP status (None without an answer), its error (None
        when it succeeded), whether the site was unreachable or timed out, and the answer's ``Retry-After``."""
        with self._lock:
            if status == 429:
                self._open(retry_after, "Neuronpedia rate-limited (HTTP 429)")
            elif status is not None and status >= 500:
                self._server_errors += 1
                if retry_after is not None or self._server_errors >= SERVER_ERRORS_TO_OPEN:
                    self._open(retry_after, f"Neuronpedia unavailable ({error})")
            elif network and error is not None:
                reason = error if error.startswith("Neuronpedia ") else f"Neuronpedia unavailable ({error})"
                self._open(None, reason)
            elif status is not None:  # the site answered: it is up
                self._open_until = 0.0
                self._server_errors = 0

    def _open(self, retry_after: float | None, reason: str) -> None:
        wait = DEFAULT_COOLDOWN if retry_after is None else retry_after
        self._open_until = self._clock() + min(max(wait, 0.0), MAX_COOLDOWN)
        self._reason = reason


_BREAKERS: dict[str, SiteBreaker] = {}
_REGISTRY_LOCK = threading.Lock()


def breaker_for(base_url: str) -> SiteBreaker:
    """The process-wide breaker of one site (shared by every client of that base URL)."""
    key = base_url.rstrip("/").lower()
    with _REGISTRY_LOCK:
        found = _BREAKERS.get(key)
        if found is None:
            found = _BREAKERS[key] = SiteBreaker()
        return found


def reset_breakers() -> None:
    """Close every site's breaker (forget all failures), e.g. for a "retry now" button or between tests."""
    with _REGISTRY_LOCK:
        _BREAKERS.clear()
