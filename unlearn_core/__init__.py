"""unlearn_core: interpretable machine unlearning with sparse autoencoders.

Pipeline (each a module; arrows point down):
presets/models/saes -> interventions -> evaluation -> pipeline -> cli. No UI code lives here.
"""

from unlearn_core.ablation.conditions import Condition, build_conditions
from unlearn_core.ablation.interventions import Intervention, LatentSelection, intervened, intervention_hooks
from unlearn_core.errors import FeatureListError, InputError, ModelUnavailableError, TextSourceError, UnlearnError
from unlearn_core.forget_set import FeatureList, load_feature_list, save_feature_list
from unlearn_core.models.loading import LoadedModel, load_model
from unlearn_core.models.presets import DEFAULT_PRESET, PRESETS, get_preset
from unlearn_core.saes.loading import LoadedSae, load_sae
from unlearn_core.scoring.generation import generate
from unlearn_core.scoring.perplexity import perplexity
from unlearn_core.scoring.probes import probe_scores

__all__ = [
    "DEFAULT_PRESET",
    "PRESETS",
    "Condition",
    "FeatureList",
    "FeatureListError",
    "InputError",
    "Intervention",
    "LatentSelection",
    "LoadedModel",
    "LoadedSae",
    "ModelUnavailableError",
    "TextSourceError",
    "UnlearnError",
    "build_conditions",
    "generate",
    "get_preset",
    "intervened",
    "intervention_hooks",
    "load_feature_list",
    "load_model",
    "load_sae",
    "perplexity",
    "probe_scores",
    "save_feature_list",
]
