"""Everything the app keeps per browser session, behind one typed accessor, and the keys of its widgets.

- :func:`session` returns the session's :class:`Session`: the forget set being curated (and its file, saved copy,
  edit version), the Explore page's last result (which the Forget set page also shows), the Compare page's results
  cache, messages for the next run, the sidebar's :class:`Settings` and this run's :class:`Workspace`. It is the only
  object this module keeps in ``st.session_state``; pages use its fields, never raw session-state keys.
- :class:`Key` names every widget key (``key=``) the app reads or sets. Streamlit keeps a keyed widget's value in
  ``st.session_state`` under that key: :func:`widget_value`, :func:`set_widget` and :func:`widget_default` are the
  way to read or preset it outside the widget call (in a button callback, before the widget is drawn).

The forget set is a :class:`unlearn_core.forget_set.FeatureList`; it is edited in place only through the
helpers here and in :mod:`app_support.forget_ops`, and every edit is checked against the saved copy so the app can
warn about unsaved changes. Nothing here touches the model: that is shared, read-only, in :mod:`app_support.resources`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

import streamlit as st

from unlearn_core.ablation.interventions import Intervention
from unlearn_core.explain.explore import ExploreResult
from unlearn_core.forget_set import FeatureList, content_signature, new_feature_list
from unlearn_core.models.loading import LoadedModel
from unlearn_core.models.presets import DEFAULT_PRESET, REPO_ROOT, ModelPreset, SaeFamily, get_preset
from unlearn_core.saes.loading import LoadedSae

SHIPPED_LIST_DIR = REPO_ROOT / "feature_lists"
LIST_DIR_ENV = "UNLEARN_FEATURE_LISTS_DIR"
SESSION_KEY = "_unlearn_session"
# Keep a widget's value while it is not drawn (another page is shown, or a sidebar option is hidden).
PERSIST: Final = "session"


def feature_list_dir() -> Path:
    """Where Save as writes: ``$UNLEARN_FEATURE_LISTS_DIR`` if set, else the repository's ``feature_lists/``."""
    return Path(os.environ.get(LIST_DIR_ENV) or SHIPPED_LIST_DIR).expanduser()


def openable_lists() -> dict[str, Path]:
    """Feature lists the Open menu offers: the user's folder, then the shipped lists it does not shadow."""
    from unlearn_core.forget_set import list_feature_lists

    found: dict[str, Path] = {}
    for directory in (feature_list_dir(), SHIPPED_LIST_DIR):
        for p in list_feature_lists(directory):
            found.setdefault(p.name, p)
    return found


# ------------------------------------------------------------------------------------------------ widget keys


class Key:
    """The ``key=`` of the app's widgets: Streamlit stores each keyed widget's value in session state under it."""

    # sidebar (app.py draws it on every run)
    PRESET = "preset"
    FAMILY = "family"
    LAYERS = "layers"
    DEVICE = "device"
    DTYPE = "dtype"
    MODE = "mode"
    CLAMP_RELATIVE = "clamp_relative"
    GATE = "gate"
    GATE_QUANTILE = "gate_quantile"
    HOOK_SITE = "hook_site"
    # Explore
    EXPLORE_PROMPTS = "explore_prompts"
    EXPLORE_TOP_K = "explore_top_k"
    EXPLORE_RANK = "explore_rank"
    EXPLORE_SCOPE = "explore_scope"
    EXPLORE_HIDE_DENSE = "explore_hide_dense"
    EXPLORE_CONTRAST = "explore_contrast"
    EXPLORE_LAYER_TAB = "explore_layer_tab"
    EXPLORE_TOKEN_PROMPT = "explore_token_prompt"
    # Forget set
    OPEN_CHOICE = "open_choice"
    DISCARD_OPEN = "discard_open"
    FORCE_SAVE = "force_save"
    IMPORT_UPLOAD = "import_upload"
    DISCARD_IMPORT = "discard_import"
    DISCARD_STUDY = "discard_study"
    NEW_NAME = "new_name"
    DISCARD_NEW = "discard_new"
    DISCARD_FOR_DRAFT = "discard_for_draft"
    BULK_LAYER = "bulk_layer"
    BULK_IDS = "bulk_ids"
    TABLE_SEARCH = "fl_search"
    TABLE_SORT = "fl_sort"
    TABLE_DESCENDING = "fl_desc"
    # Compare (pages/compare.py)
    COMPARE_CONDITIONS = "compare_conditions"
    COMPARE_TEXTS = "compare_texts"
    COMPARE_MAX_TEXTS = "compare_max_texts"
    COMPARE_SEQ_LEN = "compare_seq_len"
    COMPARE_PROBES = "compare_probes"
    COMPARE_PROBE_ITEMS = "compare_probe_items"
    COMPARE_PROMPTS = "compare_prompts"
    COMPARE_NEW_TOKENS = "compare_new_tokens"
    COMPARE_TEMPERATURE = "compare_temperature"
    COMPARE_SEED = "compare_seed"
    COMPARE_UPLOADS = "compare_uploads"
    PROBE_UPLOADS = "probe_uploads"
    STOP_PERPLEXITY = "stop_ppl"
    STOP_PROBES = "stop_probes"
    STOP_GENERATIONS = "stop_gen"
    SWEEP_CHOICE = "sweep_choice"
    SWEEP_UPLOAD = "sweep_upload"
    # Token by token (app_support/token_compare_panel.py, on the Compare page)
    TOKENS_PROMPT = "tokens_prompt"
    TOKENS_OWN_PROMPT = "tokens_own_prompt"
    TOKENS_CONDITION = "tokens_condition"
    TOKENS_NEW_TOKENS = "tokens_new_tokens"
    TOKENS_COLOUR = "tokens_colour"
    TOKENS_RUN = "tokens_run"
    # Suggest latents (app_support/suggest_panel.py, on the Forget set page)
    SUGGEST_FORGET = "suggest_forget"
    SUGGEST_RETAIN = "suggest_retain"
    SUGGEST_METHOD = "suggest_method"
    SUGGEST_TOP = "suggest_top"
    SUGGEST_TOKENS = "suggest_tokens"
    SUGGEST_USE_RECOMMENDED = "suggest_use_recommended"

    @staticmethod
    def strength(mode: str) -> str:
        """One strength per mode: a clamp value of 10 must not become a scale factor of 10."""
        return f"strength_{mode}"

    @staticmethod
    def upload(text_choice_key: str) -> str:
        """The file uploader shown when a text choice (e.g. :attr:`SUGGEST_FORGET`) is "upload"."""
        return f"{text_choice_key}_file"

    @staticmethod
    def explore_table(ref: str, *view: object) -> str:
        """The Explore table of one SAE; ``view`` (edit version, ranking, ...) gives a fresh table when it changes."""
        return "_".join(map(str, ("explore_table", ref, *view)))

    @staticmethod
    def explore_search(ref: str) -> str:
        return f"explore_search_{ref}"

    @staticmethod
    def explore_search_open(ref: str) -> str:
        return f"explore_search_open_{ref}"

    @staticmethod
    def explore_search_mode(ref: str) -> str:
        return f"explore_search_mode_{ref}"

    @staticmethod
    def explore_search_k(ref: str) -> str:
        return f"explore_search_k_{ref}"

    @staticmethod
    def explore_search_tick_all(ref: str) -> str:
        return f"explore_search_tick_all_{ref}"

    @staticmethod
    def explore_search_table(ref: str, *view: object) -> str:
        """Search results of one SAE; a new query or edit version gives a fresh table."""
        return "_".join(map(str, ("explore_search_table", ref, *view)))

    @staticmethod
    def tick_all(ref: str) -> str:
        return f"tick_all_{ref}"

    @staticmethod
    def explore_detail(ref: str) -> str:
        return f"explore_detail_{ref}"

    @staticmethod
    def compute_dashboards(ref: str) -> str:
        return f"compute_board_{ref}"

    @staticmethod
    def list_name(version: int) -> str:
        return f"fl_name_{version}"

    @staticmethod
    def list_description(version: int) -> str:
        return f"fl_desc_{version}"

    @staticmethod
    def save_as_name(version: int) -> str:
        return f"save_as_name_{version}"

    @staticmethod
    def overwrite(file_name: str) -> str:
        """Keyed per file: a tick given for one name must never carry over to another."""
        return f"overwrite_{file_name}"

    @staticmethod
    def study_list(file_name: str) -> str:
        return f"study_{file_name}"

    @staticmethod
    def list_table(*view: object) -> str:
        return "_".join(map(str, ("fl_table", *view)))

    @staticmethod
    def pareto_chart(*view: object) -> str:
        return "_".join(map(str, ("pareto", *view)))


def widget_value(key: str, default: Any = None) -> Any:
    """The value of the widget keyed ``key`` (``default`` before it was first drawn)."""
    return st.session_state.get(key, default)


def set_widget(key: str, value: Any) -> None:
    """Set a widget's value: only in a callback or before the widget is drawn in this run (Streamlit's rule)."""
    st.session_state[key] = value


def widget_default(key: str, value: Any) -> Any:
    """Give a widget its first value (kept afterwards: the user's choice wins); returns the current value."""
    return st.session_state.setdefault(key, value)


# ------------------------------------------------------------------------------------------------ per-run settings


@dataclass
class Settings:
    """The sidebar's choices in this run: app.py draws the sidebar once per run, pages read them from
    :func:`app_support.shell.current_settings`."""

    preset: ModelPreset
    family_name: str
    layers: list[int]
    device: str
    dtype: str
    intervention: Intervention

    @property
    def family(self) -> SaeFamily:
        return self.preset.family(self.family_name)


@dataclass
class Workspace(Settings):
    """What a page works with in this run: the settings, and the model and SAEs once loaded."""

    lm: LoadedModel | None = None
    saes: list[LoadedSae] = field(default_factory=list)
    error: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Workspace:
        return cls(**{f.name: getattr(settings, f.name) for f in fields(Settings)})

    def sae_at(self, ref: str) -> LoadedSae | None:
        return next((s for s in self.saes if s.ref == ref), None)


@dataclass(frozen=True)
class ExploreRun:
    """One computation of the Explore page: what it ran on (model, SAEs, token ids) and its result."""

    key: tuple[Any, ...]
    result: ExploreResult


# ------------------------------------------------------------------------------------------------ the session


@dataclass
class Session:
    """Everything the app keeps for one browser session (get it with :func:`session`)."""

    forget_set: FeatureList | None = None
    """The forget set being curated (use :func:`forget_set`, which creates it on first use)."""
    forget_set_path: Path | None = None
    """The file it was opened from or last saved to."""
    saved_signature: str | None = None
    """``content_signature`` of the saved copy; None when it was never saved."""
    file_digest: str | None = None
    """sha256 of the file at ``forget_set_path`` when opened or saved, to notice edits made on disk since."""
    version: int = 0
    """Bumped by every edit: widgets keyed on it (tables with checkboxes) start fresh from the list."""
    explore: ExploreRun | None = None
    """The Explore page's last result; the Forget set page shows each latent's max activation on those prompts."""
    explore_contrast: ExploreRun | None = None
    """The exploration of Explore's contrast prompts, when there are any."""
    compare_cells: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Compare results by cell key (kind, condition, data): switching pages or re-running reuses them."""
    gated_conditions: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    """Compare's conditions with their gates calibrated, by what they were calibrated for (the last few)."""
    token_compare: dict[str, Any] = field(default_factory=dict)
    """Token-by-token comparisons (:class:`unlearn_core.experiments.token_compare.TokenComparison`) by their key."""
    text_search: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    """Explore's "fires on this text" hits by (model, SAE, precision, text, k): a rerun does not run the model again."""
    flashes: list[tuple[str, str]] = field(default_factory=list)
    """(kind, message) shown once at the top of the next run."""
    draft_id: str | None = None
    """This session's draft id (kept in the URL; see :mod:`app_support.drafts`)."""
    draft_checked: bool = False
    """True once the session's first run looked for a draft to offer."""
    draft_pending: Any = None
    """The :class:`app_support.drafts.Draft` offered to this session and not yet restored or discarded."""
    draft_written: str | None = None
    """What the last autosave wrote (content, file, saved copy), so an unchanged list is not written again."""
    settings: Settings | None = None
    """The sidebar's choices in this run (app_support.shell draws the sidebar before the page's body runs)."""
    workspace: Workspace | None = None
    """This run's workspace, set by the page's :func:`app_support.shell.page_setup`."""


def session() -> Session:
    """This browser session's state (created on first use)."""
    found = st.session_state.get(SESSION_KEY)
    if found is None:
        found = st.session_state[SESSION_KEY] = Session()
    return found


def workspace() -> Workspace:
    ws = session().workspace
    if ws is None:
        raise RuntimeError("the workspace is built by the page's shell.page_setup() before it is used")
    return ws


# ------------------------------------------------------------------------------------------------ forget set


def forget_set(model_id: str | None = None) -> FeatureList:
    """The session's forget set (a new, empty one for ``model_id``, or the default model, on first use)."""
    s = session()
    if s.forget_set is None:
        empty = new_feature_list("untitled forget set", model_id or get_preset(DEFAULT_PRESET).model_id, "")
        set_forget_set(empty, path=None, saved=True)
    assert s.forget_set is not None
    return s.forget_set


def _file_digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def set_forget_set(fl: FeatureList, path: Path | None, saved: bool) -> None:
    """Make ``fl`` the current forget set; ``saved`` says whether it equals the file at ``path``."""
    s = session()
    s.forget_set = fl
    s.forget_set_path = path
    s.saved_signature = content_signature(fl) if saved else None
    s.file_digest = _file_digest(path) if path else None
    bump_version()


def restore_forget_set(fl: FeatureList, path: Path | None, saved_signature: str | None, file_digest: str | None) -> None:
    """Make ``fl`` the current forget set as it stood in a draft: opened from ``path`` (whose content then had
    ``saved_signature`` and sha256 ``file_digest``), with unsaved edits. Nothing is written."""
    s = session()
    s.forget_set = fl
    s.forget_set_path = path
    s.saved_signature = saved_signature if path is not None else None
    s.file_digest = file_digest if path is not None else None
    bump_version()


def forget_set_path() -> Path | None:
    return session().forget_set_path


def mark_saved(path: Path) -> None:
    """The forget set was just written to ``path``."""
    s = session()
    s.forget_set_path = path
    s.saved_signature = content_signature(forget_set())
    s.file_digest = _file_digest(path)


def changed_on_disk() -> bool:
    """True when the forget set's file was changed by someone else since it was opened or saved here."""
    s = session()
    path = s.forget_set_path
    return path is not None and path.exists() and s.file_digest not in (None, _file_digest(path))


def has_unsaved_changes() -> bool:
    fl = forget_set()
    saved = session().saved_signature
    if saved is None:
        return fl.total_latents > 0 or bool(fl.description)
    return content_signature(fl) != saved


def bump_version() -> None:
    """Called after every edit: widgets keyed on the version (tables with checkboxes) start fresh from the list."""
    session().version += 1


def version() -> int:
    return session().version


def flash(message: str, kind: str = "success") -> None:
    """A message shown once, at the top of the next run (survives the rerun an action triggers).

    It is rendered as Markdown: foreign text in it (names, file names, error messages) goes through
    :func:`app_support.safe_text.md_escape`."""
    session().flashes.append((kind, message))


def show_flashes() -> None:
    s = session()
    shown, s.flashes = s.flashes, []
    for kind, message in shown:
        getattr(st, kind)(message)
