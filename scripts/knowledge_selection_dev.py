"""Forget the knowledge, not the names: the default forget set vs attribution-selected ones, with and without a gate,
measured on DEV splits only (test splits stay unseen for `evaluate`).

    python scripts/knowledge_selection_dev.py [--sizes 20] [--lam 1.0] [--objective logprob] [--quantile 0.99]
        [--max-texts 20] [--max-seq-len 128] [--json OUT.json] [--reuse EARLIER.json]

The default run (4 conditions) takes about 10 minutes on 2 CPU cores; more sizes in a second run reuse the rows of
the first (`--sizes 10 20 40 --reuse FIRST.json`), since each condition costs ~2 minutes (the three dev quizzes are
~25k tokens with their neutral-prompt calibration).

Conditions (every SAE of the preset's bundled family, layers 5/9/12/15; intervention clamp:4x, error term kept):

* `ratio-20`: what `select` writes by default (ratio rule, 20 latents per layer, clamp:4x);
* `attr-N`: the top N latents per layer by `select --method attribution` (gradient x activation of the dev HP
  answers' log-likelihood minus lambda x the dev retain answers'), clamp:4x; `attr-N@gate`: the same, gated at the
  `--quantile` of the chosen latents' summed activation on wikitext2:dev (calibrated per condition).

The attribution here is computed on the EVEN-indexed items of each dev set only, and every dev quiz is reported on
its even half (`seen`: the items attribution used) and its odd half (`held`: dev items attribution never saw), so
the in-sample effect can be told apart from what generalises. The ratio rule never sees any quiz item.

Reported (against the baseline, on dev splits): HP / general / adjacent quiz calibrated accuracy (both halves),
HP cloze top-1 (hp-cloze:dev; attribution saw its even half), and perplexity ratios on hp-fanwiki:dev and
wikitext2:dev (`--max-texts` texts x `--max-seq-len` tokens).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from unlearn_core.ablation.conditions import Condition
from unlearn_core.ablation.gating import Gate
from unlearn_core.ablation.interventions import Intervention, LatentSelection
from unlearn_core.data.probes import ProbeSet, load_probes
from unlearn_core.data.quizzes import Quiz, load_quiz
from unlearn_core.data.texts import load_texts
from unlearn_core.experiments.results import MeasureOptions, measure_condition
from unlearn_core.models.loading import load_model
from unlearn_core.models.presets import DEFAULT_PRESET, get_preset
from unlearn_core.selection.attribution import cloze_items, latent_attributions, quiz_items, rank_by_attribution
from unlearn_core.selection.gating import calibrated_conditions
from unlearn_core.selection.rules import DEFAULT_RETAIN_THRESHOLDS, ranked_candidates
from unlearn_core.selection.suggest import SelectConfig, corpus_stats, default_sae_refs, load_saes

QUIZZES = {"hp": "hp-quiz:dev", "general": "general-quiz:dev", "adjacent": "adjacent-quiz:dev"}
CLOZES = {"hp": "hp-cloze:dev", "general": "general-cloze:dev"}
TEXTS = {"hp": "hp-fanwiki:dev", "wiki": "wikitext2:dev"}


def halves_quiz(quiz: Quiz) -> tuple[Quiz, Quiz]:
    return (Quiz(f"{quiz.name}-seen", quiz.items[0::2], quiz.source),
            Quiz(f"{quiz.name}-held", quiz.items[1::2], quiz.source))


def halves_probes(ps: ProbeSet) -> tuple[ProbeSet, ProbeSet]:
    return (ProbeSet(f"{ps.name}-seen", ps.probes[0::2], ps.source), ProbeSet(f"{ps.name}-held", ps.probes[1::2], ps.source))


def status(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_PRESET)
    ap.add_argument("--sizes", type=int, nargs="+", default=[20], help="attribution latents per layer")
    ap.add_argument("--default-top", type=int, default=20)
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--objective", choices=("logprob", "margin"), default="logprob")
    ap.add_argument("--quantile", type=float, default=0.99)
    ap.add_argument("--gate-tokens", type=int, default=8192)
    ap.add_argument("--no-gate", action="store_true")
    ap.add_argument("--max-texts", type=int, default=20)
    ap.add_argument("--max-seq-len", type=int, default=128)
    ap.add_argument("--retain-threshold", type=float, default=DEFAULT_RETAIN_THRESHOLDS["attribution"],
                    help="attribution: drop latents firing on at least this fraction of retain tokens")
    ap.add_argument("--ratio-conditions", nargs="*", default=[], metavar="N:SPEC",
                    help="more conditions on the ratio rule's latents: N per layer under intervention SPEC, e.g. "
                         "20:clamp:4x@gate 40:clamp:8x@gate:0.999 (gates calibrated on wikitext2:dev)")
    ap.add_argument("--no-attribution", action="store_true", help="skip the attribution conditions")
    ap.add_argument("--json", help="write every row here (after each condition, so a stopped run keeps its rows)")
    ap.add_argument("--reuse", help="a --json file of an earlier run: rows measuring the very same condition (same "
                                    "latents, intervention with its thresholds, and text limits) are taken from it")
    args = ap.parse_args()
    t0 = time.perf_counter()
    lm = load_model(get_preset(args.model), device="cpu", dtype="float32", progress=status)
    saes = load_saes(default_sae_refs(lm.preset), lm.device, lm.dtype)
    return run(lm, saes, args, t0)


def run(lm, saes, args, t0: float, config: SelectConfig | None = None) -> int:
    config = config or SelectConfig()
    status("firing statistics (cached on disk after the first run)")
    forget_stats, retain_stats = corpus_stats(lm, saes, config)
    ratio_sizes = [args.default_top, *(int(c.split(":", 1)[0]) for c in args.ratio_conditions)]
    ratio = ranked_candidates(forget_stats, retain_stats, max(ratio_sizes), "ratio", config.retain_threshold,
                              config.min_forget_freq, [s.ref for s in saes])

    quizzes = {k: halves_quiz(load_quiz(v)) for k, v in QUIZZES.items()}
    clozes = {k: halves_probes(load_probes(v)) for k, v in CLOZES.items()}
    attr: dict = {}
    t_attr = time.perf_counter()
    if not args.no_attribution:
        status("attribution on the even halves of the dev knowledge sets")
        forget_items = [quiz_items(lm, quizzes["hp"][0], args.objective), cloze_items(lm, clozes["hp"][0])]
        retain_items = [quiz_items(lm, quizzes["general"][0], args.objective),
                        quiz_items(lm, quizzes["adjacent"][0], args.objective), cloze_items(lm, clozes["general"][0])]
        forget_attr = latent_attributions(lm, saes, forget_items)
        retain_attr = latent_attributions(lm, saes, retain_items)
        attr = {s.ref: rank_by_attribution(forget_attr[s.ref], retain_attr[s.ref], forget_stats[s.ref],
                                           retain_stats[s.ref], max(args.sizes), args.lam, args.retain_threshold)
                for s in saes}
    attr_seconds = time.perf_counter() - t_attr
    status(f"attribution took {attr_seconds:.0f} s")

    def selections(ranked, n):
        return tuple(LatentSelection(s, tuple(c.id for c in ranked[s.ref][:n]),
                                     tuple(c.forget_mean_act for c in ranked[s.ref][:n])) for s in saes if ranked[s.ref])

    clamp = Intervention("clamp", 4.0, relative=True)
    gated = Intervention("clamp", 4.0, relative=True, gate=Gate(quantile=args.quantile, tokens=args.gate_tokens))
    conds = [Condition("baseline"), Condition(f"ratio-{args.default_top}", selections(ratio, args.default_top), clamp)]
    for spec in args.ratio_conditions:
        n, intervention = spec.split(":", 1)
        conds.append(Condition(f"ratio-{n} {intervention}", selections(ratio, int(n)),
                               Intervention.from_spec(intervention)))
    for n in ([] if args.no_attribution else args.sizes):
        conds.append(Condition(f"attr-{n}", selections(attr, n), clamp))
        if not args.no_gate:
            conds.append(Condition(f"attr-{n}@gate", selections(attr, n), gated))
    conds = calibrated_conditions(lm, conds)
    text_sets = [load_texts(TEXTS["hp"], args.max_texts), load_texts(TEXTS["wiki"], args.max_texts)]
    probe_sets = [*clozes["hp"], *(q for pair in quizzes.values() for q in pair)]
    options = MeasureOptions(args.max_seq_len)
    earlier = {}
    if getattr(args, "reuse", None):
        with open(args.reuse, encoding="utf-8") as fh:
            earlier = json.load(fh)["rows"]
    rows = {}

    def write(report: str = "") -> None:
        if not args.json:
            return
        out = {"rows": rows, "args": vars(args), "attribution_seconds": round(attr_seconds, 1),
               "latents": {"ratio": {r: [c.id for c in v[: args.default_top]] for r, v in ratio.items()},
                           "attribution": {r: [[c.id, c.forget_attribution, c.retain_attribution] for c in v]
                                           for r, v in attr.items()}},
               "seconds": round(time.perf_counter() - t0, 1), "command": " ".join(sys.argv), "table": report}
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=1)

    for cond in conds:
        what = {"selections": {sel.sae.ref: list(sel.latents) for sel in cond.selections},
                "intervention": cond.intervention.to_dict(), "max_texts": args.max_texts, "max_seq_len": args.max_seq_len}
        old = earlier.get(cond.name)
        if old is not None and old.get("what") == json.loads(json.dumps(what)):
            status(f"reusing {cond.name} from {args.reuse}")
            rows[cond.name] = old
            continue
        status(f"measuring {cond.name} ({cond.n_latents} latents)")
        t = time.perf_counter()
        scores, _ = measure_condition(lm, cond, text_sets, probe_sets, options)
        rows[cond.name] = {"perplexity": scores.perplexity, "probes": {k: v.to_dict() for k, v in scores.probes.items()},
                           "n_latents": cond.n_latents, "seconds": round(time.perf_counter() - t, 1), "what": what}
        write()
    report = table(rows)
    print(report)
    write(report)
    status(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


def table(rows: dict) -> str:
    base = rows["baseline"]

    def acc(row, quiz, half):
        return row["probes"][f"{QUIZZES[quiz]}-{half}"]["acc_calibrated"]

    def cloze(row, half):
        return row["probes"][f"{CLOZES['hp']}-{half}"]["top1"]

    head = ("| condition | latents | HP quiz seen / held | general quiz seen / held | adjacent quiz seen / held | "
            "HP cloze seen / held | HP PPL x | Wiki PPL x |")
    lines = [head, "|" + "---|" * 8]
    for name, row in rows.items():
        ppl = [row["perplexity"][TEXTS[k]] / base["perplexity"][TEXTS[k]] for k in ("hp", "wiki")]
        cells = [f"{acc(row, q, 'seen'):.3f} / {acc(row, q, 'held'):.3f}" for q in QUIZZES]
        lines.append(f"| {name} | {row['n_latents']} | " + " | ".join(cells)
                     + f" | {cloze(row, 'seen'):.3f} / {cloze(row, 'held'):.3f} | {ppl[0]:.3f} | {ppl[1]:.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
