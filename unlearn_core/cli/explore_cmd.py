"""``explore``: the Explore page headless - each layer's top latents on a set of prompts, with labels.

Contract (other tools call it like this)::

    python -m unlearn_core explore --prompts FILE [--prompt TEXT ...] [--model PRESET] [--layers 5 9 12] [--top K]
        [--rank-by NAME] [--contrast FILE] [--json OUT]

``--json`` writes ``{"layers": {"<layer>": [{"latent": int, "label": str, "score": float, ...}, ...]}, ...}`` in the
ranking's order, with the page's defaults (specificity ranking, dense latents hidden).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from unlearn_core.cli.common import check_writable, command_string, print_status
from unlearn_core.errors import InputError
from unlearn_core.explain.explore import RANKINGS
from unlearn_core.models.precision import DTYPE_HELP, PRECISION_CHOICES
from unlearn_core.models.presets import DEFAULT_PRESET, PRESETS


def add_explore_parser(sub: Any) -> None:
    """The ``explore`` subcommand's flags."""
    ex = sub.add_parser("explore", help="top latents of each layer's SAE on a set of prompts, with labels")
    ex.add_argument("--prompts", help="text file, one prompt per line (default: the study's 7 prompts unless --prompt)")
    ex.add_argument("--prompt", action="append", default=[], help="a prompt (repeat; added after --prompts)")
    ex.add_argument("--model", choices=sorted(PRESETS), default=DEFAULT_PRESET)
    ex.add_argument("--family", help="SAE family of the preset (default: the preset's default family)")
    ex.add_argument("--layers", type=int, nargs="+", help="layers (default: the family's default layers)")
    ex.add_argument("--top", type=int, default=20, help="latents per layer (default 20)")
    ex.add_argument("--rank-by", choices=RANKINGS, default=RANKINGS[0],
                    help="specific (default): smoothed log ratio of the firing rate on the prompts over general text "
                         "(and over --contrast prompts); max, mean, frequency: the raw statistic on the prompts")
    ex.add_argument("--contrast", help="text file of contrast prompts, one per line: rank what separates --prompts "
                                       "from these")
    ex.add_argument("--show-dense", action="store_true",
                    help="keep latents firing on more than 10%% of the dashboard corpus (dense; hidden by default)")
    ex.add_argument("--build-dashboards", action="store_true",
                    help="compute missing dashboards (minutes per SAE) instead of ranking those SAEs by max activation")
    ex.add_argument("--json", dest="json_out", help="write the ranking as JSON here")
    ex.add_argument("--device", help="cpu, cuda, mps (default: CUDA when present)")
    ex.add_argument("--dtype", choices=PRECISION_CHOICES, help=DTYPE_HELP)


def _read_prompts(path: str) -> list[str]:
    from unlearn_core.data.texts import read_text_file
    from unlearn_core.errors import TextSourceError
    from unlearn_core.explain.explore import split_prompts

    try:
        return split_prompts(read_text_file(Path(path).expanduser()))
    except TextSourceError as exc:
        raise InputError(str(exc)) from exc


def run_explore(args: argparse.Namespace) -> int:
    from unlearn_core.explain.dashboard_cache import dashboards_for, find_dashboards
    from unlearn_core.explain.explore import explore, prepare_prompts, reference_prompt_counts, study_prompts
    from unlearn_core.explain.labels import latent_labels
    from unlearn_core.explain.ranking import dense_latents, general_reference, source_ratio, with_reference_prompts
    from unlearn_core.files import write_json_atomic
    from unlearn_core.models.loading import load_model
    from unlearn_core.models.presets import get_preset
    from unlearn_core.saes.neuronpedia.explanation import neuronpedia_page_url
    from unlearn_core.selection.suggest import load_saes

    if args.top < 1:
        raise InputError("--top must be at least 1")
    prompts = (_read_prompts(args.prompts) if args.prompts else []) + [p for p in args.prompt if p.strip()]
    if not args.prompts and not args.prompt:
        prompts = study_prompts()
    contrast_prompts = _read_prompts(args.contrast) if args.contrast else []
    if args.contrast and not contrast_prompts:
        raise InputError(f"{args.contrast} holds no prompt")
    check_writable(args.json_out)
    preset = get_preset(args.model)
    family = preset.family(args.family)
    layers = args.layers or list(preset.default_layers)
    refs = [family.ref(layer) for layer in layers]  # raises InputError for a layer the family has no SAE at
    lm = load_model(preset, device=args.device, dtype=args.dtype, progress=print_status)
    print_status(f"Loading SAEs: {', '.join(refs)}")
    saes = load_saes(refs, lm.device, lm.dtype)
    prepared = prepare_prompts(lm, prompts)
    for notice in prepared.notices:
        print_status(notice)
    result = explore(lm, saes, prepared)
    contrast = explore(lm, saes, prepare_prompts(lm, contrast_prompts)) if contrast_prompts else None
    out: dict[str, Any] = {"prompts": list(prepared.prompts), "contrast": contrast_prompts, "model": preset.name,
                           "rank_by": args.rank_by, "hide_dense": not args.show_dense, "layers": {}, "notes": {},
                           "command": command_string("explore", args)}
    prompt_counts = reference_prompt_counts(lm, saes) if args.rank_by == "specific" else {}
    for loaded in saes:
        board = dashboards_for(lm, loaded, progress=None) if args.build_dashboards else find_dashboards(loaded)
        reference = general_reference(board) if board is not None else None
        if reference is not None and loaded.ref in prompt_counts:
            reference = with_reference_prompts(reference, *prompt_counts[loaded.ref])
        by = args.rank_by
        if by == "specific" and reference is None:
            by = "max"
            out["notes"][str(loaded.layer)] = "no dashboards (no general-text rates): ranked by max activation"
        exclude = set() if (args.show_dense or board is None) else dense_latents(board)
        stats = result.top_latents(loaded.ref, k=args.top, by=by, exclude=exclude, reference=reference, contrast=contrast)
        labels = latent_labels(loaded, board, [s.latent for s in stats], missing="(no dashboard)")
        rows = []
        for s in stats:
            ratio = source_ratio(board, s.latent) if board is not None else None
            rows.append({
                "latent": s.latent, "label": labels[s.latent], "score": s.score, "ranked_by": by,
                "max_activation": s.max_activation, "mean_activation": s.mean_activation, "frequency": s.frequency,
                "n_prompts": s.n_prompts, "top_token": s.top_token, "top_prompt": s.top_prompt,
                "hp_vs_general": None if ratio is None or math.isinf(ratio) else ratio,
                "never_on_general_text": ratio is not None and math.isinf(ratio),
                "neuronpedia": neuronpedia_page_url(loaded.neuronpedia, s.latent) if loaded.neuronpedia else None,
            })
        out["layers"][str(loaded.layer)] = rows
        _print_layer(loaded, by, rows, len(exclude), out["notes"].get(str(loaded.layer)))
    if args.json_out:
        write_json_atomic(Path(args.json_out), out)
        print(f"wrote {args.json_out}")
    return 0


def _print_layer(loaded: Any, by: str, rows: list[dict[str, Any]], n_dense: int, note: str | None) -> None:
    print(f"\nlayer {loaded.layer} ({loaded.ref}), ranked by {by}" + (f", {n_dense} dense latents hidden" if n_dense else ""))
    if note:
        print(f"  note: {note}")
    for r in rows:
        hp = "never on general" if r["never_on_general_text"] else (
            "" if r["hp_vs_general"] is None else f"HP x{r['hp_vs_general']:.1f}")
        print(f"  {r['latent']:>6}  {r['score']:8.3f}  {hp:>16}  top {r['top_token']!r:<14} {r['label'][:70]}")
