"""Batched perplexity, ours against plain transformers, each run several times in a row (not interleaved), in
float32 and bfloat16: every run's tokens per second, so the spread shows.

    python scripts/ppl_peer_check.py [--texts 16] [--runs 6] [--dtypes float32 bfloat16] [--ours-only]

With ``--ours-only`` (no transformers), an A/B of two trees in alternating processes, e.g. against a commit:
``git worktree add /tmp/old <commit>; PYTHONPATH=/tmp/old python scripts/ppl_peer_check.py --ours-only``.

``bench`` interleaves the two sides; there transformers' batched forward (which allocates the full
[batch, tokens, 262k] logits and upcasts them for the loss) often runs at a fraction of the speed it reaches
when run back to back, as here. Its fastest run here is the fair peer for the "x2" question. Also prints the rate of
a bare matrix product of the unembedding's shape (1024 rows x 640 x 262k) in each precision: the ceiling both sides
share.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from unlearn_core.data.texts import load_texts
from unlearn_core.experiments.peer import hf_perplexity, load_hf_model
from unlearn_core.models.loading import load_model
from unlearn_core.models.patches import keep_freed_memory
from unlearn_core.scoring.perplexity import perplexity


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--texts", type=int, default=16)
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--ours-only", action="store_true",
                    help="skip transformers (for an A/B of two trees: PYTHONPATH=<other tree> python this script)")
    args = ap.parse_args()
    keep_freed_memory()  # as the CLI runs (bench too)
    texts = [t for t in load_texts("wikitext2").texts if t.strip()][: args.texts]
    for dtype in args.dtypes:
        check_dtype(dtype, texts, args.runs, args.ours_only)


def bare_unembedding_gflops(lm: object, runs: int) -> float:
    """GFLOPS of ``x @ W_U`` for 1024 rows in the model's dtype (fastest of ``runs``)."""
    w_u = lm.model.W_U.detach()  # type: ignore[attr-defined]
    x = torch.randn(1024, w_u.shape[0]).to(w_u.dtype)
    with torch.inference_mode():
        x @ w_u
        best = min(_seconds(lambda: x @ w_u) for _ in range(runs))
    return 2 * x.shape[0] * w_u.shape[0] * w_u.shape[1] / best / 1e9


def _seconds(job: object) -> float:
    start = time.perf_counter()
    job()  # type: ignore[operator]
    return time.perf_counter() - start


def check_dtype(dtype: str, texts: list[str], runs: int, ours_only: bool = False) -> None:
    lm = load_model("gemma-3-270m-offline", dtype=dtype)
    sides = {"ours": lambda: perplexity(lm, texts)}
    if ours_only:
        import unlearn_core

        print(f"unlearn_core from {Path(unlearn_core.__file__).parent}")
    else:
        hf = load_hf_model(lm.dtype)
        sides["transformers"] = lambda: hf_perplexity(hf, lm, texts)
    rates: dict[str, list[float]] = {}
    for side, run in sides.items():
        run()  # warm-up on the same batches
        rates[side] = []
        for _ in range(runs):
            start = time.perf_counter()
            result = run()
            rates[side].append(result.n_tokens / (time.perf_counter() - start))
    best = {side: max(r) for side, r in rates.items()}
    print(f"{dtype}: " + "; ".join(f"{side} " + " ".join(f"{r:.0f}" for r in rs) + " tok/s" for side, rs in rates.items()))
    if ours_only:
        print(f"  ours: perplexity {result.perplexity!r}, fastest {best['ours']:.0f} tok/s")
        return
    print(f"  fastest of each: ours x{best['ours'] / best['transformers']:.2f}; "
          f"bare unembedding product: {bare_unembedding_gflops(lm, runs):.0f} GFLOPS")


if __name__ == "__main__":
    main()
