"""Where one-prompt greedy generation spends its time: ``cProfile`` of 40 new tokens of the offline model.

    python scripts/gen_profile.py [--dtype float32] [--tokens 40] [--top 25] [--parts]

``--parts`` instead times the parts of a decode step without the profiler (wall clock around them, fastest of 4
generations): the products, norms, attention, MLP and whole step of the lean loop, the greedy screen, and the rest
(prompt pass, set-up, detokenising); then the bandwidth of one-row products alone on the layers' shapes, float32
and packed bfloat16.

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
    ap.add_argument("--parts", action="store_true")
    args = ap.parse_args()
    lm = load_model("gemma-3-270m-offline", device="cpu", dtype=args.dtype)
    prompt, baseline = study_prompts()[0], [Condition(BASELINE)]
    if args.parts:
        time_parts(lm, prompt, baseline, args.tokens)
        return
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


def time_parts(lm: object, prompt: str, baseline: list[Condition], n_tokens: int) -> None:
    """Wall-clock time of the lean loop's parts, per decode step (wrappers around them, removed afterwards)."""
    import torch.nn.functional as F

    from unlearn_core.models import exact_ops, greedy, lean_decode

    spent: dict[str, float] = {}
    targets = [(lean_decode.LeanDecode, "step", "step (all layers)"), (lean_decode.LeanDecode, "_attention", "attention"),
               (lean_decode.LeanDecode, "_mlp", "MLP"), (lean_decode, "_norm", "norms"),
               (exact_ops, "exact_attention", "attention pattern and values"),
               (lean_decode.F, "linear", "float32 products (F.linear)"), (greedy.GreedyScreen, "argmax", "greedy screen")]
    saved = [(owner, name, owner.__dict__[name]) for owner, name, _ in targets]

    def timed(fn, label):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - start
        return wrapper

    best: tuple[float, dict[str, float], int] | None = None
    try:
        for owner, name, label in targets:
            raw = owner.__dict__[name]
            wrapped = timed(raw.__func__ if isinstance(raw, staticmethod) else raw, label)
            setattr(owner, name, staticmethod(wrapped) if isinstance(raw, staticmethod) else wrapped)
        assert lean_decode.F is F
        for _ in range(5):  # the first is a warm-up
            spent.clear()
            start = time.perf_counter()
            n = len(generate_batch_ids(lm, [prompt], baseline, n_tokens)[(0, BASELINE)])
            total = time.perf_counter() - start
            if best is None or total < best[0]:
                best = (total, dict(spent), n)
    finally:
        for owner, name, raw in saved:
            setattr(owner, name, raw)
    total, parts, n = best
    steps = n - 1
    print(f"{n} tokens in {1000 * total:.0f} ms, {lm.dtype}; per decode step ({steps} steps), in ms:")
    for _, _, label in targets:
        print(f"  {label}: {1000 * parts.get(label, 0.0) / steps:.2f}")
    rest = total - parts.get("step (all layers)", 0.0) - parts.get("greedy screen", 0.0)
    print(f"  the rest (prompt pass, set-up, detokenising), whole generation: {1000 * rest:.0f} ms")
    one_row_product_bandwidth(lm)


def one_row_product_bandwidth(lm: object) -> None:
    """GB/s of one-row products alone over every layer's weights (the model's shapes, fresh random values):
    float32 ``F.linear`` and oneDNN's packed bfloat16 kernel (what the fast path uses), fastest of 8 passes."""
    import torch
    import torch.nn.functional as F

    cfg = lm.model.cfg  # type: ignore[attr-defined]
    n_q, n_kv = cfg.n_heads * cfg.d_head, (cfg.n_key_value_heads or cfg.n_heads) * cfg.d_head
    shapes = [(n_q + 2 * n_kv, cfg.d_model), (cfg.d_model, n_q), (cfg.d_mlp, cfg.d_model), (cfg.d_mlp, cfg.d_model),
              (cfg.d_model, cfg.d_mlp)]
    with torch.inference_mode():
        for dtype in (torch.float32, torch.bfloat16):
            weights = [[torch.randn(*shape).to(dtype) * 0.05 for shape in shapes] for _ in range(cfg.n_layers)]
            inputs = [torch.randn(1, shape[1]).to(dtype) for shape in shapes]
            if dtype == torch.bfloat16:  # the packed kernel the fast path uses
                mats = [[torch.ops.mkldnn._reorder_linear_weight(w, 1) for w in layer] for layer in weights]
                def product(x, w):
                    return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
            else:
                mats, product = weights, F.linear

            def run(mats=mats, product=product, inputs=inputs):
                for layer in mats:
                    for x, w in zip(inputs, layer, strict=True):
                        product(x, w)

            run()
            best = float("inf")
            for _ in range(8):
                start = time.perf_counter()
                run()
                best = min(best, time.perf_counter() - start)
            n_bytes = sum(w.numel() * w.element_size() for layer in weights for w in layer)
            print(f"one-row products alone, {dtype}: {n_bytes / 1e6:.0f} MB in {1000 * best:.1f} ms, "
                  f"{n_bytes / best / 1e9:.1f} GB/s")


if __name__ == "__main__":
    main()
