"""A feature list to and from a Neuronpedia list (online only: the bundled offline SAEs are not on Neuronpedia).

:func:`export_feature_list` creates a list on Neuronpedia holding every latent of the feature list, each with its
note (else its label) as the feature's description; :func:`import_neuronpedia_list` fetches a list and maps its
features back to SAEs this project can load (:func:`unlearn_core.saes.neuronpedia.hosted.hosted_sae`: the presets,
then sae_lens' directory). Features it cannot place (another model, an unknown source, an index that is not a
number) are reported in :attr:`ImportedList.skipped`, never dropped silently; an index outside the SAE it maps to
refuses the import (:class:`FeatureListError`), since then the mapping itself is in doubt. Both need the user's
Neuronpedia API key (see :mod:`unlearn_core.saes.neuronpedia.lists` for the site, the key and the errors).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from unlearn_core.errors import FeatureListError, InputError
from unlearn_core.forget_set.schema import FeatureList, Latent, SaeEntry, now_iso
from unlearn_core.forget_set.widths import sae_width
from unlearn_core.models import presets
from unlearn_core.saes.neuronpedia.hosted import (
    HostedSae,
    hosted_sae,
    models_for_neuronpedia_model,
    neuronpedia_id_for_ref,
)
from unlearn_core.saes.neuronpedia.lists import (
    MAX_FEATURE_DESCRIPTION,
    ListFeature,
    NeuronpediaList,
    create_list,
    fetch_list,
    list_site,
)


@dataclass(frozen=True)
class ExportedList:
    """A list created on Neuronpedia from a feature list."""

    list_id: str
    url: str
    name: str
    features: int
    """How many features the list got."""
    skipped_saes: tuple[str, ...] = ()
    """SAE references left out because Neuronpedia does not host them (only with ``skip_unhosted=True``)."""


@dataclass(frozen=True)
class SkippedFeature:
    """A feature of a Neuronpedia list that could not be imported, and why."""

    model_id: str
    source: str
    index: int | None
    reason: str

    def text(self) -> str:
        where = f"{self.model_id}/{self.source}" + (f" #{self.index}" if self.index is not None else "")
        return f"{where}: {self.reason}"


@dataclass(frozen=True)
class ImportedList:
    """A Neuronpedia list as a feature list, with what could not be imported."""

    feature_list: FeatureList
    list_id: str
    url: str
    skipped: tuple[SkippedFeature, ...] = ()


def hosted_ids(fl: FeatureList) -> dict[str, str | None]:
    """Each SAE reference of ``fl`` -> its Neuronpedia id (the entry's ``neuronpedia``, else looked up), or None
    when Neuronpedia does not host it."""
    return {entry.sae: entry.neuronpedia or neuronpedia_id_for_ref(entry.sae) for entry in fl.saes}


def list_features(fl: FeatureList, *, skip_unhosted: bool = False) -> tuple[list[ListFeature], tuple[str, ...]]:
    """The Neuronpedia features of ``fl``'s latents and the SAE references left out (not hosted).

    Raises :class:`InputError` naming the unhosted SAEs unless ``skip_unhosted``, so an exported list is never
    silently incomplete."""
    ids = hosted_ids(fl)
    unhosted = tuple(ref for ref, found in ids.items() if found is None)
    if unhosted and not skip_unhosted:
        raise InputError(
            f"Neuronpedia does not host {len(unhosted)} SAE{'s' if len(unhosted) > 1 else ''} of this list "
            f"({', '.join(unhosted[:3])}{' ...' if len(unhosted) > 3 else ''}); the bundled offline SAEs are only "
            "here. Remove those latents, or export only the hosted ones"
        )
    features: list[ListFeature] = []
    for entry in fl.saes:
        found = ids[entry.sae]
        if found is None:
            continue
        model_id, source = found.split("/", 1)
        for lat in entry.latents:
            text = lat.note or lat.label or ""
            features.append(ListFeature(model_id, source, lat.id, " ".join(text.split())[:MAX_FEATURE_DESCRIPTION]))
    return features, unhosted


def export_feature_list(
    fl: FeatureList,
    *,
    name: str | None = None,
    description: str | None = None,
    skip_unhosted: bool = False,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float = 20.0,
    retries: int = 2,
    backoff: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
) -> ExportedList:
    """Create a Neuronpedia list holding ``fl``'s latents; returns its id and URL.

    ``name``/``description`` default to the feature list's. SAEs Neuronpedia does not host refuse the export
    (:class:`InputError`) unless ``skip_unhosted``. Raises :class:`InputError` without an API key or latents, and
    :class:`~unlearn_core.errors.RemoteServiceError` when Neuronpedia refuses, fails or cannot be reached.
    """
    site = list_site(base_url, api_key, what="exporting a Neuronpedia list", timeout=timeout, retries=retries,
                     backoff=backoff)
    features, unhosted = list_features(fl, skip_unhosted=skip_unhosted)
    text = description if description is not None else (fl.description or f"A forget set for {fl.model}")
    created = create_list(name or fl.name, text, features, site, progress=progress)
    return ExportedList(created.id, created.url, created.name, len(created.features), unhosted)


def import_neuronpedia_list(
    list_ref: str,
    *,
    model: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float = 20.0,
    retries: int = 2,
    backoff: float = 1.0,
) -> ImportedList:
    """Fetch a Neuronpedia list (id or URL) as a feature list for ``model`` (a Hugging Face id; default: the model
    most of its features belong to). See :func:`feature_list_from_neuronpedia` for the mapping; raises
    :class:`InputError` (no key, bad id), :class:`~unlearn_core.errors.RemoteServiceError` (Neuronpedia) or
    :class:`FeatureListError` (nothing importable, an index out of range)."""
    site = list_site(base_url, api_key, what="importing a Neuronpedia list", timeout=timeout, retries=retries,
                     backoff=backoff)
    return feature_list_from_neuronpedia(fetch_list(list_ref, site), model=model)


def feature_list_from_neuronpedia(np_list: NeuronpediaList, model: str | None = None) -> ImportedList:
    """Map a fetched list's features to this project's SAEs (no network beyond sae_lens' local directory).

    Features of another model or of a source no preset or sae_lens release names are skipped and reported; each
    feature's description becomes its latent's note. Raises :class:`FeatureListError` when nothing is importable
    or an index is outside the SAE it maps to.
    """
    model_id = model if model is not None else _main_model(np_list)
    if model_id not in presets.known_model_ids():
        raise FeatureListError(f"{model_id} is not a model this project loads ({', '.join(sorted(presets.known_model_ids()))})")
    skipped = [SkippedFeature("?", "?", None, reason) for reason in np_list.invalid]
    entries: dict[str, SaeEntry] = {}
    out_of_range: list[str] = []
    places: dict[str, HostedSae | str] = {}
    for feature in np_list.features:
        np_id = feature.neuronpedia_id
        if np_id not in places:
            try:
                places[np_id] = hosted_sae(np_id, model_id)
            except InputError as exc:
                places[np_id] = str(exc)
        place = places[np_id]
        if isinstance(place, str):
            skipped.append(SkippedFeature(feature.model_id, feature.source, feature.index, place))
            continue
        width = sae_width(place.ref)
        if width is not None and feature.index >= width:
            out_of_range.append(f"{np_id} #{feature.index} (the SAE has latents 0..{width - 1})")
            continue
        entry = entries.setdefault(place.ref, SaeEntry(place.ref, place.hook_name, place.layer, np_id))
        if feature.index not in entry.latent_ids:
            entry.latents.append(Latent(id=feature.index, note=feature.description or None))
    if out_of_range:
        raise FeatureListError(
            f"Neuronpedia list {np_list.url}: {len(out_of_range)} feature{'s' if len(out_of_range) > 1 else ''} "
            f"outside the SAE they map to: {', '.join(out_of_range[:5])}{' ...' if len(out_of_range) > 5 else ''}"
        )
    if not entries:
        reasons = "; ".join(dict.fromkeys(s.reason for s in skipped)) or "the list is empty"
        raise FeatureListError(f"Neuronpedia list {np_list.url} has no feature this project can use for {model_id}: "
                               f"{reasons[:600]}")
    stamp = now_iso()
    described = f"{np_list.description.strip()} " if np_list.description.strip() else ""
    fl = FeatureList(
        name=np_list.name,
        description=f"{described}(Imported from Neuronpedia list {np_list.url}.)",
        model=model_id,
        saes=sorted(entries.values(), key=lambda e: (e.layer, e.hook_name, e.sae)),
        created=stamp,
        updated=stamp,
    )
    fl.validate(source=f"Neuronpedia list {np_list.url}")
    return ImportedList(fl, np_list.id, np_list.url, tuple(skipped))


def _main_model(np_list: NeuronpediaList) -> str:
    """The loadable model most of the list's features belong to."""
    counts: Counter[str] = Counter()
    for feature in np_list.features:
        for model_id in models_for_neuronpedia_model(feature.model_id):
            counts[model_id] += 1
    if not counts:
        seen = sorted({f.model_id for f in np_list.features})
        raise FeatureListError(
            f"Neuronpedia list {np_list.url} has no feature of a model this project loads"
            + (f" (it has {', '.join(seen[:5])})" if seen else " (it is empty)")
        )
    return counts.most_common(1)[0][0]
