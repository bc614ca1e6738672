"""Process-wide resources shared by every app session: the model, SAEs, dashboards, the Neuronpedia client.

``st.cache_resource`` returns one *slot* per key; the slow load happens outside the cached function (under the
slot's lock), so it can report progress on the page that triggered it, and a failure is not cached: the next run
tries again. Everything in here is read-only once loaded; interventions are scoped per call by ``unlearn_core``.

The app is shared (one process serves every visitor, e.g. through a public tunnel), and a loaded SAE stays in memory
for the life of the process, so :func:`get_sae` loads only what :func:`unlearn_core.saes.allow.check_sae_allowed`
allows for the sidebar's preset: its SAE families and the folders shipped in ``saes/`` (plus any the operator lists
in ``$UNLEARN_EXTRA_SAES``). Every page loads SAEs through it, so an imported list cannot make the server download or
hold anything else. Slots of local SAEs and of dashboards are keyed by the weights too, so retrained weights under
the same reference never meet the old ones' dashboards.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import streamlit as st

from unlearn_core.explain.dashboard_cache import find_dashboards
from unlearn_core.explain.dashboards import Dashboards
from unlearn_core.models.loading import LoadedModel, load_model
from unlearn_core.models.presets import ModelPreset
from unlearn_core.saes.allow import check_sae_allowed
from unlearn_core.saes.loading import LoadedSae, load_sae, resolve_local_path
from unlearn_core.saes.neuronpedia import NeuronpediaClient, api_key_from

T = TypeVar("T")
log = logging.getLogger(__name__)
EXTRA_SAES_ENV = "UNLEARN_EXTRA_SAES"
"""Comma-separated SAE references the operator also allows (the server's environment; visitors cannot set it)."""


@dataclass
class Slot(Generic[T]):
    """A value loaded once per process, under a lock so two sessions never load it twice."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    value: T | None = None

    def get(self, load: Callable[[], T]) -> T:
        if self.value is not None:
            return self.value
        with self.lock:
            if self.value is None:
                self.value = load()
            return self.value


@st.cache_resource(show_spinner=False)
def _model_slot(preset: str, device: str, dtype: str) -> Slot[LoadedModel]:
    return Slot()


@st.cache_resource(show_spinner=False)
def _sae_slot(ref: str, device: str, dtype: str, files: str) -> Slot[LoadedSae]:
    return Slot()


@st.cache_resource(show_spinner=False)
def _dashboard_slot(ref: str, weights: str) -> Slot[Any]:
    return Slot()


def model_is_loaded(preset: str, device: str, dtype: str) -> bool:
    return _model_slot(preset, device, dtype).value is not None


def get_model(preset: str, device: str, dtype: str, progress: Callable[[str], None] | None = None) -> LoadedModel:
    """The shared model for these settings, loaded on first use (reporting progress through ``progress``)."""
    return _model_slot(preset, device, dtype).get(lambda: load_model(preset, device=device, dtype=dtype, progress=progress))


def extra_allowed_saes() -> tuple[str, ...]:
    """The operator's :data:`EXTRA_SAES_ENV` references."""
    return tuple(r.strip() for r in os.environ.get(EXTRA_SAES_ENV, "").split(",") if r.strip())


def get_sae(ref: str, device: str, dtype: str, *, preset: ModelPreset) -> LoadedSae:
    """The shared SAE ``ref``, loaded on first use, if the app may load it for ``preset`` (else
    :class:`~unlearn_core.errors.InputError`, before anything is downloaded or loaded)."""
    check_sae_allowed(ref, preset, extra_allowed_saes())
    return _sae_slot(ref, device, dtype, _local_files_stamp(ref)).get(lambda: load_sae(ref, device=device, dtype=dtype))


def _local_files_stamp(ref: str) -> str:
    """For a local SAE folder, the names, sizes and modification times of its files ("" for a hub release)."""
    folder = resolve_local_path(ref)
    if folder is None:
        return ""
    try:
        return ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(folder.iterdir())
                        if p.suffix in (".json", ".safetensors"))
    except OSError:
        return ""


def weights_identity(loaded: LoadedSae) -> str:
    """A digest of an SAE's weights (a sample of each tensor's bytes and its shape): two SAEs under one reference
    with different weights get different identities."""
    import torch

    digest = hashlib.sha256(loaded.ref.encode())
    with torch.inference_mode():
        for name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
            tensor = getattr(loaded.sae, name, None)
            if isinstance(tensor, torch.Tensor):
                flat = tensor.detach().reshape(-1)
                sample = flat[:: max(1, flat.numel() // 4096)]
                digest.update(f"{name}{tuple(tensor.shape)}".encode())
                digest.update(sample.float().cpu().numpy().tobytes())
    return digest.hexdigest()[:24]


def get_dashboards(loaded: LoadedSae) -> Dashboards | None:
    """Shipped or previously computed dashboards of an SAE, or None (computing them is an explicit user action)."""
    slot = _dashboard_slot(loaded.ref, weights_identity(loaded))
    if slot.value is not None:
        return slot.value[0]
    try:
        found = find_dashboards(loaded)
    except Exception as exc:  # noqa: BLE001 - a broken cache file must not take the page down; it only costs the dashboard
        log.warning("dashboards of %s unavailable: %s", loaded.ref, exc)
        return None
    if found is not None:
        slot.value = (found,)
    return found


@st.cache_resource(show_spinner=False)
def _prompt_counts_slot(preset: str, device: str, dtype: str, ref: str, weights: str) -> Slot[Any]:
    return Slot()


def get_reference_prompt_counts(preset: str, device: str, dtype: str, lm: LoadedModel, loaded: LoadedSae) -> Any:
    """Each latent's firing counts on the everyday reference prompts (the specificity ranking's second reference),
    computed once per model, precision and SAE weights and shared by every session (a second or two)."""
    from unlearn_core.explain.explore import reference_prompt_counts

    slot = _prompt_counts_slot(preset, device, dtype, loaded.ref, weights_identity(loaded))
    return slot.get(lambda: reference_prompt_counts(lm, [loaded])[loaded.ref])


def remember_dashboards(loaded: LoadedSae, boards: Dashboards) -> None:
    _dashboard_slot(loaded.ref, weights_identity(loaded)).value = (boards,)


def _secrets() -> dict[str, Any]:
    try:
        return dict(st.secrets)
    except Exception:  # no secrets.toml is the normal case; Streamlit raises on access then
        return {}


@st.cache_resource(show_spinner=False)
def _neuronpedia_client(base_url: str | None, key_fingerprint: int) -> NeuronpediaClient:
    return NeuronpediaClient(base_url=base_url, api_key=api_key_from(_secrets()))


def neuronpedia_client() -> NeuronpediaClient:
    """The shared client; a new one when the base URL or key changes (the key itself is never a cache key)."""
    key = api_key_from(_secrets())
    return _neuronpedia_client(os.environ.get("NEURONPEDIA_API_URL"), hash(key) if key else 0)
