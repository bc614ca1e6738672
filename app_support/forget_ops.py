"""Edits of the session's forget set that several pages share (ticking latents in Explore, bulk add, remove), and
the file name Save as writes to."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from pathlib import Path

from unlearn_core.errors import InputError
from unlearn_core.forget_set import add_latents, check_model_matches, remove_latents
from unlearn_core.models.presets import SaeFamily

from . import state


def sae_identity(family: SaeFamily, layer: int) -> dict[str, object]:
    """How a layer's SAE is recorded in a feature list (reference, hook, layer, Neuronpedia id)."""
    return {"sae": family.ref(layer), "hook_name": family.hook_name(layer), "layer": layer,
            "neuronpedia": family.neuronpedia(layer)}


def chosen_ids(family: SaeFamily, layer: int) -> set[int]:
    fl = state.forget_set()
    ref, hook = family.ref(layer), family.hook_name(layer)
    return {lat.id for e in fl.saes if e.sae == ref and e.hook_name == hook for lat in e.latents}


def apply_ticks(family: SaeFamily, layer: int, model_id: str, add: Iterable[int], remove: Iterable[int],
                notes: Mapping[int, str] | None = None) -> tuple[list[int], list[int]]:
    """Add and remove latents of one layer's SAE; refuses (FeatureListError) when the list is for another model."""
    fl = state.forget_set()
    check_model_matches(fl, model_id, "the current forget set")
    ident = sae_identity(family, layer)
    added = add_latents(fl, **ident, ids=add, notes=notes, width=family.width)  # type: ignore[arg-type]
    removed = remove_latents(fl, sae=str(ident["sae"]), hook_name=str(ident["hook_name"]), ids=remove)
    if added or removed:
        state.bump_version()
    return added, removed


MAX_FILE_NAME_BYTES = 200


def save_as_target(directory: Path, name: str) -> Path:
    """The file in ``directory`` that Save as writes for a typed ``name`` (``.json`` added unless given).

    A name is one file name, never a path: :class:`InputError` with a clear message for an empty name, control
    characters (NUL included), ``/`` or ``\\``, a leading ``.`` (hidden files, ``.`` and ``..``) or one too long for
    the file system.
    """
    name = name.strip()
    if not name:
        raise InputError("give a file name")
    if any(unicodedata.category(c).startswith("C") for c in name):
        raise InputError("a file name cannot contain control characters (such as NUL or a line break)")
    if "/" in name or "\\" in name:
        raise InputError(f"a file name cannot contain / or \\: lists are saved in {directory}, under a plain name")
    if name.startswith("."):
        raise InputError("a file name cannot start with '.' (that makes a hidden file, or names a folder)")
    file_name = name if name.lower().endswith(".json") else f"{name}.json"
    if len(file_name.encode("utf-8")) > MAX_FILE_NAME_BYTES:
        raise InputError(f"that file name is too long (at most {MAX_FILE_NAME_BYTES} bytes)")
    return directory / file_name
