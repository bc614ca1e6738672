"""One-prompt greedy generation, timed in one process: ours with the speed patches, ours without, and plain
transformers ``generate`` on the same weights (the bench's peer), in float32 and bfloat16.

    python scripts/gen_speed_check.py [--tokens 40] [--repeats 3] [--threads N] [--dtypes float32 bfloat16]

Also ours without :mod:`unlearn_core.models.lean_decode` (one row through ``HookedTransformer.forward``).
Repeats are interleaved and the fastest of each kept; ratios are throughputs (above 1: the first is faster).
Also checks that the patched and unpatched paths pick the same tokens and how far their prompt logits are apart.
A quick check for one change; ``python -m unlearn_core bench`` is the measurement of record.
"""

from __future__ import annotations

import argparse
import gc
import time

import torch

from unlearn_core.ablation.conditions import BASELINE, Condition
from unlearn_core.experiments.peer import hf_generate_ids, load_hf_model
from unlearn_core.explain.explore import study_prompts
from unlearn_core.models.loading import load_model
from unlearn_core.scoring import generation
from unlearn_core.scoring.generation import generate_batch_ids, prompt_token_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    prompt = study_prompts()[0]
    print(f"prompt {prompt!r}, {args.tokens} new tokens, {args.repeats} interleaved repeats, "
          f"{torch.get_num_threads()} threads")
    for dtype in args.dtypes:
        check_dtype(dtype, prompt, args.tokens, args.repeats)
        gc.collect()


def check_dtype(dtype: str, prompt: str, n_tokens: int, repeats: int) -> None:
    patched = load_model("gemma-3-270m-offline", device="cpu", dtype=dtype)
    plain = load_model("gemma-3-270m-offline", device="cpu", dtype=dtype, speed_patches=False)
    hf = load_hf_model(patched.dtype)
    baseline = [Condition(BASELINE)]
    def without_lean() -> list[int]:  # the patches, but one row through HookedTransformer.forward as batches go
        start = generation.LeanDecode.start
        generation.LeanDecode.start = lambda *args, **kwargs: None  # type: ignore[method-assign]
        try:
            return generate_batch_ids(patched, [prompt], baseline, n_tokens)[(0, BASELINE)]
        finally:
            generation.LeanDecode.start = start  # type: ignore[method-assign]

    jobs = {
        "ours patched": lambda: generate_batch_ids(patched, [prompt], baseline, n_tokens)[(0, BASELINE)],
        "ours without the lean loop": without_lean,
        "ours unpatched": lambda: generate_batch_ids(plain, [prompt], baseline, n_tokens)[(0, BASELINE)],
        "transformers": lambda: hf_generate_ids(hf, patched, prompt, n_tokens),
    }
    ids = {name: job() for name, job in jobs.items()}  # warm-up (and the greedy screen's one-time build)
    best = dict.fromkeys(jobs, float("inf"))
    for _ in range(repeats):
        for name, job in jobs.items():
            start = time.perf_counter()
            ids[name] = job()
            best[name] = min(best[name], time.perf_counter() - start)
    speed = {name: len(ids[name]) / best[name] for name in jobs}
    print(f"\n{dtype}: " + ", ".join(f"{name} {speed[name]:.1f} tok/s ({best[name]:.2f} s)" for name in jobs))
    print(f"  patched / transformers  x{speed['ours patched'] / speed['transformers']:.2f}")
    print(f"  unpatched / transformers x{speed['ours unpatched'] / speed['transformers']:.2f}")
    print(f"  patched / unpatched     x{speed['ours patched'] / speed['ours unpatched']:.2f}")
    print(f"  lean loop / without      x{speed['ours patched'] / speed['ours without the lean loop']:.2f} "
          f"(same tokens: {ids['ours patched'] == ids['ours without the lean loop']})")
    print(f"  same tokens: patched vs unpatched {ids['ours patched'] == ids['ours unpatched']}, "
          f"patched vs transformers {ids['ours patched'] == ids['transformers']}")
    tokens = torch.tensor([prompt_token_ids(patched, prompt, 1024) + ids["ours unpatched"]])
    with torch.inference_mode():
        a, b = patched.model(tokens).float(), plain.model(tokens).float()
    print(f"  logits over prompt + continuation: max |patched - unpatched| {float((a - b).abs().max()):.2e} "
          f"(max |logit| {float(b.abs().max()):.1f})")


if __name__ == "__main__":
    main()
