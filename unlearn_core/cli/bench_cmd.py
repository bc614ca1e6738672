"""``bench``: speed measured in one run, ours in float32 and the fast precision, against plain transformers."""

from __future__ import annotations

import argparse
import json
from typing import Any

from unlearn_core.cli.common import check_writable, print_status
from unlearn_core.errors import InputError
from unlearn_core.experiments.evaluate import (
    write_json,
)
from unlearn_core.models.precision import AUTO_DTYPE


def add_bench_parser(sub: Any) -> None:
    """The ``bench`` subcommand's flags."""
    be = sub.add_parser("bench", help="speed benchmark on the offline model (ratios measured in one run)")
    be.add_argument("--texts", type=int, default=60, help="number of WikiText-2 rows")
    be.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the minimum time of each is kept")
    be.add_argument("--fast-dtype", choices=(AUTO_DTYPE, "bfloat16", "float16", "float32"), default=AUTO_DTYPE,
                    help="the fast precision timed and checked against float32 (auto: bfloat16 where the CPU has "
                         "native bf16 units, else float32)")
    be.add_argument("--drift-texts", type=int, default=6,
                    help="held-out fan-wiki paragraphs (256 tokens each) for the precision drift of the headline ratio")
    be.add_argument("--no-peer", dest="peer", action="store_false",
                    help="skip plain Hugging Face transformers (timed on the same weights, texts and prompts)")
    be.add_argument("--json", dest="json_out", help="write the numbers here")


def run_bench(args: argparse.Namespace) -> int:
    from unlearn_core.experiments.bench import run_benchmark

    if args.texts < 8 or args.repeats < 1 or args.drift_texts < 1:
        raise InputError("bench needs --texts >= 8, --repeats >= 1 and --drift-texts >= 1")
    check_writable(args.json_out)
    # Each finished part is written at once (marked incomplete), so a run stopped half-way keeps its numbers.
    partial = (lambda numbers: write_json({**numbers, "complete": False}, args.json_out)) if args.json_out else None
    result = run_benchmark(n_texts=args.texts, repeats=args.repeats, status=print_status, fast_dtype=args.fast_dtype,
                           drift_texts=args.drift_texts, peer=args.peer, partial=partial)
    print(format_benchmark(result))
    if args.json_out:
        write_json({**result, "complete": True}, args.json_out)
    else:
        print(json.dumps({k: v for k, v in result.items() if k != "settings"}, indent=1))
    return 0


def format_benchmark(res: dict[str, Any]) -> str:
    """Readable summary of :func:`run_benchmark` output."""
    s = res["settings"]
    fast = s["fast_dtype"]
    lines = [
        f"texts: {s['n_texts']} WikiText-2 rows, {res['tokens']} scored tokens, {s['threads']} threads, {s['device']}; "
        f"fast precision: {s['fast_precision']}",
        f"perplexity, study's loop as it ran (fresh process, default allocator): {res['study_loop_fresh_process_seconds']:.2f} s",
        f"perplexity, study's loop in this process: {res['loop_seconds']:.2f} s ({res['loop_tokens_per_second']:.0f} tok/s)",
        f"perplexity, batched float32: {res['batched_seconds']:.2f} s ({res['batched_tokens_per_second']:.0f} tok/s)",
        f"batched vs the study's loop: x{res['batched_vs_loop_speedup']:.2f} "
        f"(same process: x{res['batched_vs_loop_same_process_speedup']:.2f}; "
        f"same perplexity to {res['perplexity_rel_diff']:.1e})",
        f"ablation overhead, 1 layer: {100 * res['ablation_overhead_1layer']:+.1f}%; 3 layers: "
        f"{100 * res['ablation_overhead_3layer']:+.1f}%",
        f"peak RSS (float32 part): {res['peak_rss_mb']:.0f} MB; with every model loaded: {res['peak_rss_mb_all_models']:.0f} MB",
        f"{fast} vs float32 perplexity: x{res['fast_vs_fp32_ppl_speedup']:.2f} faster, "
        f"drift {res['fast_vs_fp32_ppl_drift']:+.2e}",
    ]
    for kind in ("ppl", "gen"):
        tps = res[f"{kind}_tokens_per_s"]
        for name, value in tps["ours"].items():
            theirs = tps["hf"].get(name)
            peer = f", transformers {theirs:.0f} tok/s -> ours x{res[f'hf_{kind}_ratio'][name]:.2f}" if theirs else ""
            if theirs and kind == "ppl" and name in res.get("hf_ppl_ratio_median", {}):
                peer += f" (fastest of each; medians: x{res['hf_ppl_ratio_median'][name]:.2f})"
            lines.append(f"{'perplexity' if kind == 'ppl' else 'generation'} {name}: ours {value:.0f} tok/s{peer}")
    for corpus, d in res["precision_drift"].items():
        lines.append(f"drift on {corpus}: baseline {d['baseline_rel_diff']:+.2e}, ablated {d['ablated_rel_diff']:+.2e}, "
                     f"ratio {d['ratio_fp32']:.4f} -> {d['ratio_fast']:.4f} ({d['ratio_rel_diff']:+.2e})")
    lines.append(f"Compare page's generations ({s['compare_cells']} cells x {s['max_new_tokens']} tokens): "
                 f"{res['compare_generations_s']:.1f} s in {fast}, {res['compare_generations_fp32_s']:.1f} s in float32")
    return "\n".join(lines)
