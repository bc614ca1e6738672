"""Does the dictionary limit forgetting? How much of the model's first-order use of each hooked residual stream for
answering Harry Potter questions runs through SAE latents, and how much through the SAE's error term, which no latent
edit can touch. DEV splits only (attribution refuses test splits).

    python scripts/knowledge_limits.py [--json OUT.json]

For every bundled SAE (layers 5/9/12/15, spliced in with the error term kept, as `select --method attribution`
does) and the summed log-likelihood L of the correct answers of a knowledge set, the activation x at the hook splits
as x = (decode(f) - b_dec) + b_dec + e, and so does x . dL/dx (the first-order change of L if the activation were
removed) into: all latents' attributions summed, the decoder bias's, and the error term's
(``AttributionTotals.error_attribution``). Reported per item, for the HP sets (hp-quiz:dev, hp-cloze:dev) and the
retain sets (general-quiz:dev, adjacent-quiz:dev, general-cloze:dev), plus the part of the latents' attribution held
by the default forget set's latents (`select`'s ratio rule, 20 per layer) and by the 20 latents with the largest HP
attribution (an upper bound for any 20-latent selection at first order), on both item groups: what removing the
latents that carry the HP answers would cost the retain answers, per item.
"""

from __future__ import annotations

import argparse
import json
import time

from unlearn_core.models.loading import load_model
from unlearn_core.models.presets import DEFAULT_PRESET, get_preset
from unlearn_core.selection.attribution import FORGET_ITEMS, RETAIN_ITEMS, latent_attributions, load_knowledge_items
from unlearn_core.selection.rules import ranked_candidates
from unlearn_core.selection.suggest import SelectConfig, corpus_stats, default_sae_refs, load_saes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_PRESET)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--json", help="write the numbers here")
    args = ap.parse_args()
    t0 = time.perf_counter()
    lm = load_model(get_preset(args.model), device="cpu", dtype="float32")
    saes = load_saes(default_sae_refs(lm.preset), lm.device, lm.dtype)
    config = SelectConfig()
    forget_stats, retain_stats = corpus_stats(lm, saes, config)
    chosen = ranked_candidates(forget_stats, retain_stats, args.top, "ratio", config.retain_threshold,
                               config.min_forget_freq, [s.ref for s in saes])
    out: dict = {"top": args.top, "layers": {}}
    totals = {group: latent_attributions(lm, saes, [load_knowledge_items(lm, name) for name in names])
              for group, names in (("hp", FORGET_ITEMS), ("retain", RETAIN_ITEMS))}
    for sae in saes:
        ids = [c.id for c in chosen[sae.ref]]
        best_hp = totals["hp"][sae.ref].attribution.topk(args.top).indices
        for group, by_ref in totals.items():
            t = by_ref[sae.ref]
            n = max(t.n_items, 1)
            attr = t.attribution
            row = {
                "latents": float(attr.sum()) / n,
                "latents_abs": float(attr.abs().sum()) / n,
                "bias": t.bias_attribution / n,
                "error": t.error_attribution / n,
                "default_forget_set": float(attr[ids].sum()) / n if ids else 0.0,
                "best_hp_latents": float(attr[best_hp].sum()) / n,
            }
            row["total"] = row["latents"] + row["bias"] + row["error"]
            row["error_share_abs"] = abs(row["error"]) / max(abs(row["error"]) + row["latents_abs"], 1e-12)
            out["layers"].setdefault(sae.ref, {})[group] = row
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"per item, first-order change of the answers' log-likelihood if each part of the activation were removed "
          f"(dev splits; HP = {', '.join(FORGET_ITEMS)})")
    print(f"{'SAE':42s} {'set':7s} {'latents':>9s} {'|latents|':>10s} {'b_dec':>8s} {'error':>8s} {'error share':>12s} "
          f"{'default set':>12s} {'HP-best ' + str(args.top):>11s}")
    for ref, groups in out["layers"].items():
        for group, r in groups.items():
            print(f"{ref:42s} {group:7s} {r['latents']:9.3f} {r['latents_abs']:10.3f} {r['bias']:8.3f} {r['error']:8.3f} "
                  f"{r['error_share_abs']:12.1%} {r['default_forget_set']:12.3f} {r['best_hp_latents']:11.3f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
