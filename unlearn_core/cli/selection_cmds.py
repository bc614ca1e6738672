"""``select``, ``sweep`` and ``plot-sweep``: choose latents, sweep forget-set size x intervention x layers."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from unlearn_core.ablation.interventions import Intervention
from unlearn_core.cli.common import TokenProgress, check_writable, command_string, print_status
from unlearn_core.errors import InputError
from unlearn_core.experiments.sweep import DEFAULT_INTERVENTIONS, DEFAULT_LAYER_SETS, DEFAULT_NS, SweepConfig
from unlearn_core.models.precision import DTYPE_HELP, PRECISION_CHOICES
from unlearn_core.models.presets import DEFAULT_PRESET, PRESETS
from unlearn_core.selection.attribution import DEFAULT_LAMBDA, OBJECTIVES
from unlearn_core.selection.rules import DEFAULT_METHOD, DEFAULT_MIN_FORGET_FREQ, DEFAULT_TOP
from unlearn_core.selection.rules import METHODS as SELECTION_METHODS
from unlearn_core.selection.stats import DEFAULT_STATS_TOKENS


def add_select_parser(sub: Any) -> None:
    """The ``select`` subcommand's flags."""
    se = sub.add_parser("select", help="suggest a forget set: latents that fire on forget text but not retain text")
    se.add_argument("--model", choices=sorted(PRESETS), default=DEFAULT_PRESET, help=f"model preset (default {DEFAULT_PRESET})")
    se.add_argument("--sae", action="append", dest="saes",
                    help="SAE reference (repeat for several); default: the preset's bundled SAEs at every layer")
    se.add_argument("--forget", default="hp-fanwiki",
                    help="forget text: built-in set (its selection split is used) or a text file (default hp-fanwiki)")
    se.add_argument("--retain", default="wikitext2", help="retain text, as --forget (default wikitext2)")
    se.add_argument("--method", choices=SELECTION_METHODS, default=DEFAULT_METHOD,
                    help="ratio (default): p_f*ln(p_f/p_r) among latents rare on retain text; frequency: SAEBench's "
                         "rule, drop latents firing on retain text >= threshold, rank by forget firing rate; "
                         "attribution: gradient x activation of the dev HP quiz/cloze answers' log-likelihood, minus "
                         "a penalty for the dev retain quizzes' and cloze's (docs/selection.md)")
    se.add_argument("--top", type=int, default=DEFAULT_TOP, help=f"latents per SAE (default {DEFAULT_TOP})")
    se.add_argument("--retain-threshold", type=float,
                    help="drop latents firing on at least this fraction of retain tokens (default 0.001 for ratio, "
                         "0.01 for frequency)")
    se.add_argument("--min-forget-freq", type=float, default=DEFAULT_MIN_FORGET_FREQ,
                    help="ratio rule: ignore latents firing on fewer forget tokens than this")
    se.add_argument("--stats-tokens", type=int, default=DEFAULT_STATS_TOKENS, help="tokens of each corpus")
    _add_attribution_flags(se)
    se.add_argument("--intervention", default=None,
                    help="intervention the list recommends: zero, clamp:C, clamp:Cx (C x mean activation), "
                         "scale:S, each optionally gated with @gate or @gate:Q (edit only where the chosen latents' "
                         "summed activation exceeds its Q quantile on wikitext2:dev; calibrated and written into the "
                         "list) (default: the best found, clamp:4x)")
    se.add_argument("--name", help="feature list name")
    se.add_argument("--out", required=True, help="feature-list JSON file to write")
    se.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    se.add_argument("--device", help="cpu, cuda, mps (default: CUDA when present)")
    se.add_argument("--dtype", choices=PRECISION_CHOICES, help=DTYPE_HELP)
    _add_ray_flags(se, "compute the latent statistics in N contiguous shards on N Ray workers (same result)")


def add_sweep_parser(sub: Any) -> None:
    """The ``sweep`` subcommand's flags."""
    sw = sub.add_parser("sweep", help="sweep latent count x intervention x layers; best point under a retain budget")
    sw.add_argument("--model", choices=sorted(PRESETS), default=DEFAULT_PRESET)
    sw.add_argument("--sae", action="append", dest="saes", help="SAE reference (repeat); default: the preset's bundled SAEs")
    sw.add_argument("--forget", default="hp-fanwiki", help="forget text to select latents on (selection split)")
    sw.add_argument("--retain", default="wikitext2", help="retain text to select latents on (selection split)")
    sw.add_argument("--method", choices=SELECTION_METHODS, default=DEFAULT_METHOD)
    sw.add_argument("--retain-threshold", type=float)
    sw.add_argument("--min-forget-freq", type=float, default=DEFAULT_MIN_FORGET_FREQ)
    sw.add_argument("--stats-tokens", type=int, default=DEFAULT_STATS_TOKENS)
    _add_attribution_flags(sw)
    sw.add_argument("--ns", type=int, nargs="+", default=list(DEFAULT_NS), help="latents per SAE at each point")
    sw.add_argument("--interventions", nargs="+", default=list(DEFAULT_INTERVENTIONS),
                    help="zero, clamp:C, clamp:Cx (C x mean activation on forget text), scale:S")
    sw.add_argument("--layer-sets", nargs="+", default=list(DEFAULT_LAYER_SETS),
                    help="'all' or layers joined by + (e.g. 12 9+12 all)")
    dev = SweepConfig()
    sw.add_argument("--forget-texts", default=dev.forget_texts,
                    help=f"forget text for perplexity (default {dev.forget_texts}: a sweep tunes, so it sees dev splits only)")
    sw.add_argument("--retain-texts", default=dev.retain_texts)
    sw.add_argument("--forget-probes", default=dev.forget_probes)
    sw.add_argument("--retain-probes", default=dev.retain_probes)
    sw.add_argument("--forget-quiz", default=dev.forget_quiz, help="multiple-choice set ('' to skip)")
    sw.add_argument("--retain-quiz", default=dev.retain_quiz, help="multiple-choice set ('' to skip)")
    sw.add_argument("--adjacent-quiz", default=dev.adjacent_quiz, help="multiple-choice set, other fiction ('' to skip)")
    sw.add_argument("--max-forget-texts", type=int, default=40)
    sw.add_argument("--max-retain-texts", type=int, default=80)
    sw.add_argument("--max-seq-len", type=int, default=256)
    sw.add_argument("--retain-ppl-budget", type=float, default=0.10, help="max relative rise of retain perplexity")
    sw.add_argument("--retain-probe-budget", type=float, default=0.05, help="max relative fall of retain probe top-1")
    sw.add_argument("--seed", type=int, default=0, help="seed of the random-latent control")
    sw.add_argument("--out-dir", required=True, help="folder for sweep.json, sweep.md, pareto.html and pareto.png")
    sw.add_argument("--write-best", help="also write the best point's forget set to this feature-list file")
    sw.add_argument("--device", help="cpu, cuda, mps (default: CUDA when present)")
    sw.add_argument("--dtype", choices=PRECISION_CHOICES, help=DTYPE_HELP)
    _add_ray_flags(sw, "measure points on N Ray workers, each with its own copy of the model (same result)")


def _add_attribution_flags(parser: Any) -> None:
    parser.add_argument("--attribution-lambda", type=float, default=DEFAULT_LAMBDA,
                        help=f"--method attribution: retain penalty lambda (default {DEFAULT_LAMBDA:g})")
    parser.add_argument("--attribution-objective", choices=OBJECTIVES, default="logprob",
                        help="--method attribution: logprob (correct answers' log-likelihood, default) or margin "
                             "(quiz items: correct choice minus the mean of the distractors)")


def _add_ray_flags(parser: Any, what: str) -> None:
    parser.add_argument("--workers", type=int, help=f"{what}; without it Ray is not used")
    parser.add_argument("--ray-address", help="join this Ray cluster ('auto' or HOST:PORT) instead of starting Ray on "
                                              "this machine; needs --workers")


def add_plot_sweep_parser(sub: Any) -> None:
    """The ``plot-sweep`` subcommand's flags."""
    pl = sub.add_parser("plot-sweep", help="redraw a sweep's Pareto plot (pareto.html and pareto.png) from its sweep.json")
    pl.add_argument("sweep_json", help="sweep.json written by `sweep`")


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
        attribution_lambda=args.attribution_lambda, attribution_objective=args.attribution_objective,
    )
    if not (config.attribution_lambda >= 0 and config.attribution_lambda < float("inf")):
        raise InputError(f"--attribution-lambda must be a finite number >= 0, got {config.attribution_lambda}")
    if config.method == "attribution" and getattr(args, "workers", None):
        raise InputError("--method attribution runs on this process's model; leave out --workers")
    if config.top < 1 or config.stats_tokens < 1000:
        raise InputError("--top must be >= 1 and --stats-tokens >= 1000")
    if config.retain_threshold is not None and not 0 < config.retain_threshold <= 1:
        raise InputError(f"--retain-threshold must be in (0, 1], got {config.retain_threshold}")
    if not 0 <= config.min_forget_freq < 1:
        raise InputError(f"--min-forget-freq must be in [0, 1), got {config.min_forget_freq}")
    from unlearn_core.data.texts import load_texts

    for name in config.corpora():
        load_texts(name, 1)  # a missing or unreadable file fails here, before the model loads
    lm = load_model(preset, device=args.device, dtype=args.dtype, progress=print_status)
    refs = args.saes or default_sae_refs(preset)
    print_status(f"Loading SAEs: {', '.join(refs)}")
    saes = load_saes(refs, lm.device, lm.dtype)
    from unlearn_core.ablation.interventions import LatentSelection
    from unlearn_core.forget_set.selections import check_selections_fit_model

    check_selections_fit_model(lm, [LatentSelection(s, ()) for s in saes], Intervention())
    return lm, saes, config


def run_select(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    from unlearn_core.errors import FeatureListError
    from unlearn_core.forget_set import save_feature_list
    from unlearn_core.selection.suggest import suggest, suggested_feature_list

    if Path(args.out).exists() and not args.overwrite:
        raise FeatureListError(f"{args.out} exists; choose another --out or add --overwrite")
    check_writable(args.out)
    _check_ray_flags(args)
    lm, saes, config = _selection_setup(args)
    if args.workers:
        from unlearn_core.experiments.sweep_ray import ModelSpec, RayPool, suggest_on_ray

        with RayPool(ModelSpec.of(lm, saes), args.workers, args.ray_address) as pool:
            chosen = suggest_on_ray(lm, saes, config, pool, progress=_shard_status)
    else:
        bar = TokenProgress()
        try:
            chosen = suggest(lm, saes, config, progress=bar)
        finally:
            bar.close()
    fl = suggested_feature_list(lm, saes, chosen, config, name=args.name)
    fl.selection = dataclasses.replace(fl.selection, command=command_string("select", args))
    path = save_feature_list(fl, args.out, overwrite=args.overwrite)
    for entry in fl.saes:
        top = entry.latents[0].stats
        print(f"{entry.sae}: {len(entry.latents)} latents (best fires on {top.forget_freq:.2%} of forget vs "
              f"{top.retain_freq:.3%} of retain tokens)")
    print(f"wrote {path} ({fl.total_latents} latents; apply with: {fl.intervention.describe()})")
    return 0


def run_sweep_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from unlearn_core.experiments.report import sweep_markdown
    from unlearn_core.experiments.sweep import SweepConfig, load_sweep_data, run_sweep, sweep_points
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
        forget_quiz=args.forget_quiz, retain_quiz=args.retain_quiz, adjacent_quiz=args.adjacent_quiz,
        max_forget_texts=args.max_forget_texts, max_retain_texts=args.max_retain_texts, max_seq_len=args.max_seq_len,
        retain_ppl_budget=args.retain_ppl_budget, retain_probe_budget=args.retain_probe_budget, seed=args.seed,
    )
    if any(n < 1 for n in args.ns):
        raise InputError("--ns must all be >= 1")

    for spec in args.interventions:
        Intervention.from_spec(spec)  # a typo fails now, not after the model has loaded
    _check_ray_flags(args)
    args.top = max(args.ns)
    lm, saes, config = _selection_setup(args)
    sweep_points(sweep_config, [s.layer for s in saes])  # validates specs before the long part
    data = load_sweep_data(sweep_config)
    sweep_config.extra["selection"] = f"{config.method} rule on {' vs '.join(config.corpora())}"
    points_dir = out_dir / "points"
    if args.workers:
        from unlearn_core.experiments.sweep_ray import ModelSpec, RayPool, suggest_on_ray

        with RayPool(ModelSpec.of(lm, saes), args.workers, args.ray_address) as pool, PointsBar() as points_bar:
            ranked = suggest_on_ray(lm, saes, config, pool, progress=_shard_status)
            result = run_sweep(lm, saes, ranked, sweep_config, status=points_bar.write, data=data,
                               runner=pool.runner(sweep_config, data), points_dir=points_dir, on_point=points_bar)
    else:
        bar = TokenProgress()
        try:
            ranked = suggest(lm, saes, config, progress=bar)
            result = run_sweep(lm, saes, ranked, sweep_config, progress=bar, status=print_status, data=data,
                               points_dir=points_dir)
        finally:
            bar.close()
    command = command_string("sweep", args)
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


def _check_ray_flags(args: argparse.Namespace) -> None:
    if args.workers is not None and args.workers < 1:
        raise InputError("--workers must be >= 1")
    if args.ray_address and not args.workers:
        raise InputError("--ray-address needs --workers N (how many actors to start on the cluster)")


def _shard_status(stage: str, done: int, total: int) -> None:
    print_status(f"{stage}: {done}/{total} shards")


class PointsBar:
    """One tqdm bar (on stderr) of sweep points done across all workers; a new bar for each batch (points, then
    the best point's controls)."""

    def __init__(self) -> None:
        self.bar: Any = None

    def __enter__(self) -> PointsBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(self, event: Any) -> None:
        from tqdm.auto import tqdm

        if self.bar is None or event.done == 1:
            self.close()
            self.bar = tqdm(total=event.total, desc="points", unit="point", file=sys.stderr)
        self.bar.update(event.done - self.bar.n)
        self.bar.set_postfix_str(f"last: {event.name}", refresh=True)

    def write(self, message: str) -> None:
        """A status line above the bar."""
        from tqdm.auto import tqdm

        tqdm.write(message, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _write_plots(result: dict[str, Any], out_dir: Any) -> None:
    from unlearn_core.experiments.plots import pareto_figure, write_figure_image
    from unlearn_core.files import write_text_atomic

    fig = pareto_figure(result)
    write_text_atomic(out_dir / "pareto.html", fig.to_html(include_plotlyjs=True))
    image = write_figure_image(fig, out_dir / "pareto.png")
    print(f"wrote {out_dir / 'pareto.html'}" + (", pareto.png" if image else
          " (no pareto.png: plotly image export needs kaleido and Chrome/Chromium)"), file=sys.stderr)


def run_plot_sweep(args: argparse.Namespace) -> int:
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

    from unlearn_core.forget_set import save_feature_list
    from unlearn_core.selection.suggest import suggested_feature_list

    best = result["points"][result["best"]]
    chosen = {s.ref: ranked[s.ref][: best["n"]] for s in saes if s.layer in best["layers"]}
    best_config = dataclasses.replace(config, top=best["n"], intervention=Intervention.from_spec(best["intervention"]))
    fl = suggested_feature_list(lm, [s for s in saes if s.layer in best["layers"]], chosen, best_config)
    fl.selection = dataclasses.replace(fl.selection, command=command)
    print(f"wrote {save_feature_list(fl, path)} (best point {best['label']})", file=sys.stderr)
