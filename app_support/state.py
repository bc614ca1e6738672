"""Per-session state: settings chosen in the sidebar, the loaded workspace, and the forget set being curated.

The forget set is a :class:`unlearn_core.forget_set.lists.FeatureList` kept in ``st.session_state``; it is edited in
place only through the helpers here, and every edit is checked against the saved copy so the app can warn about
unsaved changes. Nothing here touches the model: that is shared, read-only, in :mod:`app_support.resources`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st

from unlearn_core.ablation.interventions import Intervention
from unlearn_core.forget_set.lists import FeatureList, content_signature, new_feature_list
from unlearn_core.models.loading import LoadedModel
from unlearn_core.models.presets import DEFAULT_PRESET, REPO_ROOT, ModelPreset, get_preset
from unlearn_core.saes.loading import LoadedSae

SHIPPED_LIST_DIR = REPO_ROOT / "feature_lists"
LIST_DIR_ENV = "UNLEARN_FEATURE_LISTS_DIR"


def feature_list_dir() -> Path:
    """Where Save as writes: ``$UNLEARN_FEATURE_LISTS_DIR`` if set, else the repository's ``feature_lists/``."""
    return Path(os.environ.get(LIST_DIR_ENV) or SHIPPED_LIST_DIR).expanduser()


def openable_lists() -> dict[str, Path]:
    """Feature lists the Open menu offers: the user's folder, then the shipped lists it does not shadow."""
    from unlearn_core.forget_set.lists import list_feature_lists

    found: dict[str, Path] = {}
    for directory in (feature_list_dir(), SHIPPED_LIST_DIR):
        for p in list_feature_lists(directory):
            found.setdefault(p.name, p)
    return found

# Widget keys that must survive page switches (Streamlit forgets a widget's value when its page is not shown).
PERSISTENT_KEYS = (
    "preset", "family", "layers", "device", "dtype", "mode", "strength_clamp", "clamp_relative", "strength_scale", "hook_site",
    "explore_prompts", "explore_top_k", "explore_rank", "explore_scope", "explore_hide_dense", "compare_probe_items",
    "compare_conditions", "compare_texts", "compare_max_texts", "compare_seq_len", "compare_prompts",
    "compare_new_tokens", "compare_probes", "compare_temperature", "compare_seed",
)


@dataclass
class Workspace:
    """What the pages work with in this run: settings, and the model and SAEs once loaded."""

    preset: ModelPreset
    family_name: str
    layers: list[int]
    device: str
    dtype: str
    intervention: Intervention
    lm: LoadedModel | None = None
    saes: list[LoadedSae] = field(default_factory=list)
    error: str | None = None

    def sae_at(self, ref: str) -> LoadedSae | None:
        return next((s for s in self.saes if s.ref == ref), None)


def keep_widget_state() -> None:
    """Re-store page widgets' values so switching pages does not reset them (Streamlit's documented workaround)."""
    for key in PERSISTENT_KEYS:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


def workspace() -> Workspace:
    ws = st.session_state.get("_workspace")
    if ws is None:
        raise RuntimeError("the workspace is built by app.py before any page runs")
    return ws


# ------------------------------------------------------------------------------------------------ forget set


def _empty_list(model_id: str) -> FeatureList:
    return new_feature_list("untitled forget set", model_id, "")


def forget_set(model_id: str | None = None) -> FeatureList:
    """The session's forget set (a new, empty one for ``model_id``, or the default model, on first use)."""
    if "forget_set" not in st.session_state:
        fl = _empty_list(model_id or get_preset(DEFAULT_PRESET).model_id)
        set_forget_set(fl, path=None, saved=True)
    return st.session_state["forget_set"]


def set_forget_set(fl: FeatureList, path: Path | None, saved: bool) -> None:
    """Make ``fl`` the current forget set; ``saved`` says whether it equals the file at ``path``."""
    st.session_state["forget_set"] = fl
    st.session_state["forget_set_path"] = str(path) if path else None
    st.session_state["forget_set_saved_signature"] = content_signature(fl) if saved else None
    bump_version()


def forget_set_path() -> Path | None:
    p = st.session_state.get("forget_set_path")
    return Path(p) if p else None


def mark_saved(path: Path) -> None:
    st.session_state["forget_set_path"] = str(path)
    st.session_state["forget_set_saved_signature"] = content_signature(forget_set())


def has_unsaved_changes() -> bool:
    fl = forget_set()
    saved = st.session_state.get("forget_set_saved_signature")
    if saved is None:
        return fl.total_latents > 0 or bool(fl.description)
    return content_signature(fl) != saved


def bump_version() -> None:
    """Called after every edit: widgets keyed on the version (tables with checkboxes) start fresh from the list."""
    st.session_state["forget_set_version"] = st.session_state.get("forget_set_version", 0) + 1


def version() -> int:
    return int(st.session_state.get("forget_set_version", 0))


def flash(message: str, kind: str = "success") -> None:
    """A message shown once, at the top of the next run (survives the rerun an action triggers)."""
    st.session_state.setdefault("_flash", []).append((kind, message))


def show_flashes() -> None:
    for kind, message in st.session_state.pop("_flash", []):
        getattr(st, kind)(message)
