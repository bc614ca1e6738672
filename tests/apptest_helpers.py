"""What every AppTest of the app needs: open it, re-run it (failing on any exception), its typed session state, a
button by label."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from app_support.state import SESSION_KEY, Session

APP = Path(__file__).resolve().parent.parent / "app.py"


def new_app(timeout: float = 600) -> AppTest:
    """A new browser session on the app's first page, run once."""
    return run(AppTest.from_file(str(APP), default_timeout=timeout))


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
