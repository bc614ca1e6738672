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

    qu = sub.add_parser("sae-quality", help="measure shipped SAEs on held-out WikiText-2 test text (the card table)")
    qu.add_argument("--saes", nargs="*", help="SAE folders (default: every folder under saes/gemma-3-270m)")
    qu.add_argument("--quality-tokens", type=int, default=60_000)
    qu.add_argument("--ce-tokens", type=int, default=8192)
    qu.add_argument("--write", action="store_true", help="update each folder's quality.json and model card")
    return parser


def _mix(value: str) -> dict[str, float]:
    mix: dict[str, float] = {}
    for part in value.split(","):
        name, _, fraction = part.partition("=")
        try:
            mix[name.strip()] = float(fraction)
        except ValueError:
            raise InputError(f"--mix must look like gutenberg=0.45,wikitext2=0.3,hp-fanwiki=0.25; got {value!r}") from None
    return mix


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = None if argv is None else list(argv)[1:]
    try:
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "bench":
            return _bench(args)
        if args.command == "train-sae":
            return _train_sae(args)
        if args.command == "sae-quality":
            return _sae_quality(args)
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


def _train_sae(args: argparse.Namespace) -> int:
    import shlex
    from pathlib import Path

    from .sae_build import SaeBuildConfig, build_saes
    from .sae_release import SHIPPED_SAES_DIR
    from .sae_training import SaeTrainingConfig
    from .training_corpus import DEFAULT_DATA_DIR

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
    folders = build_saes(config, status=_status)
    return _print_quality(folders)


def _print_quality(folders: list[Any]) -> int:
    from .sae_release import QUALITY_FILE, quality_table

    rows = [{"name": f.name, **json.loads((f / QUALITY_FILE).read_text(encoding="utf-8"))} for f in folders]
    print(quality_table(rows))
    return 0


def _sae_quality(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .models import load_model
    from .sae_build import measure_and_record
    from .sae_release import quality_table, shipped_sae_folders

    folders = [Path(p) for p in args.saes] if args.saes else shipped_sae_folders()
    if not folders:
        raise InputError("no shipped SAEs found; give --saes FOLDER ...")
    lm = load_model("gemma-3-270m-offline", progress=_status)
    rows = measure_and_record(lm, folders, args.quality_tokens, args.ce_tokens, _status, write=args.write)
    print(quality_table(rows))
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
