"""``train-sae`` and ``sae-quality``: train, ship and measure the bundled SAEs."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from unlearn_core.cli.common import print_status
from unlearn_core.errors import InputError


def add_train_sae_parser(sub: Any) -> None:
    """The ``train-sae`` subcommand's flags."""
    tr = sub.add_parser("train-sae", help="train SAEs from an activation cache and ship them with cards and dashboards")
    tr.add_argument("--layers", type=int, nargs="+", default=[5, 9, 12, 15], help="resid_post layers (default 5 9 12 15)")
    tr.add_argument("--tokens", type=int, default=800_000, help="tokens to cache (one model pass)")
    tr.add_argument("--context", type=int, default=256, help="window length, BOS included")
    tr.add_argument("--mix", default="gutenberg=0.45,wikitext2=0.30,hp-fanwiki=0.25",
                    help="source=fraction,... over gutenberg, wikitext2 (train split), hp-fanwiki")
    tr.add_argument("--data-dir", help="folder with gutenberg/, wikitext2/, hp_fanwiki/ (default ../shared/data)")
    tr.add_argument("--corpus-seed", type=int, default=0)
    tr.add_argument("--cache-dtype", choices=("bfloat16", "float16"), default="bfloat16",
                    help="activation cache storage (float16 clips Gemma's massive activations at 65,504)")
    tr.add_argument("--width", type=int, default=4096)
    tr.add_argument("--k", type=float, default=120.0, help="BatchTopK target L0")
    tr.add_argument("--epochs", type=float, default=2.0)
    tr.add_argument("--batch-size", type=int, default=1024)
    tr.add_argument("--lr", type=float, default=1e-3)
    tr.add_argument("--warm-up-steps", type=int, default=100)
    tr.add_argument("--decay-fraction", type=float, default=0.3, help="final fraction of steps with linear LR decay")
    tr.add_argument("--aux-coefficient", type=float, default=1.0, help="TopK auxiliary (dead latent) loss weight")
    tr.add_argument("--dead-window", type=int, default=50, help="steps without firing before a latent counts as dead")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--out", default=None, help="where shipped SAE folders go (default saes/gemma-3-270m)")
    tr.add_argument("--work-dir", help="activation cache and checkpoints (default ~/.cache/unlearn_core/sae-training)")
    tr.add_argument("--quality-tokens", type=int, default=60_000, help="held-out tokens for L0/FVE/dead")
    tr.add_argument("--ce-tokens", type=int, default=8192, help="held-out tokens for CE loss recovered")
    tr.add_argument("--no-dashboards", action="store_true")
    tr.add_argument("--overwrite", action="store_true", help="retrain layers that are already shipped")


def add_sae_quality_parser(sub: Any) -> None:
    """The ``sae-quality`` subcommand's flags."""
    qu = sub.add_parser("sae-quality", help="measure shipped SAEs on held-out WikiText-2 test text (the card table)")
    qu.add_argument("--saes", nargs="*", help="SAE folders (default: every folder under saes/gemma-3-270m)")
    qu.add_argument("--quality-tokens", type=int, default=60_000)
    qu.add_argument("--ce-tokens", type=int, default=8192)
    qu.add_argument("--write", action="store_true", help="update each folder's quality.json and model card")


def _mix(value: str) -> dict[str, float]:
    mix: dict[str, float] = {}
    for part in value.split(","):
        name, _, fraction = part.partition("=")
        try:
            mix[name.strip()] = float(fraction)
        except ValueError:
            raise InputError(f"--mix must look like gutenberg=0.45,wikitext2=0.3,hp-fanwiki=0.25; got {value!r}") from None
    return mix


def run_train_sae(args: argparse.Namespace) -> int:
    import shlex
    from pathlib import Path

    from unlearn_core.training.build import SaeBuildConfig, build_saes
    from unlearn_core.training.corpus import DEFAULT_DATA_DIR
    from unlearn_core.training.release import SHIPPED_SAES_DIR
    from unlearn_core.training.trainer import SaeTrainingConfig

    training = SaeTrainingConfig(
        width=args.width, k=args.k, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        lr_warm_up_steps=args.warm_up_steps, lr_decay_fraction=args.decay_fraction,
        aux_loss_coefficient=args.aux_coefficient, dead_feature_window=args.dead_window, seed=args.seed,
    )
    config = SaeBuildConfig(
        layers=tuple(args.layers), total_tokens=args.tokens, context=args.context, corpus_seed=args.corpus_seed,
        mix=_mix(args.mix), data_dir=Path(args.data_dir) if args.data_dir else DEFAULT_DATA_DIR, training=training,
        out_dir=Path(args.out) if args.out else SHIPPED_SAES_DIR, work_dir=Path(args.work_dir) if args.work_dir else None,
        quality_tokens=args.quality_tokens, ce_tokens=args.ce_tokens, dashboards=not args.no_dashboards,
        overwrite=args.overwrite, cache_dtype=args.cache_dtype,
        command="python -m unlearn_core train-sae " + shlex.join(sys.argv[2:] if args.argv is None else args.argv),
    )
    folders = build_saes(config, status=print_status)
    return _print_quality(folders)


def _print_quality(folders: list[Any]) -> int:
    from unlearn_core.training.release import QUALITY_FILE, quality_table

    rows = [{"name": f.name, **json.loads((f / QUALITY_FILE).read_text(encoding="utf-8"))} for f in folders]
    print(quality_table(rows))
    return 0


def run_sae_quality(args: argparse.Namespace) -> int:
    from pathlib import Path

    from unlearn_core.models.loading import load_model
    from unlearn_core.training.build import measure_and_record
    from unlearn_core.training.release import quality_table, shipped_sae_folders

    folders = [Path(p) for p in args.saes] if args.saes else shipped_sae_folders()
    if not folders:
        raise InputError("no shipped SAEs found; give --saes FOLDER ...")
    lm = load_model("gemma-3-270m-offline", dtype="float32", progress=print_status)
    rows = measure_and_record(lm, folders, args.quality_tokens, args.ce_tokens, print_status, write=args.write)
    print(quality_table(rows))
    return 0
