"""Check that two ``sweep.json`` files hold the same numbers, to a relative tolerance (timings and commands aside).

    python scripts/compare_sweeps.py SEQUENTIAL/sweep.json RAY/sweep.json [--rtol 1e-6]

Walks both files together: every number (baseline, points, best, Pareto front, controls, settings) must match to
``rtol`` (absolute 1e-12 for values near zero), every string and list shape exactly; ``seconds``, ``command`` and
per-point timing fields are skipped. Prints the worst relative difference; exits 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

SKIPPED = {"seconds", "command", "elapsed_s", "point_seconds", "workers"}


def walk(a: Any, b: Any, path: str, rtol: float, out: list[tuple[float, str]], problems: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key in SKIPPED:
                continue
            if key not in a or key not in b:
                problems.append(f"{path}/{key}: only in {'the first' if key in a else 'the second'} file")
                continue
            walk(a[key], b[key], f"{path}/{key}", rtol, out, problems)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            problems.append(f"{path}: {len(a)} vs {len(b)} entries")
            return
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            walk(x, y, f"{path}[{i}]", rtol, out, problems)
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if math.isnan(a) and math.isnan(b):
            return
        rel = abs(a - b) / max(abs(a), abs(b), 1e-300) if abs(a - b) > 1e-12 else 0.0
        out.append((rel, path))
        if rel > rtol:
            problems.append(f"{path}: {a!r} vs {b!r} (relative {rel:.2e})")
    elif a != b:
        problems.append(f"{path}: {a!r} vs {b!r}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("first")
    ap.add_argument("second")
    ap.add_argument("--rtol", type=float, default=1e-6)
    args = ap.parse_args()
    with open(args.first, encoding="utf-8") as fh:
        a = json.load(fh)
    with open(args.second, encoding="utf-8") as fh:
        b = json.load(fh)
    diffs: list[tuple[float, str]] = []
    problems: list[str] = []
    walk(a, b, "", args.rtol, diffs, problems)
    worst = max(diffs, default=(0.0, "(no numbers)"))
    print(f"{len(diffs)} numbers compared; worst relative difference {worst[0]:.2e} at {worst[1]}")
    for p in problems[:20]:
        print("MISMATCH", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
