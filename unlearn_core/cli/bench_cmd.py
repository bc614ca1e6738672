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
    from unlearn_core.experiments.bench import format_benchmark, run_benchmark

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
