"""What every AppTest of the app needs: open it, re-run it (failing on any exception), its typed session state, a
button by label.

The app's sidebar defaults to the ``auto`` precision (bfloat16 on this project's AMX machines); sessions opened here
pin float32, the exact reference, since the tests compare the app's numbers with the library's float32 ones (and
share the float32 model the ``real_lm`` fixture loads). ``open_app(precision=None)`` keeps the app's default."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from app_support.state import SESSION_KEY, Key, Session

APP = Path(__file__).resolve().parent.parent / "app.py"


EXACT_PRECISION = "float32"


def open_app(timeout: float = 600, precision: str | None = EXACT_PRECISION) -> AppTest:
    """A new browser session on the app, not run yet, with the sidebar's precision set (None: the app's default)."""
    at = AppTest.from_file(str(APP), default_timeout=timeout)
    if precision is not None:
        at.session_state[Key.DTYPE] = precision
    return at


def new_app(timeout: float = 600, precision: str | None = EXACT_PRECISION) -> AppTest:
    """A new browser session on the app's first page, run once."""
    return run(open_app(timeout, precision))


def run(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def app_state(at: AppTest) -> Session:
    """What the app keeps for the test's session (the typed state of app_support.state)."""
    return at.session_state[SESSION_KEY]


def button(at: AppTest, label: str):
    matches = [b for b in at.button if b.label == label]
    assert matches, f"no button {label!r}; have {[b.label for b in at.button]}"
    return matches[0]
