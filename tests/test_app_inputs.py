"""The app with bad or unavailable inputs: Neuronpedia up, down or answering 429 (a loopback stand-in), and bad
uploads on the Compare page. Each must give a clear message and leave the app working."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from apptest_helpers import open_app
from streamlit.testing.v1 import AppTest

from tests.standins.fake_neuronpedia import FakeNeuronpedia, Reply, feature

APP = Path(__file__).resolve().parent.parent / "app.py"
NP_ID = "gemma-3-270m/12-gemmascope-2-res-16k"


def _explanation_page(np_id: str) -> None:
    """Renders what Explore shows for a Neuronpedia-hosted SAE: the table's explanation texts and the detail panel."""
    import dataclasses
    import json

    import streamlit as st
    from tiny_models import random_jumprelu_sae

    from app_support import views

    sae = dataclasses.replace(random_jumprelu_sae(16, 32, "blocks.12.hook_resid_post"), neuronpedia=np_id, ref="np-test")
    texts = views.explanation_texts(sae, [3, 5])
    st.code(json.dumps(texts))
    views.explanation_panel(sae, 3)


def _run_page(monkeypatch, tmp_path, url: str) -> AppTest:
    monkeypatch.setenv("NEURONPEDIA_API_URL", url)
    monkeypatch.setenv("UNLEARN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("NEURONPEDIA_API_KEY", raising=False)
    at = AppTest.from_function(_explanation_page, args=(NP_ID,), default_timeout=60)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def test_neuronpedia_explanations_shown(monkeypatch, tmp_path):
    with FakeNeuronpedia(fallback=lambda path: feature("mentions of Hogwarts")) as stub:
        at = _run_page(monkeypatch, tmp_path, stub.url)
    texts = json.loads(at.code[0].value)
    assert texts == {"3": "mentions of Hogwarts", "5": "mentions of Hogwarts"}
    assert any("Neuronpedia:** mentions of Hogwarts" in m.value for m in at.markdown)


def test_neuronpedia_down_keeps_the_app_working(monkeypatch, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    at = _run_page(monkeypatch, tmp_path, f"http://127.0.0.1:{port}")
    texts = json.loads(at.code[0].value)
    assert all(t.startswith("explanation unavailable (") and "unreachable" in t for t in texts.values())
    assert any("explanation unavailable" in w.value for w in at.warning)


def test_neuronpedia_rate_limited_and_malformed(monkeypatch, tmp_path):
    routes = {f"/api/feature/{NP_ID}/3": [Reply(429, {"message": "slow down"}, {"Retry-After": "0"})],
              f"/api/feature/{NP_ID}/5": [Reply(200, "<html>not json</html>")]}
    with FakeNeuronpedia(routes) as stub:
        at = _run_page(monkeypatch, tmp_path, stub.url)
    texts = json.loads(at.code[0].value)
    assert "429" in texts["3"] and texts["3"].startswith("explanation unavailable")
    assert "malformed" in texts["5"]


@pytest.mark.integration
def test_compare_rejects_bad_uploads_and_keeps_going(real_lm):
    at = open_app(600)
    at.run()
    at.switch_page("pages/compare.py")
    at.run()
    at.file_uploader(key="compare_uploads").upload("book.txt", bytes(range(256)) * 8, "text/plain")
    at.run()
    at.file_uploader(key="probe_uploads").upload("probes.json", b'[{"prompt": "x"', "application/json")
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    errors = " ".join(e.value for e in at.error)
    assert "book.txt looks like a binary file" in errors and "It is left out" in errors
    assert "probes.json" in errors and "malformed JSON" in errors
    assert any(b.label == "Run perplexity" and not b.disabled for b in at.button)
