"""Command line: ``python -m unlearn_core explore|select|sweep|evaluate|bench|train-sae|sae-quality ...``.

Thin: parse, call the library, print."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from unlearn_core.cli.attack_cmd import add_attack_parser, run_attack
from unlearn_core.cli.bench_cmd import add_bench_parser, run_bench
from unlearn_core.cli.evaluate_cmd import add_evaluate_parser, run_evaluate
from unlearn_core.cli.explore_cmd import add_explore_parser, run_explore
from unlearn_core.cli.neuronpedia_cmd import add_np_export_parser, add_np_import_parser, run_np_export, run_np_import
from unlearn_core.cli.selection_cmds import (
    add_plot_sweep_parser,
    add_select_parser,
    add_sweep_parser,
    run_plot_sweep,
    run_select,
    run_sweep_command,
)
from unlearn_core.cli.training_cmds import add_sae_quality_parser, add_train_sae_parser, run_sae_quality, run_train_sae
from unlearn_core.errors import UnlearnError
from unlearn_core.models.patches import keep_freed_memory

COMMANDS: dict[str, tuple[Callable[..., None], Callable[[argparse.Namespace], int]]] = {
    "explore": (add_explore_parser, run_explore),
    "evaluate": (add_evaluate_parser, run_evaluate),
    "attack": (add_attack_parser, run_attack),
    "select": (add_select_parser, run_select),
    "sweep": (add_sweep_parser, run_sweep_command),
    "plot-sweep": (add_plot_sweep_parser, run_plot_sweep),
    "bench": (add_bench_parser, run_bench),
    "train-sae": (add_train_sae_parser, run_train_sae),
    "sae-quality": (add_sae_quality_parser, run_sae_quality),
    "np-export": (add_np_export_parser, run_np_export),
    "np-import": (add_np_import_parser, run_np_import),
}
"""Each subcommand: the function adding its flags and the function running it (in the order of ``--help``)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m unlearn_core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add_parser, _ in COMMANDS.values():
        add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # process-wide allocator setting (a speed patch; UNLEARN_SPEED_PATCHES=0 skips it)
    args.argv = None if argv is None else list(argv)[1:]
    try:
        return COMMANDS[args.command][1](args)
    except UnlearnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
