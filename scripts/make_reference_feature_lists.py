"""Regenerate the reference-study feature lists in ``feature_lists/``.

Reads the reference study's latent file (default ``../shared/seed/reference_feature_lists.json``, relative to the
repository root) and writes ``feature_lists/reference_gemma-2-2b_layer{0,12,25}.json`` and
``feature_lists/reference_gemma-2-2b_all_layers.json``. The output is byte-identical on every run (fixed
timestamps). Existing files are only replaced with ``--force``.

    python scripts/make_reference_feature_lists.py [SEED_JSON] [--out DIR] [--force]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SEED = REPO_ROOT.parent / "shared" / "seed" / "reference_feature_lists.json"
DEFAULT_OUT = REPO_ROOT / "feature_lists"


def output_name(layers: list[int], n_lists: int, index: int) -> str:
    """File name for the ``index``-th list returned by ``from_reference_study`` (the last one has all layers)."""
    if index == n_lists - 1 and len(layers) > 1:
        return "reference_gemma-2-2b_all_layers.json"
    return f"reference_gemma-2-2b_layer{layers[0]}.json"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("seed", nargs="?", type=Path, default=DEFAULT_SEED, help=f"default: {DEFAULT_SEED}")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default: {DEFAULT_OUT})")
    parser.add_argument("--force", action="store_true", help="replace existing files")
    args = parser.parse_args(argv)

    from unlearn_core.errors import UnlearnError
    from unlearn_core.forget_set import from_reference_study, save_feature_list

    try:
        lists = from_reference_study(args.seed)
        for i, fl in enumerate(lists):
            path = args.out / output_name([e.layer for e in fl.saes], len(lists), i)
            save_feature_list(fl, path, overwrite=args.force, touch=False)
            print(f"wrote {path} ({fl.total_latents} latents)")
    except UnlearnError as exc:
        hint = " (pass --force to replace existing files)" if "already exists" in str(exc) else ""
        print(f"error: {exc}{hint}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
