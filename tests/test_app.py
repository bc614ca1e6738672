"""The Streamlit entry point renders without exceptions (the full app is tested page by page once it exists)."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = Path(__file__).resolve().parent.parent / "app.py"


def test_app_renders_presets_and_feature_lists():
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not at.exception
    assert "Interpretable unlearning" in at.title[0].value
    shown = " ".join(str(m.value) for m in at.markdown) + " ".join(str(t.value) for t in at.table)
    assert "gemma-3-270m-offline" in shown
