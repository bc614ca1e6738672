"""Editing a feature list: what the app's Explore and Forget set pages do to the current list."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping

from unlearn_core.errors import FeatureListError, InputError
from unlearn_core.forget_set.schema import FeatureList, Latent, SaeEntry, now_iso


def new_feature_list(name: str, model: str, description: str = "") -> FeatureList:
    """An empty feature list for ``model`` (an HF model id), timestamped now."""
    stamp = now_iso()
    return FeatureList(name=name, description=description, model=model, saes=[], created=stamp, updated=stamp)


MAX_BULK_IDS = 100_000
"""Most latent ids :func:`parse_latent_ids` accepts at once."""
_ID_TOKEN = re.compile(r"^(\d+)(?:\s*-\s*(\d+))?$")


def check_model_matches(fl: FeatureList, model_id: str, source: str | None = None) -> None:
    """Refuse a list made for another model, naming both models."""
    if fl.model != model_id:
        raise FeatureListError(
            f"{source or fl.name!r} is a feature list for {fl.model}, but the current model is {model_id}; "
            "choose a model preset for that model first"
        )


def parse_latent_ids(text: str, width: int | None = None) -> list[int]:
    """Latent ids typed by a user: numbers and ranges separated by commas or spaces (``"12, 40-45 3000"``).

    Returns them de-duplicated in the order given; raises :class:`InputError` on anything else, a reversed or huge
    range, or (with ``width``) an id outside ``0..width-1``.
    """
    out: dict[int, None] = {}
    tokens = [t for t in re.split(r"[,;\s]+", re.sub(r"\s*-\s*", "-", text)) if t]
    if not tokens:
        raise InputError("enter latent ids, e.g. 12, 40-45")
    for tok in tokens:
        match = _ID_TOKEN.match(tok.strip())
        if match is None:
            raise InputError(f"{tok!r} is not a latent id or range (write e.g. 12 or 40-45)")
        lo = int(match.group(1))
        hi = int(match.group(2)) if match.group(2) is not None else lo
        if hi < lo:
            raise InputError(f"range {tok!r} runs backwards")
        if hi - lo + 1 + len(out) > MAX_BULK_IDS:
            raise InputError(f"at most {MAX_BULK_IDS:,} ids at once")
        for i in range(lo, hi + 1):
            out[i] = None
    ids = list(out)
    if width is not None:
        bad = [i for i in ids if i >= width]
        if bad:
            raise InputError(f"latent {bad[0]} is out of range: this SAE has latents 0..{width - 1}")
    return ids


def add_latents(
    fl: FeatureList,
    *,
    sae: str,
    hook_name: str,
    layer: int,
    neuronpedia: str | None,
    ids: Iterable[int],
    labels: Mapping[int, str | None] | None = None,
    notes: Mapping[int, str | None] | None = None,
    width: int | None = None,
) -> list[int]:
    """Add latents of one SAE to ``fl`` (creating its entry if needed); ids already there are left as they are.

    Returns the ids newly added. With ``width``, refuses (:class:`FeatureListError`) ids outside the SAE before
    changing anything.
    """
    ids = list(dict.fromkeys(int(i) for i in ids))
    if width is not None:
        bad = [i for i in ids if not 0 <= i < width]
        if bad:
            raise FeatureListError(f"latent {bad[0]} is out of range: {sae} has latents 0..{width - 1}")
    entry = next((e for e in fl.saes if e.sae == sae and e.hook_name == hook_name), None)
    if entry is None:
        entry = SaeEntry(sae=sae, hook_name=hook_name, layer=layer, neuronpedia=neuronpedia, latents=[])
        fl.saes.append(entry)
        fl.saes.sort(key=lambda e: (e.layer, e.hook_name, e.sae))
    have = set(entry.latent_ids)
    added = [i for i in ids if i not in have]
    for i in added:
        entry.latents.append(Latent(id=i, label=(labels or {}).get(i), note=(notes or {}).get(i)))
    return added


def merge_feature_list(fl: FeatureList, other: FeatureList) -> int:
    """Add ``other``'s latents to ``fl`` (a suggestion into the list being curated); returns how many were new.

    Latents already in ``fl`` keep their label and note but take ``other``'s ``stats``; ``other``'s ``selection``
    replaces ``fl``'s, and its ``intervention`` is adopted only when ``fl`` recommends none.
    """
    check_model_matches(other, fl.model, f"list {fl.name!r}")
    total = 0
    for src in other.saes:
        ids = [lat.id for lat in src.latents]
        added = add_latents(fl, sae=src.sae, hook_name=src.hook_name, layer=src.layer, neuronpedia=src.neuronpedia,
                            ids=ids, labels={lat.id: lat.label for lat in src.latents},
                            notes={lat.id: lat.note for lat in src.latents})
        total += len(added)
        entry = next(e for e in fl.saes if e.sae == src.sae and e.hook_name == src.hook_name)
        stats = {lat.id: lat.stats for lat in src.latents if lat.stats is not None}
        for lat in entry.latents:
            if lat.id in stats:
                lat.stats = stats[lat.id]
    if other.selection is not None:
        fl.selection = other.selection
    if fl.intervention is None:
        fl.intervention = other.intervention
    return total


def remove_latents(fl: FeatureList, *, sae: str, ids: Iterable[int], hook_name: str | None = None) -> list[int]:
    """Remove latents of one SAE from ``fl``; an entry left with no latents is dropped. Returns the ids removed."""
    drop = set(int(i) for i in ids)
    removed: list[int] = []
    for entry in fl.saes:
        if entry.sae != sae or (hook_name is not None and entry.hook_name != hook_name):
            continue
        removed += [lat.id for lat in entry.latents if lat.id in drop]
        entry.latents = [lat for lat in entry.latents if lat.id not in drop]
    fl.saes = [e for e in fl.saes if e.latents]
    return removed


def content_signature(fl: FeatureList) -> str:
    """The list's content without its ``updated`` stamp: equal signatures mean nothing was edited."""
    data = fl.to_dict()
    data.pop("updated", None)
    return json.dumps(data, sort_keys=True, ensure_ascii=False)
