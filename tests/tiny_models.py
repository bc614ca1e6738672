"""Tiny stand-ins for tests: a byte tokenizer, a 3-layer random transformer and dense random JumpReLU SAEs.

Import them as ``from tiny_models import ...`` (pytest puts ``tests/`` on the path); ``conftest.py`` turns them into
the shared fixtures.
"""

from __future__ import annotations

from typing import Any

import torch

from unlearn_core.experiments.bench import random_jumprelu_sae
from unlearn_core.models.loading import LoadedModel
from unlearn_core.models.presets import get_preset
from unlearn_core.saes.loading import LoadedSae

__all__ = ["ByteTokenizer", "make_tiny_model", "random_jumprelu_sae", "tiny_sae"]


class ByteTokenizer:
    """The smallest tokenizer with the Hugging Face surface the package uses: one token per UTF-8 byte."""

    pad_token_id = 0
    bos_token_id = 1
    eos_token_id = 2
    padding_side = "right"
    offset = 3

    def __call__(self, texts: str | list[str], add_special_tokens: bool = False) -> dict[str, Any]:
        def enc(t: str) -> list[int]:
            ids = [b + self.offset for b in t.encode("utf-8")]
            return [self.bos_token_id, *ids] if add_special_tokens else ids

        if isinstance(texts, str):
            return {"input_ids": enc(texts)}
        return {"input_ids": [enc(t) for t in texts]}

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(i - self.offset for i in ids if i >= self.offset).decode("utf-8", errors="replace")


def make_tiny_model(seed: int = 0) -> LoadedModel:
    """A 3-layer rotary RMSNorm transformer with random weights (d_model 32), wrapped like a real preset model."""
    from sae_lens import HookedSAETransformer
    from transformer_lens import HookedTransformerConfig

    torch.manual_seed(seed)
    cfg = HookedTransformerConfig(
        n_layers=3,
        d_model=32,
        d_head=8,
        n_heads=4,
        d_mlp=64,
        d_vocab=256 + ByteTokenizer.offset,
        n_ctx=128,
        act_fn="gelu",
        normalization_type="RMS",
        positional_embedding_type="rotary",
        default_prepend_bos=True,
        seed=seed,
    )
    model = HookedSAETransformer(cfg)
    model.tokenizer = ByteTokenizer()
    model.eval()
    return LoadedModel(model=model, preset=get_preset("gemma-3-270m-offline"), device="cpu", dtype=torch.float32)


def tiny_sae(layer: int = 1, d_sae: int = 96, seed: int = 0, site: str = "hook_resid_post") -> LoadedSae:
    """A random JumpReLU SAE on the tiny model, dense enough that latents fire on most tokens."""
    loaded = random_jumprelu_sae(32, d_sae, f"blocks.{layer}.{site}", seed=seed)
    with torch.no_grad():
        loaded.sae.threshold.fill_(0.05)
        loaded.sae.W_dec.mul_(4.0)
    return loaded


TOKENS = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 46, 47], [1, 50, 60, 70, 80, 90, 100, 110, 120]])
"""Two BOS-first sequences the intervention tests run."""


def logits(lm: LoadedModel, hooks: Any = (), tokens: torch.Tensor = TOKENS) -> torch.Tensor:
    """The model's logits on ``tokens`` with ``hooks`` on."""
    from unlearn_core.ablation.interventions import intervened

    with intervened(lm, hooks) as model:
        return model(tokens)


def resid_at(lm: LoadedModel, hook_name: str, hooks: Any = (), tokens: torch.Tensor = TOKENS) -> torch.Tensor:
    """The activation at ``hook_name`` as the rest of the model sees it (after any edit there)."""
    from unlearn_core.ablation.interventions import intervened

    seen = {}

    def grab(act: torch.Tensor, hook: Any) -> None:
        seen["x"] = act.clone()

    with intervened(lm, [*hooks, (hook_name, grab)]) as model:
        model(tokens)
    return seen["x"]
