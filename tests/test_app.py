"""The Streamlit app driven with AppTest on the real offline model: explore -> tick latents -> save -> compare,
plus bad input on every page. Each AppTest is a separate session sharing the process-wide cached model."""

from __future__ import annotations

import json

import pytest
from apptest_helpers import APP, app_state, button, new_app, run
from streamlit.testing.v1 import AppTest

from unlearn_core.data.texts import load_texts
from unlearn_core.forget_set import content_signature, load_feature_list
from unlearn_core.models.precision import AUTO_DTYPE, auto_dtype, describe_precision
from unlearn_core.scoring.generation import generate
from unlearn_core.scoring.perplexity import perplexity

REPO = APP.parent
pytestmark = pytest.mark.integration


@pytest.fixture
def list_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARN_FEATURE_LISTS_DIR", str(tmp_path))
    return tmp_path


def tick(at: AppTest, table_index: int, rows: list[int]) -> None:
    editor = at.data_editor[table_index]
    at.session_state[editor.key] = {"edited_rows": {r: {"forget": True} for r in rows}, "added_rows": [], "deleted_rows": []}


def test_explore_tick_save_compare(real_lm, list_dir):
    at = new_app()
    assert at.title[0].value.endswith("Explore")
    assert [t.label for t in at.tabs] == ["Layer 5", "Layer 9", "Layer 12"]
    assert len(at.data_editor) == 3 and len(at.data_editor[2].value) == 20
    layer12 = at.data_editor[2].value
    chosen = [int(layer12["latent"][0]), int(layer12["latent"][1])]
    assert all(str(e).startswith("auto: ") for e in layer12["label"])  # local dashboards explain offline SAEs

    tick(at, 2, [0, 1])
    run(at)
    fl = app_state(at).forget_set
    assert [(e.layer, e.latent_ids) for e in fl.saes] == [(12, chosen)]
    assert fl.saes[0].latents[0].note.startswith("Explore: max")
    assert list(at.data_editor[2].value["forget"][:2]) == [True, True]  # the table shows them ticked

    at.switch_page("pages/forget_set.py")
    run(at)
    assert any("unsaved changes" in w.value for w in at.warning)
    assert not any("Save never writes" in m.value for m in at.markdown)  # no stray docstring rendered by magic
    assert sorted(at.data_editor[0].value["latent"]) == sorted(chosen)
    name_box = next(t for t in at.text_input if t.label == "File name")
    name_box.set_value("hp_by_hand.json")
    run(at)
    button(at, "Save as").click()
    run(at)
    saved = load_feature_list(list_dir / "hp_by_hand.json")
    assert saved.saes[0].latent_ids == chosen
    assert not any("unsaved changes" in w.value for w in at.warning)
    # saving again under the same name needs an explicit overwrite
    next(t for t in at.text_input if t.label == "File name").set_value("hp_by_hand.json")
    run(at)
    assert button(at, "Save as").disabled
    assert any("already exists" in w.value for w in at.warning)

    at.switch_page("pages/compare.py")
    at.session_state["compare_texts"] = ["hp-fanwiki"]
    at.session_state["compare_max_texts"] = 3
    at.session_state["compare_seq_len"] = 48
    at.session_state["compare_prompts"] = "Who is Harry Potter?"
    at.session_state["compare_new_tokens"] = 6
    run(at)
    conditions = at.multiselect(key="compare_conditions").value
    assert conditions == ["baseline", "ablated: layer 12", "reconstruction only", "random control"]
    button(at, "Run perplexity").click()
    run(at)
    cells = app_state(at).compare_cells
    assert len(cells) == 3 and all(c["complete"] for c in cells.values())  # reconstruction-only reuses baseline
    expected = perplexity(real_lm, load_texts("hp-fanwiki", 3).texts, max_seq_len=48).perplexity
    assert any(c["value"] == pytest.approx(expected, rel=1e-5) for c in cells.values())
    assert at.get("plotly_chart")
    button(at, "Run generations").click()
    run(at)
    gens = [c["text"] for c in app_state(at).compare_cells.values() if "text" in c]
    assert len(gens) == 3
    assert generate(real_lm, "Who is Harry Potter?", max_new_tokens=6) in gens
    shown = " ".join(str(m.value) for m in at.markdown)
    assert "Who is Harry Potter?" in shown

    # switching pages and back does not recompute: the cells are still there and nothing is re-run
    at.switch_page("pages/explore.py")
    run(at)
    at.switch_page("pages/compare.py")
    run(at)
    assert app_state(at).compare_cells == cells | {k: v for k, v in app_state(at).compare_cells.items() if "text" in v}
    numbers = [d for d in at.get("download_button") if "CSV" in str(d.proto.label)]
    assert numbers

    # the attacks panel: the same attacks as `attack`, on the forget set the session holds
    at.number_input(key="compare_attack_items").set_value(10)
    at.number_input(key="compare_attack_texts").set_value(10)
    run(at)
    button(at, "Run attacks").click()
    run(at)
    attacks = [v for k, v in app_state(at).compare_cells.items() if k.startswith("attacks|")]
    assert len(attacks) == 1
    assert {r["attack"] for r in attacks[0]["rows"]} >= {"plain", "paraphrase", "k-shot", "linear-probe", "hook-off"}
    assert attacks[0]["details"]["quiz_items"] == 10
    assert any("recovered (ablated)" in str(c.value) for c in at.code)


def test_explore_bad_prompts(real_lm):
    at = new_app()
    at.session_state["explore_prompts"] = "   \n  "
    run(at)
    assert any("at least one prompt" in w.value for w in at.warning)
    at.session_state["explore_prompts"] = "Harry " * 10_000  # 60,000 characters, one line
    run(at)
    assert any("only its first 1,023 tokens" in i.value for i in at.info)
    assert len(at.data_editor) == 3


BAD_UPLOADS = {
    "malformed.json": (b'{"format_version": 1, "name": ', "malformed JSON"),
    "binary.json": (bytes(range(256)) * 4, "binary"),
    "latin1.json": ('{"name": "caf\xe9"}'.encode("latin-1"), "UTF-8"),
    "wrong_model.json": ((REPO / "feature_lists" / "reference_gemma-2-2b_layer12.json").read_bytes(), "gemma-2-2b"),
}


@pytest.mark.parametrize("name", [*BAD_UPLOADS, "out_of_range.json"])
def test_bad_imports_leave_the_forget_set_untouched(real_lm, list_dir, name):
    at = new_app()
    tick(at, 1, [0])  # something curated that must survive
    run(at)
    before = content_signature(app_state(at).forget_set)
    at.switch_page("pages/forget_set.py")
    run(at)
    if name == "out_of_range.json":
        data = json.loads((REPO / "feature_lists" / "example_gemma-3-270m-offline_harry-potter.json").read_text())
        data["saes"][0]["latents"][0]["id"] = 99_999
        content, message = json.dumps(data).encode(), "out of range"
    else:
        content, message = BAD_UPLOADS[name]
    at.file_uploader(key="import_upload").upload(name, content, "application/json")
    run(at)
    next(c for c in at.checkbox if c.label == "Discard my unsaved changes" and c.key == "discard_import").check()
    run(at)
    button(at, "Import").click()
    run(at)
    errors = " ".join(e.value for e in at.error)
    assert "Not imported" in errors and message in errors, errors
    assert content_signature(app_state(at).forget_set) == before


def test_open_new_and_the_study_lists(real_lm, list_dir):
    at = new_app()
    at.switch_page("pages/forget_set.py")
    run(at)
    at.selectbox(key="open_choice").set_value("example_gemma-3-270m-offline_harry-potter.json")
    run(at)
    button(at, "Open").click()
    run(at)
    fl = app_state(at).forget_set
    assert fl.total_latents == 48 and not any("unsaved" in w.value for w in at.warning)
    assert button(at, "Save").disabled  # shipped lists are read-only: Save as only
    # an edit makes New ask before discarding it
    at.text_input(key="bulk_ids").set_value("1, 2-3")
    run(at)
    button(at, "Add").click()
    run(at)
    assert app_state(at).forget_set.total_latents == 51
    assert button(at, "Start a new, empty forget set").disabled
    next(c for c in at.checkbox if c.key == "discard_new").check()
    run(at)
    button(at, "Start a new, empty forget set").click()
    run(at)
    assert app_state(at).forget_set.total_latents == 0
    # the study's list in one click: switches the model preset to Gemma 2 2B
    button(at, "layer12").click()
    run(at)
    assert app_state(at).forget_set.total_latents == 180
    assert at.session_state["preset"] == "gemma-2-2b"
    at.switch_page("pages/explore.py")
    run(at)  # Gemma 2 2B needs a token: a clear message, no crash
    assert any("HF_TOKEN" in e.value or "token" in e.value for e in at.error)


def test_the_sidebar_defaults_to_auto_precision():
    """A new session runs in ``auto`` (bfloat16 where native), shown as what it means here; the other tests pin
    float32 (apptest_helpers)."""
    at = new_app(precision=None)
    picker = at.selectbox(key="dtype")
    assert picker.value == AUTO_DTYPE and picker.options[0].startswith("auto: ")
    assert describe_precision("cpu") in picker.options[0]
    assert app_state(at).settings.dtype == auto_dtype("cpu")


def test_sidebar_intervention_reaches_the_pages(real_lm):
    at = new_app()
    at.session_state["mode"] = "clamp"
    run(at)
    assert app_state(at).settings.intervention.describe() == "clamp active latents to -10, error term kept"
    at.session_state["strength_clamp"] = 4.0
    at.session_state["mode"] = "scale"
    run(at)
    assert app_state(at).settings.intervention.strength == 0.0  # scale keeps its own default, not the clamp c
    at.session_state["mode"] = "clamp"
    at.switch_page("pages/compare.py")
    run(at)
    assert "clamp active latents to -4, error term kept" in at.caption[0].value
    at.session_state["mode"] = "replace"
    run(at)
    assert any("REPRODUCTION ONLY" in w.value or "Reproduction setting" in w.value for w in at.warning)


def test_choices_survive_page_switches(real_lm):
    """app.py draws the sidebar once per run; its choices and each page's own survive switching pages, and the
    Forget set page shows the Explore page's result (max activation on the prompts)."""
    at = new_app()
    assert [s.label for s in at.selectbox].count("Model") == 1 and len(at.sidebar.selectbox) >= 4
    at.multiselect(key="layers").set_value([9, 12])
    at.selectbox(key="mode").set_value("clamp")
    run(at)
    at.number_input(key="strength_clamp").set_value(4.0)
    at.slider(key="explore_top_k").set_value(10)
    at.radio(key="explore_rank").set_value("mean")
    run(at)
    assert [t.label for t in at.tabs] == ["Layer 9", "Layer 12"] and len(at.data_editor[1].value) == 10
    tick(at, 1, [0])
    run(at)
    at.switch_page("pages/forget_set.py")
    run(at)
    assert at.data_editor[0].value["max on prompts"].notna().all()  # Explore's result, shared through the state
    at.switch_page("pages/compare.py")
    run(at)
    assert "clamp active latents to -4, error term kept" in at.caption[0].value
    at.number_input(key="compare_max_texts").set_value(3)
    run(at)
    at.switch_page("pages/explore.py")
    run(at)
    assert at.multiselect(key="layers").value == [9, 12] and at.selectbox(key="mode").value == "clamp"
    assert at.number_input(key="strength_clamp").value == 4.0
    assert at.slider(key="explore_top_k").value == 10 and at.radio(key="explore_rank").value == "mean"
    assert len(at.data_editor[1].value) == 10
    at.switch_page("pages/compare.py")
    run(at)
    assert at.number_input(key="compare_max_texts").value == 3
    assert app_state(at).settings.layers == [9, 12]


def test_shipped_lists_are_never_overwritten(real_lm, monkeypatch):
    monkeypatch.setenv("UNLEARN_FEATURE_LISTS_DIR", str(REPO / "feature_lists"))  # save into the shipped folder
    shipped = REPO / "feature_lists" / "example_gemma-3-270m-offline_harry-potter.json"
    before = shipped.read_bytes()
    at = new_app()
    tick(at, 0, [0])
    run(at)
    at.switch_page("pages/forget_set.py")
    run(at)
    next(t for t in at.text_input if t.label == "File name").set_value(shipped.name)
    run(at)
    replace = next(c for c in at.checkbox if c.label == f"Replace {shipped.name}")
    assert replace.disabled and button(at, "Save as").disabled
    at.session_state[f"overwrite_{shipped.name}"] = True  # even a forced tick does not unlock it
    run(at)
    assert button(at, "Save as").disabled
    assert shipped.read_bytes() == before


def test_a_gated_intervention_is_calibrated_once_for_the_forget_set(real_lm, monkeypatch):
    """The sidebar's gate reaches Compare calibrated for the current forget set (one pass over the calibration text,
    kept for reruns) and shows its thresholds; the cached numbers of the ungated edit are not reused for it."""
    import unlearn_core.selection.gating as gating

    calls = []
    real_calibrated = gating.calibrated_conditions
    monkeypatch.setattr(gating, "calibrated_conditions", lambda *a, **k: calls.append(1) or real_calibrated(*a, **k))
    at = new_app()
    app_state(at).forget_set = load_feature_list(REPO / "feature_lists" / "example_gemma-3-270m-offline_hp-suggested.json")
    at.session_state["mode"] = "clamp"
    at.session_state["gate"] = True
    at.switch_page("pages/compare.py")
    run(at)
    assert calls == [1]
    assert any("Gate thresholds" in c.value for c in at.caption)
    (conditions,) = app_state(at).gated_conditions.values()
    assert all(c.intervention.gate.calibrated for c in conditions if c.n_latents)  # no latents: nothing to gate
    run(at)
    assert calls == [1]  # a rerun reuses the calibration
    at.session_state["gate_quantile"] = 0.999
    run(at)
    assert calls == [1, 1] and len(app_state(at).gated_conditions) == 2
