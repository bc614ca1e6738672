"""The shipped knowledge probes and the selection/evaluation split of the built-in texts."""

from __future__ import annotations

import json

from unlearn_core.data.probes import BUILTIN_PROBES, load_probes, mentions_harry_potter
from unlearn_core.data.texts import DATA_DIR, load_texts, selection_split, split_paragraphs


def test_project_cloze_sets_are_large_distinct_and_well_formed():
    hp, general = load_probes("hp-cloze"), load_probes("general-cloze")
    assert len(hp) >= 40 and len(general) >= 40
    for ps in (hp, general):
        prompts = [p.prompt for p in ps.probes]
        assert len(set(prompts)) == len(prompts)
        assert all(p.kind == "cloze" and p.answers and not p.prompt.endswith(" ") for p in ps.probes)
    assert all(mentions_harry_potter(p) or "Hogwarts" in p.prompt or p.answers for p in hp.probes)
    assert not any(mentions_harry_potter(p) for p in general.probes)
    assert not {p.prompt for p in hp.probes} & {p.prompt for p in general.probes}


def test_nq_open_drops_harry_potter_questions():
    raw = [json.loads(line) for line in BUILTIN_PROBES["nq-open"].read_text(encoding="utf-8").splitlines() if line.strip()]
    nq = load_probes("nq-open")
    dropped = len(raw) - len(nq)
    assert 5 <= dropped <= 30
    assert not any("harry potter" in p.prompt.lower() or "dumbledore" in p.prompt.lower() for p in nq.probes)
    assert len(load_probes("nq-open", max_items=7)) == 7


def test_external_qa_benchmark_loads_by_path(tmp_path):
    """Other projects' QA sets are not bundled; a copy the user holds (a JSON list of question/answer pairs, as
    QA benchmarks often ship them) loads by path and is scored as QA."""
    qa = [{"question": "Who is the headmaster of Hogwarts?", "answer": "Albus Dumbledore"},
          {"question": "What position does Harry play in Quidditch?", "answer": "Seeker"},
          {"question": "What is the name of Harry's owl?", "answer": ["Hedwig", "his owl Hedwig"]}]
    path = tmp_path / "external_forget_qa.json"
    path.write_text(json.dumps(qa), encoding="utf-8")
    forget = load_probes(str(path))
    assert forget.name == "external_forget_qa" and len(forget) == 3
    assert all(p.kind == "qa" for p in forget.probes)
    assert forget.probes[0].prompt == "Question: Who is the headmaster of Hogwarts?\nAnswer:"
    assert forget.probes[0].answers == ("Albus Dumbledore",) and forget.probes[2].answers == ("Hedwig", "his owl Hedwig")
    assert len(load_probes(str(path), max_items=2)) == 2


def test_hp_fanwiki_split_is_disjoint_and_complete():
    held_out, select = load_texts("hp-fanwiki").texts, load_texts("hp-fanwiki-select").texts
    assert len(held_out) == 40 and len(select) == 240
    assert not set(held_out) & set(select)
    raw = (DATA_DIR / "hp_fanwiki" / "hp_fanwiki_characters.txt").read_text(encoding="utf-8")
    every = [line.strip() for a in split_paragraphs(raw) for line in a.splitlines() if line.strip()]
    assert sorted(every) == sorted(held_out + select)
    assert selection_split("hp-fanwiki") == "hp-fanwiki-select"
    assert selection_split("wikitext2") == "wikitext2-train"
    assert selection_split("/some/file.txt") == "/some/file.txt"
    train = set(load_texts("wikitext2-train").texts)
    assert len(train) > 1000 and not train & set(load_texts("wikitext2").texts)
