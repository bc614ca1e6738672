"""The "Neuronpedia lists" panel: share the forget set as a Neuronpedia list, or import one (online only).

:func:`render_neuronpedia_lists` draws an expander with an export button and an import field. Both need a Neuronpedia
API key: the visitor's own (a password field, kept only in this browser session's widget state), else the one the
app is configured with (``$NEURONPEDIA_API_KEY`` or ``st.secrets``). The key is never shown, logged or stored
elsewhere. Lists are created on the account of the key used, which the panel says.
"""

from __future__ import annotations

import streamlit as st

from unlearn_core.errors import UnlearnError
from unlearn_core.forget_set import FeatureList
from unlearn_core.forget_set.neuronpedia import export_feature_list, hosted_ids, import_neuronpedia_list
from unlearn_core.saes.neuronpedia import api_key_from

from .safe_text import md_escape

KEY_INPUT = "np_lists_key"
IMPORT_INPUT = "np_lists_import_ref"
_EXPORTED = "_np_lists_exported"  # the last export of this session: (list signature, url)


def render_neuronpedia_lists(feature_list: FeatureList | None, model_id: str) -> FeatureList | None:
    """Draw the panel; returns the imported list on the run its Import button was pressed, else None.

    ``feature_list`` is the forget set being curated (None or empty: nothing to export); ``model_id`` the current
    model's Hugging Face id (imports are mapped to its SAEs). The caller merges or saves what is returned (e.g.
    with :func:`unlearn_core.forget_set.merge_feature_list`) at once: the next rerun returns None again.
    """
    with st.expander("Neuronpedia lists"):
        st.caption(
            "Share this forget set as a list on Neuronpedia, or import a list of Neuronpedia features. Only SAEs "
            "hosted on Neuronpedia (Gemma Scope) can be exported; the bundled offline SAEs cannot."
        )
        typed = st.text_input("Your Neuronpedia API key", type="password", key=KEY_INPUT,
                              help="Optional when the app has a key configured. Used for these requests only; never "
                                   "shown or saved. Your key is under Settings on neuronpedia.org.")
        key = typed.strip() or api_key_from(st.secrets)
        if key and not typed.strip():
            st.caption("Using the app's configured key: lists are created on that Neuronpedia account.")
        _export(feature_list, key)
        return _import(model_id, key)


def _export(feature_list: FeatureList | None, key: str | None) -> None:
    reason = _why_not_exportable(feature_list, key)
    clicked = st.button("Export to a Neuronpedia list", key="np_lists_export", disabled=reason is not None)
    if reason is not None:
        st.caption(md_escape(reason))
    if clicked and feature_list is not None and key:
        try:
            with st.spinner("Creating the list on Neuronpedia…"):
                exported = export_feature_list(feature_list, api_key=key)
        except UnlearnError as exc:
            st.error(f"Export failed: {md_escape(exc)}")
        else:
            st.session_state[_EXPORTED] = (feature_list.name, exported.url, exported.features)
    last = st.session_state.get(_EXPORTED)
    if last is not None:
        name, url, count = last
        st.success(f"Created a Neuronpedia list from {md_escape(name)} with {count} features:")
        st.text(url)
        st.link_button("Open the list on Neuronpedia", url)


def _why_not_exportable(feature_list: FeatureList | None, key: str | None) -> str | None:
    if feature_list is None or feature_list.total_latents == 0:
        return "The forget set has no latents yet."
    try:
        unhosted = [ref for ref, found in hosted_ids(feature_list).items() if found is None]
    except Exception:  # the SAE directory could not be read: let the export itself report why
        unhosted = []
    if unhosted:
        return (f"Neuronpedia does not host {len(unhosted)} of this list's SAEs (e.g. {unhosted[0]}): only Gemma "
                "Scope SAEs can be exported, not the bundled offline ones.")
    if not key:
        return "Exporting needs a Neuronpedia API key: enter yours above, or set NEURONPEDIA_API_KEY for the app."
    return None


def _import(model_id: str, key: str | None) -> FeatureList | None:
    ref = st.text_input("Neuronpedia list id or URL", key=IMPORT_INPUT, placeholder="https://www.neuronpedia.org/list/…")
    clicked = st.button("Import the list", key="np_lists_import", disabled=not key or not ref.strip(),
                        help=None if key else "Importing needs a Neuronpedia API key.")
    if not clicked or not key:
        return None
    try:
        with st.spinner("Fetching the list from Neuronpedia…"):
            imported = import_neuronpedia_list(ref, model=model_id, api_key=key)
    except UnlearnError as exc:
        st.error(f"Import failed: {md_escape(exc)}")
        return None
    fl = imported.feature_list
    st.success(f"Imported {fl.total_latents} latents of {len(fl.saes)} SAE(s) from {md_escape(fl.name)}.")
    if imported.skipped:
        st.warning(f"{len(imported.skipped)} features of the list were not imported:")
        st.text("\n".join(s.text() for s in imported.skipped[:50])
                + (f"\n… and {len(imported.skipped) - 50} more" if len(imported.skipped) > 50 else ""))
    return fl
