"""How concept-specific Explore's default ranking is: of each layer's top 10 latents on a prompt set, how many fire
at least 3x as often on Harry Potter text as on general text, measured on text the ranking never used.

    python scripts/explore_specificity.py                # the study's 7 prompts, test text (the reported number)
    python scripts/explore_specificity.py --dev          # the dev prompt sets and dev text the ranking was chosen on

The ranking sees only the prompts, the dashboards' general-text rates (Gutenberg books, WikiText-2 *train*) and the
latents' rates on the bundled everyday reference prompts (``unlearn_core/data/reference_prompts.txt``).
Test measurement: firing rates on ``hp-fanwiki:test`` (the 4 held-out fan-wiki articles) vs ``wikitext2:test``.
Dev measurement: ``hp-fanwiki:dev`` vs ``wikitext2:dev`` on three prompt sets written for this (never the study's).
Every ranking is printed (max activation, the old default, for comparison), plus the Ember-style contrast of the
study's 4 Harry Potter prompts against its 3 unrelated ones.
"""

from __future__ import annotations

import argparse
import json

import torch

from unlearn_core.data.texts import load_texts
from unlearn_core.explain.dashboard_cache import find_dashboards
from unlearn_core.explain.explore import STUDY_PROMPTS, explore, reference_prompt_counts
from unlearn_core.explain.ranking import dense_latents, general_reference, with_reference_prompts
from unlearn_core.models.loading import load_model
from unlearn_core.models.presets import get_preset
from unlearn_core.saes.loading import load_sae
from unlearn_core.selection.stats import cached_latent_stats, stats_sequences

DEV_PROMPT_SETS = (
    ("Who is Hermione Granger?", "What happens during the Triwizard Tournament?", "Describe the shops of Diagon Alley",
     "Tell me about the Weasley family and the Burrow", "How do volcanoes form?", "Explain how a bank loan works",
     "What should I pack for a week of hiking?"),
    ("Who is Ron Weasley and who are his brothers?", "Tell me about Albus Dumbledore's time as headmaster of Hogwarts",
     "What are the four houses of Hogwarts?", "Describe Harry Potter's first flight on a broomstick",
     "Explain how photosynthesis works", "What is the history of the printing press?",
     "Describe a football match in a big stadium"),
    ("Who is Lord Voldemort?", "What is the Order of the Phoenix in the Harry Potter books?",
     "Describe Hagrid's hut near the Forbidden Forest", "Tell me about Severus Snape's potions lessons",
     "How does a car engine work?", "What are the causes of the French Revolution?",
     "Give me a recipe for a simple tomato soup"),
)
MEASURE_TOKENS = 60_000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dev", action="store_true", help="dev prompt sets and dev text (what the ranking was chosen on)")
    ap.add_argument("--layers", type=int, nargs="+", default=[5, 9, 12])
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--ratio", type=float, default=3.0)
    ap.add_argument("--json", help="write the counts here")
    ap.add_argument("--dtype", default="float32", help="model precision (the reported numbers: float32; the app's "
                                                        "default is auto)")
    args = ap.parse_args()
    preset = get_preset("gemma-3-270m-offline")
    lm = load_model(preset, dtype=args.dtype)
    saes = [load_sae(preset.family().ref(layer), dtype=lm.dtype) for layer in args.layers]
    hp_name, general_name = ("hp-fanwiki:dev", "wikitext2:dev") if args.dev else ("hp-fanwiki:test", "wikitext2:test")
    rates = {}
    for name in (hp_name, general_name):
        stats = cached_latent_stats(lm, saes, stats_sequences(lm, load_texts(name).texts, max_tokens=MEASURE_TOKENS))
        rates[name] = {ref: s.frequency for ref, s in stats.items()}

    def specific(ref: str, latent: int) -> bool:
        on, off = float(rates[hp_name][ref][latent]), float(rates[general_name][ref][latent])
        return on > 0 and on >= args.ratio * off

    study = [p for p, _ in STUDY_PROMPTS]
    study_hp = [p for p, group in STUDY_PROMPTS if group == "Harry Potter"]
    study_other = [p for p, group in STUDY_PROMPTS if group != "Harry Potter"]
    if args.dev:
        cases = [(f"dev set {i + 1}", list(prompts), None) for i, prompts in enumerate(DEV_PROMPT_SETS)]
        cases += [(f"dev set {i + 1}: 4 HP vs 3 others", list(prompts[:4]), list(prompts[4:]))
                  for i, prompts in enumerate(DEV_PROMPT_SETS)]
    else:
        cases = [("study's 7 prompts", study, None), ("study's 4 HP prompts vs its 3 others", study_hp, study_other)]
    boards = {s.ref: find_dashboards(s) for s in saes}
    prompt_counts = reference_prompt_counts(lm, saes)
    references = {s.ref: with_reference_prompts(general_reference(boards[s.ref]), *prompt_counts[s.ref]) for s in saes}
    report: dict[str, dict[str, list[int]]] = {}
    print(f"top {args.top} per layer firing >= {args.ratio:g}x as often on {hp_name} as on {general_name} "
          f"({MEASURE_TOKENS:,} tokens each at most); dense latents hidden")
    for label, prompts, contrast_prompts in cases:
        result = explore(lm, saes, prompts)
        contrast = explore(lm, saes, contrast_prompts) if contrast_prompts else None
        for by in ("specific", "max"):
            counts = []
            for s in saes:
                board = boards[s.ref]
                top = result.top_latents(s.ref, k=args.top, by=by, exclude=dense_latents(board),
                                         reference=references[s.ref], contrast=contrast)
                counts.append(sum(specific(s.ref, t.latent) for t in top))
            report[f"{label} / {by}"] = {"per_layer": counts, "layers": args.layers}
            print(f"  {label:40s} {by:9s} per layer {counts}  total {sum(counts)}/{args.top * len(saes)}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
