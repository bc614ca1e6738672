"""Where batched perplexity's time goes, and what the tiled vocabulary log-softmax buys, on the offline model.

    python scripts/scoring_check.py [--texts 16] [--dtype bfloat16] [--profile]

Prints, for WikiText-2 (and, for the accuracy part, HP fan-wiki) rows:

* padded positions with the fewest-padding batches (``batches_by_length``) against the previous greedy rule (fill a
  batch, longest first, until the next text would pass ``batch_tokens``);
* the unembedding stage's time, tiles (``scoring/vocab_logprobs.py``) against the previous approach (512-row chunks
  of full-vocabulary logits, in bf16 rounded then copied to float32), on the same final residuals;
* in a low-precision model, each approach's log-prob error against a float32 unembedding of the same weights
  (mean shift and mean absolute error; the previous approach also rounds the target's logit);
* in a low-precision model, the RMSNorm's time against stop 14's mixed-dtype form (and that the values agree);
* with ``--profile``: a ``torch.profiler`` table of one ``perplexity`` call.
"""

from __future__ import annotations

import argparse
import time

import torch

from unlearn_core.data.texts import load_texts
from unlearn_core.models.loading import load_model
from unlearn_core.models.patches import keep_freed_memory
from unlearn_core.scoring import batching
from unlearn_core.scoring.perplexity import perplexity
from unlearn_core.scoring.vocab_logprobs import final_normed, target_logprobs


def greedy_batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """The previous batching rule, for comparison."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and lengths[batches[-1][0]] * (len(batches[-1]) + 1) <= batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def padded(lengths: list[int], batches: list[list[int]]) -> int:
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


def chunked_logprobs(x: torch.Tensor, w_u: torch.Tensor, targets: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """The previous unembedding stage: full-vocabulary logits per 512 rows in the model's dtype, then float32."""
    out = []
    buf = torch.empty(min(chunk, x.shape[0]), w_u.shape[1])
    for start in range(0, x.shape[0], chunk):
        logits = buf[: x[start : start + chunk].shape[0]]
        logits.copy_(x[start : start + chunk] @ w_u)
        tgt = logits.gather(1, targets[start : start + chunk, None])[:, 0]
        top = logits.amax(-1)
        out.append(tgt - (top + logits.sub_(top[:, None]).exp_().sum(-1).log()))
    return torch.cat(out)


def final_rows(lm, texts: list[str], max_seq_len: int = batching.DEFAULT_MAX_SEQ_LEN) -> tuple[torch.Tensor, torch.Tensor]:
    seqs = [s for s in batching.tokenize_with_bos(lm, texts, max_seq_len) if len(s) >= 2]
    rows, targets = [], []
    with torch.inference_mode():
        for batch in batching.batches_by_length([len(s) for s in seqs], batching.DEFAULT_BATCH_TOKENS):
            tokens, positions, lengths = batching.right_padded(lm, seqs, batch)
            resid = lm.model(tokens, stop_at_layer=lm.model.cfg.n_layers)
            keep = positions < (lengths - 1)[:, None]
            rows.append(final_normed(lm.model, resid[keep]))
            targets.append(tokens[:, 1:][keep[:, :-1]])
    return torch.cat(rows), torch.cat(targets)


def norm_check(lm) -> None:
    """The low-precision RMSNorm (``exact_ops.rms_norm``) against stop 14's form, which multiplied the bf16 input by
    the float32 scale directly (PyTorch's mixed-dtype elementwise path), on [888, 640] rows of the first norm."""
    from unlearn_core.models.exact_ops import rms_norm

    norm = lm.model.blocks[0].ln1
    x = (torch.randn(888, norm.w.shape[0], generator=torch.Generator().manual_seed(0)) * 3).to(lm.dtype)

    def mixed():
        mean_square = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32).square_().div_(x.shape[-1])
        return torch.mul(x, mean_square.add_(norm.eps).rsqrt_()).mul_(norm.w.float()).to(lm.dtype)

    with torch.inference_mode():
        same = torch.equal(mixed(), rms_norm(x, norm.w, norm.eps, lm.dtype))
        old = fastest(mixed, 20)
        new = fastest(lambda: rms_norm(x, norm.w, norm.eps, lm.dtype), 20)
    print(f"RMSNorm on [888, 640] {lm.dtype}: mixed-dtype product (stop 14) {1e3 * old:.2f} ms, cast first "
          f"{1e3 * new:.2f} ms (x{old / new:.1f}), same values: {same}")


def fastest(job, runs: int = 3) -> float:
    job()
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        job()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--texts", type=int, default=16)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    keep_freed_memory()
    lm = load_model("gemma-3-270m-offline", dtype=args.dtype)
    w_u = lm.model.W_U
    wiki = [t for t in load_texts("wikitext2").texts if t.strip()][: args.texts]
    lengths = [len(s) for s in batching.tokenize_with_bos(lm, wiki) if len(s) >= 2]
    fewest = padded(lengths, batching.batches_by_length(lengths, batching.DEFAULT_BATCH_TOKENS))
    greedy = padded(lengths, greedy_batches(lengths, batching.DEFAULT_BATCH_TOKENS))
    print(f"{len(lengths)} WikiText-2 rows, {sum(lengths)} positions: padded {fewest} with the fewest-padding batches, "
          f"{greedy} with the greedy rule")
    x, targets = final_rows(lm, wiki)
    with torch.inference_mode():
        old = fastest(lambda: chunked_logprobs(x, w_u, targets))
        new = fastest(lambda: target_logprobs(x, w_u, targets))
    print(f"unembedding stage, {x.shape[0]} rows, {lm.dtype}: chunked {old:.3f} s, tiles {new:.3f} s (x{old / new:.2f})")
    if w_u.dtype != torch.float32:
        norm_check(lm)
        for corpus, n in (("wikitext2", 24), ("hp-fanwiki", 24)):
            rows, tgt = final_rows(lm, [t for t in load_texts(corpus).texts if t.strip()][:n], 256)
            with torch.inference_mode():
                exact = chunked_logprobs(rows.float(), w_u.float(), tgt).double()
                errors = {"chunked (rounded target)": exact - chunked_logprobs(rows, w_u, tgt).double(),
                          "tiles (float32 target)": exact - target_logprobs(rows, w_u, tgt)[0].double()}
            print(f"{corpus}, {rows.shape[0]} tokens, log-prob error against a float32 unembedding: " + "; ".join(
                f"{name} mean {float(e.mean()):+.2e}, mean |.| {float(e.abs().mean()):.2e}" for name, e in errors.items()))
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        perplexity(lm, wiki)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            perplexity(lm, wiki)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=16))


if __name__ == "__main__":
    main()
