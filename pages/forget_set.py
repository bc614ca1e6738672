"""Forget set: curate the chosen latents (labels, notes, bulk add, remove) and manage feature-list files."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import streamlit as st

from app_support import drafts, neuronpedia_panel, shell, state, suggest_panel, uploads, views
from app_support.forget_ops import apply_ticks, save_as_target
from app_support.resources import get_dashboards
from app_support.safe_text import md_escape
from app_support.state import Key
from unlearn_core.errors import UnlearnError
from unlearn_core.forget_set import (
    FeatureList,
    check_model_matches,
    feature_list_from_bytes,
    feature_list_json,
    list_feature_lists,
    load_feature_list,
    merge_feature_list,
    new_feature_list,
    parse_latent_ids,
    remove_latents,
    save_feature_list,
)
from unlearn_core.models.presets import presets_for_model_id

DIR = state.feature_list_dir()
# Per SAE, explanations looked up for the table (a list of thousands must not fire thousands of requests).
MAX_EXPLANATIONS = 500
# Lists shipped with the repository: Save never writes over them (Save as does, only to a new name).
PROTECTED_PREFIXES = ("reference_", "example_")

ws = shell.page_setup(needs_model=False)
fl = state.forget_set(ws.preset.model_id)
path = state.forget_set_path()
st.title("Forget set")


def _replace_current(new: FeatureList, source_path: Path | None, message: str) -> None:
    state.set_forget_set(new, source_path, saved=source_path is not None)
    state.flash(message)
    st.rerun()


def _open_study_list(ref_path: Path) -> None:
    """Button callback (runs before the page, so it may switch the sidebar's model preset)."""
    try:
        opened = load_feature_list(ref_path)
    except UnlearnError as exc:
        state.flash(md_escape(exc), "error")
        return
    presets = presets_for_model_id(opened.model)
    if presets and presets[0].model_id != ws.preset.model_id:
        state.set_widget(Key.PRESET, presets[0].name)
    state.set_forget_set(opened, ref_path, saved=True)
    state.flash(f"Opened the study's {md_escape(ref_path.name)} ({opened.total_latents} latents) for {opened.model}; "
                "the model preset follows it.")


def _is_protected(target: Path) -> bool:
    return target.name.startswith(PROTECTED_PREFIXES) and target.resolve().parent == state.SHIPPED_LIST_DIR.resolve()


def _save_to(target: Path, overwrite: bool) -> None:
    """Write the list atomically (refusing to replace a file unless ``overwrite``), then remember it as saved."""
    if overwrite and _is_protected(target):
        st.error(f"{md_escape(target.name)} ships with the repository and is read-only: choose another name.")
        return
    try:
        save_feature_list(fl, target, overwrite=overwrite)
    except UnlearnError as exc:
        st.error(md_escape(exc))
        return
    state.mark_saved(target)
    state.flash(f"Saved {md_escape(target.name)}.")
    st.rerun()


def _discard_ok(key: str) -> bool:
    """True when replacing the current list loses nothing, or the user ticked 'discard'."""
    if not state.has_unsaved_changes():
        return True
    return st.checkbox("Discard my unsaved changes", key=key)


# ------------------------------------------------------------------------------------------------ draft
draft = drafts.pending()
if draft is not None:
    with st.container(border=True):
        st.info(f"Restore the unsaved draft of {md_escape(draft.feature_list.name)} "
                f"({draft.feature_list.total_latents} latents, saved {drafts.ago(draft.saved_at)})? It was kept when "
                "this page was closed or the server restarted. Until you choose, new edits are not autosaved.")
        ok = _discard_ok(Key.DISCARD_FOR_DRAFT)
        c1, c2, _ = st.columns([1, 1, 4])
        c1.button("Restore", type="primary", on_click=drafts.restore, disabled=not ok)
        c2.button("Discard", on_click=drafts.discard, help="Delete the draft; the current forget set stays.")

# ------------------------------------------------------------------------------------------------ header
if state.has_unsaved_changes():
    st.warning("This forget set has unsaved changes: **Save** or **Export** it before you close the tab.")
meta = st.columns([2, 3, 2])
new_name = meta[0].text_input("Name", value=fl.name, key=Key.list_name(state.version()))
new_desc = meta[1].text_input("Description", value=fl.description, key=Key.list_description(state.version()))
meta[2].markdown(f"**Model:** `{fl.model}`  \n**File:** {md_escape(path.name) if path else '(not saved yet)'}  \n"
                 f"**Latents:** {fl.total_latents} in {len(fl.saes)} SAE(s)")
# Plain assignments, no rerun: a rerun here would drop a button click sent with the same edit.
if new_name.strip() and new_name.strip() != fl.name:
    fl.name = new_name.strip()
if new_desc != fl.description:
    fl.description = new_desc
if fl.model != ws.preset.model_id:
    st.info(f"This list is for {fl.model}; the sidebar's model is {ws.preset.model_id}. "
            f"Presets for it: {', '.join(p.name for p in presets_for_model_id(fl.model)) or 'none'}.")

# ------------------------------------------------------------------------------------------------ files
suggest_tab, file_tab, import_tab, study_tab, new_tab = st.tabs(
    ["Suggest latents", "Open / save", "Import / export", "The study's lists", "New"])
with suggest_tab:
    suggest_panel.render(ws)
with file_tab:
    files = state.openable_lists()
    c1, c2 = st.columns(2)
    with c1:
        st.markdown(f"**Open** a feature list (`{DIR}` and the shipped lists)")
        choice = st.selectbox("File", list(files), key=Key.OPEN_CHOICE, label_visibility="collapsed")
        ok = _discard_ok(Key.DISCARD_OPEN)
        if st.button("Open", disabled=not files or not ok):
            try:
                opened = load_feature_list(files[choice])
                check_model_matches(opened, ws.preset.model_id, choice)
            except UnlearnError as exc:
                st.error(f"Not opened: {md_escape(exc)}. The current forget set is unchanged.")
            else:
                _replace_current(opened, files[choice], f"Opened {md_escape(choice)} ({opened.total_latents} latents).")
    with c2:
        protected = path is not None and _is_protected(path)
        st.markdown("**Save**" + (f" to {md_escape(path.name)}" if path and not protected else ""))
        force = True
        if path is not None and state.changed_on_disk():
            st.warning(f"{md_escape(path.name)} changed on disk since you opened it.")
            force = st.checkbox("Overwrite it anyway", key=Key.FORCE_SAVE)
        if st.button("Save", type="primary", disabled=path is None or protected or not force,
                     help="Shipped lists (reference_*, example_*) are read-only: use Save as." if protected else None):
            _save_to(path, overwrite=True)
        st.markdown(f"**Save as** (in `{DIR}`)")
        default_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", fl.name).strip("_.") or "forget_set"
        name = st.text_input("File name", value=f"{default_name}.json", key=Key.save_as_name(state.version()))
        try:
            target: Path | None = save_as_target(DIR, name)
        except UnlearnError as exc:
            target = None
            st.error(f"That file name cannot be used: {md_escape(exc)}.")
        overwrite = False
        exists = target is not None and target.exists()
        if target is not None and exists:
            st.warning(f"{md_escape(target.name)} already exists.")
            overwrite = st.checkbox(f"Replace {md_escape(target.name)}", key=Key.overwrite(target.name),
                                    disabled=_is_protected(target)) and not _is_protected(target)
        if st.button("Save as", disabled=target is None or (exists and not overwrite)) and target is not None:
            _save_to(target, overwrite=overwrite)

with import_tab:
    c1, c2 = st.columns(2)
    with c1:
        upload = st.file_uploader("Import a feature-list JSON", type=["json"], key=Key.IMPORT_UPLOAD)
        ok = _discard_ok(Key.DISCARD_IMPORT)
        if upload is not None and st.button("Import", disabled=not ok):
            try:
                uploads.check_size(upload, "feature list")  # decoded on this click only, so not cached
                imported = feature_list_from_bytes(upload.getvalue(), upload.name)
                check_model_matches(imported, ws.preset.model_id, upload.name)
                if ws.saes:
                    widths = {s.ref: s.width for s in ws.saes}
                    for entry in imported.saes:
                        bad = [i for i in entry.latent_ids if entry.sae in widths and i >= widths[entry.sae]]
                        if bad:
                            raise UnlearnError(f"{upload.name}: latent {bad[0]} is out of range for {entry.sae} "
                                               f"(latents 0..{widths[entry.sae] - 1})")
            except UnlearnError as exc:
                st.error(f"Not imported: {md_escape(exc)}. The current forget set is unchanged.")
            else:
                _replace_current(imported, None, f"Imported {md_escape(upload.name)} ({imported.total_latents} latents); "
                                                  "use Save as to keep it in feature_lists/.")
    with c2:
        st.markdown("**Export** the current list (JSON, the engine's format)")
        export_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", fl.name).strip("_") or "forget_set"
        st.download_button("Download JSON", feature_list_json(fl).encode(), file_name=f"{export_name}.json",
                           mime="application/json")
    from_neuronpedia = neuronpedia_panel.render_neuronpedia_lists(fl, ws.preset.model_id)
    if from_neuronpedia is not None:
        try:
            added = merge_feature_list(fl, from_neuronpedia)
        except UnlearnError as exc:
            st.error(f"Not imported: {md_escape(exc)}. The current forget set is unchanged.")
        else:
            state.bump_version()
            state.flash(f"Added {added} latent(s) from the Neuronpedia list.")
            st.rerun()

with study_tab:
    st.markdown("The reference study's exact latents (Gemma 2 2B + Gemma Scope 16k). Opening one switches the model to "
                "`gemma-2-2b`, which needs an HF token and ideally a GPU.")
    refs = [p for p in list_feature_lists(state.SHIPPED_LIST_DIR) if p.name.startswith("reference_")]
    ok = _discard_ok(Key.DISCARD_STUDY)
    cols = st.columns(max(len(refs), 1))
    for col, ref_path in zip(cols, refs, strict=False):
        col.button(ref_path.stem.removeprefix("reference_gemma-2-2b_"), key=Key.study_list(ref_path.name), disabled=not ok,
                   on_click=_open_study_list, args=(ref_path,))

with new_tab:
    name = st.text_input("Name of the new forget set", value="my forget set", key=Key.NEW_NAME)
    ok = _discard_ok(Key.DISCARD_NEW)
    if st.button("Start a new, empty forget set", disabled=not ok):
        _replace_current(new_feature_list(name.strip() or "untitled", ws.preset.model_id), None,
                         f"New forget set {md_escape(repr(name.strip() or 'untitled'))} for {ws.preset.model_id}.")

# ------------------------------------------------------------------------------------------------ bulk add
st.subheader("Add latents by id")
family = ws.family
if fl.model != ws.preset.model_id:
    st.caption("(adding needs a list for the sidebar's model)")
else:
    c1, c2, c3 = st.columns([1, 3, 1])
    layer = c1.selectbox("Layer", list(family.layers), key=Key.BULK_LAYER)
    ids_text = c2.text_input("Latent ids, e.g. 12, 40-45", key=Key.BULK_IDS)
    c3.write("")
    if c3.button("Add", width="stretch"):
        try:
            ids = parse_latent_ids(ids_text, width=family.width)
            added, _ = apply_ticks(family, layer, ws.preset.model_id, ids, [], {i: "added by id" for i in ids})
        except UnlearnError as exc:
            st.error(md_escape(exc))
        else:
            state.flash(f"Layer {layer}: added {len(added)} latent(s)" + (f" ({len(ids) - len(added)} already there)"
                                                                          if len(added) < len(ids) else "") + ".")
            st.rerun()

# ------------------------------------------------------------------------------------------------ table
st.subheader("Chosen latents")
if fl.total_latents == 0:
    st.info("No latents yet: tick them on the Explore page, add them by id above, or open a list.")
    st.stop()

explore_run = state.session().explore  # the Explore page's last result, for "max on prompts"
explore_result = explore_run.result if explore_run is not None else None
rows = []
for entry in fl.saes:
    loaded = ws.sae_at(entry.sae)
    boards = get_dashboards(loaded) if loaded is not None else None
    lookup = entry.latent_ids[:MAX_EXPLANATIONS]
    expl = views.explanation_texts(loaded, lookup) if loaded is not None else {}
    expl |= {i: f"(not looked up: more than {MAX_EXPLANATIONS} latents in this SAE)" for i in entry.latent_ids[MAX_EXPLANATIONS:]}
    for lat in entry.latents:
        board = boards.latent(lat.id) if boards is not None and lat.id < boards.width else None
        on_prompts = None
        if explore_result is not None and entry.sae in explore_result.by_sae and loaded is not None:
            on_prompts = explore_result.latent_stats(entry.sae, lat.id).max_activation
        rows.append({
            "key": f"{entry.sae}|{entry.hook_name}|{lat.id}",
            "remove": False,
            "layer": entry.layer,
            "latent": lat.id,
            "label": lat.label or "",
            "note": lat.note or "",
            "explanation": expl.get(lat.id, "(load this layer's SAE in the sidebar to see it)"),
            "frequency": board.frequency if board else None,
            "max act": board.max_activation if board else None,
            "max on prompts": on_prompts,
        })
table = pd.DataFrame(rows)
c1, c2, c3 = st.columns([3, 1, 1])
query = c1.text_input("Search (id, label, note, explanation)", key=Key.TABLE_SEARCH)
sort_by = c2.selectbox("Sort by", ["layer", "latent", "label", "frequency", "max act", "max on prompts"], key=Key.TABLE_SORT)
descending = c3.toggle("Descending", key=Key.TABLE_DESCENDING)
if query.strip():
    q = query.strip().lower()
    mask = table.apply(lambda r: q in " ".join(str(r[c]) for c in ("latent", "label", "note", "explanation")).lower(), axis=1)
    table = table[mask]
table = table.sort_values([sort_by, "latent"], ascending=not descending, na_position="last").reset_index(drop=True)
st.caption(f"{len(table)} of {fl.total_latents} latents shown. Edit labels and notes in place; tick **remove** then apply.")
edited = st.data_editor(
    table,
    key=Key.list_table(state.version(), query, sort_by, descending),
    hide_index=True,
    width="stretch",
    column_order=["remove", "layer", "latent", "label", "note", "explanation", "frequency", "max act", "max on prompts"],
    disabled=["layer", "latent", "explanation", "frequency", "max act", "max on prompts"],
    column_config={
        "remove": st.column_config.CheckboxColumn("remove"),
        "label": st.column_config.TextColumn("label", width="medium"),
        "note": st.column_config.TextColumn("note", width="medium"),
        "explanation": st.column_config.TextColumn("explanation", width="large"),
        "frequency": st.column_config.NumberColumn("frequency", format="percent", help="on the dashboard corpus"),
        "max act": st.column_config.NumberColumn("max act", format="%.2f", help="on the dashboard corpus"),
        "max on prompts": st.column_config.NumberColumn("max on prompts", format="%.2f", help="on the Explore prompts"),
    },
)
latents_by_key = {f"{e.sae}|{e.hook_name}|{lat.id}": lat for e in fl.saes for lat in e.latents}
for _, row in edited.iterrows():  # the editor keeps its edits, so applying them without a rerun is enough
    lat = latents_by_key[row["key"]]
    lat.label = str(row["label"] or "").strip() or None
    lat.note = str(row["note"] or "").strip() or None
to_remove = edited[edited["remove"]]
if st.button(f"Remove {len(to_remove)} ticked latent(s)", disabled=to_remove.empty):
    for _, row in to_remove.iterrows():
        sae, hook, lat_id = row["key"].rsplit("|", 2)
        remove_latents(fl, sae=sae, hook_name=hook, ids=[int(lat_id)])
    state.bump_version()
    state.flash(f"Removed {len(to_remove)} latent(s).")
    st.rerun()
