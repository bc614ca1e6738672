"""Status lines for slow steps (conversion, downloads), logged and passed to an optional callback."""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger("unlearn_core.models")

ProgressFn = Callable[[str], None]
"""Receives short human-readable status lines while something slow happens."""


def say(progress: ProgressFn | None, message: str) -> None:
    """Log ``message`` and hand it to ``progress`` when given."""
    log.info(message)
    if progress is not None:
        progress(message)
