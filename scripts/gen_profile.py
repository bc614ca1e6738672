"""Where one-prompt greedy generation spends its time: ``cProfile`` of 40 new tokens of the offline model.

    python scripts/gen_profile.py [--dtype float32] [--tokens 40] [--top 25]

Prints tokens per second (after a warm-up run), then the functions with the most time of their own. The profiler
adds its own cost to every Python call, so the Python shares it shows are upper bounds; time a change with
``scripts/gen_speed_check.py`` (interleaved repeats against transformers), not with this.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

from unlearn_core.ablation.conditions import BASELINE, Condition
from unlearn_core.explain.explore import study_prompts
from unlearn_core.models.loading import load_model
from unlearn_core.scoring.generation import generate_batch_ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    lm = load_model("gemma-3-270m-offline", device="cpu", dtype=args.dtype)
    prompt, baseline = study_prompts()[0], [Condition(BASELINE)]
    generate_batch_ids(lm, [prompt], baseline, args.tokens)  # warm-up (and the greedy screen's one-time build)
    start = time.perf_counter()
    n = len(generate_batch_ids(lm, [prompt], baseline, args.tokens)[(0, BASELINE)])
    seconds = time.perf_counter() - start
    print(f"{n} tokens in {seconds:.2f} s: {n / seconds:.1f} tok/s ({1000 * seconds / n:.1f} ms per token), {args.dtype}")
    profile = cProfile.Profile()
    profile.enable()
    generate_batch_ids(lm, [prompt], baseline, args.tokens)
    profile.disable()
    pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
