"""Native low precision: what "auto" resolves to, CPU flag parsing, float32 where it must stay, and the drift."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from tiny_models import ByteTokenizer, make_tiny_model, tiny_sae

from unlearn_core.ablation.interventions import Intervention, LatentSelection
from unlearn_core.cli import build_parser
from unlearn_core.errors import ModelUnavailableError
from unlearn_core.experiments.bench import precision_drift, selections_in_dtype, unembed_rounding
from unlearn_core.experiments.peer import hf_generate_ids, hf_perplexity
from unlearn_core.models import precision
from unlearn_core.models.loading import LoadedModel, resolve_dtype
from unlearn_core.models.presets import get_preset
from unlearn_core.scoring.batching import score_tokens, tokenize_with_bos
from unlearn_core.scoring.vocab_logprobs import final_logprobs

PRESET = get_preset("gemma-3-270m-offline")
TEXTS = ["The owl flew over the castle at night.", "A short one.", "Numbers: 1, 2, 3, 4, 5 and six.",
         "Rain fell on the quiet village, and the river rose."]

SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu vme avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8 avx512_fp16

processor\t: 1
flags\t\t: fpu vme avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8 avx512_fp16
"""
ZEN4 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n"
GRAVITON3 = "processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd sve i8mm bf16 dgh rng\nCPU implementer\t: 0x41\n"


def bf16_copy(lm: LoadedModel) -> LoadedModel:
    """A bfloat16 copy of a tiny model (its own weights, so the shared fixture stays float32)."""
    twin = make_tiny_model()
    twin.model.load_state_dict(lm.model.state_dict())
    twin.model.to(torch.bfloat16, print_details=False)
    return dataclasses.replace(twin, dtype=torch.bfloat16)


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_follows_native_bf16_support(monkeypatch, native, expected):
    seen = []
    monkeypatch.setattr(precision, "native_bf16", lambda device="cpu": seen.append(str(device)) or native)
    assert resolve_dtype("auto", PRESET, "cpu") == expected
    assert seen == ["cpu"]
    assert precision.auto_dtype("cpu") == str(expected).removeprefix("torch.")


def test_explicit_dtypes_and_errors_are_unchanged():
    assert resolve_dtype("float32", PRESET) == torch.float32
    assert resolve_dtype("bfloat16", PRESET) == torch.bfloat16
    # the default is auto: bfloat16 where native (this CPU, if it has AMX / AVX512-BF16), else float32
    assert PRESET.default_dtype == "auto"
    expected = getattr(torch, precision.auto_dtype("cpu"))
    assert resolve_dtype(None, PRESET, "cpu") == resolve_dtype("auto", PRESET, "cpu") == expected
    assert resolve_dtype(torch.float16, PRESET) == torch.float16
    with pytest.raises(ModelUnavailableError, match="auto"):
        resolve_dtype("float8", PRESET)
    assert set(precision.PRECISION_CHOICES) >= {"auto", "float32", "bfloat16"}


@pytest.mark.parametrize(("text", "feature"), [(SAPPHIRE_RAPIDS, "AMX-BF16"), (ZEN4, "AVX512-BF16"), (SKYLAKE, None),
                                               (GRAVITON3, "Arm BF16"), ("", None)])
def test_cpuinfo_flags(text, feature):
    flags = precision.cpu_flags(text)
    assert precision.bf16_feature_from_flags(flags) == feature
    if text is SAPPHIRE_RAPIDS:
        assert {"amx_bf16", "avx512_bf16", "avx2"} <= flags and "genuineintel" not in flags


def test_cpu_detection_reads_proc_cpuinfo(monkeypatch, tmp_path):
    fake = tmp_path / "cpuinfo"
    monkeypatch.setattr(precision, "CPUINFO", fake)
    monkeypatch.setattr(precision.sys, "platform", "linux")
    for text, native in ((SAPPHIRE_RAPIDS, True), (SKYLAKE, False)):
        fake.write_text(text)
        precision.cpu_bf16_feature.cache_clear()
        try:
            assert precision.native_bf16("cpu") is native
            described = precision.describe_precision("cpu")
        finally:
            precision.cpu_bf16_feature.cache_clear()
        assert described == ("bfloat16 (native: AMX-BF16)" if native else "float32 (no native bfloat16 on cpu)")


def test_describe_precision(monkeypatch):
    monkeypatch.setattr(precision, "bf16_feature", lambda device="cpu": None)
    assert precision.describe_precision("cpu", "float32") == "float32"
    assert "emulated" in precision.describe_precision("cpu", torch.bfloat16)
    assert precision.native_bf16("mps") is False


def test_final_logprobs_of_a_bf16_model_are_float32(tiny_lm):
    lm16 = bf16_copy(tiny_lm)
    seqs = tokenize_with_bos(lm16, TEXTS)
    scores = score_tokens(lm16, seqs)
    assert all(s.logprobs.dtype == torch.float32 for s in scores)
    assert all(bool(torch.isfinite(s.logprobs).all()) and bool((s.logprobs <= 0).all()) for s in scores)
    resid = torch.randn(5, lm16.model.cfg.d_model, dtype=torch.bfloat16)
    logp, hits = final_logprobs(lm16.model, resid, torch.arange(5))
    assert logp.dtype == torch.float32 and hits.dtype == torch.bool
    # close to float32 scoring of the same weights
    ref = score_tokens(tiny_lm, seqs)
    assert all(torch.allclose(a.logprobs, b.logprobs, atol=0.1) for a, b in zip(scores, ref, strict=True))


def test_precision_drift_is_small_and_finite(tiny_lm):
    lm16 = bf16_copy(tiny_lm)
    selections = [LatentSelection(tiny_sae(1), (0, 1, 2, 3, 4))]
    drift = precision_drift(tiny_lm, lm16, TEXTS, selections, Intervention("zero"),
                            fast_selections=selections_in_dtype(selections, torch.bfloat16))
    assert all(math.isfinite(v) for v in drift.values())
    for key in ("baseline_rel_diff", "ablated_rel_diff", "ratio_rel_diff", "ablated_sae_fast_rel_diff"):
        assert abs(drift[key]) < 0.05, (key, drift)
    assert drift["ratio_fp32"] == pytest.approx(drift["ablated_fp32"] / drift["baseline_fp32"])
    same = precision_drift(tiny_lm, tiny_lm, TEXTS, selections)
    assert same["baseline_rel_diff"] == 0.0 and same["ratio_rel_diff"] == 0.0
    rounding = unembed_rounding(lm16, TEXTS)
    assert rounding["tokens"] > 0 and math.isfinite(rounding["nll_shift"]) and rounding["logprob_mean_abs_diff"] < 0.1


def test_residual_extreme(tiny_lm):
    found = precision.residual_extreme(tiny_lm, TEXTS[0])
    assert 0 <= found["residual_max_layer"] < 3 and 0 <= found["residual_max_dim"] < 32
    assert 0 < found["bf16_spacing_at_max"] <= found["residual_max_abs"] / 128


def test_hf_peer_batches_like_one_text_at_a_time(tiny_lm):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256 + ByteTokenizer.offset, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
                      bos_token_id=1, eos_token_id=2)
    hf = LlamaForCausalLM(cfg).eval()
    batched = hf_perplexity(hf, tiny_lm, TEXTS)
    alone = hf_perplexity(hf, tiny_lm, TEXTS, batch_tokens=1)  # one text per batch: no padding at all
    assert batched.n_tokens == alone.n_tokens == sum(len(s) - 1 for s in tokenize_with_bos(tiny_lm, TEXTS))
    assert batched.perplexity == pytest.approx(alone.perplexity, rel=1e-4)
    new = hf_generate_ids(hf, tiny_lm, "The owl", 5)
    assert len(new) <= 5 and 2 not in new


def test_bench_help_lists_the_new_flags(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--help"])
    text = capsys.readouterr().out
    for flag in ("--fast-dtype", "--drift-texts", "--no-peer", "--texts", "--repeats", "--json"):
        assert flag in text
    args = build_parser().parse_args(["bench"])
    assert args.fast_dtype == "auto" and args.peer is True
