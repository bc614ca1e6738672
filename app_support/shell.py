"""The frame every page shares: the sidebar (model, SAEs, intervention) and the loaded workspace.

Each page calls :func:`page_setup` first, so a page works the same whether ``app.py``'s navigation runs it or it is
run on its own (as Streamlit's AppTest does after a page switch).
"""

from __future__ import annotations

import streamlit as st
import torch

from unlearn_core.ablation.interventions import DEFAULT_VALUES, Intervention
from unlearn_core.errors import UnlearnError
from unlearn_core.models.loading import hf_token_available
from unlearn_core.models.presets import DEFAULT_PRESET, PRESETS

from . import state
from .resources import get_model, get_sae, model_is_loaded

MODE_HELP = {
    "zero": "set the chosen latents to 0 (error term kept)",
    "clamp": "set the chosen latents to -c wherever they fire (error term kept)",
    "scale": "multiply the chosen latents by s (error term kept)",
    "replace": "REPRODUCTION ONLY: the study's zero + replace-by-reconstruction (drops the SAE error term)",
}


def sidebar() -> state.Workspace:
    sb = st.sidebar
    sb.title("SAE unlearning")
    names = list(PRESETS)
    if st.session_state.get("preset") not in names:
        st.session_state["preset"] = DEFAULT_PRESET
    preset_name = sb.selectbox(
        "Model", names, key="preset",
        format_func=lambda n: f"{n} (offline)" if PRESETS[n].loader == "gguf-offline" else n,
        help="The offline preset needs no network or token. Hub presets need an HF token (HF_TOKEN).",
    )
    preset = PRESETS[preset_name]
    families = [f.name for f in preset.sae_families]
    if st.session_state.get("family") not in families:
        st.session_state["family"] = families[0]
    family = preset.family(sb.selectbox("SAEs", families, key="family", help=preset.family().description))
    valid_layers = [layer for layer in st.session_state.get("layers", []) if layer in family.layers]
    if not valid_layers:
        valid_layers = [layer for layer in preset.default_layers if layer in family.layers] or list(family.layers[:1])
    st.session_state["layers"] = valid_layers
    layers = sb.multiselect("Layers", list(family.layers), key="layers",
                            help=f"{family.description}. Hooked at {family.hook_template.format(layer='L')}.")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (
        ["mps"] if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else [])
    device = sb.selectbox("Device", devices, key="device")
    dtype = sb.selectbox("Precision", ["float32", "bfloat16"], key="dtype",
                         help="float32 is exact on CPU; bfloat16 halves memory (use it for Gemma 2 2B on small GPUs).")
    sb.divider()
    sb.markdown("**Intervention**")
    mode = sb.selectbox("Mode", ["zero", "clamp", "scale", "replace"], key="mode", format_func=lambda m: m,
                        help="\n".join(f"- **{m}**: {h}" for m, h in MODE_HELP.items()))
    value = None
    if mode in ("clamp", "scale"):
        key = f"strength_{mode}"  # one per mode: a clamp value of 10 must not become a scale factor of 10
        if not isinstance(st.session_state.get(key), (int, float)):
            st.session_state[key] = DEFAULT_VALUES[mode]
        label = "c: active latents are set to -c" if mode == "clamp" else "s: latents are multiplied by s"
        value = float(sb.number_input(label, min_value=0.0 if mode == "clamp" else -100.0, max_value=1000.0,
                                      step=1.0, key=key))
    relative = False
    if mode == "clamp":
        relative = sb.checkbox("c x each latent's mean activation", key="clamp_relative",
                               help="Set each active latent to -c times its mean activation on forget text (lists "
                                    "from Suggest latents / `select` carry it). Activations differ by 30x between "
                                    "layers, so one absolute c cannot fit them all.")
    site = sb.selectbox("Hook site", ["trained", "resid_pre"], key="hook_site",
                        format_func=lambda s: "SAE's trained site (correct)" if s == "trained" else "resid_pre (study's bug)")
    sb.caption(MODE_HELP[mode])
    if mode == "replace" or site == "resid_pre":
        sb.warning("Reproduction setting: results are labelled REPRODUCTION ONLY.")
    ws = state.Workspace(preset=preset, family_name=family.name, layers=sorted(layers), device=device, dtype=dtype,
                         intervention=Intervention(mode=mode, value=value, hook_site=site, relative=relative))
    fl = state.forget_set(preset.model_id)
    sb.divider()
    sb.markdown(f"**Forget set:** {fl.name} — {fl.total_latents} latents")
    if state.has_unsaved_changes():
        sb.warning("Unsaved changes (save on the Forget set page).")
    return ws


def load_workspace(ws: state.Workspace) -> None:
    """Load the model and SAEs (shared across sessions); failures become a message, not a crash."""
    if ws.preset.needs_hf_token and not hf_token_available():
        ws.error = (f"{ws.preset.name} downloads {ws.preset.model_id} from the Hugging Face hub, which needs a token: "
                    "set HF_TOKEN (environment or .streamlit/secrets.toml) after accepting the model's licence. "
                    f"The offline preset {DEFAULT_PRESET} needs neither token nor network.")
        return
    first = not model_is_loaded(ws.preset.name, ws.device, ws.dtype)
    try:
        if first:
            with st.status(f"Loading {ws.preset.model_id} ({ws.preset.name})…", expanded=True) as status:

                def report(message: str) -> None:
                    # A click during the load makes Streamlit raise here to restart the script; finishing the
                    # load first matters more (it would otherwise start over), so the interruption waits.
                    try:
                        status.write(message)
                    except Exception:  # noqa: BLE001
                        pass

                ws.lm = get_model(ws.preset.name, ws.device, ws.dtype, progress=report)
                status.update(label=f"{ws.preset.model_id} loaded", state="complete", expanded=False)
        else:
            ws.lm = get_model(ws.preset.name, ws.device, ws.dtype)
        family = ws.preset.family(ws.family_name)
        with st.spinner("Loading SAEs…"):
            ws.saes = [get_sae(family.ref(layer), ws.device, ws.dtype) for layer in ws.layers]
    except UnlearnError as exc:
        ws.error = str(exc)
    except Exception as exc:  # noqa: BLE001 - anything else while loading is shown, not a traceback
        ws.error = f"loading {ws.preset.model_id} failed: {type(exc).__name__}: {exc}"




def page_setup(needs_model: bool = True) -> state.Workspace:
    """Draw the sidebar and return this run's workspace; load the model (once per process) when the page needs it
    or it is already loaded. Failures become ``ws.error``, a message for the page to show."""
    state.keep_widget_state()
    ws = sidebar()
    st.session_state["_workspace"] = ws
    if needs_model or model_is_loaded(ws.preset.name, ws.device, ws.dtype):
        load_workspace(ws)
    state.show_flashes()
    return ws
