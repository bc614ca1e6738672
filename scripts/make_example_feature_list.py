"""Write ``feature_lists/example_gemma-3-270m-offline_harry-potter.json``: Harry Potter latents of the bundled SAEs.

The latents were chosen by hand, reading the dashboards of the candidates printed by
``python scripts/hp_latent_candidates.py`` (latents that fire far more often on the Harry Potter fan-wiki part of
the training corpus than on books and WikiText-2); each label says what its top contexts show. Existing files are
only replaced with ``--force``.

    python scripts/make_example_feature_list.py [--force]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT = REPO_ROOT / "feature_lists" / "example_gemma-3-270m-offline_harry-potter.json"
TIMESTAMP = "2026-11-26T00:00:00+00:00"

# layer -> [(latent id, label, note)]; picked by hand from the dashboards.
PICKS: dict[int, list[tuple[int, str, str | None]]] = {
    5: [
        (2211, "Dumbledore (the 'umbled' piece)", None),
        (4084, "Harry (as a name in HP prose)", None),
        (861, "Harry", None),
        (2795, "Voldemort (the 'emort' piece)", None),
        (1893, "Voldemort (the 'Vold' piece, after 'Lord')", None),
        (571, "Albus (the 'bus' piece)", None),
        (416, "Ron", None),
        (181, "Draco", None),
        (3507, "Scorpius (the 'pi' piece)", None),
        (2444, "Hogwarts (at/during time at Hogwarts)", None),
        (3904, "Weasley (the 'asley' piece)", None),
        (1152, "Hermione", None),
        (1146, "Snape (the 'Sna' piece, after Severus)", None),
        (3152, "Death Eaters", None),
        (977, "Hagrid", None),
        (2941, "Grindelwald", None),
    ],
    9: [
        (4076, "Voldemort (the 'emort' piece)", None),
        (1474, "Dumbledore (the 'umbled' piece)", None),
        (50, "Harry (as subject or object of HP events)", None),
        (3917, "Harry (someone telling or explaining to Harry)", None),
        (1337, "Weasley family names", None),
        (766, "Voldemort (sentence subject or possessive)", None),
        (765, "Dumbledore's Army / Dumbledore", None),
        (1191, "Malfoy (after Draco)", None),
        (3554, "Potter (after Harry)", None),
        (4020, "Hogwarts (Hogwarts Express, Hogwarts Library)", None),
        (3591, "Draco", None),
        (3204, "Hermione", None),
        (3723, "Minister for Magic", None),
        (1940, "dark wizards: Grindelwald, Gellert, Snape", None),
        (3364, "Voldemort (his plans and relations)", None),
    ],
    12: [
        (3513, "Tom Riddle and other Hogwarts students' first names", None),
        (1536, "Voldemort", None),
        (150, "Dumbledore (the 'D' piece, sentence start)", None),
        (736, "Dumbledore (the 'umbled' piece)", None),
        (3224, "Harry Potter as a franchise title (games, books, films)", None),
        (3266, "classmates / students / friends in HP biographies", None),
        (1671, "Scorpius", None),
        (484, "names in HP family-tree lists", None),
    ],
    15: [
        (3846, "Dumbledore (the 'umbled' piece)", None),
        (2275, "Salazar Slytherin", None),
        (3798, "Voldemort (after 'Lord')", None),
        (3920, "Albus Dumbledore (the 'D' after Albus)", None),
        (3597, "Hermione Granger in lists of the trio", None),
        (2961, "Hogwarts (Express, Quidditch)", None),
        (2594, "Dumbledore and Grindelwald's relationship", "promotes 'Grind' and 'Gell'"),
        (4057, "Hermione Granger", None),
        (3478, "Malfoy family and Albus-Scorpius context", "promotes 'Draco' and 'Scor'"),
    ],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="replace an existing file")
    args = parser.parse_args(argv)
    from unlearn_core.errors import UnlearnError
    from unlearn_core.forget_set import FeatureList, Latent, SaeEntry, save_feature_list
    from unlearn_core.models.presets import get_preset

    family = get_preset("gemma-3-270m-offline").family()
    entries = [
        SaeEntry(
            sae=family.ref(layer),
            hook_name=family.hook_name(layer),
            layer=layer,
            neuronpedia=None,
            latents=[Latent(id=i, label=label, note=note) for i, label, note in picks],
        )
        for layer, picks in sorted(PICKS.items())
    ]
    fl = FeatureList(
        name="Example - Harry Potter latents of the bundled Gemma 3 270M SAEs",
        description=(
            "Harry Potter latents of this project's offline SAEs (saes/gemma-3-270m), chosen by hand from their "
            "dashboards among the latents that fire far more often on Harry Potter fan-wiki text than on books and "
            "WikiText-2 (scripts/hp_latent_candidates.py). Labels are ours, written from the top contexts; they are "
            "a starting point to evaluate, not a validated forget set."
        ),
        model="google/gemma-3-270m",
        saes=entries,
        created=TIMESTAMP,
        updated=TIMESTAMP,
    )
    try:
        save_feature_list(fl, OUT, overwrite=args.force, touch=False)
    except UnlearnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {OUT} ({fl.total_latents} latents)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
