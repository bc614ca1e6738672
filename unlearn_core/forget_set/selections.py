"""From a feature list to checked latent selections: the one path every evaluation takes (CLI, app, sweep).

:func:`load_selections` loads each SAE a list names and checks the list against it (hook site, latent range);
:func:`check_selections_fit_model` checks the SAEs against the loaded model (site exists, width, not a
transcoder); :func:`preset_for_feature_list` picks the model preset a list runs with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from unlearn_core.ablation.interventions import Intervention, LatentSelection, hook_name_for
from unlearn_core.errors import FeatureListError
from unlearn_core.forget_set.schema import FeatureList, SaeEntry
from unlearn_core.forget_set.widths import check_latents_fit
from unlearn_core.models.loading import LoadedModel
from unlearn_core.models.presets import ModelPreset, get_preset, presets_for_model_id
from unlearn_core.saes.loading import LoadedSae, load_sae

StatusFn = Callable[[str], None]


def preset_for_feature_list(fl: FeatureList, preset_name: str | None = None) -> ModelPreset:
    """The preset to run a feature list with: the named one (which must load the list's model) or the first fit."""
    if preset_name is not None:
        preset = get_preset(preset_name)
        if preset.model_id != fl.model:
            raise FeatureListError(
                f"feature list {fl.name!r} is for {fl.model}, but preset {preset.name!r} loads {preset.model_id}"
            )
        return preset
    candidates = presets_for_model_id(fl.model)
    chosen_on = fl.selection.preset if fl.selection is not None else None
    candidates.sort(key=lambda p: p.name != chosen_on)  # the preset the latents were selected on, if recorded
    if not candidates:
        raise FeatureListError(f"no preset loads {fl.model}, the model of feature list {fl.name!r}")
    return candidates[0]


def load_selections(
    fl: FeatureList,
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
    status: StatusFn | None = None,
    *,
    loader: Callable[[str], LoadedSae] | None = None,
) -> list[LatentSelection]:
    """Load each SAE of a feature list and check the list against it (hook site, latent range).

    ``loader`` (an SAE ref -> :class:`LoadedSae`) replaces :func:`load_sae`, e.g. by a process-wide cache that
    also decides which SAEs may be loaded at all; ``device``/``dtype`` are then the loader's business.
    """
    selections = []
    for entry in fl.saes:
        if status:
            status(f"Loading SAE {entry.sae}")
        loaded: LoadedSae = loader(entry.sae) if loader else load_sae(entry.sae, device=device, dtype=dtype)
        if loaded.hook_name != entry.hook_name:
            raise FeatureListError(
                f"feature list {fl.name!r} puts SAE {entry.sae} at {entry.hook_name}, but the SAE was trained at "
                f"{loaded.hook_name}; fix the list's hook_name"
            )
        check_latents_fit(entry, loaded.width, source=fl.name)
        selections.append(LatentSelection(loaded, tuple(entry.latent_ids), reference_activations(entry)))
    return selections


def reference_activations(entry: SaeEntry) -> tuple[float, ...] | None:
    """Each latent's mean activation on forget text (``stats.forget_mean_act``, written by ``select``), if all
    latents of the entry have one; relative clamps scale to it."""
    values = []
    for lat in entry.latents:
        value = lat.stats.forget_mean_act if lat.stats is not None else None
        if value is None or not 0 <= value < float("inf"):
            return None
        values.append(float(value))
    return tuple(values)


def check_selections_fit_model(lm: LoadedModel, selections: Sequence[LatentSelection], intervention: Intervention) -> None:
    """Refuse SAEs that cannot be applied to this model: unknown hook, wrong width, or not an SAE (transcoders)."""
    d_model = int(lm.model.cfg.d_model)
    for sel in selections:
        if intervention.relative and sel.latents and sel.reference is None:
            raise FeatureListError(
                f"a clamp relative to each latent's mean activation needs those activations, and some latents of "
                f"{sel.sae.ref} have none (lists from `select` / Suggest latents carry them; latents added by hand "
                "do not): remove those latents or use an absolute clamp"
            )
        cfg = sel.sae.sae.cfg
        site = hook_name_for(sel, intervention.hook_site)
        if site not in lm.model.hook_dict:
            raise FeatureListError(f"SAE {sel.sae.ref} sits at {site}, which {lm.preset.model_id} does not have")
        if "transcoder" in cfg.architecture():
            raise FeatureListError(f"{sel.sae.ref} is a transcoder; only SAEs can be ablated in place")
        if int(cfg.d_in) != d_model:
            raise FeatureListError(
                f"SAE {sel.sae.ref} reads {cfg.d_in}-dimensional activations but {lm.preset.model_id} has d_model "
                f"{d_model}: it was trained on another model"
            )
