"""Command line: ``python -m unlearn_core evaluate|bench ...``. Thin: parse, call the library, print."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from .errors import InputError, UnlearnError
from .evaluation import CONDITIONS, DEFAULT_BATCH_TOKENS, DEFAULT_MAX_SEQ_LEN
from .interventions import MODES
from .pipeline import DEFAULT_TEXTS, EvaluationConfig, format_table, run_evaluation, write_json
from .presets import PRESETS


def _conditions(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in CONDITIONS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"conditions must be a comma-separated subset of {','.join(CONDITIONS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m unlearn_core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("evaluate", help="evaluate a forget set: perplexity and probes under each condition")
    ev.add_argument("--forget-set", required=True, help="feature-list JSON file")
    ev.add_argument("--model", choices=sorted(PRESETS), help="model preset (default: the first that loads the list's model)")
    ev.add_argument("--mode", choices=MODES, default="zero",
                    help="zero | clamp (active latents -> -VALUE) | scale (x VALUE) | replace (REPRODUCTION ONLY: "
                         "the study's x' = decode(f'), no error term)")
    ev.add_argument("--value", type=float, help="clamp: c (latents set to -c, default 10); scale: factor (default 0)")
    ev.add_argument("--hook-site", choices=("trained", "resid_pre"), default="trained",
                    help="trained = the SAE's own hook_name; resid_pre = REPRODUCTION ONLY (the study's placement)")
    ev.add_argument("--texts", nargs="+", default=list(DEFAULT_TEXTS),
                    help="built-in text sets (wikitext2, wikitext2-clean, hp-fanwiki) or text files")
    ev.add_argument("--probes", nargs="*", default=[],
                    help="probe files (JSON/JSONL, cloze or QA) or built-ins: muse-knowmem-forget, "
                         "muse-knowmem-retain, nq-open")
    ev.add_argument("--max-texts", type=int, help="use only the first N texts of each text set")
    ev.add_argument("--conditions", type=_conditions, default=list(CONDITIONS),
                    help=f"comma-separated subset of {','.join(CONDITIONS)}")
    ev.add_argument("--seed", type=int, default=0, help="seed of the random-latent control")
    ev.add_argument("--max-seq-len", type=int, default=DEFAULT_MAX_SEQ_LEN, help="tokens per text, BOS included")
    ev.add_argument("--batch-tokens", type=int, default=DEFAULT_BATCH_TOKENS, help="padded tokens per batch")
    ev.add_argument("--device", help="cpu, cuda, mps (default: CUDA when present)")
    ev.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="model dtype (default float32)")
    ev.add_argument("--json", dest="json_out", help="write the full result here")

    be = sub.add_parser("bench", help="speed benchmark on the offline model (ratios measured in one run)")
    be.add_argument("--texts", type=int, default=60, help="number of WikiText-2 rows")
    be.add_argument("--repeats", type=int, default=3)
    be.add_argument("--json", dest="json_out", help="write the numbers here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "bench":
            return _bench(args)
    except UnlearnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 1


def _status(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _TokenProgress:
    """One tqdm bar (on stderr) per evaluation stage, counting scored tokens."""

    def __init__(self) -> None:
        self.stage: str | None = None
        self.bar: Any = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm.auto import tqdm

        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=total, desc=stage, unit="tok", file=sys.stderr, leave=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _check_writable(path: str | None) -> None:
    """Fail before a long run, not after it, when the result file cannot be written."""
    if not path:
        return
    from pathlib import Path

    folder = Path(path).expanduser().resolve().parent
    if Path(path).is_dir():
        raise InputError(f"--json {path} is a folder; give a file name")
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise InputError(f"cannot write --json {path}: folder {folder} does not exist or is not writable")


def _evaluate(args: argparse.Namespace) -> int:
    _check_writable(args.json_out)
    config = EvaluationConfig(
        forget_set=args.forget_set,
        preset=args.model,
        mode=args.mode,
        value=args.value,
        hook_site=args.hook_site,
        texts=args.texts,
        probes=args.probes,
        max_texts=args.max_texts,
        conditions=args.conditions,
        seed=args.seed,
        max_seq_len=args.max_seq_len,
        batch_tokens=args.batch_tokens,
        device=args.device,
        dtype=args.dtype,
    )
    bar = _TokenProgress()
    try:
        result = run_evaluation(config, status=_status, progress=bar)
    finally:
        bar.close()
    print(format_table(result))
    if args.json_out:
        print(f"wrote {write_json(result, args.json_out)}", file=sys.stderr)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .bench import format_benchmark, run_benchmark

    if args.texts < 8 or args.repeats < 1:
        raise InputError("bench needs --texts >= 8 and --repeats >= 1")
    _check_writable(args.json_out)
    result = run_benchmark(n_texts=args.texts, repeats=args.repeats, status=_status)
    print(format_benchmark(result))
    if args.json_out:
        write_json(result, args.json_out)
    else:
        print(json.dumps({k: v for k, v in result.items() if k != "settings"}, indent=1))
    return 0
