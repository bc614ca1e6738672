"""Helpers shared by the subcommands: progress on stderr, output checks, the command line."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from unlearn_core.ablation.conditions import CONDITIONS
from unlearn_core.errors import InputError


def parse_conditions(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in CONDITIONS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"conditions must be a comma-separated subset of {','.join(CONDITIONS)}")
    return names


def print_status(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class TokenProgress:
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


def check_writable(path: str | None) -> None:
    """Fail before a long run, not after it, when the result file cannot be written."""
    if not path:
        return
    from pathlib import Path

    folder = Path(path).expanduser().resolve().parent
    if Path(path).is_dir():
        raise InputError(f"--json {path} is a folder; give a file name")
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise InputError(f"cannot write --json {path}: folder {folder} does not exist or is not writable")


def command_string(name: str, args: argparse.Namespace) -> str:
    from unlearn_core.experiments.report import command_line

    return command_line([name, *(args.argv if args.argv is not None else sys.argv[2:])])
