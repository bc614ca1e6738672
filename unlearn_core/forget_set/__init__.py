"""Feature lists: the JSON files in which users curate and share the SAE latents to forget (docs/feature-lists.md).

* :mod:`~unlearn_core.forget_set.schema` - the data classes and the validating parser
  (:mod:`~unlearn_core.forget_set.records`: the typed ``stats`` and ``selection``);
* :mod:`~unlearn_core.forget_set.io` - loading, parsing uploads, atomic saving, listing a folder;
* :mod:`~unlearn_core.forget_set.editing` - adding and removing latents, typed id ranges, signatures;
* :mod:`~unlearn_core.forget_set.widths` - SAE widths known without loading weights;
* :mod:`~unlearn_core.forget_set.reference` - the reference study's latents as feature lists.
"""

from unlearn_core.forget_set.editing import (
    MAX_BULK_IDS,
    add_latents,
    check_model_matches,
    content_signature,
    merge_feature_list,
    new_feature_list,
    parse_latent_ids,
    remove_latents,
)
from unlearn_core.forget_set.io import (
    feature_list_from_bytes,
    feature_list_json,
    list_feature_lists,
    load_feature_list,
    save_feature_list,
)
from unlearn_core.forget_set.records import LatentStats, SelectionRecord
from unlearn_core.forget_set.reference import REFERENCE_TIMESTAMP, from_reference_study
from unlearn_core.forget_set.schema import (
    FORMAT_VERSION,
    SUPPORTED_FORMAT_VERSIONS,
    FeatureList,
    Latent,
    SaeEntry,
    now_iso,
)
from unlearn_core.forget_set.widths import check_latents_fit, sae_width

__all__ = [
    "FORMAT_VERSION",
    "MAX_BULK_IDS",
    "REFERENCE_TIMESTAMP",
    "SUPPORTED_FORMAT_VERSIONS",
    "FeatureList",
    "Latent",
    "LatentStats",
    "SaeEntry",
    "SelectionRecord",
    "add_latents",
    "check_latents_fit",
    "check_model_matches",
    "content_signature",
    "feature_list_from_bytes",
    "feature_list_json",
    "from_reference_study",
    "list_feature_lists",
    "load_feature_list",
    "merge_feature_list",
    "new_feature_list",
    "now_iso",
    "parse_latent_ids",
    "remove_latents",
    "sae_width",
    "save_feature_list",
]
