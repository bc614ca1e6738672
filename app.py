"""Streamlit entry point (placeholder until the app issue): shows what the engine offers."""

import streamlit as st

from unlearn_core.feature_lists import list_feature_lists
from unlearn_core.presets import DEFAULT_PRESET, PRESETS, REPO_ROOT
from unlearn_core.texts import BUILTIN_TEXTS

st.set_page_config(page_title="SAE unlearning", layout="wide")
st.title("Interpretable unlearning with sparse autoencoders")
st.write(
    "The engine (`unlearn_core`) and its CLI are ready; the Explore / Forget set / Compare pages are being built. "
    "Meanwhile, evaluate a forget set from the command line: "
    "`python -m unlearn_core evaluate --forget-set feature_lists/<file>.json`."
)
st.subheader("Model presets")
st.table([{"preset": p.name + (" (default)" if p.name == DEFAULT_PRESET else ""), "model": p.model_id,
           "description": p.description} for p in PRESETS.values()])
st.subheader("Built-in text sets")
st.table([{"name": k, "what": v} for k, v in BUILTIN_TEXTS.items()])
st.subheader("Feature lists shipped")
st.write([p.name for p in list_feature_lists(REPO_ROOT / "feature_lists")])
