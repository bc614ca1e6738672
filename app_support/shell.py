"""The frame every page shares: the sidebar (model, SAEs, intervention) and the loaded workspace.

``app.py`` draws the sidebar once per run, around the page: ``with shell.frame(): page.run()``. The page reads the
choices with :func:`current_settings`, or gets them with the loaded model and SAEs from :func:`page_setup`. The
sidebar's widgets are drawn on every run, so their values survive page switches by themselves.

One exception: a folder named ``pages/`` next to ``app.py`` makes Streamlit fall back to its legacy multipage mode
when no ``st.navigation`` call has been seen yet in this process: it then shows its own directory navigation
(``app``, ``compare``, ``explore``, ``forget set``) and runs the page the URL names *without* ``app.py``. A fresh
server whose first visitor opens ``/compare`` does so, and Streamlit's AppTest does on every run. The page's
:func:`page_setup` then hands the run over to ``app.py`` (:func:`_run_app_instead`): app.py's ``st.navigation``
replaces the directory navigation with the app's three pages and runs the same page inside the frame, so every
URL gives the same app, and the process leaves legacy mode for good.

The frame also keeps the session's draft (:mod:`app_support.drafts`): looked for when a session starts, written at
the end of every run.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import streamlit as st
import torch
from streamlit.runtime.scriptrunner import get_script_run_ctx

from unlearn_core.ablation.gating import DEFAULT_GATE_CORPUS, DEFAULT_GATE_QUANTILE, Gate
from unlearn_core.ablation.interventions import DEFAULT_VALUES, Intervention
from unlearn_core.errors import UnlearnError
from unlearn_core.models.hub import hf_token_available
from unlearn_core.models.precision import AUTO_DTYPE, auto_dtype, describe_precision
from unlearn_core.models.presets import DEFAULT_PRESET, PRESETS

from . import drafts, state
from .resources import get_model, get_sae, model_is_loaded
from .safe_text import md_escape
from .state import PERSIST, Key

SIDEBAR_PRECISIONS: tuple[str, ...] = (AUTO_DTYPE, "float32", "bfloat16")
"""The sidebar's precision choices, its default first."""

APP_SCRIPT = Path(__file__).resolve().parent.parent / "app.py"

MODE_HELP = {
    "zero": "set the chosen latents to 0 (error term kept)",
    "clamp": "set the chosen latents to -c wherever they fire (error term kept)",
    "scale": "multiply the chosen latents by s (error term kept)",
    "replace": "REPRODUCTION ONLY: the study's zero + replace-by-reconstruction (drops the SAE error term)",
}


def draw_sidebar() -> state.Settings:
    """Draw the sidebar and remember its choices for the page (once per run, through :func:`frame`)."""
    sb = st.sidebar
    sb.title("SAE unlearning")
    names = list(PRESETS)
    if state.widget_value(Key.PRESET) not in names:
        state.set_widget(Key.PRESET, DEFAULT_PRESET)
    preset_name = sb.selectbox(
        "Model", names, key=Key.PRESET,
        format_func=lambda n: f"{n} (offline)" if PRESETS[n].loader == "gguf-offline" else n,
        help="The offline preset needs no network or token. Hub presets need an HF token (HF_TOKEN).",
    )
    preset = PRESETS[preset_name]
    families = [f.name for f in preset.sae_families]
    if state.widget_value(Key.FAMILY) not in families:
        state.set_widget(Key.FAMILY, families[0])
    family = preset.family(sb.selectbox("SAEs", families, key=Key.FAMILY, help=preset.family().description))
    valid_layers = [layer for layer in state.widget_value(Key.LAYERS, []) if layer in family.layers]
    if not valid_layers:
        valid_layers = [layer for layer in preset.default_layers if layer in family.layers] or list(family.layers[:1])
    state.set_widget(Key.LAYERS, valid_layers)
    layers = sb.multiselect("Layers", list(family.layers), key=Key.LAYERS,
                            help=f"{family.description}. Hooked at {family.hook_template.format(layer='L')}.")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (
        ["mps"] if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else [])
    device = sb.selectbox("Device", devices, key=Key.DEVICE)
    precision = sb.selectbox(
        "Precision", list(SIDEBAR_PRECISIONS), key=Key.DTYPE,
        format_func=lambda p, d=device: f"auto: {describe_precision(d, AUTO_DTYPE)}" if p == AUTO_DTYPE else p,
        help="auto: bfloat16 where the hardware multiplies it natively (AMX / AVX512-BF16 CPUs, recent GPUs), else "
             "float32 - measured drift in docs/benchmarks.md. float32 is the exact reference; bfloat16 halves memory "
             "(use it for Gemma 2 2B on small GPUs).")
    dtype = auto_dtype(device) if precision == AUTO_DTYPE else precision  # the concrete dtype: caches key on it
    sb.divider()
    sb.markdown("**Intervention**")
    mode = sb.selectbox("Mode", ["zero", "clamp", "scale", "replace"], key=Key.MODE, format_func=lambda m: m,
                        help="\n".join(f"- **{m}**: {h}" for m, h in MODE_HELP.items()))
    value = None
    if mode in ("clamp", "scale"):
        key = Key.strength(mode)  # kept while another mode is chosen (persist_state)
        if not isinstance(state.widget_value(key), (int, float)):
            state.set_widget(key, DEFAULT_VALUES[mode])
        label = "c: active latents are set to -c" if mode == "clamp" else "s: latents are multiplied by s"
        value = float(sb.number_input(label, min_value=0.0 if mode == "clamp" else -100.0, max_value=1000.0,
                                      step=1.0, key=key, persist_state=PERSIST))
    relative = False
    if mode == "clamp":
        relative = sb.checkbox("c x each latent's mean activation", key=Key.CLAMP_RELATIVE, persist_state=PERSIST,
                               help="Set each active latent to -c times its mean activation on forget text (lists "
                                    "from Suggest latents / `select` carry it). Activations differ by 30x between "
                                    "layers, so one absolute c cannot fit them all.")
    gate = None
    if mode in ("zero", "clamp", "scale"):
        if sb.checkbox("Gate: only on-topic positions", key=Key.GATE, persist_state=PERSIST,
                       help="Edit only where the forget set's latents, summed per SAE, exceed what they reach on "
                            f"general text: the chosen quantile of that sum on {DEFAULT_GATE_CORPUS} (calibrated for "
                            "the current forget set when Compare runs). Lists from `select --intervention "
                            "clamp:4x@gate` carry it."):
            state.widget_default(Key.GATE_QUANTILE, DEFAULT_GATE_QUANTILE)
            quantile = sb.number_input("gate quantile", min_value=0.5, max_value=0.9999, step=0.005, format="%.4f",
                                       key=Key.GATE_QUANTILE, persist_state=PERSIST)
            gate = Gate(quantile=float(quantile))
    site = sb.selectbox("Hook site", ["trained", "resid_pre"], key=Key.HOOK_SITE,
                        format_func=lambda s: "SAE's trained site (correct)" if s == "trained" else "resid_pre (study's bug)")
    sb.caption(MODE_HELP[mode])
    if mode == "replace" or site == "resid_pre":
        sb.warning("Reproduction setting: results are labelled REPRODUCTION ONLY.")
    settings = state.Settings(preset=preset, family_name=family.name, layers=sorted(layers), device=device, dtype=dtype,
                              intervention=Intervention(mode=mode, value=value, hook_site=site, relative=relative,
                                                            gate=gate))
    state.session().settings = settings
    fl = state.forget_set(preset.model_id)
    sb.divider()
    sb.markdown(f"**Forget set:** {md_escape(fl.name)} — {fl.total_latents} latents")
    if state.has_unsaved_changes():
        sb.warning("Unsaved changes (save on the Forget set page).")
    draft = drafts.pending()
    if draft is not None:
        sb.info(f"An unsaved draft of {md_escape(draft.feature_list.name)} can be restored on the Forget set page.")
    return settings


@contextmanager
def frame() -> Iterator[state.Settings]:
    """app.py's frame around the page: draw the sidebar once for this run; the page reads its settings. At the
    end of the run, whatever ended it, the forget set's draft is saved."""
    drafts.begin_run()
    settings = _draw_frame()
    _FRAME.drawn = True
    try:
        yield settings
    finally:  # also when the page stops or reruns (st.stop, st.rerun raise)
        _FRAME.drawn = False
        drafts.autosave()


_FRAME = threading.local()
"""``drawn``: True while app.py's frame (sidebar drawn for this run) is around the page running in this thread.
Per script thread, not per session: when a click interrupts a run, Streamlit may start the new run in a new thread
before the old one has finished unwinding, and a session-wide flag cleared by the old run then made the new run's
page draw the sidebar a second time (a duplicate widget key)."""


def _draw_frame() -> state.Settings:
    return draw_sidebar()


def _run_app_instead() -> None:
    """Run app.py in place of a page Streamlit started without it (legacy ``pages/`` mode, see the module's
    docstring), then end the page's own run.

    app.py runs as Streamlit runs a main script, under the main script's hash (widget ids include the hash of the
    script drawing them, so the sidebar keeps its values whichever way a run started); its navigation resolves the
    URL's page and runs it inside the frame, where :func:`page_setup` finds the sidebar drawn.
    """
    ctx = get_script_run_ctx()
    if ctx is None:  # bare mode (python pages/x.py): no navigation to hand over to
        _draw_frame()
        return
    code = compile(APP_SCRIPT.read_bytes(), str(APP_SCRIPT), "exec")
    with ctx.run_with_active_hash(ctx.pages_manager.main_script_hash):
        exec(code, {"__name__": "__main__", "__file__": str(APP_SCRIPT)})  # noqa: S102 - the app's own entry point
    st.stop()


def current_settings() -> state.Settings:
    """The sidebar's choices in this run (drawn by :func:`frame` or :func:`page_setup` before the page's body)."""
    settings = state.session().settings
    if settings is None:
        raise RuntimeError("the sidebar is drawn (shell.frame in app.py, or shell.page_setup) before settings are read")
    return settings


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
        with st.spinner("Loading SAEs…"):
            ws.saes = [get_sae(ws.family.ref(layer), ws.device, ws.dtype, preset=ws.preset) for layer in ws.layers]
    except UnlearnError as exc:
        ws.error = str(exc)
    except Exception as exc:  # noqa: BLE001 - anything else while loading is shown, not a traceback
        ws.error = f"loading {ws.preset.model_id} failed: {type(exc).__name__}: {exc}"


def page_setup(needs_model: bool = True) -> state.Workspace:
    """This run's workspace from the sidebar's settings; load the model (once per process) when the page needs it
    or it is already loaded. Failures become ``ws.error``, a plain-text message for the page to show (escaped).

    Called first by every page; a page run without app.py never gets past it (:func:`_run_app_instead`)."""
    if not getattr(_FRAME, "drawn", False):
        _run_app_instead()
    ws = state.Workspace.from_settings(current_settings())
    state.session().workspace = ws
    if needs_model or model_is_loaded(ws.preset.name, ws.device, ws.dtype):
        load_workspace(ws)
    state.show_flashes()
    return ws
