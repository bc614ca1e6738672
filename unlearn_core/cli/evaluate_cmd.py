"""``evaluate``: score a forget set under its conditions, print and save the headline."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from unlearn_core.ablation.conditions import CONDITIONS
from unlearn_core.ablation.interventions import MODES
from unlearn_core.cli.common import TokenProgress, check_writable, parse_conditions, print_status
from unlearn_core.errors import InputError
from unlearn_core.experiments.evaluate import (
    DEFAULT_PROBES,
    DEFAULT_TEXTS,
    EvaluationConfig,
    format_table,
    run_evaluation,
    write_json,
)
from unlearn_core.models.precision import DTYPE_HELP, PRECISION_CHOICES
from unlearn_core.models.presets import PRESETS
from unlearn_core.scoring.batching import DEFAULT_BATCH_TOKENS, DEFAULT_MAX_SEQ_LEN


def add_evaluate_parser(sub: Any) -> None:
    """The ``evaluate`` subcommand's flags."""
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
                    help="probe files (JSON/JSONL: cloze, QA, or multiple choice - recognised by their fields) or "
                         "built-ins: hp-quiz, general-quiz, adjacent-quiz, hp-cloze, general-cloze (each with :dev and "
                         ":test), nq-open (default: the test splits "
                         f"{' '.join(DEFAULT_PROBES)})")
    ev.add_argument("--max-texts", type=int, help="use only the first N texts of each text set")
    ev.add_argument("--conditions", type=parse_conditions, default=list(CONDITIONS),
                    help=f"comma-separated subset of {','.join(CONDITIONS)}")
    ev.add_argument("--seed", type=int, default=0, help="seed of the random-latent control")
    ev.add_argument("--max-seq-len", type=int, default=DEFAULT_MAX_SEQ_LEN, help="tokens per text, BOS included")
    ev.add_argument("--batch-tokens", type=int, default=DEFAULT_BATCH_TOKENS, help="padded tokens per batch")
    ev.add_argument("--device", help="cpu, cuda, mps (default: CUDA when present)")
    ev.add_argument("--dtype", choices=PRECISION_CHOICES, help=DTYPE_HELP)
    ev.add_argument("--match-tokens", type=int, default=EvaluationConfig.match_tokens,
                    help="tokens of retain text the matched random control is matched on (select's default: its "
                         "cached statistics are reused)")
    ev.add_argument("--familiarity", dest="familiarity", action="store_true", default=None,
                    help="also measure the familiarity of greedy continuations of the HP completion prompts (test "
                         "split); default: on when --probes is left at its default (the full evidence run)")
    ev.add_argument("--no-familiarity", dest="familiarity", action="store_false")
    ev.add_argument("--familiarity-tokens", type=int, default=32, help="tokens per familiarity continuation")
    ev.add_argument("--attacks", dest="attacks", action="store_true", default=None,
                    help="also run the attacks (paraphrase, 3-shot, translation, linear probe, hook-off) on "
                         "hp-quiz:test; default: on when --probes is left at its default (the full evidence run)")
    ev.add_argument("--no-attacks", dest="attacks", action="store_false")
    ev.add_argument("--attack-items", type=int, help="attack only the first N test questions (default: all)")
    ev.add_argument("--probe-texts-per-class", type=int, default=200, help="linear-probe attack: texts per class")
    ev.add_argument("--json", dest="json_out", help="write the full result (with its headline numbers) here")
    ev.add_argument("--report", help="write a Markdown report (headline numbers, the command, every number) here")


def run_evaluate(args: argparse.Namespace) -> int:
    from unlearn_core.experiments.evaluation_report import evaluation_headline, evaluation_markdown
    from unlearn_core.experiments.report import command_line

    check_writable(args.json_out)
    check_writable(args.report)
    for flag, value in (("--familiarity-tokens", args.familiarity_tokens), ("--match-tokens", args.match_tokens),
                        ("--attack-items", args.attack_items),
                        ("--probe-texts-per-class", args.probe_texts_per_class)):
        if value is not None and value < 1:
            raise InputError(f"{flag} must be at least 1")
    full_run = list(args.probes) == list(DEFAULT_PROBES)  # the evidence run: every kind of evidence by default
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
        match_tokens=args.match_tokens,
        familiarity=full_run if args.familiarity is None else args.familiarity,
        familiarity_tokens=args.familiarity_tokens,
        attacks=full_run if args.attacks is None else args.attacks,
        attack_items=args.attack_items,
        probe_texts_per_class=args.probe_texts_per_class,
    )
    bar = TokenProgress()
    try:
        result = run_evaluation(config, status=print_status, progress=bar).to_dict()
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
