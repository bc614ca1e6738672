"""``attack``: try to recover the forgotten knowledge (paraphrase, k-shot, translation, linear probe, hook-off)."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from unlearn_core.ablation.interventions import MODES
from unlearn_core.cli.common import TokenProgress, check_writable, command_string, print_status
from unlearn_core.experiments.attack_report import attack_markdown, attack_table
from unlearn_core.experiments.attacks import HOOK_OFF_NOTE, AttackConfig, run_attacks
from unlearn_core.experiments.evaluate import write_json
from unlearn_core.models.precision import DTYPE_HELP, PRECISION_CHOICES
from unlearn_core.models.presets import PRESETS
from unlearn_core.scoring.batching import DEFAULT_BATCH_TOKENS

_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")


def _at_least(minimum: int) -> Any:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {number}")
        return number

    return parse


def _language(value: str) -> str:
    if not _LANGUAGE.match(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a language code such as fr or es")
    return value


def add_attack_parser(sub: Any) -> None:
    """The ``attack`` subcommand's flags."""
    at = sub.add_parser("attack", help="try to recover the forgotten knowledge: paraphrase, k-shot, translation, "
                                       "linear probe, hook-off")
    at.add_argument("--forget-set", required=True, help="feature-list JSON file")
    at.add_argument("--model", choices=sorted(PRESETS), help="model preset (default: the first that loads the list's model)")
    at.add_argument("--mode", choices=MODES, default=None,
                    help="as for evaluate; default: the intervention the list recommends, else zero")
    at.add_argument("--value", type=float, help="clamp: c (latents set to -c, default 10); scale: factor (default 0)")
    at.add_argument("--relative", action="store_true", help="clamp relative to each latent's mean forget activation")
    at.add_argument("--hook-site", choices=("trained", "resid_pre"), default="trained",
                    help="trained = the SAE's own hook_name; resid_pre = REPRODUCTION ONLY (the study's placement)")
    at.add_argument("--quiz", default="hp-quiz:test", help="the multiple-choice quiz attacked (default hp-quiz:test)")
    at.add_argument("--shots-from", default="hp-quiz:dev", help="where k-shot examples come from (dev items only)")
    at.add_argument("--shots", type=_at_least(1), default=3, help="true QA pairs before each question (default 3)")
    at.add_argument("--languages", nargs="+", type=_language, default=["fr", "es"],
                    help="translations to ask the quiz in (default: fr es)")
    at.add_argument("--max-items", type=_at_least(1), help="only the first N quiz items (default: all)")
    at.add_argument("--probe-texts-per-class", type=_at_least(2), default=200,
                    help="linear probe: dev texts per class to train on, test texts per class at most (default 200)")
    at.add_argument("--seed", type=int, default=0, help="seed of the random control, the shots and the probe texts")
    at.add_argument("--batch-tokens", type=_at_least(16), default=DEFAULT_BATCH_TOKENS, help="padded tokens per batch")
    at.add_argument("--device", help="cpu, cuda, mps (default: CUDA when present)")
    at.add_argument("--dtype", choices=PRECISION_CHOICES, help=DTYPE_HELP)
    at.add_argument("--json", dest="json_out", help="write the full result (rows, settings, definitions) here")
    at.add_argument("--report", help="write a Markdown report (tables, the command, the definitions) here")


def run_attack(args: argparse.Namespace) -> int:
    check_writable(args.json_out)
    check_writable(args.report)
    config = AttackConfig(
        forget_set=args.forget_set, preset=args.model, mode=args.mode, value=args.value, hook_site=args.hook_site,
        relative=args.relative, quiz=args.quiz, shots_from=args.shots_from, shots=args.shots, languages=args.languages,
        max_items=args.max_items, probe_texts_per_class=args.probe_texts_per_class, seed=args.seed,
        batch_tokens=args.batch_tokens, device=args.device, dtype=args.dtype,
    )
    bar = TokenProgress()
    try:
        attack_result = run_attacks(config, status=print_status, progress=bar)
    finally:
        bar.close()
    attack_result.command = command_string("attack", args)
    result = attack_result.to_dict()
    print("\n".join(attack_table(result)))
    print()
    print(HOOK_OFF_NOTE)
    print(f"({result['details']['seconds_total']:.0f} s; fractions: (ablated attacked - ablated plain) / "
          "(baseline plain - ablated plain))")
    if args.json_out:
        print(f"wrote {write_json(result, args.json_out)}", file=sys.stderr)
    if args.report:
        from unlearn_core.files import write_text_atomic

        print(f"wrote {write_text_atomic(args.report, attack_markdown(result, attack_result.command))}", file=sys.stderr)
    return 0
