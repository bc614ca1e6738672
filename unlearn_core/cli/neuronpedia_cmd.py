"""``np-export`` / ``np-import``: a feature list to a Neuronpedia list and back (online; needs an API key).

The key comes from ``$NEURONPEDIA_API_KEY`` (never a flag, so it stays out of shell history and process lists);
the site from ``$NEURONPEDIA_API_URL`` (default https://www.neuronpedia.org).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from unlearn_core.forget_set import load_feature_list, save_feature_list
from unlearn_core.forget_set.neuronpedia import export_feature_list, import_neuronpedia_list
from unlearn_core.models.presets import known_model_ids

_KEY_NOTE = "The API key is read from $NEURONPEDIA_API_KEY, the site from $NEURONPEDIA_API_URL."


def add_np_export_parser(sub: Any) -> None:
    """The ``np-export`` subcommand's flags."""
    ex = sub.add_parser("np-export", help="create a Neuronpedia list from a feature list (online)",
                        description=f"Create a list on Neuronpedia holding a feature list's latents. {_KEY_NOTE}")
    ex.add_argument("feature_list", metavar="LIST.json", help="feature-list JSON file")
    ex.add_argument("--name", help="the Neuronpedia list's name (default: the feature list's)")
    ex.add_argument("--description", help="its description (default: the feature list's)")
    ex.add_argument("--skip-unhosted", action="store_true",
                    help="leave out SAEs Neuronpedia does not host (default: refuse the export)")


def run_np_export(args: argparse.Namespace) -> int:
    fl = load_feature_list(args.feature_list)

    def progress(done: int, total: int) -> None:
        print(f"added {done}/{total} features", file=sys.stderr, flush=True)

    exported = export_feature_list(fl, name=args.name, description=args.description, skip_unhosted=args.skip_unhosted,
                                   progress=progress)
    for ref in exported.skipped_saes:
        print(f"skipped (not on Neuronpedia): {ref}", file=sys.stderr)
    print(f"created Neuronpedia list {exported.name!r} with {exported.features} features", file=sys.stderr)
    print(exported.url)
    return 0


def add_np_import_parser(sub: Any) -> None:
    """The ``np-import`` subcommand's flags."""
    im = sub.add_parser("np-import", help="save a Neuronpedia list as a feature list (online)",
                        description=f"Fetch a Neuronpedia list and save it as a feature list. {_KEY_NOTE}")
    im.add_argument("list_ref", metavar="LIST_ID_OR_URL", help="a list id or https://www.neuronpedia.org/list/<id>")
    im.add_argument("--out", required=True, help="feature-list file to write, e.g. feature_lists/NAME.json")
    im.add_argument("--model", choices=sorted(known_model_ids()),
                    help="the model the list is for (default: the one most of its features belong to)")
    im.add_argument("--force", action="store_true", help="replace --out if it exists")


def run_np_import(args: argparse.Namespace) -> int:
    imported = import_neuronpedia_list(args.list_ref, model=args.model)
    for skipped in imported.skipped:
        print(f"skipped {skipped.text()}", file=sys.stderr)
    path = save_feature_list(imported.feature_list, args.out, overwrite=args.force)
    fl = imported.feature_list
    print(f"wrote {path}: {fl.total_latents} latents in {len(fl.saes)} SAE{'s' if len(fl.saes) != 1 else ''} "
          f"for {fl.model}" + (f" ({len(imported.skipped)} features skipped)" if imported.skipped else ""))
    return 0
