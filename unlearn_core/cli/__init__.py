"""Command line: ``python -m unlearn_core select|sweep|evaluate|bench|train-sae|sae-quality ...``.

Thin: parse, call the library, print."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from unlearn_core.ablation.interventions import MODES, Intervention
from unlearn_core.errors import InputError, UnlearnError
from unlearn_core.experiments.evaluate import (
    DEFAULT_PROBES,
    DEFAULT_TEXTS,
    EvaluationConfig,
    format_table,
    run_evaluation,
    write_json,
)
from unlearn_core.experiments.sweep import DEFAULT_INTERVENTIONS, DEFAULT_LAYER_SETS, DEFAULT_NS
from unlearn_core.models.presets import DEFAULT_PRESET, PRESETS
from unlearn_core.scoring.evaluation import CONDITIONS, DEFAULT_BATCH_TOKENS, DEFAULT_MAX_SEQ_LEN
from unlearn_core.selection.rules import DEFAULT_METHOD, DEFAULT_MIN_FORGET_FREQ, DEFAULT_TOP
from unlearn_core.selection.rules import METHODS as SELECTION_METHODS
from unlearn_core.selection.stats import DEFAULT_STATS_TOKENS


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
    ev.add_argument("--mode", choices=MODES, default=None,
                    help="zero | clamp (active latents -> -VALUE) | scale (x VALUE) | replace (REPRODUCTION ONLY: "
                         "the study's x' = decode(f'), no error term). Default: the intervention the list "
                         "recommends (lists from `select` carry one), else zero")
    ev.add_argument("--value", type=float, help="clamp: c (latents set to -c, default 10); scale: factor (default 0)")
    ev.add_argument("--relative", action="store_true",
                    help="clamp: set active latents to -VALUE x their mean activation on forget text (needs a list "
                         "from `select`)")
    ev.add_argument("--hook-site", choices=("trained", "resid_pre"), default="trained",
                    help="trained = the SAE's own hook_name; resid_pre = REPRODUCTION ONLY (the study's placement)")
    ev.add_argument("--texts", nargs="+", default=list(DEFAULT_TEXTS),
                    help="built-in text sets (wikitext2, wikitext2-clean, hp-fanwiki) or text files")
    ev.add_argument("--probes", nargs="*", default=list(DEFAULT_PROBES),
                    help="probe files (JSON/JSONL, cloze or QA) or built-ins: hp-cloze, general-cloze, "
                         "muse-knowmem-forget, muse-knowmem-retain, nq-open (default: hp-cloze general-cloze)")
    ev.add_argument("--max-texts", type=int, help="use only the first N texts of each text set")
    ev.add_argument("--conditions", type=_conditions, default=list(CONDITIONS),
                    help=f"comma-separated subset of {','.join(CONDITIONS)}")
    ev.add_argument("--seed", type=int, default=0, help="seed of the random-latent control")
    ev.add_argument("--max-seq-len", type=int, default=DEFAULT_MAX_SEQ_LEN, help="tokens per text, BOS included")
    ev.add_argument("--batch-tokens", type=int, default=DEFAULT_BATCH_TOKENS, help="padded tokens per batch")
    ev.add_argument("--device", help="cpu, cuda, mps (default: CUDA when present)")
    ev.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="model dtype (default float32)")
    ev.add_argument("--json", dest="json_out", help="write the full result (with its headline numbers) here")
    ev.add_argument("--report", help="write a Markdown report (headline numbers, the command, every number) here")

    se = sub.add_parser("select", help="suggest a forget set: latents that fire on forget text but not retain text")
    se.add_argument("--model", choices=sorted(PRESETS), default=DEFAULT_PRESET, help=f"model preset (default {DEFAULT_PRESET})")
    se.add_argument("--sae", action="append", dest="saes",
                    help="SAE reference (repeat for several); default: the preset's bundled SAEs at every layer")
    se.add_argument("--forget", default="hp-fanwiki",
                    help="forget text: built-in set (its selection split is used) or a text file (default hp-fanwiki)")
    se.add_argument("--retain", default="wikitext2", help="retain text, as --forget (default wikitext2)")
    se.add_argument("--method", choices=SELECTION_METHODS, default=DEFAULT_METHOD,
                    help="ratio (default): p_f*ln(p_f/p_r) among latents rare on retain text; frequency: SAEBench's "
                         "rule, drop latents firing on retain text >= threshold, rank by forget firing rate")
    se.add_argument("--top", type=int, default=DEFAULT_TOP, help=f"latents per SAE (default {DEFAULT_TOP})")
    se.add_argument("--retain-threshold", type=float,
                    help="drop latents firing on at least this fraction of retain tokens (default 0.001 for ratio, "
                         "0.01 for frequency)")
    se.add_argument("--min-forget-freq", type=float, default=DEFAULT_MIN_FORGET_FREQ,
                    help="ratio rule: ignore latents firing on fewer forget tokens than this")
    se.add_argument("--stats-tokens", type=int, default=DEFAULT_STATS_TOKENS, help="tokens of each corpus")
    se.add_argument("--intervention", default=None,
                    help="intervention the list recommends: zero, clamp:C, clamp:Cx (C x mean activation), "
                         "scale:S (default: the best found, clamp:4x)")
    se.add_argument("--name", help="feature list name")
    se.add_argument("--out", required=True, help="feature-list JSON file to write")
    se.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    se.add_argument("--device", help="cpu, cuda, mps (default: CUDA when present)")
    se.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="model dtype (default float32)")

    sw = sub.add_parser("sweep", help="sweep latent count x intervention x layers; best point under a retain budget")
    sw.add_argument("--model", choices=sorted(PRESETS), default=DEFAULT_PRESET)
    sw.add_argument("--sae", action="append", dest="saes", help="SAE reference (repeat); default: the preset's bundled SAEs")
    sw.add_argument("--forget", default="hp-fanwiki", help="forget text to select latents on (selection split)")
    sw.add_argument("--retain", default="wikitext2", help="retain text to select latents on (selection split)")
    sw.add_argument("--method", choices=SELECTION_METHODS, default=DEFAULT_METHOD)
    sw.add_argument("--retain-threshold", type=float)
    sw.add_argument("--min-forget-freq", type=float, default=DEFAULT_MIN_FORGET_FREQ)
    sw.add_argument("--stats-tokens", type=int, default=DEFAULT_STATS_TOKENS)
    sw.add_argument("--ns", type=int, nargs="+", default=list(DEFAULT_NS), help="latents per SAE at each point")
    sw.add_argument("--interventions", nargs="+", default=list(DEFAULT_INTERVENTIONS),
                    help="zero, clamp:C, clamp:Cx (C x mean activation on forget text), scale:S")
    sw.add_argument("--layer-sets", nargs="+", default=list(DEFAULT_LAYER_SETS),
                    help="'all' or layers joined by + (e.g. 12 9+12 all)")
    sw.add_argument("--forget-texts", default="hp-fanwiki", help="held-out forget text for perplexity")
    sw.add_argument("--retain-texts", default="wikitext2")
    sw.add_argument("--forget-probes", default="hp-cloze")
    sw.add_argument("--retain-probes", default="general-cloze")
    sw.add_argument("--max-forget-texts", type=int, default=40)
    sw.add_argument("--max-retain-texts", type=int, default=80)
    sw.add_argument("--max-seq-len", type=int, default=256)
    sw.add_argument("--retain-ppl-budget", type=float, default=0.10, help="max relative rise of retain perplexity")
    sw.add_argument("--retain-probe-budget", type=float, default=0.05, help="max relative fall of retain probe top-1")
    sw.add_argument("--seed", type=int, default=0, help="seed of the random-latent control")
    sw.add_argument("--out-dir", required=True, help="folder for sweep.json, sweep.md, pareto.html and pareto.png")
    sw.add_argument("--write-best", help="also write the best point's forget set to this feature-list file")
    sw.add_argument("--device", help="cpu, cuda, mps (default: CUDA when present)")
    sw.add_argument("--dtype", choices=("float32", "bfloat16", "float16"))

    pl = sub.add_parser("plot-sweep", help="redraw a sweep's Pareto plot (pareto.html and pareto.png) from its sweep.json")
    pl.add_argument("sweep_json", help="sweep.json written by `sweep`")

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
        if args.command == "select":
            return _select(args)
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "plot-sweep":
            return _plot_sweep(args)
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
    from unlearn_core.experiments.report import command_line, evaluation_headline, evaluation_markdown

    _check_writable(args.json_out)
    _check_writable(args.report)
    config = EvaluationConfig(
        forget_set=args.forget_set,
        preset=args.model,
        mode=args.mode,
        value=args.value,
        relative=args.relative,
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
    command = command_line(["evaluate", *(args.argv or sys.argv[2:])])
    result["headline"] = evaluation_headline(result)
    result["command"] = command
    print(format_table(result))
    report = evaluation_markdown(result, command)
    print()
    print(report.split("## All numbers")[0].rstrip())
    if args.json_out:
        print(f"wrote {write_json(result, args.json_out)}", file=sys.stderr)
    if args.report:
        from unlearn_core.files import write_text_atomic

        print(f"wrote {write_text_atomic(args.report, report)}", file=sys.stderr)
    return 0


def _selection_setup(args: argparse.Namespace) -> tuple[Any, list[Any], Any]:
    """Model, SAEs and selection config shared by ``select`` and ``sweep``."""
    from unlearn_core.models.loading import load_model
    from unlearn_core.models.presets import get_preset
    from unlearn_core.selection.suggest import DEFAULT_INTERVENTION, SelectConfig, default_sae_refs, load_saes

    preset = get_preset(args.model)
    intervention_spec = getattr(args, "intervention", None)
    config = SelectConfig(
        forget=args.forget, retain=args.retain, method=args.method, top=getattr(args, "top", DEFAULT_TOP),
        retain_threshold=args.retain_threshold, min_forget_freq=args.min_forget_freq, stats_tokens=args.stats_tokens,
        intervention=Intervention.from_spec(intervention_spec) if intervention_spec else DEFAULT_INTERVENTION,
    )
    if config.top < 1 or config.stats_tokens < 1000:
        raise InputError("--top must be >= 1 and --stats-tokens >= 1000")
    if config.retain_threshold is not None and not 0 < config.retain_threshold <= 1:
        raise InputError(f"--retain-threshold must be in (0, 1], got {config.retain_threshold}")
    if not 0 <= config.min_forget_freq < 1:
        raise InputError(f"--min-forget-freq must be in [0, 1), got {config.min_forget_freq}")
    from unlearn_core.data.texts import load_texts

    for name in config.corpora():
        load_texts(name, 1)  # a missing or unreadable file fails here, before the model loads
    lm = load_model(preset, device=args.device, dtype=args.dtype, progress=_status)
    refs = args.saes or default_sae_refs(preset)
    _status(f"Loading SAEs: {', '.join(refs)}")
    saes = load_saes(refs, lm.device, lm.dtype)
    from unlearn_core.ablation.interventions import LatentSelection
    from unlearn_core.experiments.evaluate import check_selections_fit_model

    check_selections_fit_model(lm, [LatentSelection(s, ()) for s in saes], Intervention())
    return lm, saes, config


def _select(args: argparse.Namespace) -> int:
    from pathlib import Path

    from unlearn_core.errors import FeatureListError
    from unlearn_core.forget_set.lists import save_feature_list
    from unlearn_core.selection.suggest import suggest, suggested_feature_list

    if Path(args.out).exists() and not args.overwrite:
        raise FeatureListError(f"{args.out} exists; choose another --out or add --overwrite")
    _check_writable(args.out)
    lm, saes, config = _selection_setup(args)
    bar = _TokenProgress()
    try:
        chosen = suggest(lm, saes, config, progress=bar)
    finally:
        bar.close()
    fl = suggested_feature_list(lm, saes, chosen, config, name=args.name)
    fl.extra["selection"]["command"] = _command("select", args)
    path = save_feature_list(fl, args.out, overwrite=args.overwrite)
    for entry in fl.saes:
        top = entry.latents[0].extra["stats"]
        print(f"{entry.sae}: {len(entry.latents)} latents (best fires on {top['forget_freq']:.2%} of forget vs "
              f"{top['retain_freq']:.3%} of retain tokens)")
    print(f"wrote {path} ({fl.total_latents} latents; apply with: {config.intervention.describe()})")
    return 0


def _command(name: str, args: argparse.Namespace) -> str:
    from unlearn_core.experiments.report import command_line

    return command_line([name, *(args.argv if args.argv is not None else sys.argv[2:])])


def _sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    from unlearn_core.experiments.report import sweep_markdown
    from unlearn_core.experiments.sweep import SweepConfig, run_sweep, sweep_points
    from unlearn_core.files import write_json_atomic, write_text_atomic
    from unlearn_core.selection.suggest import suggest

    out_dir = Path(args.out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create --out-dir {out_dir}: {exc.strerror or exc}") from None
    if not os.access(out_dir, os.W_OK):
        raise InputError(f"cannot write to --out-dir {out_dir}")
    if args.write_best and Path(args.write_best).exists():
        raise InputError(f"{args.write_best} exists; choose another --write-best file")
    sweep_config = SweepConfig(
        ns=args.ns, interventions=args.interventions, layer_sets=args.layer_sets, forget_texts=args.forget_texts,
        retain_texts=args.retain_texts, forget_probes=args.forget_probes, retain_probes=args.retain_probes,
        max_forget_texts=args.max_forget_texts, max_retain_texts=args.max_retain_texts, max_seq_len=args.max_seq_len,
        retain_ppl_budget=args.retain_ppl_budget, retain_probe_budget=args.retain_probe_budget, seed=args.seed,
    )
    if any(n < 1 for n in args.ns):
        raise InputError("--ns must all be >= 1")

    for spec in args.interventions:
        Intervention.from_spec(spec)  # a typo fails now, not after the model has loaded
    args.top = max(args.ns)
    lm, saes, config = _selection_setup(args)
    sweep_points(sweep_config, [s.layer for s in saes])  # validates specs before the long part
    bar = _TokenProgress()
    try:
        ranked = suggest(lm, saes, config, progress=bar)
        sweep_config.extra["selection"] = f"{config.method} rule on {' vs '.join(config.corpora())}"
        result = run_sweep(lm, saes, ranked, sweep_config, progress=bar, status=_status)
    finally:
        bar.close()
    command = _command("sweep", args)
    result["command"] = command
    report = sweep_markdown(result, command)
    print(report)
    write_json_atomic(out_dir / "sweep.json", result, indent=1)
    write_text_atomic(out_dir / "sweep.md", report)
    print(f"wrote {out_dir / 'sweep.json'}, sweep.md", file=sys.stderr)
    _write_plots(result, out_dir)
    if args.write_best and result["best"] is not None:
        _write_best(lm, saes, ranked, config, result, args.write_best, command)
    elif args.write_best:
        print(f"warning: no point stayed within the retain budget, so {args.write_best} was not written",
              file=sys.stderr)
    return 0


def _write_plots(result: dict[str, Any], out_dir: Any) -> None:
    from unlearn_core.experiments.plots import pareto_figure, write_figure_image
    from unlearn_core.files import write_text_atomic

    fig = pareto_figure(result)
    write_text_atomic(out_dir / "pareto.html", fig.to_html(include_plotlyjs=True))
    image = write_figure_image(fig, out_dir / "pareto.png")
    print(f"wrote {out_dir / 'pareto.html'}" + (", pareto.png" if image else
          " (no pareto.png: plotly image export needs kaleido and Chrome/Chromium)"), file=sys.stderr)


def _plot_sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    from unlearn_core.experiments.plots import parse_sweep

    path = Path(args.sweep_json)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        result = parse_sweep(raw, str(path))
    except ValueError as exc:
        raise InputError(str(exc)) from None
    _write_plots(result, path.parent)
    return 0


def _write_best(lm: Any, saes: list[Any], ranked: Any, config: Any, result: dict[str, Any], path: str, command: str) -> None:
    import dataclasses

    from unlearn_core.forget_set.lists import save_feature_list
    from unlearn_core.selection.suggest import suggested_feature_list

    best = result["points"][result["best"]]
    chosen = {s.ref: ranked[s.ref][: best["n"]] for s in saes if s.layer in best["layers"]}
    best_config = dataclasses.replace(config, top=best["n"], intervention=Intervention.from_spec(best["intervention"]))
    fl = suggested_feature_list(lm, [s for s in saes if s.layer in best["layers"]], chosen, best_config)
    fl.extra["selection"]["command"] = command
    print(f"wrote {save_feature_list(fl, path)} (best point {best['label']})", file=sys.stderr)


def _train_sae(args: argparse.Namespace) -> int:
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
    folders = build_saes(config, status=_status)
    return _print_quality(folders)


def _print_quality(folders: list[Any]) -> int:
    from unlearn_core.training.release import QUALITY_FILE, quality_table

    rows = [{"name": f.name, **json.loads((f / QUALITY_FILE).read_text(encoding="utf-8"))} for f in folders]
    print(quality_table(rows))
    return 0


def _sae_quality(args: argparse.Namespace) -> int:
    from pathlib import Path

    from unlearn_core.models.loading import load_model
    from unlearn_core.training.build import measure_and_record
    from unlearn_core.training.release import quality_table, shipped_sae_folders

    folders = [Path(p) for p in args.saes] if args.saes else shipped_sae_folders()
    if not folders:
        raise InputError("no shipped SAEs found; give --saes FOLDER ...")
    lm = load_model("gemma-3-270m-offline", progress=_status)
    rows = measure_and_record(lm, folders, args.quality_tokens, args.ce_tokens, _status, write=args.write)
    print(quality_table(rows))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from unlearn_core.experiments.bench import format_benchmark, run_benchmark

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
