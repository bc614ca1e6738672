"""Explore on the real offline model: search finds the concept's latents (and they fire on the words), the `explore`
command's JSON contract, and the app's search -> tick -> forget set flow and token-by-token compare view."""

from __future__ import annotations

import json

import pytest
from apptest_helpers import app_state, new_app, run

from app_support import explore_panels
from unlearn_core.cli import main
from unlearn_core.explain.dashboard_cache import find_dashboards
from unlearn_core.explain.explore import explore
from unlearn_core.explain.ranking import dense_latents
from unlearn_core.explain.search import search_contexts
from unlearn_core.models.presets import get_preset
from unlearn_core.saes.loading import load_sae

pytestmark = pytest.mark.integration
# Sentences written for this test (not from any corpus): the word in a context the dashboards never saw.
FRESH = {
    "Hogwarts": "Last year my cousin finally visited Hogwarts in a dream.",
    "Quidditch": "They argued for hours about the rules of Quidditch.",
    "Voldemort": "Nobody in the village liked to say the name Voldemort aloud.",
}


@pytest.fixture(scope="module")
def saes():
    family = get_preset("gemma-3-270m-offline").family()
    return [load_sae(family.ref(layer)) for layer in (5, 9, 12)]


@pytest.mark.parametrize("word", sorted(FRESH))
def test_search_finds_latents_that_fire_on_the_word(real_lm, saes, word):
    result = explore(real_lm, saes, [FRESH[word]])
    tokens = result.tokens[0]
    text = "".join(tokens)
    start = text.index(word)
    positions = []  # the word's tokens in the fresh sentence
    offset = 0
    for i, tok in enumerate(tokens):
        if offset < start + len(word) and offset + len(tok) > start:
            positions.append(i)
        offset += len(tok)
    firing, found = 0, 0
    for sae in saes:
        hits = [h for h in search_contexts(find_dashboards(sae), word, k=5) if not h.after]
        assert hits, f"no latent of {sae.ref} found for {word!r}"
        top = result.token_values(sae.ref, hits[0].latent)[0]
        assert any(top[p] > 0 for p in positions), f"{sae.ref}'s best hit for {word!r} does not fire on it"
        for hit in hits:
            values = result.token_values(sae.ref, hit.latent)[0]
            firing += any(values[p] > 0 for p in positions)
            found += 1
    assert firing >= 0.5 * found, f"only {firing} of {found} latents found for {word!r} fire on it in a new sentence"


def test_explore_command_writes_the_contract_json(real_lm, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Who is Harry Potter?\n\nDescribe a Quidditch match at Hogwarts\n", encoding="utf-8")
    contrast = tmp_path / "contrast.txt"
    contrast.write_text("Describe a typical day in a modern city\n", encoding="utf-8")
    out = tmp_path / "explore.json"
    assert main(["explore", "--prompts", str(prompts), "--prompt", "Who is Hermione?", "--layers", "9", "12",
                 "--top", "6", "--contrast", str(contrast), "--json", str(out)]) == 0
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["prompts"] == ["Who is Harry Potter?", "Describe a Quidditch match at Hogwarts", "Who is Hermione?"]
    assert list(data["layers"]) == ["9", "12"]
    family = get_preset("gemma-3-270m-offline").family()
    for layer, rows in data["layers"].items():
        assert len(rows) == 6
        assert all(isinstance(r["latent"], int) and isinstance(r["label"], str) and isinstance(r["score"], float)
                   for r in rows)
        assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
        assert all(r["label"].startswith("auto: ") for r in rows)
        board = find_dashboards(load_sae(family.ref(int(layer))))
        assert not {r["latent"] for r in rows} & dense_latents(board)  # the page's default: dense latents hidden
    printed = capsys.readouterr().out
    assert "layer 12" in printed and "ranked by specific" in printed
    assert main(["explore", "--prompt", " ", "--layers", "12"]) == 2  # no prompt left: a message, not a traceback
    assert main(["explore", "--layers", "99"]) == 2


def test_app_search_tick_forget_set_and_token_view(real_lm, tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARN_FEATURE_LISTS_DIR", str(tmp_path))
    at = new_app()
    layer12 = get_preset("gemma-3-270m-offline").family().ref(12)
    table = at.data_editor[2].value
    assert {"label", "context", "HP ×", "score"} <= set(table.columns)
    assert "‹" in str(table["context"][0])  # the strongest context, activating token marked
    at.text_input(key=f"explore_search_{layer12}").set_value("Quidditch")
    run(at)
    results = at.data_editor[3].value  # the layer-12 search results follow the three ranked tables
    assert len(results) > 0 and all("idd" in str(e).lower() or "quidditch" in str(e).lower()
                                    for e in results["evidence"][:3])
    found = int(results["latent"][0])
    editor = at.data_editor[3]
    at.session_state[editor.key] = {"edited_rows": {0: {"forget": True}}, "added_rows": [], "deleted_rows": []}
    run(at)
    fl = app_state(at).forget_set
    assert [(e.layer, e.latent_ids) for e in fl.saes] == [(12, [found])]
    assert fl.saes[0].latents[0].note.startswith("Explore search")
    at.text_input(key=f"explore_search_{layer12}").set_value("Hogwarts")
    at.radio(key=f"explore_search_mode_{layer12}").set_value("fires on this text")
    run(at)
    assert len(at.data_editor[3].value) > 0
    forwards = []
    real_explore = explore_panels.explore
    monkeypatch.setattr(explore_panels, "explore", lambda *a, **k: forwards.append(a) or real_explore(*a, **k))
    run(at)  # a rerun shows the same hits without running the model again
    assert forwards == [] and len(at.data_editor[3].value) > 0

    at.switch_page("pages/compare.py")
    at.session_state["compare_prompts"] = "Who is Harry Potter?"
    run(at)
    at.number_input(key="tokens_new_tokens").set_value(6)
    run(at)
    next(b for b in at.button if b.label == "Compare token by token").click()
    run(at)
    stored = list(app_state(at).token_compare.values())
    assert len(stored) == 1 and len(stored[0].baseline.tokens) == 6
    assert any("Fell most" in str(m.value) for m in at.markdown)
