"""The shared app under hostile or unlucky input, driven with AppTest: untrusted SAEs in imported lists, Markdown
injection through foreign text, drafts that survive a refresh or a restart, malformed sweeps, bad file names,
uploads (decoded once, size-checked), the dashboards slot, and Stop reaching every long job.

The model is the tiny random transformer (patched into the app's shared loader), so these run in seconds; the pages
used either need no model (Forget set) or only run what the tiny model can (Compare's setup and uploads).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time

import pytest
from apptest_helpers import APP, app_state, button, open_app, run
from streamlit.testing.v1 import AppTest

from app_support import resources
from unlearn_core.forget_set import content_signature, load_feature_list

REPO = APP.parent
UNTRUSTED_SAE = "gemma-scope-2b-pt-res/layer_20/width_1m/average_l0_101"
HOSTILE_NAME = "![x](http://127.0.0.1:9/track.png) [click](http://evil)"


# ------------------------------------------------------------------------------------------------ helpers


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Feature lists and drafts in temporary folders; the shared resources start empty and are emptied again."""
    lists, drafts = tmp_path / "lists", tmp_path / "drafts"
    lists.mkdir()
    monkeypatch.setenv("UNLEARN_FEATURE_LISTS_DIR", str(lists))
    monkeypatch.setenv("UNLEARN_DRAFTS_DIR", str(drafts))
    _clear_resources()
    yield {"lists": lists, "drafts": drafts}
    _clear_resources()


def _clear_resources() -> None:
    for name in ("_model_slot", "_sae_slot", "_dashboard_slot"):
        getattr(resources, name).clear()


@pytest.fixture
def tiny_app(env, tiny_lm, monkeypatch):
    """The app's shared model loader gives the tiny model (never cached past the test: see ``env``)."""
    monkeypatch.setattr(resources, "load_model", lambda *a, **k: tiny_lm)
    return env


def open_page(page: str, query: dict[str, str] | None = None) -> AppTest:
    """A new browser session whose first request is ``page`` (as a visitor opening its URL)."""
    at = open_app(120)
    if query:
        at.query_params.update(query)
    at.switch_page(page)
    return run(at)


def list_json(name: str = "a list", sae: str = "saes/gemma-3-270m/layer_12_width_4k", layer: int = 12,
              ids: tuple[int, ...] = (3, 4), label: str | None = None) -> bytes:
    return json.dumps({
        "format_version": 1, "name": name, "description": "", "created": "2026-01-01T00:00:00Z",
        "updated": "2026-01-01T00:00:00Z", "model": "google/gemma-3-270m",
        "saes": [{"sae": sae, "hook_name": f"blocks.{layer}.hook_resid_post", "layer": layer, "neuronpedia": None,
                  "latents": [{"id": i, "label": label, "note": None} for i in ids]}],
    }).encode()


def import_list(at: AppTest, content: bytes, file_name: str = "list.json") -> AppTest:
    at.file_uploader(key="import_upload").upload(file_name, content, "application/json")
    run(at)
    button(at, "Import").click()
    return run(at)


def suggest_panel_upload() -> str:
    from app_support.suggest_panel import UPLOAD

    return UPLOAD


def messages(at: AppTest, kind: str) -> str:
    return " ".join(e.value for e in getattr(at, kind))


MARKDOWN_FIELDS = ("body", "label", "help")


def rendered_markdown(at: AppTest) -> list[str]:
    """Every string the browser renders as Markdown: Markdown, captions, alerts, and widget/tab/expander labels
    and help texts, in the main area and the sidebar."""
    found: list[str] = []

    def from_proto(msg) -> None:
        for field, value in msg.ListFields():
            items = [value] if hasattr(value, "ListFields") or isinstance(value, (str, bytes, int, float)) else value
            for item in items:
                if hasattr(item, "ListFields"):
                    from_proto(item)
                elif field.name in MARKDOWN_FIELDS and isinstance(item, str):
                    found.append(item)

    def walk(node) -> None:
        proto = getattr(node, "proto", None)
        if proto is not None and hasattr(proto, "ListFields"):
            from_proto(proto)
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    return found


def assert_no_live_markup(texts: list[str], needles: tuple[str, ...] = ("evil", "track.png")) -> None:
    """No link, image or automatic link made from the hostile text survives in what is rendered as Markdown."""
    hostile = [t for t in texts if any(n in t for n in needles)]
    assert hostile, "the hostile text is shown nowhere: the test checks nothing"
    for text in hostile:
        assert not re.search(r"(?<!\\)\]\(", text), text  # [text](url), ![alt](url)
        assert not re.search(r"(?<!\\)!(?<!\\)\[", text), text
        assert not re.search(r"(?<!\\)<[a-z/]", text, re.I), text  # HTML, <autolinks>
        assert not re.search(r"(https?|ftp)://|www\.", text, re.I), text  # bare URLs (GFM autolinks)


# ------------------------------------------------------------------------------------------------ 1. untrusted SAEs


def test_shared_loader_refuses_an_sae_outside_the_preset(tiny_app, monkeypatch):
    from unlearn_core.errors import UnlearnError
    from unlearn_core.models.presets import get_preset

    calls: list[str] = []
    monkeypatch.setattr(resources, "load_sae", lambda ref, **kw: calls.append(ref))
    with pytest.raises(UnlearnError, match="not one of this preset's SAE families"):
        resources.get_sae(UNTRUSTED_SAE, "cpu", "float32", preset=get_preset("gemma-3-270m-offline"))
    assert calls == []


def test_compare_refuses_an_imported_list_naming_an_untrusted_sae(tiny_app, monkeypatch):
    real_load_sae = resources.load_sae
    calls: list[str] = []

    def recording_load_sae(ref, **kw):
        calls.append(ref)
        return real_load_sae(ref, **kw)

    monkeypatch.setattr(resources, "load_sae", recording_load_sae)
    at = open_page("pages/forget_set.py")
    import_list(at, list_json("huge", UNTRUSTED_SAE, 20), "huge.json")
    assert app_state(at).forget_set.saes[0].sae == UNTRUSTED_SAE  # importing is fine; loading is the risk
    at.switch_page("pages/compare.py")
    run(at)
    errors = messages(at, "error")
    assert "not one of this preset" in errors and "SAE families" in errors, errors
    assert UNTRUSTED_SAE not in calls and calls  # the sidebar's own SAEs did load


# ------------------------------------------------------------------------------------------------ 2. Markdown injection


def test_hostile_list_and_file_names_never_render_as_markdown(tiny_app):
    at = open_page("pages/forget_set.py")
    import_list(at, list_json(HOSTILE_NAME, label="[l](http://evil/label)"), "[f](http://evil.example).json")
    assert app_state(at).forget_set.name == HOSTILE_NAME
    assert_no_live_markup(rendered_markdown(at))
    at.switch_page("pages/compare.py")
    run(at)
    assert_no_live_markup(rendered_markdown(at))


@pytest.mark.parametrize("file_name", ["](http://evil).json", "<img src=x onerror=alert(1)>.json"])
def test_hostile_upload_names_in_error_messages(tiny_app, file_name):
    at = open_page("pages/forget_set.py")
    import_list(at, b'{"broken": ', file_name)
    assert "Not imported" in messages(at, "error")
    assert_no_live_markup(rendered_markdown(at), ("evil", "img"))


# ------------------------------------------------------------------------------------------------ 3. drafts


def _add_ids(at: AppTest, ids: str) -> None:
    at.text_input(key="bulk_ids").set_value(ids)
    run(at)
    button(at, "Add").click()
    run(at)


def test_an_unsaved_draft_survives_a_refresh(tiny_app):
    at = open_page("pages/forget_set.py")
    draft_id = at.query_params.get("draft")
    assert draft_id and re.fullmatch(r"[0-9a-f]{32}", draft_id)
    _add_ids(at, "1, 2-3")
    next(t for t in at.text_input if t.label == "Name").set_value("my HP set")
    run(at)
    edited = app_state(at).forget_set
    assert edited.total_latents == 3 and edited.name == "my HP set"
    assert (tiny_app["drafts"] / f"{draft_id}.json").is_file()

    again = open_page("pages/forget_set.py", {"draft": draft_id})  # a refresh: new session, same URL
    offer = messages(again, "info")
    assert "Restore the unsaved draft of my HP set (3 latents, saved " in offer, offer
    assert any("unsaved draft" in i.value for i in again.sidebar.info)  # the sidebar's notice
    assert app_state(again).forget_set.total_latents == 0  # nothing changes before the user says so
    button(again, "Restore").click()
    run(again)
    restored = app_state(again).forget_set
    assert content_signature(restored) == content_signature(edited)
    assert any("unsaved changes" in w.value for w in again.warning)
    assert not any(b.label == "Restore" for b in again.button)


def test_discarding_a_draft_and_pruning_old_ones(tiny_app):
    drafts = tiny_app["drafts"]
    at = open_page("pages/forget_set.py")
    draft_id = at.query_params["draft"]
    _add_ids(at, "7")
    old = drafts / ("0" * 32 + ".json")
    old.write_text((drafts / f"{draft_id}.json").read_text())
    eight_days_ago = time.time() - 8 * 86400
    os.utime(old, (eight_days_ago, eight_days_ago))

    again = open_page("pages/forget_set.py", {"draft": draft_id})
    assert not old.exists()  # drafts older than 7 days are pruned
    button(again, "Discard").click()
    run(again)
    assert not (drafts / f"{draft_id}.json").exists()
    assert not any(b.label == "Restore" for b in again.button)
    assert "Restore" not in messages(open_page("pages/forget_set.py", {"draft": draft_id}), "info")


def test_drafts_never_touch_the_users_file(tiny_app):
    lists = tiny_app["lists"]
    mine = lists / "mine.json"
    mine.write_bytes(list_json("mine"))
    before = mine.read_bytes()
    at = open_page("pages/forget_set.py")
    draft_id = at.query_params["draft"]
    at.selectbox(key="open_choice").set_value("mine.json")
    run(at)
    button(at, "Open").click()
    run(at)
    _add_ids(at, "9")
    again = open_page("pages/forget_set.py", {"draft": draft_id})
    button(again, "Restore").click()
    run(again)
    assert mine.read_bytes() == before
    assert app_state(again).forget_set_path == mine and app_state(again).forget_set.total_latents == 3
    assert any("unsaved changes" in w.value for w in again.warning)  # restored is not saved: Save writes it


@pytest.mark.parametrize("bad", ["not json", "../../etc/passwd"])
def test_a_bad_draft_id_or_file_is_ignored(tiny_app, bad):
    drafts = tiny_app["drafts"]
    drafts.mkdir(exist_ok=True)
    good_id = "a" * 32
    (drafts / f"{good_id}.json").write_text("{ truncated")
    at = open_page("pages/forget_set.py", {"draft": good_id if bad == "not json" else bad})
    assert "Restore" not in messages(at, "info")
    assert re.fullmatch(r"[0-9a-f]{32}", at.query_params["draft"])


# ------------------------------------------------------------------------------------------------ 5. smaller items

SWEEP = json.loads((REPO / "docs" / "sweeps" / "hp-ratio-all-layers" / "sweep.json").read_text())


def _sweep_with(**changes) -> bytes:
    data = json.loads(json.dumps(SWEEP))
    point = changes.pop("point", None)
    if point is not None:
        data["points"][0].update(point)
    data.update(changes)
    return json.dumps(data).encode()


BAD_SWEEPS = {
    "score_is_text": json.dumps({"baseline": {}, "settings": {}, "points": [{"forget_score": "x"}]}).encode(),
    "layers_not_a_list": _sweep_with(point={"layers": 5}),
    "n_is_text": _sweep_with(point={"n": "ten"}),
    "selectivity_is_text": _sweep_with(point={"selectivity": "high"}),
    "label_is_an_object": _sweep_with(point={"label": {"a": 1}}),
    "intervention_is_a_list": _sweep_with(point={"intervention": ["zero"]}),
    "budget_is_text": _sweep_with(settings={"retain_ppl_budget": "ten percent"}),
    "best_is_text": _sweep_with(best="0"),
}


def _sweep_page() -> None:
    from app_support import sweep_panel

    sweep_panel.render()


@pytest.mark.parametrize("name", BAD_SWEEPS)
def test_a_sweep_with_wrong_field_types_gives_a_message(env, name):
    at = AppTest.from_function(_sweep_page, default_timeout=60)
    run(at)
    at.file_uploader(key="sweep_upload").upload("sweep.json", BAD_SWEEPS[name], "application/json")
    run(at)
    assert "Cannot show that sweep" in messages(at, "error")


def test_a_hostile_sweep_label_and_command_are_shown_as_text(env):
    data = json.loads(json.dumps(SWEEP))
    best = data["best"]
    data["points"][best]["label"] = HOSTILE_NAME
    data["command"] = "python -m x` [c](http://evil) `"
    at = AppTest.from_function(_sweep_page, default_timeout=60)
    run(at)
    at.file_uploader(key="sweep_upload").upload("sweep.json", json.dumps(data).encode(), "application/json")
    run(at)
    assert "Best within the retain budget" in messages(at, "success")
    assert_no_live_markup(rendered_markdown(at))


@pytest.mark.parametrize("name", ["a\x00b", "../escape", "sub/dir.json", "..", ".json", ".hidden"])
def test_a_bad_save_as_name_gives_a_clear_message(tiny_app, name):
    lists = tiny_app["lists"]
    at = open_page("pages/forget_set.py")
    _add_ids(at, "5")
    next(t for t in at.text_input if t.label == "File name").set_value(name)
    run(at)
    assert "File name" in messages(at, "error") or "file name" in messages(at, "error").lower()
    assert button(at, "Save as").disabled
    assert sorted(p.name for p in lists.parent.rglob("*.json") if "drafts" not in p.parts) == []


def test_a_good_save_as_name_still_saves(tiny_app):
    at = open_page("pages/forget_set.py")
    _add_ids(at, "5")
    next(t for t in at.text_input if t.label == "File name").set_value("my list")
    run(at)
    button(at, "Save as").click()
    run(at)
    assert load_feature_list(tiny_app["lists"] / "my list.json").total_latents == 1


def test_an_upload_is_decoded_once_per_content(tiny_app, monkeypatch):
    from app_support import suggest_panel

    calls: list[str] = []
    real = suggest_panel.texts_from_bytes

    def counting(data, name, *args, **kwargs):
        calls.append(name)
        return real(data, name, *args, **kwargs)

    monkeypatch.setattr(suggest_panel, "texts_from_bytes", counting)
    at = open_page("pages/forget_set.py")
    at.selectbox(key="suggest_forget").set_value(suggest_panel_upload())
    run(at)
    at.file_uploader(key="suggest_forget_file").upload("book.txt", b"One paragraph.\n\nAnother one.", "text/plain")
    for _ in range(3):
        run(at)
    assert calls == ["book.txt"]
    at.file_uploader(key="suggest_forget_file").upload("book.txt", b"A changed file.", "text/plain")
    run(at)
    assert calls == ["book.txt", "book.txt"]


def test_every_upload_path_checks_the_size_limit(tiny_app, monkeypatch):
    from app_support import uploads

    monkeypatch.setattr(uploads, "MAX_UPLOAD_BYTES", {kind: 64 for kind in uploads.MAX_UPLOAD_BYTES})
    big = b"x" * 200
    at = open_page("pages/forget_set.py")
    import_list(at, big, "big.json")
    assert "larger than" in messages(at, "error")
    at.selectbox(key="suggest_forget").set_value(suggest_panel_upload())
    run(at)
    at.file_uploader(key="suggest_forget_file").upload("big.txt", big, "text/plain")
    run(at)
    assert messages(at, "error").count("larger than") >= 1
    at.switch_page("pages/compare.py")
    run(at)
    at.file_uploader(key="compare_uploads").upload("big.txt", big, "text/plain")
    at.file_uploader(key="probe_uploads").upload("big.json", big, "application/json")
    at.file_uploader(key="sweep_upload").upload("sweep.json", big, "application/json")
    run(at)
    errors = messages(at, "error")
    assert errors.count("larger than") == 3, errors


def test_the_dashboards_slot_follows_the_weights_not_just_the_ref(env):
    from tiny_models import random_jumprelu_sae

    first = dataclasses.replace(random_jumprelu_sae(16, 32, "blocks.1.hook_resid_post"), ref="same-ref")
    retrained = dataclasses.replace(random_jumprelu_sae(16, 32, "blocks.1.hook_resid_post", seed=1), ref="same-ref")
    boards = object()
    resources.remember_dashboards(first, boards)  # type: ignore[arg-type]
    assert resources.get_dashboards(first) is boards
    assert resources.get_dashboards(retrained) is not boards


# ------------------------------------------------------------------------------------------------ 6. Stop


def test_compare_jobs_are_stoppable_within_a_batch(tiny_app, monkeypatch):
    """Every Compare job (perplexity, probes, generations) gives the library a stop check, asked before each batch
    or decode step, through which a Stop click ends it."""
    import unlearn_core.scoring.batching as batching
    import unlearn_core.scoring.generation as generation
    from unlearn_core.data.quizzes import knowledge_set_names

    checks: list[bool] = []
    real_check = batching.check_stop

    def watching_check(should_stop=None):
        checks.append(bool(batching._SCOPED_STOPS.get()) or should_stop is not None)
        return real_check(should_stop)

    monkeypatch.setattr(batching, "check_stop", watching_check)
    gen_stops: list[bool] = []
    real_generate = generation.generate_batch

    def watching_generate(*args, **kwargs):
        gen_stops.append(callable(kwargs.get("should_stop")))
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(generation, "generate_batch", watching_generate)
    at = open_page("pages/compare.py")
    at.session_state["compare_texts"] = ["hp-fanwiki"]
    at.session_state["compare_max_texts"] = 2
    at.session_state["compare_seq_len"] = 16
    at.session_state["compare_probes"] = [knowledge_set_names()[0]]
    at.session_state["compare_probe_items"] = 5
    at.session_state["compare_prompts"] = "Who is Harry Potter?"
    at.session_state["compare_new_tokens"] = 2
    run(at)
    for label in ("Run perplexity", "Run probes"):
        checks.clear()
        button(at, label).click()
        run(at)
        assert checks and all(checks), (label, checks)  # every batch asked a stop check
    button(at, "Run generations").click()
    run(at)
    assert gen_stops == [True]


def test_compare_reports_running_out_of_memory_and_keeps_going(tiny_app, monkeypatch):
    """Out of memory in a Compare job (perplexity here) is a message on the page, not a traceback; the page stays
    usable and the next job runs."""
    import torch

    import unlearn_core.experiments.compare as compare

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        yield  # a generator, like the real perplexity_cell

    monkeypatch.setattr(compare, "perplexity_cell", no_memory)
    at = open_page("pages/compare.py")
    at.session_state["compare_texts"] = ["hp-fanwiki"]
    at.session_state["compare_max_texts"] = 2
    at.session_state["compare_seq_len"] = 16
    run(at)
    button(at, "Run perplexity").click()
    run(at)
    errors = messages(at, "error")
    assert "Out of memory: try fewer texts or fewer tokens per text" in errors and "20.00 GiB" not in errors
    assert button(at, "Run perplexity")  # still there: nothing crashed


def test_an_old_run_ending_in_another_thread_leaves_the_new_runs_frame_drawn(monkeypatch):
    """Fast reruns start the new run in a new thread while the old one unwinds; the old run's end must not make the
    new run's page think the sidebar is missing (it would draw it again: a duplicate widget key)."""
    import threading

    from app_support import drafts, shell

    monkeypatch.setattr(drafts, "begin_run", lambda: None)
    monkeypatch.setattr(drafts, "autosave", lambda: None)
    monkeypatch.setattr(shell, "_draw_frame", lambda: "settings")
    old_inside, new_checked, seen = threading.Event(), threading.Event(), {}

    def old_run():
        with shell.frame():
            old_inside.set()
            new_checked.wait(10)  # the new run enters its frame while this one is still inside ...
        # ... and this one's frame ends only now

    def new_run():
        old_inside.wait(10)
        with shell.frame():
            old.join(0.2)
            new_checked.set()
            old.join(10)
            seen["drawn"] = getattr(shell._FRAME, "drawn", False)

    old, new = threading.Thread(target=old_run), threading.Thread(target=new_run)
    old.start(), new.start()
    new.join(20), old.join(20)
    assert seen == {"drawn": True}
    assert not getattr(shell._FRAME, "drawn", False)  # this thread never ran a frame
