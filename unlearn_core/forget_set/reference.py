"""The reference study's latent file (``reference_feature_lists.json``, the seed article's) as feature lists."""

from __future__ import annotations

import os
from pathlib import Path

from unlearn_core.errors import FeatureListError
from unlearn_core.forget_set.io import read_json_file
from unlearn_core.forget_set.schema import FeatureList, Latent, SaeEntry

REFERENCE_TIMESTAMP = "2025-01-01T00:00:00+00:00"
"""Fixed ``created``/``updated`` of the reference lists, so regenerating them is byte-identical."""


def _reference_description(layers: list[int], counts: dict[int, int], origin: str, study_desc: str) -> str:
    layer_text = ", ".join(f"layer {lay} ({counts[lay]} latents)" for lay in layers)
    site = f"blocks.{layers[0]}" if len(layers) == 1 else "blocks.{L}"
    return (
        f"Reference study (the seed article), {layer_text}. Study notes: {study_desc.strip()} "
        f"Origin: {origin}. "
        "Labels are empty because the study's labels were placeholders. "
        f"The study hooked {site}.hook_resid_pre and replaced the activation with the SAE reconstruction; "
        f"this list records the SAEs' trained site {site}.hook_resid_post. "
        "To reproduce the study exactly, use --mode replace --hook-site resid_pre."
    )


def from_reference_study(path: str | os.PathLike[str]) -> list[FeatureList]:
    """Convert the reference study's latent file (``reference_feature_lists.json``) into feature lists.

    Returns one list per layer (sorted: 0, 12, 25) and then one list with all layers together. Entries use the
    Gemma Scope SAEs at their trained hook site ``blocks.{L}.hook_resid_post``; timestamps are fixed
    (:data:`REFERENCE_TIMESTAMP`) so the output is reproducible. Raises :class:`FeatureListError` if the file does
    not have the expected shape.
    """
    p = Path(path)
    data = read_json_file(p, what="reference study")
    try:
        model = data["model"]
        release = data["sae_release"]
        sae_ids = {int(k): v for k, v in data["sae_ids"].items()}
        np_model = data["neuronpedia"]["modelId"]
        np_sources = {int(k): v for k, v in data["neuronpedia"]["sources"].items()}
        latents = {int(k): list(v) for k, v in data["latents"].items()}
        origin = str(data.get("origin", "the reference study"))
        study_desc = str(data.get("description", ""))
        counts_claimed = {int(k): v for k, v in data.get("counts", {}).items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise FeatureListError(f"{path}: not a reference-study latent file ({type(exc).__name__}: {exc})") from None

    layers = sorted(latents)
    counts = {lay: len(latents[lay]) for lay in layers}
    for lay, claimed in counts_claimed.items():
        if counts.get(lay) != claimed:
            raise FeatureListError(f"{path}: layer {lay} lists {counts.get(lay)} latents but counts says {claimed}")

    def entry(lay: int) -> SaeEntry:
        try:
            sae_ref = f"{release}/{sae_ids[lay]}"
            neuronpedia = f"{np_model}/{np_sources[lay]}" if lay in np_sources else None
        except KeyError:
            raise FeatureListError(f"{path}: no sae_id for layer {lay}") from None
        return SaeEntry(
            sae=sae_ref,
            hook_name=f"blocks.{lay}.hook_resid_post",
            layer=lay,
            neuronpedia=neuronpedia,
            latents=[Latent(id=i) for i in latents[lay]],
        )

    def make(lays: list[int], name: str) -> FeatureList:
        fl = FeatureList(
            name=name,
            description=_reference_description(lays, counts, origin, study_desc),
            model=model,
            saes=[entry(lay) for lay in lays],
            created=REFERENCE_TIMESTAMP,
            updated=REFERENCE_TIMESTAMP,
        )
        fl.validate(source=str(path))
        return fl

    result = [make([lay], f"Reference study - Gemma 2 2B layer {lay} ({counts[lay]} latents)") for lay in layers]
    total = sum(counts.values())
    result.append(make(layers, f"Reference study - Gemma 2 2B layers {', '.join(map(str, layers))} ({total} latents)"))
    return result
