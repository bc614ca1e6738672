"""Tests for unlearn_core.forget_set (pure Python, no models)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import unlearn_core.forget_set.io as flm
from unlearn_core.ablation.interventions import Intervention
from unlearn_core.errors import FeatureListError
from unlearn_core.forget_set import (
    FeatureList,
    Latent,
    LatentStats,
    SaeEntry,
    SelectionRecord,
    check_latents_fit,
    feature_list_from_bytes,
    feature_list_json,
    from_reference_study,
    list_feature_lists,
    load_feature_list,
    new_feature_list,
    sae_width,
    save_feature_list,
)

REPO_ROOT = Path(__file__).resolve().parent.parent

SHIPPED = REPO_ROOT / "feature_lists"
SEED = REPO_ROOT.parent / "shared" / "seed" / "reference_feature_lists.json"
SHIPPED_NAMES = {
    "reference_gemma-2-2b_layer0.json": ([0], 439),
    "reference_gemma-2-2b_layer12.json": ([12], 180),
    "reference_gemma-2-2b_layer25.json": ([25], 200),
    "reference_gemma-2-2b_all_layers.json": ([0, 12, 25], 819),
}
SAE12 = "gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical"
SAE25 = "gemma-scope-2b-pt-res-canonical/layer_25/width_16k/canonical"


def valid_dict() -> dict[str, Any]:
    return {
        "format_version": 1,
        "name": "test list",
        "description": "for tests",
        "model": "google/gemma-2-2b",
        "saes": [
            {
                "sae": SAE12,
                "hook_name": "blocks.12.hook_resid_post",
                "layer": 12,
                "neuronpedia": "gemma-2-2b/12-gemmascope-res-16k",
                "latents": [
                    {"id": 1, "label": "wizards", "note": None},
                    {"id": 2, "label": None, "note": "seen on retain text"},
                    {"id": 5, "label": None, "note": None},
                    {"id": 7, "label": None, "note": None},
                ],
            },
            {
                "sae": SAE25,
                "hook_name": "blocks.25.hook_resid_post",
                "layer": 25,
                "neuronpedia": None,
                "latents": [{"id": 16383, "label": None, "note": None}],
            },
        ],
        "created": "2025-01-01T00:00:00+00:00",
        "updated": "2025-01-02T00:00:00+00:00",
    }


def parse(data: Any, **kw: Any) -> FeatureList:
    return FeatureList.from_dict(data, source="my.json", **kw)


def error_of(data: Any, **kw: Any) -> str:
    with pytest.raises(FeatureListError) as info:
        parse(data, **kw)
    msg = str(info.value)
    assert msg.startswith("my.json: "), msg
    return msg


# ---------------------------------------------------------------- round trip and helpers


def test_round_trip_dict_and_file(tmp_path: Path) -> None:
    data = valid_dict()
    fl = parse(data)
    assert fl.to_dict() == data
    assert fl.total_latents == 5
    assert fl.saes[0].latent_ids == [1, 2, 5, 7]
    assert fl.saes[0].latents[0] == Latent(id=1, label="wizards")
    out = save_feature_list(fl, tmp_path / "a.json")
    text = out.read_text(encoding="utf-8")
    assert text.endswith("}\n") and text.startswith('{\n "format_version": 1,')
    again = load_feature_list(out)
    assert again.saes == fl.saes and again.name == fl.name and again.updated == fl.updated


def test_from_dict_does_not_share_or_modify_input() -> None:
    data = valid_dict()
    data["x"] = {"nested": [1]}
    before = json.dumps(data)
    fl = parse(data)
    fl.extra["x"]["nested"].append(2)
    assert json.dumps(data) == before


def test_extra_keys_survive_round_trip(tmp_path: Path) -> None:
    data = valid_dict()
    data["tags"] = ["hp", "books"]
    data["saes"][0]["comment"] = "my notes"
    data["saes"][0]["latents"][0]["activation"] = 3.5
    fl = parse(data)
    assert fl.extra == {"tags": ["hp", "books"]}
    path = save_feature_list(fl, tmp_path / "x.json")
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert raw["tags"] == ["hp", "books"]
    assert raw["saes"][0]["comment"] == "my notes"
    assert raw["saes"][0]["latents"][0]["activation"] == 3.5
    assert load_feature_list(path).to_dict() == raw


def test_label_and_note_are_optional() -> None:
    data = valid_dict()
    data["saes"][0]["latents"] = [{"id": 3}]
    assert parse(data).saes[0].latents == [Latent(id=3)]


def test_entry_for() -> None:
    fl = parse(valid_dict())
    assert fl.entry_for(layer=12) is fl.saes[0]
    assert fl.entry_for(hook_name="blocks.25.hook_resid_post") is fl.saes[1]
    assert fl.entry_for(layer=12, hook_name="blocks.25.hook_resid_post") is None
    assert fl.entry_for(layer=3) is None
    with pytest.raises(FeatureListError):
        fl.entry_for()


def test_new_feature_list(tmp_path: Path) -> None:
    fl = new_feature_list("mine", "google/gemma-3-270m", description="d")
    assert fl.saes == [] and fl.format_version == 1 and fl.extra == {}
    assert fl.created == fl.updated and fl.created.endswith("+00:00") and len(fl.created) == 25
    fl.saes.append(
        SaeEntry(
            sae="gemma-scope-2-270m-pt-res/layer_5_width_16k_l0_medium",
            hook_name="blocks.5.hook_resid_post",
            layer=5,
            neuronpedia="gemma-3-270m/5-gemmascope-2-res-16k",
            latents=[Latent(10), Latent(11, "x", "y")],
        )
    )
    again = load_feature_list(save_feature_list(fl, tmp_path / "mine.json"))
    assert again.total_latents == 2 and again.model == "google/gemma-3-270m"


def test_save_refreshes_updated(tmp_path: Path) -> None:
    fl = parse(valid_dict())
    save_feature_list(fl, tmp_path / "a.json")
    assert fl.updated != "2025-01-02T00:00:00+00:00"
    assert load_feature_list(tmp_path / "a.json").updated == fl.updated
    fl2 = parse(valid_dict())
    save_feature_list(fl2, tmp_path / "b.json", touch=False)
    assert load_feature_list(tmp_path / "b.json").updated == "2025-01-02T00:00:00+00:00"


# ---------------------------------------------------------------- validation errors


def test_top_level_not_object() -> None:
    assert "top level must be a JSON object, got a list" in error_of([1, 2])


def test_unsupported_format_version() -> None:
    data = valid_dict()
    data["format_version"] = 2
    msg = error_of(data)
    assert "format_version 2 is not supported" in msg and "reads format_version 1" in msg


def test_format_version_bool_rejected() -> None:
    data = valid_dict()
    data["format_version"] = True
    assert "format_version true is not supported" in error_of(data)


def test_missing_required_keys() -> None:
    data = valid_dict()
    del data["created"]
    del data["model"]
    msg = error_of(data)
    assert 'missing required keys "model", "created"' in msg


def test_missing_entry_key() -> None:
    data = valid_dict()
    del data["saes"][1]["hook_name"]
    assert 'saes[1]: missing required key "hook_name"' in error_of(data)


def test_missing_latent_id() -> None:
    data = valid_dict()
    data["saes"][0]["latents"][2] = {"label": "x"}
    assert 'saes[0].latents[2]: missing required key "id"' in error_of(data)


def test_wrong_type_name() -> None:
    data = valid_dict()
    data["name"] = 5
    assert "name must be a string, got a number 5" in error_of(data)


def test_wrong_type_saes() -> None:
    data = valid_dict()
    data["saes"] = {"a": 1}
    assert "saes must be a list, got an object" in error_of(data)


def test_latent_id_string() -> None:
    data = valid_dict()
    data["saes"][1]["latents"] = [{"id": i} for i in range(3)] + [{"id": "12"}]
    assert error_of(data) == 'my.json: saes[1].latents[3].id must be an integer, got "12"'


def test_latent_id_bool_is_not_int() -> None:
    data = valid_dict()
    data["saes"][0]["latents"][0]["id"] = True
    assert "saes[0].latents[0].id must be an integer, got true" in error_of(data)


def test_latent_id_float() -> None:
    data = valid_dict()
    data["saes"][0]["latents"][0]["id"] = 3.0
    assert "saes[0].latents[0].id must be an integer, got 3.0" in error_of(data)


def test_latent_bare_int() -> None:
    data = valid_dict()
    data["saes"][0]["latents"][1] = 42
    assert 'saes[0].latents[1] must be an object like {"id": 42' in error_of(data)


def test_latent_label_type() -> None:
    data = valid_dict()
    data["saes"][0]["latents"][1]["label"] = ["x"]
    assert "saes[0].latents[1].label must be a string or null, got a list" in error_of(data)


def test_negative_latent_id() -> None:
    data = valid_dict()
    data["saes"][0]["latents"][1]["id"] = -1
    assert "saes[0].latents[1].id must be >= 0, got -1" in error_of(data)


def test_latent_id_beyond_width() -> None:
    data = valid_dict()
    data["saes"][1]["latents"][0]["id"] = 16384
    msg = error_of(data)
    assert "saes[1].latents[0].id 16384 is out of range" in msg and "16384 latents (ids 0 to 16383)" in msg


def test_latent_id_unknown_width_not_limited() -> None:
    data = valid_dict()
    data["saes"][1]["sae"] = "some-release/some_sae"
    data["saes"][1]["latents"][0]["id"] = 10**7
    assert parse(data).saes[1].latent_ids == [10**7]


def test_duplicate_latent_id() -> None:
    data = valid_dict()
    data["saes"][0]["latents"][3]["id"] = 2
    msg = error_of(data)
    assert "saes[0].latents[3].id 2 is a duplicate" in msg and "saes[0].latents[1]" in msg


def test_duplicate_hook_name() -> None:
    data = valid_dict()
    data["saes"][1]["hook_name"] = "blocks.12.hook_resid_post"
    data["saes"][1]["layer"] = 12
    msg = error_of(data)
    assert 'saes[1].hook_name "blocks.12.hook_resid_post" duplicates saes[0]' in msg


def test_duplicate_sae_ref() -> None:
    data = valid_dict()
    data["saes"][1]["sae"] = SAE12
    assert f'saes[1].sae "{SAE12}" duplicates saes[0]' in error_of(data)


def test_negative_layer() -> None:
    data = valid_dict()
    data["saes"][0]["layer"] = -1
    data["saes"][0]["hook_name"] = "hook_embed"
    assert "saes[0].layer must be a non-negative integer, got -1" in error_of(data)


def test_layer_not_int() -> None:
    data = valid_dict()
    data["saes"][0]["layer"] = "12"
    assert 'saes[0].layer must be a non-negative integer, got "12"' in error_of(data)


def test_layer_disagrees_with_hook_name() -> None:
    data = valid_dict()
    data["saes"][0]["layer"] = 11
    assert "saes[0].layer is 11 but hook_name" in error_of(data)


@pytest.mark.parametrize("bad", ["gemma-2-2b", "a/b/c", "/src", "gemma 2/x", 5])
def test_bad_neuronpedia(bad: Any) -> None:
    data = valid_dict()
    data["saes"][0]["neuronpedia"] = bad
    assert 'saes[0].neuronpedia must be null or "<modelId>/<source>"' in error_of(data)


def test_unknown_model() -> None:
    data = valid_dict()
    data["model"] = "meta/llama-9"
    msg = error_of(data)
    assert '"meta/llama-9" is not a known model' in msg
    assert "google/gemma-2-2b" in msg and "google/gemma-3-270m" in msg


def test_unknown_model_allowed_when_unchecked() -> None:
    data = valid_dict()
    data["model"] = "meta/llama-9"
    assert parse(data, check_model=False).model == "meta/llama-9"
    assert parse(data, known_models=["meta/llama-9"]).model == "meta/llama-9"


def test_bad_timestamp() -> None:
    data = valid_dict()
    data["created"] = "yesterday"
    assert 'created must be an ISO-8601 timestamp like "2025-01-01T00:00:00+00:00", got "yesterday"' in error_of(data)


def test_save_validates_first(tmp_path: Path) -> None:
    fl = parse(valid_dict())
    fl.saes[0].latents.append(Latent(1))
    with pytest.raises(FeatureListError, match=r"saes\[0\]\.latents\[4\]\.id 1 is a duplicate"):
        save_feature_list(fl, tmp_path / "bad.json")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- files


def test_save_does_not_clobber_without_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "list.json"
    target.write_text("original", encoding="utf-8")
    with pytest.raises(FeatureListError, match="already exists"):
        save_feature_list(parse(valid_dict()), target)
    assert target.read_text(encoding="utf-8") == "original"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["list.json"]
    save_feature_list(parse(valid_dict()), target, overwrite=True)
    assert load_feature_list(target).name == "test list"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["list.json"]


def test_failing_replace_leaves_original(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "list.json"
    target.write_text("original", encoding="utf-8")

    def boom(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(flm.os, "replace", boom)
    with pytest.raises(FeatureListError, match="cannot write feature list: No space left on device"):
        save_feature_list(parse(valid_dict()), target, overwrite=True)
    assert target.read_text(encoding="utf-8") == "original"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["list.json"]


def test_failing_fsync_removes_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(flm.os, "fsync", boom)
    with pytest.raises(FeatureListError, match="Input/output error"):
        save_feature_list(parse(valid_dict()), tmp_path / "new.json")
    assert list(tmp_path.iterdir()) == []


def test_failing_dumps_leaves_original(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "list.json"
    target.write_text("original", encoding="utf-8")
    fl = parse(valid_dict())
    old_updated = fl.updated

    def boom(*args: Any, **kwargs: Any) -> str:
        raise ValueError("cannot serialize")

    monkeypatch.setattr(flm.json, "dumps", boom)
    with pytest.raises(FeatureListError, match="cannot be written as JSON"):
        save_feature_list(fl, target, overwrite=True)
    assert target.read_text(encoding="utf-8") == "original"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["list.json"]
    assert fl.updated == old_updated


def test_save_into_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FeatureListError, match="does not exist"):
        save_feature_list(parse(valid_dict()), tmp_path / "nope" / "a.json")


def test_malformed_json_has_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{\n "name": "x",\n "model": oops\n}\n', encoding="utf-8")
    with pytest.raises(FeatureListError) as info:
        load_feature_list(path)
    msg = str(info.value)
    assert msg.startswith(str(path)) and "malformed JSON at line 3, column 11" in msg


def test_nan_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "nan.json"
    path.write_text('{"x": NaN}', encoding="utf-8")
    with pytest.raises(FeatureListError, match="NaN is not valid JSON"):
        load_feature_list(path)


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes('{"name": "caf\u00e9"}'.encode("latin-1"))
    with pytest.raises(FeatureListError, match="not a UTF-8 text file"):
        load_feature_list(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FeatureListError, match="file not found"):
        load_feature_list(tmp_path / "nothing.json")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(FeatureListError):
        load_feature_list(tmp_path)


def test_load_validation_error_names_file(tmp_path: Path) -> None:
    data = valid_dict()
    data["saes"][0]["latents"][0]["id"] = "1"
    path = tmp_path / "my.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(FeatureListError, match=r"my\.json: saes\[0\]\.latents\[0\]\.id must be an integer"):
        load_feature_list(path)


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(valid_dict()).encode("utf-8"))
    assert load_feature_list(path).name == "test list"


def test_list_feature_lists(tmp_path: Path) -> None:
    for name in ["b.json", "a.json", "notes.txt", ".a.json.123.tmp"]:
        (tmp_path / name).write_text("{}", encoding="utf-8")
    (tmp_path / "sub.json").mkdir()
    assert list_feature_lists(tmp_path) == [tmp_path / "a.json", tmp_path / "b.json"]
    assert list_feature_lists(tmp_path / "missing") == []


# ---------------------------------------------------------------- SAE widths


@pytest.mark.parametrize(
    ("ref", "width"),
    [
        (SAE12, 16384),
        ("gemma-scope-2-270m-pt-res/layer_5_width_16k_l0_medium", 16384),
        ("gemma-scope-2b-pt-res/layer_3/width_65k/average_l0_20", 65536),
        ("gemma-scope-9b-pt-res/layer_20/width_1m/average_l0_10", 1048576),
        ("gemma-scope-2-1b-pt-res/layer_7_width_262k_l0_big", 262144),
        ("gemma-scope-2b-pt-res/layer_3/width_131k/average_l0_20", 131072),
        ("gemma-scope-9b-pt-res/layer_3/width_524k/average_l0_20", 524288),
        ("my-release/width_24k", 24576),
        ("my-release/width_4096", 4096),
        ("some-release/blocks.3.hook_resid_post", None),
        ("release/layer_1/widths_16k", None),
        ("", None),
    ],
)
def test_sae_width(ref: str, width: int | None) -> None:
    assert sae_width(ref) == width


def test_sae_width_local_cfg(tmp_path: Path) -> None:
    sae_dir = tmp_path / "my_sae_width_16k"
    sae_dir.mkdir()
    (sae_dir / "cfg.json").write_text(json.dumps({"d_sae": 4096, "d_in": 640}), encoding="utf-8")
    assert sae_width(str(sae_dir)) == 4096  # cfg.json wins over the name
    assert sae_width(str(tmp_path)) is None  # a directory without cfg.json


def test_local_sae_width_is_enforced(tmp_path: Path) -> None:
    sae_dir = tmp_path / "tiny"
    sae_dir.mkdir()
    (sae_dir / "cfg.json").write_text(json.dumps({"d_sae": 8}), encoding="utf-8")
    data = valid_dict()
    data["saes"][0]["sae"] = str(sae_dir)
    assert parse(data).saes[0].latent_ids == [1, 2, 5, 7]  # all below d_sae = 8
    data["saes"][0]["latents"][3]["id"] = 8
    assert "saes[0].latents[3].id 8 is out of range" in error_of(data)


def test_check_latents_fit() -> None:
    entry = parse(valid_dict()).saes[0]
    check_latents_fit(entry, 8)
    with pytest.raises(FeatureListError) as info:
        check_latents_fit(entry, 5, source="my.json")
    msg = str(info.value)
    assert msg.startswith("my.json: ") and "has 5 latents (ids 0 to 4)" in msg and "out of range: 5, 7" in msg


# ---------------------------------------------------------------- shipped reference lists


@pytest.mark.parametrize("name", sorted(SHIPPED_NAMES))
def test_shipped_lists_load(name: str) -> None:
    layers, count = SHIPPED_NAMES[name]
    fl = load_feature_list(SHIPPED / name)
    assert [e.layer for e in fl.saes] == layers
    assert fl.total_latents == count
    assert fl.model == "google/gemma-2-2b"
    for entry in fl.saes:
        assert entry.hook_name == f"blocks.{entry.layer}.hook_resid_post"
        assert entry.sae == f"gemma-scope-2b-pt-res-canonical/layer_{entry.layer}/width_16k/canonical"
        assert entry.neuronpedia == f"gemma-2-2b/{entry.layer}-gemmascope-res-16k"
        assert all(lat.label is None and lat.note is None for lat in entry.latents)
    assert "--mode replace --hook-site resid_pre" in fl.description
    assert "AnirudhDesai777/Unlearning-SAE" in fl.description


def test_shipped_per_layer_counts_in_names() -> None:
    for name, (_layers, count) in SHIPPED_NAMES.items():
        assert f"({count} latents)" in load_feature_list(SHIPPED / name).name
    assert {SHIPPED / n for n in SHIPPED_NAMES} <= set(list_feature_lists(SHIPPED))


@pytest.mark.skipif(not SEED.is_file(), reason="../shared/seed is not available")
def test_shipped_lists_match_reference_study(tmp_path: Path) -> None:
    lists = from_reference_study(SEED)
    assert [fl.total_latents for fl in lists] == [439, 180, 200, 819]
    expected_names = [
        "reference_gemma-2-2b_layer0.json",
        "reference_gemma-2-2b_layer12.json",
        "reference_gemma-2-2b_layer25.json",
        "reference_gemma-2-2b_all_layers.json",
    ]
    for fl, name in zip(lists, expected_names, strict=True):
        assert load_feature_list(SHIPPED / name).to_dict() == fl.to_dict()
        # byte-identical regeneration
        written = save_feature_list(fl, tmp_path / name, touch=False)
        assert written.read_bytes() == (SHIPPED / name).read_bytes()
    seed = json.loads(SEED.read_text(encoding="utf-8"))
    for fl, layer in zip(lists, ["0", "12", "25"], strict=False):
        assert fl.saes[0].latent_ids == seed["latents"][layer]
    assert lists[0].name == "Reference study - Gemma 2 2B layer 0 (439 latents)"
    assert lists[1].name == "Reference study - Gemma 2 2B layer 12 (180 latents)"


def test_from_reference_study_rejects_other_files(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_text(json.dumps(valid_dict()), encoding="utf-8")
    with pytest.raises(FeatureListError, match="not a reference-study latent file"):
        from_reference_study(path)


# ---------------------------------------------------------------- typed stats, selection and intervention

OLD_STATS = {"score": 0.16949756, "forget_freq": 0.03059, "retain_freq": 0.00011, "forget_mean_act": 28.178321,
             "retain_mean_act": 14.567701, "forget_max_act": 59.883503}
OLD_SELECTION = {"forget": "hp-fanwiki", "retain": "wikitext2", "method": "ratio", "top": 20, "retain_threshold": None,
                 "min_forget_freq": 0.0005, "stats_tokens": 100000, "stats_seq_len": 256, "batch_tokens": 2048,
                 "forget_corpus": "hp-fanwiki-select", "retain_corpus": "wikitext2-train", "preset": "gemma-2-2b",
                 "command": "python -m unlearn_core select --forget hp-fanwiki"}
OLD_INTERVENTION = {"mode": "clamp", "value": 4.0, "relative": True, "hook_site": "trained"}


def suggested_dict() -> dict[str, Any]:
    """A list as ``select`` writes it today (stats, selection and intervention in the file)."""
    data = valid_dict()
    for i, lat in enumerate(data["saes"][0]["latents"]):
        lat["stats"] = {**OLD_STATS, "score": OLD_STATS["score"] / (i + 1)}
    data["selection"] = dict(OLD_SELECTION)
    data["intervention"] = dict(OLD_INTERVENTION)
    return data


def test_old_style_file_loads_into_typed_fields(tmp_path: Path) -> None:
    data = suggested_dict()
    text = json.dumps(data, indent=1, ensure_ascii=False) + "\n"
    path = tmp_path / "old.json"
    path.write_text(text, encoding="utf-8")
    fl = load_feature_list(path)
    assert fl.extra == {} and all(lat.extra == {} for e in fl.saes for lat in e.latents)
    assert fl.intervention == Intervention("clamp", 4.0, relative=True)
    assert isinstance(fl.selection, SelectionRecord)
    assert (fl.selection.method, fl.selection.top, fl.selection.retain_threshold) == ("ratio", 20, None)
    assert (fl.selection.forget_corpus, fl.selection.preset) == ("hp-fanwiki-select", "gemma-2-2b")
    assert fl.selection.command.startswith("python -m unlearn_core select")
    stats = fl.saes[0].latents[0].stats
    assert isinstance(stats, LatentStats) and stats.forget_mean_act == 28.178321 and stats.forget_freq == 0.03059
    assert fl.saes[1].latents[0].stats is None
    assert feature_list_json(fl) == text  # byte for byte, key order included
    assert fl.to_dict() == data


def test_list_from_the_apps_suggest_panel_loads() -> None:
    """The app wrote ``intervention`` first and a shorter ``selection``, in its own key order."""
    data = valid_dict()
    data["saes"][0]["latents"][0]["stats"] = dict(OLD_STATS)
    data["intervention"] = dict(OLD_INTERVENTION)
    data["selection"] = {"method": "ratio", "forget": "hp-fanwiki", "retain": "wikitext2", "top": 20, "stats_tokens": 20000}
    fl = parse(data)
    assert fl.selection == SelectionRecord(method="ratio", forget="hp-fanwiki", retain="wikitext2", top=20, stats_tokens=20000)
    assert fl.intervention == Intervention("clamp", 4.0, relative=True) and fl.extra == {}
    assert fl.to_dict() == data


def test_typed_fields_round_trip(tmp_path: Path) -> None:
    fl = parse(valid_dict())
    fl.saes[0].latents[0].stats = LatentStats(score=1.5, forget_freq=0.25, retain_freq=0.0, forget_mean_act=3.0)
    fl.selection = SelectionRecord(method="frequency", forget="a.txt", retain="b.txt", top=3, retain_threshold=0.01)
    fl.intervention = Intervention("scale", 0.5)
    again = load_feature_list(save_feature_list(fl, tmp_path / "typed.json"))
    assert again.saes[0].latents[0].stats == fl.saes[0].latents[0].stats
    assert again.selection == fl.selection and again.intervention == fl.intervention
    assert again.to_dict() == fl.to_dict()
    raw = json.loads((tmp_path / "typed.json").read_text(encoding="utf-8"))
    assert raw["saes"][0]["latents"][0]["stats"] == {"score": 1.5, "forget_freq": 0.25, "retain_freq": 0.0,
                                                     "forget_mean_act": 3.0}
    assert raw["selection"] == {"forget": "a.txt", "retain": "b.txt", "method": "frequency", "top": 3,
                                "retain_threshold": 0.01}
    assert raw["intervention"] == {"mode": "scale", "value": 0.5, "relative": False, "hook_site": "trained"}
    again.intervention = again.selection = None
    again.saes[0].latents[0].stats = None
    assert again.to_dict() == valid_dict() | {"updated": again.updated}


def test_unknown_and_null_keys_of_typed_fields_are_kept() -> None:
    data = suggested_dict()
    data["saes"][0]["latents"][0]["stats"]["retain_max_act"] = 7.5
    data["saes"][0]["latents"][1]["stats"] = None
    data["selection"]["seed_texts"] = ["x"]
    data["selection"]["top"] = None
    fl = parse(data)
    assert fl.saes[0].latents[0].stats.extra == {"retain_max_act": 7.5}
    assert fl.saes[0].latents[1].stats is None
    assert fl.selection.top is None and fl.selection.extra["seed_texts"] == ["x"]
    assert fl.to_dict() == data
    data = valid_dict() | {"intervention": None, "selection": None}
    fl = parse(data)
    assert fl.intervention is None and fl.selection is None and fl.to_dict() == data
    fl.intervention = Intervention("zero")
    assert fl.to_dict()["intervention"]["mode"] == "zero"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d["saes"][0]["latents"][2]["stats"].update(forget_freq=1.5),
         "saes[0].latents[2].stats.forget_freq must be in [0, 1], got 1.5"),
        (lambda d: d["saes"][0]["latents"][0]["stats"].update(score="high"),
         'saes[0].latents[0].stats.score must be a finite number, got "high"'),
        (lambda d: d["saes"][0]["latents"][0].update(stats=[1, 2]),
         "saes[0].latents[0].stats must be a JSON object, got a list"),
        (lambda d: d["selection"].update(top="20"), 'selection.top must be an integer, got "20"'),
        (lambda d: d["selection"].update(retain_threshold=0), "selection.retain_threshold must be in (0, 1], got 0"),
        (lambda d: d["selection"].update(method=""), "selection.method must not be empty"),
        (lambda d: d.update(selection="ratio"), "selection must be a JSON object, got a string"),
        (lambda d: d.update(intervention=[]), "intervention must be a JSON object, got a list"),
        (lambda d: d["intervention"].update(mode="melt"), "intervention: unknown intervention mode 'melt'"),
        (lambda d: d["intervention"].update(value="big"), "intervention: intervention value must be a number"),
        (lambda d: d["intervention"].update(strength=2), "intervention: unknown intervention field(s) ['strength']"),
    ],
)
def test_typed_fields_are_validated(change: Any, expected: str) -> None:
    data = suggested_dict()
    change(data)
    assert error_of(data).startswith(f"my.json: {expected}")


@pytest.mark.parametrize(
    ("literal", "path", "shown"),
    [
        ("1e999", "saes[0].latents[0].stats.score", "Infinity"),
        ("-1e999", "saes[0].latents[0].stats.score", "-Infinity"),
        ("NaN", "saes[0].latents[0].stats.score", "NaN"),
        ("Infinity", "saes[0].latents[0].stats.score", "Infinity"),
    ],
)
def test_non_finite_numbers_rejected_with_their_path(tmp_path: Path, literal: str, path: str, shown: str) -> None:
    text = json.dumps(suggested_dict()).replace(f'"score": {OLD_STATS["score"]}', f'"score": {literal}', 1)
    assert literal in text
    file = tmp_path / "inf.json"
    file.write_text(text, encoding="utf-8")
    with pytest.raises(FeatureListError) as info:
        load_feature_list(file)
    assert str(info.value).startswith(f"{file}: {path} must be a finite number: {shown} is not valid JSON")
    with pytest.raises(FeatureListError, match=r"^up\.json: saes\[0\]\.latents\[0\]\.stats\.score must be a finite"):
        feature_list_from_bytes(text.encode("utf-8"), "up.json")


def test_non_finite_numbers_rejected_anywhere() -> None:
    data = valid_dict()
    data["my notes"] = {"weights": [1.0, float("nan")]}
    assert error_of(data).startswith('my.json: ["my notes"].weights[1] must be a finite number: NaN is not valid JSON')
    data = valid_dict()
    data["saes"][1]["latents"][0]["activation"] = float("inf")
    assert "saes[1].latents[0].activation must be a finite number: Infinity" in error_of(data)
    data = suggested_dict()
    data["intervention"]["value"] = float("inf")
    assert "intervention.value must be a finite number" in error_of(data)
    with pytest.raises(FeatureListError, match=r"^stats: forget_mean_act must be a finite number"):
        LatentStats.from_dict({"forget_mean_act": float("nan")})


def test_save_refuses_non_finite_values(tmp_path: Path) -> None:
    fl = parse(valid_dict())
    fl.saes[0].latents[0].stats = LatentStats(score=float("inf"))
    with pytest.raises(FeatureListError, match=r"saes\[0\]\.latents\[0\]\.stats\.score must be a finite number"):
        save_feature_list(fl, tmp_path / "inf.json")
    assert list(tmp_path.iterdir()) == []


def test_save_never_clobbers_a_file_created_meanwhile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "list.json"
    target.write_text("theirs", encoding="utf-8")
    monkeypatch.setattr(flm.os.path, "lexists", lambda p: False)  # the file appears after the existence checks
    with pytest.raises(FeatureListError, match="already exists"):
        save_feature_list(parse(valid_dict()), target)
    assert target.read_text(encoding="utf-8") == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["list.json"]


@pytest.mark.parametrize("path", sorted(SHIPPED.glob("*.json")), ids=lambda p: p.name)
def test_every_shipped_list_reserialises_to_the_same_json(path: Path) -> None:
    fl = load_feature_list(path)
    text = path.read_text(encoding="utf-8")
    assert json.loads(feature_list_json(fl)) == json.loads(text)
    assert feature_list_json(fl) == text
