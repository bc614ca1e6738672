"""``bench``: speed measured in one run."""

from __future__ import annotations

import argparse
import json
from typing import Any

from unlearn_core.cli.common import check_writable, print_status
from unlearn_core.errors import InputError
from unlearn_core.experiments.evaluate import (
    write_json,
)


def add_bench_parser(sub: Any) -> None:
    """The ``bench`` subcommand's flags."""
    be = sub.add_parser("bench", help="speed benchmark on the offline model (ratios measured in one run)")
    be.add_argument("--texts", type=int, default=60, help="number of WikiText-2 rows")
    be.add_argument("--repeats", type=int, default=3)
    be.add_argument("--json", dest="json_out", help="write the numbers here")


def run_bench(args: argparse.Namespace) -> int:
    from unlearn_core.experiments.bench import format_benchmark, run_benchmark

    if args.texts < 8 or args.repeats < 1:
        raise InputError("bench needs --texts >= 8 and --repeats >= 1")
    check_writable(args.json_out)
    result = run_benchmark(n_texts=args.texts, repeats=args.repeats, status=print_status)
    print(format_benchmark(result))
    if args.json_out:
        write_json(result, args.json_out)
    else:
        print(json.dumps({k: v for k, v in result.items() if k != "settings"}, indent=1))
    return 0
