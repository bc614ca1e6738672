"""The bundled SAEs for the offline model: present, loadable offline, and as good as their cards say."""

from __future__ import annotations

import json

import pytest
import torch

from unlearn_core.data.texts import load_texts
from unlearn_core.explain.dashboard_cache import dashboards_for
from unlearn_core.explain.dashboards import AUTO_LABEL_PREFIX
from unlearn_core.models.presets import REPO_ROOT, get_preset
from unlearn_core.saes.loading import load_sae
from unlearn_core.training.quality import measure_quality
from unlearn_core.training.release import SHIPPED_SAES_DIR, folder_bytes, shipped_sae_folders

FAMILY = get_preset("gemma-3-270m-offline").family()


def test_the_offline_preset_offers_the_bundled_saes_by_layer():
    assert FAMILY.name == "unlearn-offline-4k"
    assert set(FAMILY.layers) >= {5, 9, 12}
    for layer in FAMILY.layers:
        folder = REPO_ROOT / FAMILY.ref(layer)
        assert (folder / "cfg.json").is_file(), f"layer {layer}: {folder} is missing"
        assert folder in shipped_sae_folders()


def test_shipped_weights_and_dashboards_fit_the_size_budget():
    assert len(shipped_sae_folders()) >= 3
    assert folder_bytes(SHIPPED_SAES_DIR) <= 60 * 1024 * 1024


@pytest.mark.parametrize("layer", FAMILY.layers)
def test_each_shipped_sae_loads_as_a_jumprelu_sae_at_its_site(layer):
    loaded = load_sae(FAMILY.ref(layer))
    assert loaded.sae.cfg.architecture() == "jumprelu"
    assert loaded.hook_name == f"blocks.{layer}.hook_resid_post" == FAMILY.hook_name(layer)
    assert loaded.width == FAMILY.width >= 4096
    assert loaded.sae.W_enc.shape == (640, loaded.width)
    card = (REPO_ROOT / FAMILY.ref(layer) / "README.md").read_text(encoding="utf-8")
    assert "python -m unlearn_core train-sae" in card and "CE loss recovered" in card


@pytest.mark.integration
def test_l0_and_reconstruction_on_held_out_text_match_the_cards(real_lm):
    saes = {}
    cards = {}
    for layer in FAMILY.layers:
        loaded = load_sae(FAMILY.ref(layer))
        saes[loaded.hook_name] = loaded.sae
        cards[loaded.hook_name] = json.loads((REPO_ROOT / FAMILY.ref(layer) / "quality.json").read_text())
    # A few hundred tokens from the *end* of the held-out set (the cards measured from its start).
    texts = list(load_texts("wikitext2").texts[-40:])
    measured = measure_quality(real_lm, saes, texts, max_tokens=600, ce_max_tokens=0)
    for hook_name, q in measured.items():
        card = cards[hook_name]
        assert q.n_tokens == 600
        assert card["l0"] * 0.6 <= q.l0 <= card["l0"] * 1.5, (hook_name, q.l0, card["l0"])
        assert q.fve >= card["fve"] - 0.12, (hook_name, q.fve, card["fve"])


@pytest.mark.integration
def test_shipped_dashboards_describe_live_latents(real_lm):
    loaded = load_sae(FAMILY.ref(FAMILY.layers[0]))
    board = dashboards_for(real_lm, loaded)
    assert board.width == loaded.width
    assert board.meta["hook_name"] == loaded.hook_name
    live = int((board.frequency > 0).sum())
    assert live >= 0.8 * board.width
    latent = int(torch.tensor(board.frequency).argmax())
    d = board.latent(latent)
    assert d.contexts and d.contexts[0].value == pytest.approx(float(board.max_activation[latent]), rel=1e-2)
    assert len(d.promoted) == len(d.suppressed) == 10
    assert d.auto_label.startswith(AUTO_LABEL_PREFIX)


def test_the_example_harry_potter_list_names_live_latents_of_the_bundled_saes():
    from unlearn_core.explain.dashboards import Dashboards
    from unlearn_core.forget_set import check_latents_fit, load_feature_list

    fl = load_feature_list(REPO_ROOT / "feature_lists" / "example_gemma-3-270m-offline_harry-potter.json")
    assert fl.model == "google/gemma-3-270m" and fl.total_latents >= 10
    for entry in fl.saes:
        assert entry.sae == FAMILY.ref(entry.layer) and entry.hook_name == FAMILY.hook_name(entry.layer)
        check_latents_fit(entry, FAMILY.width)
        board = Dashboards.load(REPO_ROOT / entry.sae / "dashboards.npz")
        for latent in entry.latents:
            assert latent.label, f"layer {entry.layer} latent {latent.id} has no label"
            assert board.frequency[latent.id] > 0, f"layer {entry.layer} latent {latent.id} never fires"
