"""Which SAEs Neuronpedia hosts: this project's SAE references <-> Neuronpedia ids ``"<modelId>/<source>"``.

Both directions look first at the model presets' SAE families (:mod:`unlearn_core.models.presets`: exact reference,
hook site and layer), then at sae_lens' pretrained-SAE directory (read once per process, no download). Local SAE
folders (the bundled offline SAEs, anything trained with ``train-sae``) are never hosted.

The directory does not record where an SAE is hooked unless its release overrides ``hook_name``; for the other
releases a Neuronpedia source that names a residual-stream SAE (``12-gemmascope-res-16k``, ``12-res-matryoshka-dc``)
is placed at ``blocks.{L}.hook_resid_post``, as sae_lens' residual releases are (evaluation checks it against the
loaded SAE); attention, MLP and transcoder sources are not mapped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from unlearn_core.errors import InputError
from unlearn_core.models.presets import PRESETS, SaeFamily, presets_for_model_id
from unlearn_core.saes.neuronpedia.explanation import split_id

_RESIDUAL_SOURCE = re.compile(r"^(\d+)-(?:.*-)?res(?:[-_]|$)")


@dataclass(frozen=True)
class HostedSae:
    """An SAE this project can load, with where it sits, and its id on Neuronpedia."""

    ref: str
    """``"<sae_lens release>/<sae_id>"``, as a feature list's ``sae`` field."""
    hook_name: str
    layer: int
    neuronpedia_id: str


def neuronpedia_model_id(model_id: str) -> str:
    """Neuronpedia's id of a Hugging Face model (``"google/gemma-2-2b"`` -> ``"gemma-2-2b"``): from the presets'
    SAE families when one names it, else the part after the last slash."""
    for preset in PRESETS.values():
        if preset.model_id != model_id:
            continue
        for fam in preset.sae_families:
            if fam.neuronpedia_template:
                return fam.neuronpedia_template.split("/", 1)[0]
    return model_id.rsplit("/", 1)[-1]


def models_for_neuronpedia_model(np_model_id: str) -> list[str]:
    """The Hugging Face model ids of the presets that Neuronpedia calls ``np_model_id`` (sorted)."""
    return sorted({p.model_id for p in PRESETS.values() if neuronpedia_model_id(p.model_id) == np_model_id})


def neuronpedia_id_for_ref(ref: str) -> str | None:
    """The Neuronpedia id of an SAE reference, or None when Neuronpedia does not host it (local folders never are)."""
    from unlearn_core.saes.loading import release_neuronpedia_id, resolve_local_path  # lazy: imports torch

    for fam, layer in _family_layers():
        if fam.ref(layer) == ref and fam.neuronpedia_template is not None:
            return fam.neuronpedia(layer)
    if resolve_local_path(ref) is not None:
        return None
    release, sep, sae_id = ref.partition("/")
    if not sep or not sae_id:
        return None
    return release_neuronpedia_id(release, sae_id)


def hosted_sae(neuronpedia_id: str, model_id: str) -> HostedSae:
    """The SAE of ``model_id`` (a Hugging Face id) that Neuronpedia hosts as ``neuronpedia_id``.

    Raises :class:`InputError` saying why there is none: another model, a source no preset or sae_lens release
    names, or a hosted SAE whose hook site is not known without loading it.
    """
    np_model, source = split_id(neuronpedia_id)
    expected = neuronpedia_model_id(model_id)
    if np_model != expected:
        raise InputError(f"{neuronpedia_id} is an SAE of Neuronpedia model {np_model!r}, not of {model_id} ({expected})")
    for preset in presets_for_model_id(model_id):
        for fam in preset.sae_families:
            for layer in fam.layers:
                if fam.neuronpedia_template is not None and fam.neuronpedia(layer) == neuronpedia_id:
                    return HostedSae(fam.ref(layer), fam.hook_name(layer), layer, neuronpedia_id)
    from unlearn_core.saes.loading import pretrained_releases  # lazy: imports torch, then sae_lens once

    short = model_id.rsplit("/", 1)[-1]
    for release, lookup in pretrained_releases().items():
        if getattr(lookup, "model", None) not in (model_id, short):
            continue
        for sae_id, hosted_as in (getattr(lookup, "neuronpedia_id", None) or {}).items():
            if hosted_as != neuronpedia_id:
                continue
            ref = f"{release}/{sae_id}"
            hook_name = (getattr(lookup, "config_overrides", None) or {}).get("hook_name") or _residual_hook(source)
            layer = _layer(hook_name) if isinstance(hook_name, str) else None
            if layer is None:
                raise InputError(
                    f"{neuronpedia_id} is sae_lens' {ref}, whose hook site is not known without loading it; only "
                    "residual-stream SAEs are imported from Neuronpedia"
                )
            return HostedSae(ref, hook_name, layer, neuronpedia_id)
    raise InputError(
        f"no SAE known to this project (the presets of {model_id}, sae_lens' directory) is hosted on Neuronpedia "
        f"as {neuronpedia_id}"
    )


def _family_layers() -> Iterator[tuple[SaeFamily, int]]:
    for preset in PRESETS.values():
        for fam in preset.sae_families:
            for layer in fam.layers:
                yield fam, layer


def _residual_hook(source: str) -> str | None:
    match = _RESIDUAL_SOURCE.match(source)
    return f"blocks.{int(match.group(1))}.hook_resid_post" if match else None


def _layer(hook_name: str) -> int | None:
    match = re.match(r"^blocks\.(\d+)\.", hook_name)
    return int(match.group(1)) if match else None
