"""Integration on the real offline Gemma 3 270M (PyPI GGUF, dequantized and cached on first use)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import random_jumprelu_sae

from unlearn_core.ablation.conditions import Condition
from unlearn_core.ablation.interventions import Intervention, LatentSelection, intervened
from unlearn_core.data.texts import load_texts
from unlearn_core.experiments.evaluate import EvaluationConfig, run_evaluation
from unlearn_core.forget_set import Latent, SaeEntry, new_feature_list, save_feature_list
from unlearn_core.scoring.generation import generate
from unlearn_core.scoring.perplexity import perplexity, perplexity_one_at_a_time

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sae16k():
    return random_jumprelu_sae(640, 16384, "blocks.9.hook_resid_post", seed=9)


def test_offline_model_is_gemma_3_270m(real_lm):
    cfg = real_lm.model.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.d_vocab) == (18, 640, 262144)
    assert real_lm.tokenizer.convert_ids_to_tokens(real_lm.bos_token_id) == "<bos>"
    text = generate(real_lm, "Who is Harry Potter?", max_new_tokens=25)
    assert "Rowling" in text or "wizard" in text.lower()


def test_empty_forget_set_reproduces_unhooked_logits(real_lm, sae16k):
    tokens = torch.tensor([[real_lm.bos_token_id, *real_lm.tokenizer("Harry Potter went to Hogwarts.")["input_ids"]]])
    hooks = Condition("r", (LatentSelection(sae16k, ()),), Intervention(mode="zero")).hooks()
    with torch.inference_mode():
        with intervened(real_lm, []) as model:
            clean = model(tokens)
        with intervened(real_lm, hooks) as model:
            hooked = model(tokens)
    assert (hooked - clean).abs().max().item() <= 1e-4


def test_batched_perplexity_matches_the_studys_loop(real_lm, sae16k):
    texts = load_texts("wikitext2", max_texts=12).texts
    for hooks in ([], Condition("a", (LatentSelection(sae16k, tuple(range(0, 16384, 64))),), Intervention("clamp", 5)).hooks()):
        batched = perplexity(real_lm, texts, hooks, batch_tokens=512)
        loop = perplexity_one_at_a_time(real_lm, texts, hooks)
        assert batched.n_tokens == loop.n_tokens
        assert abs(batched.perplexity / loop.perplexity - 1) <= 1e-4


def _feature_list_with_local_sae(tmp_path: Path) -> Path:
    sae = random_jumprelu_sae(640, 4096, "blocks.9.hook_resid_post", seed=1)
    sae_dir = tmp_path / "sae_layer9"
    sae.sae.save_model(sae_dir)
    fl = new_feature_list("integration", "google/gemma-3-270m", "random SAE, for tests")
    fl.saes.append(SaeEntry(str(sae_dir), "blocks.9.hook_resid_post", 9, None, [Latent(i) for i in range(0, 4096, 41)]))
    return save_feature_list(fl, tmp_path / "forget.json")


def test_run_evaluation_all_conditions(real_lm, tmp_path):
    probes = tmp_path / "hp_cloze.json"
    probes.write_text(json.dumps([{"prompt": "Harry Potter was written by J. K.", "answer": "Rowling"},
                                  {"prompt": "The capital of France is", "answer": "Paris"}]))
    config = EvaluationConfig(
        forget_set=str(_feature_list_with_local_sae(tmp_path)),
        mode="clamp", value=5.0, texts=("wikitext2", "hp-fanwiki"), probes=(str(probes),), max_texts=3, seed=1,
    )
    res = run_evaluation(config, lm=real_lm).to_dict()
    conds = res["conditions"]
    assert list(conds) == ["baseline", "ablated", "reconstruction_only", "random_control"]
    for entry in conds.values():
        assert set(entry["perplexity"]) == {"wikitext2", "hp-fanwiki"}
        assert set(entry["probes"]["hp_cloze"]) == {"top1", "mean_logprob", "n"}
    base, recon = conds["baseline"], conds["reconstruction_only"]
    assert recon["perplexity"] == base["perplexity"]  # error term kept: exactly the baseline
    assert res["details"]["reconstruction_only"]["identical_to"].startswith("baseline")
    assert conds["ablated"]["perplexity"]["wikitext2"] != pytest.approx(base["perplexity"]["wikitext2"], rel=1e-4)
    assert base["probes"]["hp_cloze"]["n"] == 2 and base["probes"]["hp_cloze"]["top1"] >= 0.5  # knows "Rowling"
    assert res["settings"]["saes"][0]["applied_at"] == "blocks.9.hook_resid_post"
    assert len(res["details"]["random_control"]["random_latents"][str(tmp_path / "sae_layer9")]) == 100


def test_cli_evaluate_contract(tmp_path):
    """`python -m unlearn_core evaluate ...` exactly as documented, including the study's reproduction flags."""
    forget = _feature_list_with_local_sae(tmp_path)
    out = tmp_path / "result.json"
    cmd = [sys.executable, "-m", "unlearn_core", "evaluate", "--forget-set", str(forget), "--mode", "replace",
           "--hook-site", "resid_pre", "--texts", "wikitext2-clean", "--max-texts", "2", "--probes", "hp-cloze:test",
           "--conditions", "baseline,ablated", "--seed", "3", "--json", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "PPL wikitext2-clean" in proc.stdout and "REPRODUCTION ONLY" in proc.stdout
    res = json.loads(out.read_text())
    assert set(res["conditions"]) == {"baseline", "ablated"}
    probe = res["conditions"]["ablated"]["probes"]["hp-cloze:test"]
    assert probe["n"] == 64 and 0 <= probe["top1"] <= 1
    assert res["settings"]["saes"][0]["applied_at"] == "blocks.9.hook_resid_pre"
    # replacing the residual by a random SAE's reconstruction wrecks the model
    ppl = {c: v["perplexity"]["wikitext2-clean"] for c, v in res["conditions"].items()}
    assert ppl["ablated"] > 10 * ppl["baseline"]


def test_cli_reports_bad_input_without_traceback(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "unlearn_core", "evaluate", "--forget-set", str(bad)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "line 1" in proc.stderr and "Traceback" not in proc.stderr


def test_cached_transformer_lens_weights_reproduce_the_reference_conversion(real_lm):
    """Later starts rebuild the model from cached TransformerLens weights; it must equal the slow HF -> TL path."""
    from unlearn_core.models.loading import load_model, offline_checkpoint
    from unlearn_core.models.offline import wrap_offline_checkpoint

    fast = load_model("gemma-3-270m-offline", device="cpu", dtype="float32")  # the cache exists after real_lm
    reference = wrap_offline_checkpoint(offline_checkpoint(), real_lm.tokenizer, "google/gemma-3-270m")
    tokens = torch.tensor([[real_lm.bos_token_id, *real_lm.tokenizer("The Sorting Hat sang a song.")["input_ids"]]])
    with torch.inference_mode():
        assert torch.equal(fast.model(tokens), reference(tokens))


@pytest.mark.integration
def test_cached_tokenizer_and_weight_layout_match_the_reference(real_lm):
    """The pickled tokenizer encodes like a freshly built one; transposed storage keeps values and shapes."""
    from transformers import AutoTokenizer

    from unlearn_core.models.loading import offline_checkpoint

    fresh = AutoTokenizer.from_pretrained(str(offline_checkpoint()), add_bos_token=True)
    text = "Harry Potter's wand — 魔法 \n\n Hogwarts, 1997."
    assert real_lm.tokenizer(text, add_special_tokens=False)["input_ids"] == fresh(text, add_special_tokens=False)["input_ids"]
    assert real_lm.tokenizer.bos_token_id == fresh.bos_token_id
    w_u = real_lm.model.W_U
    assert tuple(w_u.shape) == (640, 262144) and not w_u.is_contiguous() and w_u.T.is_contiguous()


@pytest.mark.integration
def test_two_app_sessions_on_the_shared_model_do_not_leak(real_lm):
    """One session ablating (clamp, 3 SAEs), one on the baseline, at once from threads on the one cached model:
    each gets exactly what it gets alone (perplexity after every batch, and a greedy generation)."""
    import threading

    from unlearn_core.ablation.interventions import Intervention, LatentSelection
    from unlearn_core.data.texts import TextSet, load_texts
    from unlearn_core.experiments.compare import comparison_conditions, generation_cell, perplexity_cell
    from unlearn_core.saes.loading import load_sae

    saes = [load_sae(f"saes/gemma-3-270m/layer_{layer}_width_4k") for layer in (5, 9, 12)]
    conds = comparison_conditions([LatentSelection(s, tuple(range(0, 4096, 9))) for s in saes],
                                  Intervention(mode="clamp", value=20), per_layer=False, controls=())
    base, ablated = conds
    texts = TextSet("t", load_texts("hp-fanwiki", 4).texts, "test")

    def run(cond):
        ppl = [r.perplexity for r in perplexity_cell(real_lm, cond, texts, max_seq_len=40, batch_tokens=80)]
        return ppl, generation_cell(real_lm, cond, "Harry Potter is", 5)

    alone = {"base": run(base), "ablated": run(ablated)}
    assert alone["base"][0][-1] != alone["ablated"][0][-1]
    got: dict[str, list] = {"base": [], "ablated": []}

    def session(kind):
        got[kind].append(run(base if kind == "base" else ablated))

    threads = [threading.Thread(target=session, args=(k,)) for k in ("ablated", "base", "ablated", "base")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got["base"] == [alone["base"]] * 2
    assert got["ablated"] == [alone["ablated"]] * 2
