"""Check that two ``evaluate --json`` results hold the same numbers, to a relative tolerance.

    python scripts/compare_results.py docs/headline/evaluate.json NEW.json [--rtol 1e-6]

Compares every perplexity and every probe metric of every condition present in the first file; prints the worst
relative difference and exits 1 if it exceeds the tolerance (or a number is missing).
"""

from __future__ import annotations

import argparse
import json
import sys


def numbers(result: dict) -> dict[str, float]:
    out = {}
    for cond, entry in result["conditions"].items():
        for texts, value in entry["perplexity"].items():
            out[f"{cond}/perplexity/{texts}"] = float(value)
        for probes, scores in entry["probes"].items():
            for metric, value in scores.items():
                out[f"{cond}/probes/{probes}/{metric}"] = float(value)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference")
    parser.add_argument("candidate")
    parser.add_argument("--rtol", type=float, default=1e-6)
    args = parser.parse_args()
    ref = numbers(json.loads(open(args.reference, encoding="utf-8").read()))
    new = numbers(json.loads(open(args.candidate, encoding="utf-8").read()))
    missing = sorted(set(ref) - set(new))
    worst, where = 0.0, ""
    for key, value in ref.items():
        if key in new:
            diff = abs(new[key] - value) / max(abs(value), 1e-12)
            if diff > worst:
                worst, where = diff, key
    print(f"{len(ref) - len(missing)} numbers compared; worst relative difference {worst:.2e} ({where or 'none'})")
    for key in missing:
        print(f"missing in {args.candidate}: {key}")
    return 0 if worst <= args.rtol and not missing else 1


if __name__ == "__main__":
    sys.exit(main())
