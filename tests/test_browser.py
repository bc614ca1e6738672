"""End to end in a real browser: `streamlit run app.py` served on loopback, driven by headless Debian Chromium
(Playwright, with the system browser) through explore -> tick latents -> save -> compare. Screenshots of every page
go to ``$UNLEARN_ARTIFACTS_DIR`` (default ``artifacts/screenshots``) for CI to keep and for people to look at.

Skipped when Chromium or Playwright is missing, unless ``UNLEARN_REQUIRE_BROWSER=1`` (CI sets it): then it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from unlearn_core.forget_set import load_feature_list

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("UNLEARN_CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(os.environ.get("UNLEARN_ARTIFACTS_DIR", REPO / "artifacts" / "screenshots"))
pytestmark = pytest.mark.integration


def _need_browser() -> None:
    missing = []
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        missing.append(f"Chromium ({CHROMIUM}; Debian package 'chromium')")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright Python package")
    if missing:
        if os.environ.get("UNLEARN_REQUIRE_BROWSER") == "1":
            pytest.fail("browser test required but missing: " + ", ".join(missing))
        pytest.skip("missing " + ", ".join(missing))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    _need_browser()
    port = _free_port()
    env = {**os.environ, "UNLEARN_FEATURE_LISTS_DIR": str(tmp_path)}
    log = (tmp_path / "streamlit.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"), "--server.headless=true",
         f"--server.port={port}", "--server.address=127.0.0.1", "--browser.gatherUsageStats=false"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("streamlit did not start: " + (tmp_path / "streamlit.log").read_text()[-2000:])
    yield url, tmp_path
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def _idle(page, timeout: float = 300_000) -> None:
    """Wait until Streamlit has finished running the script (its 'running' indicator is gone)."""
    page.wait_for_timeout(400)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout, polling=250
    )
    page.wait_for_timeout(300)


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(1500)  # let lazily drawn parts (tables, charts) finish painting
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _open(pw, height: int = 1800):
    """Headless Debian Chromium with one page (a tall viewport, for full-page screenshots) and its page errors."""
    browser = pw.chromium.launch(
        executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
        args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
              "--disable-component-update", "--disable-sync"],
    )
    page = browser.new_page(viewport={"width": 1440, "height": height})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return browser, page, errors


def _visible_button(page, name: str):
    return page.get_by_role("button", name=name).locator("visible=true").first


def test_explore_tick_save_compare_in_chromium(server):
    from playwright.sync_api import expect, sync_playwright

    url, list_dir = server
    with sync_playwright() as pw:
        browser, page, errors = _open(pw)
        page.goto(url)

        # Explore opens by default on the offline model
        expect(page.get_by_text("Where a latent fires").first).to_be_visible(timeout=300_000)
        _idle(page)
        expect(page.get_by_role("tab", name="Layer 12")).to_be_visible()
        _shot(page, "1_explore")
        _visible_button(page, "Tick all shown").click()
        _idle(page)
        expect(page.get_by_text("added [").first).to_be_visible()
        expect(page.get_by_text("20 latents").first).to_be_visible()

        # Forget set: save it
        page.get_by_role("link", name="Forget set").click()
        _idle(page)
        expect(page.get_by_text("unsaved changes").first).to_be_visible()
        expect(page.get_by_role("tab", name="Suggest latents")).to_be_visible()
        _visible_button(page, "Suggest latents")  # the automated selection panel is the first tab
        _shot(page, "2a_suggest_latents")
        page.get_by_role("tab", name="Open / save").click()
        name_box = page.get_by_label("File name")
        name_box.fill("browser_list.json")
        name_box.press("Enter")
        _idle(page)
        _shot(page, "2_forget_set")
        _visible_button(page, "Save as").click()
        _idle(page)
        expect(page.get_by_text("Saved browser_list.json").first).to_be_visible()
        saved = load_feature_list(list_dir / "browser_list.json")
        assert saved.total_latents == 20

        # Compare: a small perplexity run and generations
        page.get_by_role("link", name="Compare").click()
        _idle(page)
        for label, value in (("Texts per set", "3"), ("Tokens per text", "64"), ("New tokens", "8")):
            box = page.get_by_label(label).locator("visible=true").first  # the token view has its own "New tokens"
            box.fill(value)
            box.press("Enter")
            _idle(page)
        # Start a run and stop it part-way: what was computed stays, and Run completes the rest.
        _visible_button(page, "Run perplexity").click()
        expect(page.get_by_text(re.compile(r"on wikitext2-clean")).first).to_be_visible(timeout=300_000)
        _visible_button(page, "Stop").click()
        _idle(page)
        # the caption drawn before the run ("0 of N") stays on screen until the rerun after Stop replaces it
        partial = page.get_by_text(re.compile(r"^[1-9]\d* of \d+ perplexity results computed — Run computes the rest"))
        expect(partial).to_be_visible(timeout=60_000)
        done, total = map(int, re.findall(r"\d+", partial.inner_text())[:2])
        assert 0 < done < total
        _visible_button(page, "Run perplexity").click()
        expect(page.get_by_text(re.compile(r"^(\d+) of \1 perplexity results computed"))).to_be_visible(timeout=600_000)
        expect(page.locator(".js-plotly-plot").first).to_be_visible()
        _idle(page)
        _visible_button(page, "Run generations").click()
        expect(page.get_by_text(re.compile(r"^(\d+) of \1 generations computed"))).to_be_visible(timeout=600_000)
        _idle(page)
        expect(page.get_by_text("ablated: layer 5").first).to_be_visible()
        _shot(page, "3_compare")
        # the trade-off panel draws a committed sweep's Pareto plot
        sweep_box = page.get_by_label("Committed sweep")
        sweep_box.scroll_into_view_if_needed()
        sweep_box.click()
        page.keyboard.type("hp-ratio-all")  # the select box filters its options as you type
        page.keyboard.press("Enter")
        _idle(page)
        expect(page.get_by_text("Best within the retain budget").first).to_be_visible(timeout=60_000)
        page.get_by_text("Best within the retain budget").first.scroll_into_view_if_needed()
        _shot(page, "4_tradeoff")
        browser.close()
    assert not errors, errors


def test_explore_search_tick_and_token_view_in_chromium(server):
    """Search every latent for a word, tick the results into the forget set, then read the token-by-token view."""
    from playwright.sync_api import expect, sync_playwright

    url, _ = server
    with sync_playwright() as pw:
        browser, page, errors = _open(pw)
        page.goto(url)
        expect(page.get_by_text("Where a latent fires").first).to_be_visible(timeout=300_000)
        _idle(page)
        page.get_by_role("tab", name="Layer 12").click()
        _idle(page)
        page.get_by_text("Search all latents of this SAE").locator("visible=true").first.click()
        box = page.get_by_label("Search all latents").locator("visible=true").first
        box.fill("Quidditch")
        box.press("Enter")
        _idle(page)
        expect(_visible_button(page, "Tick all results")).to_be_visible(timeout=60_000)  # results came back
        _visible_button(page, "Tick all results").scroll_into_view_if_needed()
        _shot(page, "6_explore_search")
        _visible_button(page, "Tick all results").click()
        _idle(page)
        expect(page.get_by_text("Layer 12: added [").first).to_be_visible()

        page.get_by_role("link", name="Compare").click()
        _idle(page)
        page.get_by_text("Token by token: baseline vs ablated").first.click()
        _idle(page)
        new_tokens = page.get_by_label("New tokens").locator("visible=true").last
        new_tokens.fill("12")
        new_tokens.press("Enter")
        _idle(page)
        _visible_button(page, "Compare token by token").click()
        _idle(page)
        expect(page.get_by_text("Fell most").first).to_be_visible(timeout=300_000)
        page.get_by_text("Token by token: baseline vs ablated").first.scroll_into_view_if_needed()
        _shot(page, "7_token_compare")
        browser.close()
    assert not errors, errors


def test_first_visit_to_a_page_url_gets_the_apps_navigation(server):
    """A fresh server whose first visitor opens /compare (Streamlit's legacy ``pages/`` mode until app.py has run)
    shows the app's three pages, not Streamlit's directory listing (app, compare, explore, forget set)."""
    from playwright.sync_api import expect, sync_playwright

    url, _ = server
    with sync_playwright() as pw:
        browser, page, errors = _open(pw, height=1200)
        for path, title in (("/compare", "Compare"), ("/forget_set", "Forget set")):
            page.goto(url + path)
            expect(page.get_by_role("heading", name=title, exact=True).first).to_be_visible(timeout=300_000)
            _idle(page)
            links = page.locator('[data-testid="stSidebarNav"] a').locator("visible=true")
            # each link reads "<material icon name> <title>", e.g. "search Explore"; directory entries have no icon
            names = [re.sub(r"^[a-z_]+ (?=[A-Z])", "", " ".join(t.split())) for t in links.all_inner_texts()]
            assert names == ["Explore", "Forget set", "Compare"], (path, names)
            assert not {"app", "forget set", "compare", "explore"} & set(names), names
            expect(page.get_by_text("Forget set:").first).to_be_visible()  # the app's sidebar, drawn once
        _shot(page, "5_first_visit_forget_set")
        browser.close()
    assert not errors, errors
