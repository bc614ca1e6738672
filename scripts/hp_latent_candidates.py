"""Candidate Harry Potter latents of the bundled SAEs, for choosing the example feature list by hand.

Reads each bundled SAE's dashboards, ranks latents by how much more often they fire on the Harry Potter fan-wiki
part of the training corpus than on the rest (books, WikiText-2 train), and prints the top ones with their top
contexts, promoted tokens and automatic label. The example list
``feature_lists/example_gemma-3-270m-offline_harry-potter.json`` was picked by reading this output.

    python scripts/hp_latent_candidates.py --top 40 > candidates.txt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--min-hp-frequency", type=float, default=0.002, help="ignore latents rarer than this on HP text")
    parser.add_argument("--source", default="hp-fanwiki", help="the corpus source to contrast with the others")
    args = parser.parse_args(argv)
    import numpy as np

    from unlearn_core.explain.dashboards import DASHBOARD_FILE, Dashboards
    from unlearn_core.models.presets import get_preset

    family = get_preset("gemma-3-270m-offline").family()
    for layer in family.layers:
        board = Dashboards.load(REPO_ROOT / family.ref(layer) / DASHBOARD_FILE)
        names = board.meta.get("sources", [])
        if board.source_frequency is None or args.source not in names:
            print(f"layer {layer}: dashboards have no per-source frequencies", file=sys.stderr)
            return 1
        j = names.index(args.source)
        on = board.source_frequency[:, j]
        off = np.delete(board.source_frequency, j, axis=1).mean(axis=1)
        ratio = np.where(on >= args.min_hp_frequency, (on + 1e-5) / (off + 1e-5), 0.0)
        print(f"\n=== layer {layer} ({board.meta['hook_name']}) ===")
        for i in np.argsort(-ratio)[: args.top]:
            d = board.latent(int(i))
            contexts = " | ".join(
                "".join(t if k != c.focus else f"[[{t}]]" for k, t in enumerate(c.tokens)).replace("\n", " ")
                for c in d.contexts[:3]
            )
            promoted = ", ".join(t.strip() for t, _ in d.promoted[:6])
            print(f"{i:5d} {args.source} {on[i]:.4f} others {off[i]:.5f} x{ratio[i]:.0f}  {d.auto_label}\n"
                  f"      promotes: {promoted}\n      {contexts[:360]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
