"""unlearn_core: interpretable machine unlearning with sparse autoencoders.

Pipeline (each a module; arrows point down):
presets/models/saes -> interventions -> evaluation -> pipeline -> cli. No UI code lives here.
"""

from .errors import FeatureListError, InputError, ModelUnavailableError, TextSourceError, UnlearnError
from .evaluation import Condition, build_conditions, generate, perplexity, probe_scores
from .feature_lists import FeatureList, load_feature_list, save_feature_list
from .interventions import Intervention, LatentSelection, intervened, intervention_hooks
from .models import LoadedModel, load_model
from .presets import DEFAULT_PRESET, PRESETS, get_preset
from .saes import LoadedSae, load_sae

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
