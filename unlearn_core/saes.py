"""Loading SAEs through sae_lens, with the facts the rest of the package needs about each.

A reference is either ``"<release>/<sae_id>"`` (a sae_lens pretrained release, e.g.
``gemma-scope-2-270m-pt-res/layer_12_width_16k_l0_medium``) or a path to a local sae_lens directory
(``cfg.json`` + ``sae_weights.safetensors``, as written by ``SAE.save_model``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from .errors import ModelUnavailableError
from .models import describe_hub_error
from .presets import REPO_ROOT

_LAYER_RE = re.compile(r"blocks\.(\d+)\.")


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
    """The block index in a TransformerLens hook name such as ``blocks.12.hook_resid_post``."""
    match = _LAYER_RE.match(hook_name)
    if match is None:
        raise ValueError(f"cannot find a layer in hook name {hook_name!r}")
    return int(match.group(1))


def resolve_local_path(ref: str) -> Path | None:
    """The directory a reference points to, if it is a local sae_lens directory (absolute, or repo-relative)."""
    for candidate in (Path(ref).expanduser(), REPO_ROOT / ref):
        if (candidate / "cfg.json").is_file():
            return candidate.resolve()
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


def release_neuronpedia_id(release: str, sae_id: str) -> str | None:
    """Neuronpedia id for a released SAE, from sae_lens' directory (no download)."""
    lookup = _pretrained_directory().get(release)
    if lookup is None:
        return None
    return (lookup.neuronpedia_id or {}).get(sae_id)


def load_sae(ref: str, device: str = "cpu", dtype: str | torch.dtype = "float32") -> LoadedSae:
    """Load an SAE by reference; errors come back as :class:`ModelUnavailableError` with a clear message."""
    from sae_lens import SAE

    dtype_name = str(dtype).removeprefix("torch.") if isinstance(dtype, torch.dtype) else dtype
    local = resolve_local_path(ref)
    if local is not None:
        try:
            sae = SAE.load_from_disk(str(local), device=device, dtype=dtype_name)
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
    hook_name = sae.cfg.metadata.hook_name
    if not hook_name:
        raise ModelUnavailableError(f"SAE {ref!r} does not say which hook it was trained on (metadata.hook_name)")
    neuronpedia = sae.cfg.metadata.neuronpedia_id
    if neuronpedia is None and local is None:
        neuronpedia = release_neuronpedia_id(*split_release_ref(ref))
    return LoadedSae(
        sae=sae, ref=ref, hook_name=hook_name, layer=layer_of_hook(hook_name), neuronpedia=neuronpedia
    )
