"""sae_lens' real hub code path for Gemma Scope 2, against a loopback stand-in of the hub (never the internet)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save
from standins.fake_hub import FakeHub

REPO = Path(__file__).resolve().parent.parent
FOLDER = "google/gemma-scope-2-270m-pt/resid_post/layer_12_width_16k_l0_medium"
LOAD = (
    "from unlearn_core.saes.loading import load_sae\n"
    "from unlearn_core.errors import UnlearnError\n"
    "try:\n"
    "    s = load_sae('gemma-scope-2-270m-pt-res/layer_12_width_16k_l0_medium')\n"
    "    print('OK', s.hook_name, s.width, s.neuronpedia, s.sae.cfg.architecture())\n"
    "except UnlearnError as e:\n"
    "    print('ERR', e)\n"
)


def _params(d_in: int = 640, d_sae: int = 64) -> bytes:
    g = torch.Generator().manual_seed(0)
    tensors = {
        "w_enc": torch.randn(d_in, d_sae, generator=g), "w_dec": torch.randn(d_sae, d_in, generator=g),
        "b_enc": torch.zeros(d_sae), "b_dec": torch.zeros(d_in), "threshold": torch.full((d_sae,), 0.1),
    }
    return save(tensors)


def _run(hub: FakeHub, tmp_path: Path, **env_extra: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"),
           "HF_TOKEN": "hf_test_token_never_printed", **env_extra}
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("TRANSFORMERS_OFFLINE", None)
    proc = subprocess.run([sys.executable, "-c", LOAD], capture_output=True, text=True, env=env, timeout=300)
    assert "hf_test_token_never_printed" not in proc.stdout + proc.stderr
    return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-2000:]


@pytest.fixture()
def files() -> dict[str, bytes]:
    return {
        f"{FOLDER}/params.safetensors": _params(),
        f"{FOLDER}/config.json": json.dumps({"architecture": "jump_relu", "model_name": "gemma-v3-270m-pt"}).encode(),
    }


def test_gemma_scope_2_sae_loads_through_the_hub_code(files, tmp_path):
    with FakeHub(files) as hub:
        out = _run(hub, tmp_path)
    assert out == "OK blocks.12.hook_resid_post 64 gemma-3-270m/12-gemmascope-2-res-16k jumprelu", out
    assert any("params.safetensors" in r for r in hub.requests)


@pytest.mark.parametrize("status,expected", [(500, "server error (HTTP 500)"), (429, "rate-limiting")])
def test_hub_errors_give_a_clear_message(files, tmp_path, status, expected):
    with FakeHub(files, fail={"params.safetensors": status}) as hub:
        out = _run(hub, tmp_path)
    assert out.startswith("ERR") and expected in out, out


def test_hub_unreachable_gives_a_clear_message(files, tmp_path):
    with FakeHub(files) as hub:
        pass
    # the stand-in is shut down: its port now refuses connections
    out = _run(hub, tmp_path)
    assert out.startswith("ERR") and "no network" in out, out
