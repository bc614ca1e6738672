"""How many texts the Compare page needs for a stable perplexity ratio: the spread of the ablated/baseline ratio
against the number of texts scored, on the page's text sets, with the shipped `select` forget set (hp-suggested, clamp -4x mean).

    python scripts/compare_sample_size.py [--max-texts 160] [--dtype float32] [--json docs/compare-sample-size.json]

Per text, the NLL sum and token count under the baseline and under the forget set (all layers, the list's
recommended intervention) are computed once (256 tokens per text, the page's default). For each size n the page's
number is the ratio on the *first* n texts; its spread is the bootstrap standard deviation of the ratio over n texts
drawn with replacement (2,000 draws, seed 0), relative to the ratio on all texts scored. A size is "stable to 1%"
when that relative spread is at most 1%.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from unlearn_core.ablation.interventions import Intervention
from unlearn_core.data.texts import load_texts
from unlearn_core.experiments.compare import DEFAULT_COMPARE_SEQ_LEN, DEFAULT_COMPARE_TEXTS, comparison_conditions
from unlearn_core.forget_set import load_feature_list
from unlearn_core.forget_set.selections import load_selections
from unlearn_core.models.loading import load_model
from unlearn_core.models.presets import REPO_ROOT
from unlearn_core.scoring.batching import score_tokens, tokenize_with_bos

EXAMPLE = REPO_ROOT / "feature_lists" / "example_gemma-3-270m-offline_hp-suggested.json"
SIZES = (8, 16, 24, 32, 48, 64, 96, 128, 160)


def per_text(lm, texts, hooks) -> tuple[np.ndarray, np.ndarray]:
    sequences = [s for s in tokenize_with_bos(lm, texts, DEFAULT_COMPARE_SEQ_LEN) if len(s) >= 2]
    scores = score_tokens(lm, sequences, hooks)
    return (np.array([-float(s.logprobs.double().sum()) for s in scores]),
            np.array([int(s.logprobs.numel()) for s in scores]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-texts", type=int, default=160)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--json")
    args = ap.parse_args()
    lm = load_model("gemma-3-270m-offline", dtype=args.dtype)
    fl = load_feature_list(EXAMPLE)
    selections = load_selections(fl, device=lm.device, dtype=lm.dtype)  # with each latent's reference value
    intervention = fl.intervention or Intervention()  # the list's recommended intervention, as the page applies it
    baseline, ablated = comparison_conditions(selections, intervention, per_layer=False, controls=())[:2]
    rng = np.random.default_rng(0)
    report: dict = {"dtype": args.dtype, "forget_set": EXAMPLE.name, "intervention": intervention.describe(), "sets": {}}
    for name in ("wikitext2", "hp-fanwiki"):
        texts = load_texts(name, args.max_texts).texts
        t = time.perf_counter()
        nb, tb = per_text(lm, texts, baseline.hooks())
        na, ta = per_text(lm, texts, ablated.hooks())
        assert (tb == ta).all()
        full = np.exp(na.sum() / ta.sum()) / np.exp(nb.sum() / tb.sum())
        rows = []
        for n in [s for s in SIZES if s <= len(nb)]:
            first = np.exp(na[:n].sum() / ta[:n].sum()) / np.exp(nb[:n].sum() / tb[:n].sum())
            draws = rng.integers(0, len(nb), size=(2000, n))
            boot = np.exp(na[draws].sum(1) / ta[draws].sum(1)) / np.exp(nb[draws].sum(1) / tb[draws].sum(1))
            rows.append({"n": n, "first_n_ratio": float(first), "first_n_off_by": float(first / full - 1),
                         "bootstrap_rel_sd": float(boot.std() / full), "tokens": int(tb[:n].sum())})
            print(f"{name:11s} n={n:4d} ratio(first n)={first:.4f} ({first / full - 1:+.2%} vs all {len(nb)}) "
                  f"bootstrap sd {boot.std() / full:.2%}  ({int(tb[:n].sum()):,} tokens)")
        report["sets"][name] = {"texts": len(nb), "ratio_all": float(full), "sizes": rows,
                                "seconds": time.perf_counter() - t}
        print(f"{name}: ratio on all {len(nb)} texts {full:.4f} (page default: first {DEFAULT_COMPARE_TEXTS})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
