"""Loading SAEs through sae_lens, with the facts the rest of the package needs about each.

A reference is either ``"<release>/<sae_id>"`` (a sae_lens pretrained release, e.g.
``gemma-scope-2-270m-pt-res/layer_12_width_16k_l0_medium``) or a path to a local sae_lens directory
(``cfg.json`` + ``sae_weights.safetensors``, as written by ``SAE.save_model``).

SAEs whose ``normalize_activations`` keeps per-call state on the SAE object (``layer_norm``, ``constant_norm_rescale``:
``encode`` stores the input's scale for the next ``decode``) are refused: one loaded SAE is shared by every caller,
and encodes outside the model's lock (statistics, dashboards, Explore) could overwrite another caller's state between
its encode and decode.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from unlearn_core.errors import ModelUnavailableError
from unlearn_core.models.hub import describe_hub_error
from unlearn_core.models.presets import REPO_ROOT


@dataclass(frozen=True)
class LoadedSae:
    """An SAE together with where it sits and how it is named elsewhere."""

    sae: Any  # sae_lens.SAE
    ref: str
    hook_name: str
    """The site the SAE was trained on (``sae.cfg.metadata.hook_name``): interventions go here."""
    layer: int
    neuronpedia: str | None
    """``"<modelId>/<source>"`` on Neuronpedia, or None if Neuronpedia does not host this SAE."""

    @property
    def width(self) -> int:
        return int(self.sae.cfg.d_sae)


def layer_of_hook(hook_name: str) -> int:
    """The block index in a TransformerLens hook name such as ``blocks.12.hook_resid_post``; ValueError if none."""
    from sae_lens.util import extract_layer_from_tlens_hook_name  # lazy: importing sae_lens takes seconds

    layer = extract_layer_from_tlens_hook_name(hook_name) if hook_name.startswith("blocks.") else None
    if layer is None:
        raise ValueError(f"cannot find a layer in hook name {hook_name!r}")
    return layer


def resolve_local_path(ref: str) -> Path | None:
    """The directory a reference points to, if it is a local SAE directory (absolute, or repo-relative).

    Two layouts are understood: sae_lens' own (``cfg.json`` + ``sae_weights.safetensors``) and a downloaded
    Gemma Scope 2 folder (``params.safetensors``, e.g. ``.../resid_post/layer_12_width_16k_l0_medium``).
    """
    for candidate in (Path(ref).expanduser(), REPO_ROOT / ref):
        if (candidate / "cfg.json").is_file() or (candidate / "params.safetensors").is_file():
            return candidate.resolve()
    return None


def gemma_scope_2_disk_loader(
    path: str | Path, device: str = "cpu", cfg_overrides: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """sae_lens disk converter for a local copy of a Gemma Scope 2 residual SAE folder (hub layout).

    Mirrors sae_lens' own Gemma 3 hub loader: JumpReLU, trained on ``blocks.{L}.hook_resid_post``, no b_dec
    subtraction at the input. The layer comes from the folder name, as in sae_lens.
    """
    import json

    from safetensors.torch import load_file

    path = Path(path)
    match = re.search(r"layer_(\d+)", path.name)
    if match is None or "resid_post" not in str(path):
        raise ModelUnavailableError(
            f"{path} looks like a Gemma Scope 2 folder but is not a residual one named like "
            "'resid_post/layer_12_width_16k_l0_medium'"
        )
    raw_cfg: dict[str, Any] = {}
    if (path / "config.json").is_file():
        raw_cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    raw = load_file(str(path / "params.safetensors"), device=device)
    d_in, d_sae = raw["w_enc"].shape
    layer = int(match.group(1))
    model_name = str(raw_cfg.get("model_name", "google/gemma-3-270m"))
    if not model_name.startswith("google/"):
        model_name = "google/" + model_name
    cfg = {
        "architecture": "jumprelu",
        "d_in": int(d_in),
        "d_sae": int(d_sae),
        "dtype": "float32",
        "device": device,
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "none",
        # sae_lens moves these top-level keys into cfg.metadata
        "model_name": model_name.replace("-v3", "-3").replace("-pt", ""),
        "hook_name": f"blocks.{layer}.hook_resid_post",
        "prepend_bos": True,
        "neuronpedia_id": _gemma_scope_2_neuronpedia_id(path.name),
    }
    if cfg_overrides:
        cfg.update(cfg_overrides)
    state = {"W_enc": raw["w_enc"], "W_dec": raw["w_dec"], "b_enc": raw["b_enc"], "b_dec": raw["b_dec"],
             "threshold": raw["threshold"]}
    return cfg, state


def _gemma_scope_2_neuronpedia_id(sae_id: str) -> str | None:
    for release in ("gemma-scope-2-270m-pt-res", "gemma-scope-2-270m-pt-res-all"):
        found = release_neuronpedia_id(release, sae_id)
        if found:
            return found
    return None


def split_release_ref(ref: str) -> tuple[str, str]:
    """Split ``"<release>/<sae_id>"`` at the first slash (sae ids may contain slashes, releases do not)."""
    release, sep, sae_id = ref.partition("/")
    if not sep or not sae_id:
        raise ModelUnavailableError(
            f"SAE reference {ref!r} is neither a local sae_lens directory (with cfg.json) nor '<release>/<sae_id>'"
        )
    return release, sae_id


@lru_cache(maxsize=1)
def _pretrained_directory() -> dict[str, Any]:
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    return get_pretrained_saes_directory()


def pretrained_releases() -> dict[str, Any]:
    """sae_lens' whole pretrained-SAE directory (release name -> entry), read once per process (no download)."""
    return _pretrained_directory()


def release_lookup(release: str) -> Any | None:
    """sae_lens' directory entry of a pretrained release (repo id, SAE folders, Neuronpedia ids), or None."""
    return _pretrained_directory().get(release)


def release_neuronpedia_id(release: str, sae_id: str) -> str | None:
    """Neuronpedia id for a released SAE, from sae_lens' directory (no download)."""
    lookup = _pretrained_directory().get(release)
    if lookup is None:
        return None
    return (lookup.neuronpedia_id or {}).get(sae_id)


STATEFUL_NORMALIZATIONS = ("layer_norm", "constant_norm_rescale")
"""sae_lens ``normalize_activations`` settings whose ``encode`` leaves state on the SAE for ``decode``."""


def load_sae(
    ref: str, device: str = "cpu", dtype: str | torch.dtype = "float32", allow_stateful: bool = False
) -> LoadedSae:
    """Load an SAE by reference; errors come back as :class:`ModelUnavailableError` with a clear message.

    SAEs that keep per-call normalisation state (:data:`STATEFUL_NORMALIZATIONS`) are refused unless
    ``allow_stateful``, which only a caller that never shares the SAE between threads may pass.
    """
    from sae_lens import SAE
    from sae_lens.util import dtype_to_str

    dtype_name = dtype_to_str(dtype) if isinstance(dtype, torch.dtype) else dtype
    local = resolve_local_path(ref)
    if local is not None:
        converter = {} if (local / "cfg.json").is_file() else {"converter": gemma_scope_2_disk_loader}
        try:
            sae = SAE.load_from_disk(str(local), device=device, dtype=dtype_name, **converter)
        except ModelUnavailableError:
            raise
        except Exception as exc:
            raise ModelUnavailableError(f"could not load the local SAE at {local}: {exc}") from exc
    else:
        release, sae_id = split_release_ref(ref)
        lookup = _pretrained_directory().get(release)
        if lookup is None:
            raise ModelUnavailableError(
                f"SAE reference {ref!r}: no local directory with cfg.json there, and {release!r} is not a "
                "sae_lens release"
            )
        if sae_id not in lookup.saes_map:
            raise ModelUnavailableError(f"release {release!r} has no SAE {sae_id!r}")
        try:
            sae = SAE.from_pretrained(release, sae_id, device=device, dtype=dtype_name)
        except Exception as exc:
            raise ModelUnavailableError(describe_hub_error(f"SAE {ref}", exc)) from exc
    sae.eval()
    norm = sae.cfg.normalize_activations
    if norm in STATEFUL_NORMALIZATIONS and not allow_stateful:
        raise ModelUnavailableError(
            f"SAE {ref} uses normalize_activations={norm!r}, which keeps per-call state on the SAE object "
            "(encode stores the input's scale for decode), so callers sharing it could mix each other's activations; "
            "such SAEs are not supported here"
        )
    hook_name = sae.cfg.metadata.hook_name
    if not hook_name:
        raise ModelUnavailableError(f"SAE {ref!r} does not say which hook it was trained on (metadata.hook_name)")
    neuronpedia = sae.cfg.metadata.neuronpedia_id
    if neuronpedia is None and local is None:
        neuronpedia = release_neuronpedia_id(*split_release_ref(ref))
    return LoadedSae(
        sae=sae, ref=ref, hook_name=hook_name, layer=layer_of_hook(hook_name), neuronpedia=neuronpedia
    )
