"""Speed benchmark on the offline model: every number is measured within one run, on the same texts and prompts.

Ours against ourselves (float32, as before):

* ``batched_vs_loop_speedup``: the study's one-text-at-a-time perplexity loop, run as the study ran it (a fresh
  Python process with the default memory allocator), timed against our batched perplexity;
  ``batched_vs_loop_same_process_speedup``: the same loop in this process (allocator keeps freed memory);
* ``ablation_overhead_1layer`` / ``_3layer``: extra time of batched perplexity with 100 latents clamped on 1 / 3
  random 16k JumpReLU SAEs (``blocks.{5,9,12}.hook_resid_post``), as a fraction of the plain forward;
* ``peak_rss_mb``: the process's peak resident memory after that float32 part (before any other model is loaded).

The fast precision (``fast_dtype``, default ``"auto"``: bfloat16 where the CPU has native bf16 units) against
float32, and both against plain Hugging Face transformers (``AutoModelForCausalLM`` on the same safetensors
checkpoint, ``torch.inference_mode``, same threads; perplexity in the same length-sorted right-padded batches with an
attention mask and the NLL from full logits via ``labels=``; ``generate`` greedy on one prompt), timed interleaved:

* ``ppl_tokens_per_s`` / ``gen_tokens_per_s``: ``{"ours"|"hf": {dtype: tokens per second}}`` (perplexity: scored
  tokens; generation: new tokens of one greedy ``max_new_tokens``-token continuation);
* ``hf_ppl_ratio`` / ``hf_gen_ratio``: ``{dtype: our throughput / theirs}`` (above 1: we are faster);
* ``fast_vs_fp32_ppl_speedup``: our float32 perplexity time / our fast-precision time (``hf_fast_vs_fp32...``: theirs);
* ``fast_vs_fp32_ppl_drift``: relative perplexity difference fast vs float32 (signed, baseline, WikiText rows);
  ``precision_drift``: the full :func:`precision_drift` on WikiText and held-out fan-wiki text, with the forget
  set's SAEs in float32 and (``ablated_sae_fast``) in the fast dtype, as the app loads them today;
* ``compare_generations_s``: the Compare page's default generation set (the 7 study prompts x the page's default
  conditions for the shipped example forget set x 40 tokens via ``generate_batch``, 4 prompts per call as the page
  does) in the fast precision (``compare_generations_fp32_s``: in float32);
* ``unembed_rounding``: what rounding the fast dtype's logits costs before the float32 log-sum-exp;
  ``residual_max_abs``: the largest residual-stream value (Gemma 3's massive-activation dimension).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable, Sequence
from typing import Any

import torch

from unlearn_core.ablation.conditions import BASELINE, Condition
from unlearn_core.ablation.interventions import Intervention, LatentSelection, intervention_hooks
from unlearn_core.data.texts import load_texts
from unlearn_core.experiments.compare import DEFAULT_NEW_TOKENS, comparison_conditions
from unlearn_core.experiments.peer import hf_generate_ids, hf_perplexity, load_hf_model
from unlearn_core.explain.explore import study_prompts
from unlearn_core.models.loading import LoadedModel, load_model, resolve_dtype
from unlearn_core.models.precision import bf16_feature, describe_precision, residual_extreme
from unlearn_core.models.presets import REPO_ROOT, get_preset
from unlearn_core.saes.loading import LoadedSae
from unlearn_core.scoring.batching import (
    DEFAULT_BATCH_TOKENS,
    DEFAULT_MAX_SEQ_LEN,
    batches_by_length,
    right_padded,
    tokenize_with_bos,
)
from unlearn_core.scoring.generation import generate, generate_batch, generate_batch_ids
from unlearn_core.scoring.perplexity import perplexity, perplexity_one_at_a_time
from unlearn_core.scoring.vocab_logprobs import final_logprobs

BENCH_LAYERS = (5, 9, 12)
PRESET = "gemma-3-270m-offline"
BENCH_FORGET_SET = REPO_ROOT / "feature_lists" / "example_gemma-3-270m-offline_hp-suggested.json"
"""The shipped example forget set: its SAEs and intervention drive the drift and Compare measurements."""
COMPARE_PROMPTS_PER_CALL = 4
"""Prompts per ``generate_batch`` call on the Compare page (``GEN_PROMPTS_PER_BATCH`` of ``pages/compare.py``)."""
DRIFT_SEQ_LEN = 256


def random_jumprelu_sae(d_in: int, d_sae: int, hook_name: str, seed: int = 0) -> LoadedSae:
    """A JumpReLU SAE with random weights at ``hook_name`` (sae_lens classes), for benchmarks and tests."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    from unlearn_core.saes.loading import layer_of_hook

    gen = torch.Generator().manual_seed(seed)
    cfg = JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(hook_name=hook_name))
    sae = JumpReLUSAE(cfg)
    with torch.no_grad():
        w = torch.randn(d_in, d_sae, generator=gen) / d_in**0.5
        sae.W_enc.copy_(w)
        sae.W_dec.copy_(w.T.contiguous() / 4)
        sae.b_enc.copy_(torch.randn(d_sae, generator=gen) * 0.1)
        sae.b_dec.zero_()
        sae.threshold.fill_(0.5)
    sae.eval()
    return LoadedSae(sae=sae, ref=f"random:{hook_name}", hook_name=hook_name, layer=layer_of_hook(hook_name), neuronpedia=None)


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _fastest(jobs: dict[str, Callable[[], Any]], repeats: int, say: Callable[[str], None],
             what: str) -> dict[str, tuple[float, Any, list[float]]]:
    """Run the jobs interleaved ``repeats`` times; each job's minimum time, its last output and every time."""
    best: dict[str, tuple[float, Any, list[float]]] = {}
    for r in range(repeats):
        say(f"{what}: {' / '.join(jobs)}, repeat {r + 1}/{repeats}")
        for name, job in jobs.items():
            t, out = _timed(job)
            times = [*best[name][2], t] if name in best else [t]
            best[name] = (min(times), out, times)
    return best


_STUDY_LOOP_SCRIPT = """
import json, sys, time
import torch
from unlearn_core.models import loading as models
from unlearn_core.scoring.perplexity import perplexity_one_at_a_time
from unlearn_core.data.texts import load_texts
models.keep_freed_memory = lambda: False  # the study ran with the default allocator
torch.set_num_threads(int(sys.argv[2]))
lm = models.load_model("gemma-3-270m-offline", device="cpu", dtype="float32")
texts = load_texts("wikitext2", int(sys.argv[1])).texts
perplexity_one_at_a_time(lm, texts[:8])
t0 = time.perf_counter()
res = perplexity_one_at_a_time(lm, texts)
print(json.dumps({"seconds": time.perf_counter() - t0, "perplexity": res.perplexity, "n_tokens": res.n_tokens}))
"""


def study_loop_in_fresh_process(n_texts: int) -> dict[str, float]:
    """Time the study's loop in a new Python process that keeps glibc's default allocator behaviour."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", _STUDY_LOOP_SCRIPT, str(n_texts), str(torch.get_num_threads())],
        capture_output=True, text=True, env=env, check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- precision ------------------------------------------------------------------------------------------------


def precision_drift(
    lm_fp32: LoadedModel,
    lm_fast: LoadedModel,
    texts: Sequence[str],
    selections: Sequence[LatentSelection],
    intervention: Intervention | None = None,
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
    fast_selections: Sequence[LatentSelection] | None = None,
) -> dict[str, float]:
    """How far the fast model's perplexities and headline ratio (ablated / baseline perplexity) are from float32's,
    on the same texts, with ``selections`` ablated by ``intervention`` (default: zero) in both models. Differences
    are signed and relative (``fast / fp32 - 1``). With ``fast_selections`` (the same latents of SAEs in another
    dtype) the fast model's ablation is also measured with those (``*_sae_fast`` keys)."""
    intervention = intervention or Intervention()
    hooks = intervention_hooks(selections, intervention)
    out: dict[str, float] = {}
    for name, lm in (("fp32", lm_fp32), ("fast", lm_fast)):
        out[f"baseline_{name}"] = perplexity(lm, texts, (), max_seq_len).perplexity
        out[f"ablated_{name}"] = perplexity(lm, texts, hooks, max_seq_len).perplexity
        out[f"ratio_{name}"] = out[f"ablated_{name}"] / out[f"baseline_{name}"]
    for key in ("baseline", "ablated", "ratio"):
        out[f"{key}_rel_diff"] = out[f"{key}_fast"] / out[f"{key}_fp32"] - 1.0
    if fast_selections is not None:
        fast_hooks = intervention_hooks(fast_selections, intervention)
        out["ablated_sae_fast"] = perplexity(lm_fast, texts, fast_hooks, max_seq_len).perplexity
        out["ablated_sae_fast_rel_diff"] = out["ablated_sae_fast"] / out["ablated_fp32"] - 1.0
        out["ratio_sae_fast_rel_diff"] = (out["ablated_sae_fast"] / out["baseline_fast"]) / out["ratio_fp32"] - 1.0
    return out


def selections_in_dtype(selections: Sequence[LatentSelection], dtype: torch.dtype) -> list[LatentSelection]:
    """The same latents on copies of their SAEs converted to ``dtype``."""
    return [dataclasses.replace(s, sae=dataclasses.replace(s.sae, sae=copy.deepcopy(s.sae.sae).to(dtype))) for s in selections]


def unembed_rounding(lm_fast: LoadedModel, texts: Sequence[str], max_seq_len: int = DEFAULT_MAX_SEQ_LEN) -> dict[str, float]:
    """On the fast model's own final residuals (one batch of ``texts``): how much :func:`final_logprobs` moves when
    the unembedding runs in float32 instead of the model's dtype (whose logits are rounded before the float32
    log-sum-exp). ``nll_shift`` is the mean NLL change (fast-dtype logits minus float32 ones)."""
    seqs = tokenize_with_bos(lm_fast, texts, max_seq_len)
    batch = batches_by_length([len(s) for s in seqs], DEFAULT_BATCH_TOKENS)[0]
    tokens, positions, lengths = right_padded(lm_fast, seqs, batch)
    with torch.inference_mode(), lm_fast.exclusive() as model:
        resid = model(tokens, stop_at_layer=model.cfg.n_layers)
        keep = positions < (lengths - 1)[:, None]
        targets = tokens[:, 1:][keep[:, :-1]]
        fast, _ = final_logprobs(model, resid[keep], targets)
        wide = types.SimpleNamespace(cfg=model.cfg, ln_final=model.ln_final, W_U=model.W_U.float(), b_U=model.b_U)
        exact, _ = final_logprobs(wide, resid[keep], targets)
    diff = (exact - fast).double()
    return {"tokens": int(diff.numel()), "nll_shift": float(diff.mean()), "logprob_mean_abs_diff": float(diff.abs().mean()),
            "ppl_rel_effect": math.expm1(float(diff.mean()))}


def forget_set_selections(d_model: int) -> tuple[list[LatentSelection], Intervention, str]:
    """The shipped example forget set's selections (float32 SAEs) and intervention, or random SAEs when absent."""
    from unlearn_core.errors import UnlearnError
    from unlearn_core.forget_set.io import load_feature_list
    from unlearn_core.forget_set.selections import load_selections

    try:
        fl = load_feature_list(BENCH_FORGET_SET)
        return load_selections(fl), fl.intervention, fl.name
    except (UnlearnError, OSError):
        saes = [random_jumprelu_sae(d_model, 4096, f"blocks.{layer}.hook_resid_post", seed=layer) for layer in BENCH_LAYERS]
        selections = [LatentSelection(s, tuple(range(0, 4096, 205))) for s in saes]
        return selections, Intervention("clamp", 10.0), "random SAEs (the shipped ones are absent)"


def _compare_generations(lm: LoadedModel, selections: Sequence[LatentSelection], intervention: Intervention,
                         n_prompts: int = 7, new_tokens: int = DEFAULT_NEW_TOKENS) -> int:
    """The Compare page's default generation run (prompt x condition cells; returns how many)."""
    prompts, conditions = study_prompts()[:n_prompts], comparison_conditions(selections, intervention)
    cells = 0
    for start in range(0, len(prompts), COMPARE_PROMPTS_PER_CALL):
        cells += len(generate_batch(lm, prompts[start : start + COMPARE_PROMPTS_PER_CALL], conditions, new_tokens))
    return cells


def run_benchmark(
    n_texts: int = 60,
    repeats: int = 3,
    n_latents: int = 100,
    lm: LoadedModel | None = None,
    status: Callable[[str], None] | None = None,
    fast_dtype: str = "auto",
    drift_texts: int = 6,
    peer: bool = True,
    partial: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the benchmark (see module docstring) and return its numbers; ``peer=False`` skips transformers.
    ``partial(numbers so far)`` is called after each part (so a stopped run keeps what it measured)."""
    say, save = status or (lambda m: print(m, file=sys.stderr, flush=True)), partial or (lambda numbers: None)
    load_seconds = None
    if lm is None:
        load_seconds, lm = _timed(lambda: load_model(PRESET, device="cpu", dtype="float32"))
    texts = load_texts("wikitext2", n_texts).texts
    d_model = lm.model.cfg.d_model
    saes = [random_jumprelu_sae(d_model, 16384, f"blocks.{layer}.hook_resid_post", seed=layer) for layer in BENCH_LAYERS]
    chosen = tuple(range(0, 16384, 16384 // n_latents))[:n_latents]
    clamp = Intervention(mode="clamp", value=10.0)
    hooks_1 = intervention_hooks([LatentSelection(saes[1], chosen)], clamp)
    hooks_3 = intervention_hooks([LatentSelection(s, chosen) for s in saes], clamp)

    say(f"warm-up; texts: {len(texts)} WikiText-2 rows")
    perplexity(lm, texts[:8])
    say("study's loop (one text per forward), in a fresh process as the study ran it")
    fresh = study_loop_in_fresh_process(len(texts))
    say("study's loop (one text per forward), in this process")
    t_loop, loop_res = _timed(lambda: perplexity_one_at_a_time(lm, texts))
    ours = _fastest({"plain": lambda: perplexity(lm, texts), "1layer": lambda: perplexity(lm, texts, hooks_1),
                     "3layer": lambda: perplexity(lm, texts, hooks_3)}, repeats, say, "batched float32 ablation")
    (t_plain, batched_res, _), t_one, t_three = ours["plain"], ours["1layer"][0], ours["3layer"][0]
    peak_fp32 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res: dict[str, Any] = {
        "batched_vs_loop_speedup": fresh["seconds"] / t_plain,
        "batched_vs_loop_same_process_speedup": t_loop / t_plain,
        "study_loop_fresh_process_seconds": fresh["seconds"],
        "ablation_overhead_1layer": t_one / t_plain - 1.0,
        "ablation_overhead_3layer": t_three / t_plain - 1.0,
        "ablation_overhead_per_layer_3layer": (t_three / t_plain - 1.0) / 3,
        "peak_rss_mb": peak_fp32,
        "loop_seconds": t_loop, "batched_seconds": t_plain, "ablated_1layer_seconds": t_one, "ablated_3layer_seconds": t_three,
        "tokens": batched_res.n_tokens,
        "batched_tokens_per_second": batched_res.n_tokens / t_plain,
        "loop_tokens_per_second": loop_res.n_tokens / t_loop,
        "perplexity_batched": batched_res.perplexity, "perplexity_loop": loop_res.perplexity,
        "perplexity_rel_diff": abs(batched_res.perplexity / loop_res.perplexity - 1.0),
        "perplexity_rel_diff_fresh_loop": abs(batched_res.perplexity / fresh["perplexity"] - 1.0),
        "model_load_seconds": load_seconds,
    }
    save(res)
    res.update(_precision_and_peer(lm, texts, fast_dtype, repeats, drift_texts, peer, say, lambda out: save({**res, **out})))
    res["peak_rss_mb_all_models"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["settings"] = {
        "n_texts": len(texts), "repeats": repeats, "n_latents_per_sae": n_latents, "sae_layers": list(BENCH_LAYERS),
        "intervention": clamp.describe(), "threads": torch.get_num_threads(), "device": lm.device,
        "dtype": str(lm.dtype).removeprefix("torch."), **res.pop("settings_fast"),
    }
    return res


def _precision_and_peer(lm: LoadedModel, texts: Sequence[str], fast_dtype: str, repeats: int, drift_texts: int,
                        peer: bool, say: Callable[[str], None], save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """The fast-precision and transformers part of :func:`run_benchmark`."""
    fast = resolve_dtype(fast_dtype, get_preset(PRESET), "cpu")
    fast_name = str(fast).removeprefix("torch.")
    say(f"fast precision: {describe_precision('cpu', fast)}")
    lm_fast = lm if fast == lm.dtype else load_model(PRESET, device="cpu", dtype=fast)
    models: dict[str, LoadedModel] = {"float32": lm, fast_name: lm_fast}
    hf = {name: load_hf_model(m.dtype) for name, m in models.items()} if peer else {}
    for name, m in models.items():  # warm-up on the very batches timed (oneDNN builds a kernel per shape)
        perplexity(m, texts)
        if name in hf:
            hf_perplexity(hf[name], m, texts)
    ppl_jobs: dict[str, Callable[[], Any]] = {}
    for name, m in models.items():
        ppl_jobs[f"ours {name}"] = lambda m=m: perplexity(m, texts)
        if name in hf:
            ppl_jobs[f"hf {name}"] = lambda name=name, m=m: hf_perplexity(hf[name], m, texts)
    ppl = _fastest(ppl_jobs, repeats, say, "perplexity")

    prompt = study_prompts()[0]
    baseline = [Condition(BASELINE)]
    ours_ids = {name: generate_batch_ids(m, [prompt], baseline, DEFAULT_NEW_TOKENS)[(0, BASELINE)] for name, m in models.items()}
    n_new = {name: len(ids) for name, ids in ours_ids.items()}
    gen_jobs: dict[str, Callable[[], Any]] = {}
    for name, m in models.items():
        gen_jobs[f"ours {name}"] = lambda m=m: generate(m, prompt, max_new_tokens=DEFAULT_NEW_TOKENS)
        if name in hf:
            hf_generate_ids(hf[name], m, prompt, 4)  # warm-up
            gen_jobs[f"hf {name}"] = lambda name=name, m=m: hf_generate_ids(hf[name], m, prompt, DEFAULT_NEW_TOKENS)
    gen = _fastest(gen_jobs, repeats, say, "generation (one prompt)")

    def count(key: str, name: str) -> int:
        return len(gen[key][1]) if key.startswith("hf") else n_new[name]

    out: dict[str, Any] = {"ppl_tokens_per_s": {}, "gen_tokens_per_s": {}, "hf_ppl_ratio": {}, "hf_gen_ratio": {}}
    for side in ("ours", "hf"):
        out["ppl_tokens_per_s"][side] = {n: ppl[k][1].n_tokens / ppl[k][0] for n in models if (k := f"{side} {n}") in ppl}
        out["gen_tokens_per_s"][side] = {n: count(k, n) / gen[k][0] for n in models if (k := f"{side} {n}") in gen}
    for name in hf:
        out["hf_ppl_ratio"][name] = out["ppl_tokens_per_s"]["ours"][name] / out["ppl_tokens_per_s"]["hf"][name]
        out["hf_gen_ratio"][name] = out["gen_tokens_per_s"]["ours"][name] / out["gen_tokens_per_s"]["hf"][name]
        out.setdefault("hf_ppl_rel_diff", {})[name] = ppl[f"ours {name}"][1].perplexity / ppl[f"hf {name}"][1].perplexity - 1.0
        out.setdefault("hf_gen_same_tokens", {})[name] = ours_ids[name] == gen[f"hf {name}"][1]
    for name in hf:  # transformers' batched forward varies a lot run to run (it allocates the full logits)
        ours_t, hf_t = (statistics.median(ppl[f"{side} {name}"][2]) for side in ("ours", "hf"))
        out.setdefault("hf_ppl_ratio_median", {})[name] = hf_t / ours_t
        out.setdefault("ppl_seconds_all", {})[name] = {side: ppl[f"{side} {name}"][2] for side in ("ours", "hf")}
    out["fast_vs_fp32_ppl_speedup"] = ppl["ours float32"][0] / ppl[f"ours {fast_name}"][0]
    if "hf float32" in ppl:
        out["hf_fast_vs_fp32_ppl_speedup"] = ppl["hf float32"][0] / ppl[f"hf {fast_name}"][0]
    out["fast_vs_fp32_gen_speedup"] = gen["ours float32"][0] / gen[f"ours {fast_name}"][0]
    hf.clear()
    save(out)

    say("precision drift (baseline and forget-set ablation, float32 vs fast)")
    selections, intervention, fl_name = forget_set_selections(lm.model.cfg.d_model)
    fast_sel = selections_in_dtype(selections, fast)
    hp = load_texts("hp-fanwiki", drift_texts).texts
    drift = {"wikitext2": precision_drift(lm, lm_fast, texts, selections, intervention, fast_selections=fast_sel),
             "hp-fanwiki": precision_drift(lm, lm_fast, hp, selections, intervention, DRIFT_SEQ_LEN, fast_sel)}
    out["fast_vs_fp32_ppl_drift"] = drift["wikitext2"]["baseline_rel_diff"]
    out["precision_drift"] = drift
    save(out)
    if fast != torch.float32:
        out["unembed_rounding"] = unembed_rounding(lm_fast, texts)
    out.update(residual_extreme(lm, max(texts, key=len)))

    say("Compare page's default generation set (float32, then fast)")
    sel_by = {"float32": selections, fast_name: fast_sel}  # SAEs in the model's dtype, as the app loads them
    for n, m in models.items():  # warm-up: one prompt, every condition, two tokens
        _compare_generations(m, sel_by[n], intervention, 1, 2)
    t_cmp = {n: _timed(lambda n=n, m=m: _compare_generations(m, sel_by[n], intervention)) for n, m in models.items()}
    out["compare_generations_s"], out["compare_generations_fp32_s"] = t_cmp[fast_name][0], t_cmp["float32"][0]
    out["settings_fast"] = {
        "fast_dtype": fast_name, "fast_precision": describe_precision("cpu", fast), "cpu_bf16_feature": bf16_feature("cpu"),
        "gen_prompt": prompt, "gen_new_tokens": n_new, "max_new_tokens": DEFAULT_NEW_TOKENS, "drift_forget_set": fl_name,
        "drift_intervention": intervention.describe(), "drift_hp_texts": len(hp), "drift_hp_seq_len": DRIFT_SEQ_LEN,
        "compare_cells": t_cmp[fast_name][1],
        "compare_conditions": [c.name for c in comparison_conditions(selections, intervention)],
        "transformers_peer": peer,
    }
    return out
