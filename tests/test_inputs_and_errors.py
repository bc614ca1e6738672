"""Loaders and user-facing errors: texts, probes, presets, SAE references, hub access without network or token."""

from __future__ import annotations

import json

import pytest
from tiny_models import tiny_sae

from unlearn_core.data.probes import BUILTIN_PROBES, load_probes
from unlearn_core.data.texts import clean_keywords, hp_keywords, load_texts, split_paragraphs
from unlearn_core.errors import FeatureListError, InputError, ModelUnavailableError, TextSourceError
from unlearn_core.forget_set import Latent, SaeEntry, new_feature_list, save_feature_list
from unlearn_core.forget_set.selections import load_selections, preset_for_feature_list
from unlearn_core.models.hub import describe_hub_error
from unlearn_core.models.loading import load_model
from unlearn_core.models.presets import PRESETS, get_preset, known_model_ids
from unlearn_core.saes.loading import load_sae, resolve_local_path


def test_builtin_texts_are_the_studys_sets():
    wiki = load_texts("wikitext2")
    assert len(wiki) == 681  # non-empty rows among WikiText-2 test rows 0-999, as in the study
    assert wiki.texts[0] == " = Robert Boulter = \n"
    assert sum(len(t.split()) for t in wiki.texts) == 58766
    clean = load_texts("wikitext2-clean")
    assert len(clean) == 681
    dropped = sum(len(t.split()) for t in wiki.texts) - sum(len(t.split()) for t in clean.texts)
    # the study reports 182 words dropped on its copy; ours, rebuilt row-aligned, drops 174
    assert 150 < dropped < 200
    assert not any(w.lower() in hp_keywords() for t in clean.texts for w in t.split())
    hp = load_texts("hp-fanwiki")
    assert len(hp) == 40 and "Hogwarts" in " ".join(hp.texts)  # the 4 held-out articles (selection uses the 8 others)
    assert len(load_texts("hp-fanwiki", max_texts=5)) == 5


def test_clean_keywords_is_word_level():
    assert clean_keywords(["Harry met a Ghost at night.", "ghost"], frozenset({"harry", "ghost"})) == ["met a at night."]


def test_user_text_files(tmp_path):
    f = tmp_path / "book.txt"
    f.write_bytes(b"Para one\r\nline two\r\n\r\n\r\nPara two\n   \nPara three")
    ts = load_texts(str(f))
    assert ts.name == "book" and ts.texts == ("Para one\nline two", "Para two", "Para three")
    assert split_paragraphs("\n\n\n") == []
    (tmp_path / "bin.txt").write_bytes(b"\x00\x01\x02binary")
    with pytest.raises(TextSourceError, match="binary"):
        load_texts(str(tmp_path / "bin.txt"))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(TextSourceError, match="not UTF-8"):
        load_texts(str(tmp_path / "latin1.txt"))
    (tmp_path / "empty.txt").write_text("  \n\n ")
    with pytest.raises(TextSourceError, match="no text"):
        load_texts(str(tmp_path / "empty.txt"))
    with pytest.raises(TextSourceError, match="neither a built-in"):
        load_texts(str(tmp_path / "missing.txt"))
    with pytest.raises(TextSourceError, match="folder"):
        load_texts(str(tmp_path))


def test_probe_files(tmp_path):
    qa_file = tmp_path / "forget_qa.json"
    qa_file.write_text(json.dumps([{"question": "Which class did Professor McGonagall teach?", "answer": "Transfiguration"},
                                   {"question": "Who is Harry's godfather?", "answer": "Sirius Black"}]))
    forget = load_probes(str(qa_file))
    assert len(forget) == 2 and forget.probes[0].kind == "qa"
    assert forget.probes[0].prompt.startswith("Question: ") and forget.probes[0].prompt.endswith("\nAnswer:")
    nq = load_probes("nq-open")
    assert len(nq) == 1800 - 13 and all(p.answers for p in nq.probes)  # its 13 Harry Potter questions dropped
    assert set(BUILTIN_PROBES) == {"hp-cloze", "general-cloze", "nq-open"}
    cloze = tmp_path / "cloze.json"
    cloze.write_text(json.dumps([{"prompt": "Harry's owl is called", "answer": "Hedwig"}]))
    ps = load_probes(str(cloze))
    assert ps.name == "cloze" and ps.probes[0].kind == "cloze" and ps.probes[0].answers == ("Hedwig",)
    bad = tmp_path / "bad.json"
    bad.write_text('[{"prompt": "x", "answer": "y"},')
    with pytest.raises(TextSourceError, match="malformed JSON at line 1"):
        load_probes(str(bad))
    bad.write_text('{"prompt": "x"}\n')
    with pytest.raises(TextSourceError, match="'answer' must be"):
        load_probes(str(bad))
    bad.write_text('{"text": "x", "answer": "y"}\n')
    with pytest.raises(TextSourceError, match="neither a 'prompt'"):
        load_probes(str(bad))
    bad.write_text('{"prompt": "x", "answer": "y"}\nnot json\n')
    with pytest.raises(TextSourceError, match="line 2 is not valid JSON"):
        load_probes(str(bad))


def test_presets_are_data():
    assert {"gemma-3-270m-offline", "gemma-3-270m", "gemma-2-2b"} <= set(PRESETS)
    assert known_model_ids() == {"google/gemma-3-270m", "google/gemma-2-2b"}
    fam = get_preset("gemma-3-270m").family()
    assert fam.ref(12) == "gemma-scope-2-270m-pt-res/layer_12_width_16k_l0_medium"
    assert fam.neuronpedia(12) == "gemma-3-270m/12-gemmascope-2-res-16k"
    assert fam.hook_name(5) == "blocks.5.hook_resid_post"
    g2 = get_preset("gemma-2-2b").family()
    assert g2.ref(12) == "gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical"
    assert g2.neuronpedia(0) == "gemma-2-2b/0-gemmascope-res-16k"
    with pytest.raises(InputError, match="no SAE at layer 7"):
        fam.ref(7)
    with pytest.raises(InputError, match="unknown model preset"):
        get_preset("gpt-5")


def test_neuronpedia_ids_come_from_sae_lens_metadata():
    from unlearn_core.saes.loading import release_neuronpedia_id

    assert release_neuronpedia_id("gemma-scope-2-270m-pt-res", "layer_9_width_16k_l0_medium") == (
        "gemma-3-270m/9-gemmascope-2-res-16k"
    )
    assert release_neuronpedia_id("gemma-scope-2b-pt-res-canonical", "layer_25/width_16k/canonical") == (
        "gemma-2-2b/25-gemmascope-res-16k"
    )


def test_hub_model_without_token_gives_a_clear_message(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(ModelUnavailableError, match="HF_TOKEN"):
        load_model("gemma-2-2b", device="cpu")


def test_hub_model_without_network_gives_a_clear_message(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", "hf_dummy_token_for_test")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError) as info:
        load_model("gemma-3-270m", device="cpu")
    assert "hf_dummy_token_for_test" not in str(info.value)
    assert "Hugging Face" in str(info.value) or "hub" in str(info.value)


def test_released_sae_offline_without_cache_gives_a_clear_message(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError, match="SAE gemma-scope-2-270m-pt-res/layer_12"):
        load_sae("gemma-scope-2-270m-pt-res/layer_12_width_16k_l0_medium")
    with pytest.raises(ModelUnavailableError, match="not a sae_lens release"):
        load_sae("no-such-release/layer_1")
    with pytest.raises(ModelUnavailableError, match="has no SAE"):
        load_sae("gemma-scope-2-270m-pt-res/layer_99")


def test_describe_hub_error_classifies():
    assert "HF_TOKEN" in describe_hub_error("m", OSError("401 Client Error: gated repo"))
    assert "no network" in describe_hub_error("m", ConnectionError("Failed to establish a new connection"))
    assert "memory" in describe_hub_error("m", RuntimeError("CUDA out of memory"))
    url = "https://huggingface.co/google/x/resolve/main/params.safetensors"
    assert "HTTP 503" in describe_hub_error("m", OSError(f"503 Server Error: Service Unavailable for url: {url}"))
    assert "HTTP 429" in describe_hub_error("m", OSError(f"429 Client Error: Too Many Requests for url: {url}"))
    assert "not found" in describe_hub_error("m", OSError(f"404 Client Error: Not Found for url: {url}"))
    try:
        try:
            raise ConnectionRefusedError("[Errno 111] Connection refused")
        except ConnectionRefusedError as inner:
            raise RuntimeError("download failed") from inner
    except RuntimeError as outer:
        assert "no network" in describe_hub_error("m", outer)


@pytest.fixture()
def local_sae_dir(tmp_path):
    sae = tiny_sae(layer=1, d_sae=96)
    path = tmp_path / "sae_l1"
    sae.sae.save_model(path)
    return path


def test_local_sae_directory_loads_with_its_hook(local_sae_dir):
    loaded = load_sae(str(local_sae_dir))
    assert loaded.hook_name == "blocks.1.hook_resid_post" and loaded.layer == 1 and loaded.width == 96
    assert resolve_local_path(str(local_sae_dir)) == local_sae_dir.resolve()


def test_feature_list_checked_against_the_loaded_sae(local_sae_dir, tmp_path):
    fl = new_feature_list("t", "google/gemma-3-270m")
    fl.saes.append(SaeEntry(str(local_sae_dir), "blocks.1.hook_resid_post", 1, None, [Latent(3), Latent(95)]))
    sel = load_selections(fl)
    assert sel[0].latents == (3, 95)
    fl.saes[0].latents.append(Latent(96))
    with pytest.raises(FeatureListError, match="out of range"):
        load_selections(fl)
    fl.saes[0] = SaeEntry(str(local_sae_dir), "blocks.2.hook_resid_post", 2, None, [Latent(3)])
    with pytest.raises(FeatureListError, match="trained at blocks.1.hook_resid_post"):
        load_selections(fl)
    # the list's model decides the preset; a preset for another model is refused
    assert preset_for_feature_list(fl).name == "gemma-3-270m-offline"
    with pytest.raises(FeatureListError, match="is for google/gemma-3-270m"):
        preset_for_feature_list(fl, "gemma-2-2b")
    save_feature_list(fl, tmp_path / "fl.json")
    with pytest.raises(FeatureListError, match="exists"):
        save_feature_list(fl, tmp_path / "fl.json")


def test_local_copy_of_a_gemma_scope_2_folder_loads(tmp_path):
    """A downloaded Gemma Scope 2 folder (hub layout: params.safetensors with w_enc/w_dec/...) loads as JumpReLU."""
    import torch
    from safetensors.torch import save_file

    src = tiny_sae(layer=12, d_sae=96)
    folder = tmp_path / "resid_post" / "layer_12_width_16k_l0_medium"
    folder.mkdir(parents=True)
    s = src.sae
    save_file({"w_enc": s.W_enc.detach().clone(), "w_dec": s.W_dec.detach().clone(), "b_enc": s.b_enc.detach().clone(),
               "b_dec": s.b_dec.detach().clone(), "threshold": s.threshold.detach().clone()}, str(folder / "params.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architecture": "jump_relu", "model_name": "gemma-v3-270m-pt"}))
    loaded = load_sae(str(folder))
    assert loaded.hook_name == "blocks.12.hook_resid_post" and loaded.width == 96
    assert loaded.neuronpedia == "gemma-3-270m/12-gemmascope-2-res-16k"
    assert loaded.sae.cfg.architecture() == "jumprelu" and loaded.sae.cfg.metadata.model_name == "google/gemma-3-270m"
    x = torch.randn(3, 32)
    assert torch.allclose(loaded.sae.encode(x), s.encode(x), atol=1e-6)  # b_dec is zero in the tiny SAE


def test_sae_that_does_not_fit_the_model_is_refused(tiny_lm):
    from tiny_models import random_jumprelu_sae

    from unlearn_core.ablation.interventions import Intervention, LatentSelection
    from unlearn_core.forget_set.selections import check_selections_fit_model

    wrong_width = random_jumprelu_sae(16, 8, "blocks.1.hook_resid_post")
    with pytest.raises(FeatureListError, match="trained on another model"):
        check_selections_fit_model(tiny_lm, [LatentSelection(wrong_width, (1,))], Intervention())
    too_deep = random_jumprelu_sae(32, 8, "blocks.7.hook_resid_post")
    with pytest.raises(FeatureListError, match="does not have"):
        check_selections_fit_model(tiny_lm, [LatentSelection(too_deep, (1,))], Intervention())
    check_selections_fit_model(tiny_lm, [LatentSelection(tiny_sae(), (1,))], Intervention())


def test_bad_devices_are_refused():
    from unlearn_core.models.loading import validate_device

    assert validate_device("cpu") == "cpu"
    with pytest.raises(ModelUnavailableError, match="unknown device"):
        validate_device("gpu-please")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ModelUnavailableError, match="not available"):
            validate_device("cuda")


def test_cli_refuses_bad_settings_before_running(tmp_path, capsys, monkeypatch):
    from unlearn_core.cli import main

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-token"))

    rc = main(["evaluate", "--forget-set", "feature_lists/reference_gemma-2-2b_layer12.json",
               "--json", str(tmp_path / "missing-folder" / "out.json")])
    assert rc == 2 and "cannot write --json" in capsys.readouterr().err
    rc = main(["evaluate", "--forget-set", "feature_lists/reference_gemma-2-2b_layer12.json", "--mode", "clamp",
               "--value", "nan"])
    assert rc == 2 and "finite" in capsys.readouterr().err
    rc = main(["evaluate", "--forget-set", "feature_lists/reference_gemma-2-2b_layer12.json"])
    assert rc == 2 and "HF_TOKEN" in capsys.readouterr().err
