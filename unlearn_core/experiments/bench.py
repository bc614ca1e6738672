"""Speed benchmark on the offline model: every ratio is measured within one run, on the same texts.

* ``batched_vs_loop_speedup``: the study's one-text-at-a-time perplexity loop, run as the study ran it (a fresh
  Python process with the default memory allocator), timed against our batched perplexity;
* ``batched_vs_loop_same_process_speedup``: the same loop in this process, where the allocator keeps freed memory
  (see :func:`unlearn_core.models.loading.keep_freed_memory`): the effect of batching and chunked unembedding alone;
* ``ablation_overhead_1layer`` / ``_3layer``: extra time of batched perplexity with a forget set of 100 latents on
  1 / 3 SAEs (16k-wide JumpReLU at ``blocks.{5,9,12}.hook_resid_post``), as a fraction of the plain forward;
* ``peak_rss_mb``: the process's peak resident memory.

SAEs: the bundled ones for the preset when present, otherwise random JumpReLU SAEs of Gemma Scope's shape
(the cost of an intervention depends only on the shapes).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from unlearn_core.ablation.interventions import Intervention, LatentSelection, intervention_hooks
from unlearn_core.data.texts import load_texts
from unlearn_core.models.loading import LoadedModel, load_model
from unlearn_core.saes.loading import LoadedSae
from unlearn_core.scoring.perplexity import perplexity, perplexity_one_at_a_time

BENCH_LAYERS = (5, 9, 12)


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
    from unlearn_core.models.presets import REPO_ROOT

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", _STUDY_LOOP_SCRIPT, str(n_texts), str(torch.get_num_threads())],
        capture_output=True, text=True, env=env, check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_benchmark(
    n_texts: int = 60,
    repeats: int = 3,
    n_latents: int = 100,
    lm: LoadedModel | None = None,
    status: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the benchmark (see module docstring) and return its numbers."""
    say = status or (lambda m: print(m, file=sys.stderr, flush=True))
    load_seconds = None
    if lm is None:
        load_seconds, lm = _timed(lambda: load_model("gemma-3-270m-offline", device="cpu", dtype="float32"))
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
    plain, one, three = [], [], []
    batched_res = None
    for r in range(repeats):
        say(f"batched plain / 1-layer / 3-layer ablation, repeat {r + 1}/{repeats}")
        t, batched_res = _timed(lambda: perplexity(lm, texts))
        plain.append(t)
        one.append(_timed(lambda: perplexity(lm, texts, hooks_1))[0])
        three.append(_timed(lambda: perplexity(lm, texts, hooks_3))[0])
    assert batched_res is not None
    t_plain, t_one, t_three = min(plain), min(one), min(three)
    return {
        "batched_vs_loop_speedup": fresh["seconds"] / t_plain,
        "batched_vs_loop_same_process_speedup": t_loop / t_plain,
        "study_loop_fresh_process_seconds": fresh["seconds"],
        "ablation_overhead_1layer": t_one / t_plain - 1.0,
        "ablation_overhead_3layer": t_three / t_plain - 1.0,
        "ablation_overhead_per_layer_3layer": (t_three / t_plain - 1.0) / 3,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "loop_seconds": t_loop,
        "batched_seconds": t_plain,
        "ablated_1layer_seconds": t_one,
        "ablated_3layer_seconds": t_three,
        "tokens": batched_res.n_tokens,
        "batched_tokens_per_second": batched_res.n_tokens / t_plain,
        "loop_tokens_per_second": loop_res.n_tokens / t_loop,
        "perplexity_batched": batched_res.perplexity,
        "perplexity_loop": loop_res.perplexity,
        "perplexity_rel_diff": abs(batched_res.perplexity / loop_res.perplexity - 1.0),
        "perplexity_rel_diff_fresh_loop": abs(batched_res.perplexity / fresh["perplexity"] - 1.0),
        "model_load_seconds": load_seconds,
        "settings": {
            "n_texts": len(texts),
            "repeats": repeats,
            "n_latents_per_sae": n_latents,
            "sae_layers": list(BENCH_LAYERS),
            "intervention": clamp.describe(),
            "threads": torch.get_num_threads(),
            "device": lm.device,
            "dtype": str(lm.dtype).removeprefix("torch."),
        },
    }


def format_benchmark(res: dict[str, Any]) -> str:
    """Readable summary of :func:`run_benchmark` output."""
    return "\n".join(
        [
            f"texts: {res['settings']['n_texts']} WikiText-2 rows, {res['tokens']} scored tokens, "
            f"{res['settings']['threads']} threads, {res['settings']['device']} {res['settings']['dtype']}",
            f"perplexity, study's loop as it ran (fresh process, default allocator): "
            f"{res['study_loop_fresh_process_seconds']:.2f} s",
            f"perplexity, study's loop in this process: {res['loop_seconds']:.2f} s "
            f"({res['loop_tokens_per_second']:.0f} tok/s)",
            f"perplexity, batched:        {res['batched_seconds']:.2f} s ({res['batched_tokens_per_second']:.0f} tok/s)",
            f"batched vs the study's loop: x{res['batched_vs_loop_speedup']:.2f} "
            f"(same process: x{res['batched_vs_loop_same_process_speedup']:.2f}; "
            f"same perplexity to {res['perplexity_rel_diff']:.1e} relative)",
            f"ablation overhead, 1 layer: {100 * res['ablation_overhead_1layer']:+.1f}%",
            f"ablation overhead, 3 layers: {100 * res['ablation_overhead_3layer']:+.1f}% "
            f"({100 * res['ablation_overhead_per_layer_3layer']:+.1f}% per layer)",
            f"peak RSS: {res['peak_rss_mb']:.0f} MB",
        ]
    )
