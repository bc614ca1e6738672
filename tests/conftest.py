"""Shared fixtures: the tiny random transformer (see ``tiny_models``) and the real offline model."""

from __future__ import annotations

import os

import pytest
import torch
from tiny_models import make_tiny_model

from unlearn_core.models.loading import LoadedModel

# Tests never reach the hub: whatever would be downloaded must come from a local stand-in.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_grad_enabled(False)


@pytest.fixture(scope="session")
def tiny_lm() -> LoadedModel:
    return make_tiny_model()


@pytest.fixture(scope="session")
def real_lm() -> LoadedModel:
    """The real offline Gemma 3 270M (converted from its PyPI GGUF package on first use, then cached)."""
    from unlearn_core.models.loading import load_model

    return load_model("gemma-3-270m-offline", device="cpu", dtype="float32")


@pytest.fixture(autouse=True)
def _fresh_neuronpedia_breakers():
    """Each test starts with every Neuronpedia circuit breaker closed (they are process-wide by design)."""
    from unlearn_core.saes.neuronpedia.breaker import reset_breakers

    reset_breakers()
    yield
    reset_breakers()
