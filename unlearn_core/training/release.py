"""Shipping trained SAEs: compact weights in sae_lens format, a model card, quality numbers, dashboards.

A shipped SAE folder (loadable by ``SAE.load_from_disk`` and by :func:`unlearn_core.saes.loading.load_sae`)::

    cfg.json                  sae_lens inference config (architecture "jumprelu")
    sae_weights.safetensors   float16 weights (loaded as float32; the card's numbers are measured on these)
    quality.json              the quality numbers of the card, machine-readable
    training.json             data, tokens, hyper-parameters and the command that reproduces the SAE
    dashboards.npz            per-latent dashboards (see unlearn_core.explain.dashboards)
    README.md                 the model card
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from unlearn_core.errors import InputError
from unlearn_core.files import write_json_atomic, write_text_atomic
from unlearn_core.models.presets import REPO_ROOT
from unlearn_core.training.quality import SaeQuality

SHIPPED_SAES_DIR = REPO_ROOT / "saes" / "gemma-3-270m"
QUALITY_FILE = "quality.json"
TRAINING_FILE = "training.json"
CARD_FILE = "README.md"
WEIGHTS_FILE = "sae_weights.safetensors"
CFG_FILE = "cfg.json"
TARGETS = {"l0": (20, 150), "fve": 0.70, "ce_loss_recovered": 0.90, "dead_fraction": 0.20}


def shipped_folder_name(layer: int, width: int) -> str:
    """``layer_9_width_4k``: Gemma Scope 2's naming, so the same layer is easy to find in both."""
    return f"layer_{layer}_width_{width // 1024}k" if width % 1024 == 0 else f"layer_{layer}_width_{width}"


def ship_sae(inference_dir: Path | str, dest: Path | str, overwrite: bool = False) -> Path:
    """Copy a saved inference SAE to ``dest`` with float16 weights (config keeps float32), atomically.

    An existing ``dest`` is only replaced with ``overwrite=True``.
    """
    inference_dir, dest = Path(inference_dir), Path(dest)
    if dest.exists() and not overwrite:
        raise InputError(f"{dest} already exists; pass --overwrite to replace the shipped SAE")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = load_file(inference_dir / WEIGHTS_FILE)
    save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}, tmp / WEIGHTS_FILE)
    cfg = json.loads((inference_dir / CFG_FILE).read_text(encoding="utf-8"))
    cfg["dtype"] = "float32"
    (tmp / CFG_FILE).write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    if dest.exists():
        old = dest.with_name(dest.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)
    return dest


def meets_targets(q: Mapping[str, Any]) -> dict[str, bool]:
    lo, hi = TARGETS["l0"]
    return {
        "l0": lo <= q["l0"] <= hi,
        "fve": q["fve"] >= TARGETS["fve"],
        "ce_loss_recovered": q["ce_loss_recovered"] >= TARGETS["ce_loss_recovered"],
        "dead_fraction": q["dead_fraction"] <= TARGETS["dead_fraction"],
    }


def write_quality(folder: Path, quality: SaeQuality, eval_texts: str) -> None:
    write_json_atomic(folder / QUALITY_FILE, {**quality.to_dict(), "eval_texts": eval_texts})


def write_card(folder: Path) -> Path:
    """(Re)write README.md from training.json and quality.json."""
    training = json.loads((folder / TRAINING_FILE).read_text(encoding="utf-8"))
    q = json.loads((folder / QUALITY_FILE).read_text(encoding="utf-8"))
    ok = meets_targets(q)
    cfg = training["config"]
    mix = training["corpus"]
    lines = [
        f"# {folder.name}: JumpReLU SAE for Gemma 3 270M, `{q['hook_name']}`",
        "",
        "Trained by this project for the offline model (`gemma-3-270m-offline`), at the same site as Google's Gemma",
        "Scope 2 SAE for this layer. Trained as sae_lens `BatchTopKTrainingSAE` (TopK auxiliary loss for dead latents),",
        "saved by sae_lens as a JumpReLU SAE with one global threshold. Weights are stored in float16.",
        "",
        "## Quality (held-out: WikiText-2 *test*, never seen in training; BOS excluded)",
        "",
        "| metric | value | target | met |",
        "|---|---|---|---|",
        f"| L0 | {q['l0']:.1f} | 20-150 | {'yes' if ok['l0'] else 'NO'} |",
        f"| FVE (mean-centred) | {q['fve']:.3f} | >= 0.70 (stretch 0.80) | {'yes' if ok['fve'] else 'NO'} |",
        f"| CE loss recovered | {q['ce_loss_recovered']:.3f} | >= 0.90 (stretch 0.95) | "
        f"{'yes' if ok['ce_loss_recovered'] else 'NO'} |",
        f"| dead latents | {100 * q['dead_fraction']:.1f}% | <= 20% | {'yes' if ok['dead_fraction'] else 'NO'} |",
        "",
        f"L0/FVE/dead over {q['n_tokens']:,} tokens; cross-entropy over {q['ce_tokens']:,} tokens: clean "
        f"{q['ce_clean']:.3f}, SAE spliced in {q['ce_spliced']:.3f}, site zero-ablated {q['ce_zero']:.3f} nats.",
        f"Evaluation texts: {q.get('eval_texts', '')}.",
        "",
        "## Training",
        "",
        f"- Data: {training['tokens_in_cache']:,} tokens cached once from the model "
        f"({training.get('cache_dtype', 'float16')}), windows of {training['context']} "
        f"tokens (BOS + {training['context'] - 1}); mix: "
        + ", ".join(f"{k} {v:,} tokens" for k, v in mix["tokens_per_source"].items())
        + f" (requested fractions {mix['mix']}). The last {training['held_out_rows']:,} cached rows were held out.",
        f"- Tokens trained on: {training['training_tokens']:,} ({cfg['epochs']} epochs over "
        f"{training['train_rows']:,} rows).",
        f"- Width {cfg['width']}, k {cfg['k']}, batch {cfg['batch_size']}, Adam lr {cfg['lr']} "
        f"({training.get('warm_up_steps_used', cfg['lr_warm_up_steps'])} warm-up steps, linear decay to 0 over the "
        f"last {cfg['lr_decay_fraction']:.0%} of steps), "
        f"aux-k coefficient {cfg['aux_loss_coefficient']:.4g}, dead window {cfg['dead_feature_window']} steps, "
        f"seed {cfg['seed']}; activations scaled to norm sqrt(d_in) while training (folded into the weights).",
        f"- Libraries: {training.get('versions', {})}. Wall time: {training.get('train_seconds', 0) / 60:.1f} min "
        "on 2 CPU cores.",
        "",
        "## Reproduce",
        "",
        "```bash",
        training["command"],
        "```",
        "",
        "Re-measure the table above: `python -m unlearn_core sae-quality` (add `--write` to update this card).",
        "",
        "Data licences: WikiText-2 and the Harry Potter Wiki text are CC BY-SA 3.0; the books are public domain.",
        "",
        "## Caveats",
        "",
        f"- The SAE adds {q['ce_spliced'] - q['ce_clean']:+.3f} nats of next-token loss when spliced in (per token, "
        "held-out text). CE loss recovered looks flattering because zero-ablating a Gemma residual stream is "
        "catastrophic; read the loss increase too.",
        "- Gemma's residual stream has massive activations (dimension 163, on tokens such as apostrophes and spaces) "
        "that carry most of the variance, so FVE is dominated by them.",
        *(
            ["- This SAE was trained from a float16 activation cache, in which those massive values were clipped at "
             "65,504 on 0.13-0.2% of tokens at layers 9-15 (none at layer 5); the default cache is now bfloat16."]
            if training.get("cache_dtype", "float16") == "float16" else []
        ),
        "- The Harry Potter fan-wiki text in the training mix is the same text as the built-in `hp-fanwiki` evaluation",
        "  set: forgetting measured on that set with latents picked from it is in-sample; use your own held-out text",
        "  for claims.",
    ]
    notes = training.get("notes")
    if notes:
        lines += ["", "## Notes", "", notes]
    return write_text_atomic(folder / CARD_FILE, "\n".join(lines) + "\n")


def quality_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of quality numbers, one row per SAE."""
    out = [
        "| SAE | hook | width | L0 | FVE | CE loss recovered | loss added (nats) | dead |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for q in rows:
        out.append(
            f"| {q.get('name', '')} | `{q['hook_name']}` | {q['width']} | {q['l0']:.1f} | {q['fve']:.3f} | "
            f"{q['ce_loss_recovered']:.3f} | {q['ce_spliced'] - q['ce_clean']:+.3f} | {100 * q['dead_fraction']:.1f}% |"
        )
    return "\n".join(out)


def shipped_sae_folders(root: Path = SHIPPED_SAES_DIR) -> list[Path]:
    """Shipped SAE folders under ``root``, by layer."""
    if not root.exists():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and (p / CFG_FILE).exists() and not p.name.endswith((".tmp", ".old"))]
    return sorted(found, key=_layer_sort_key)


def _layer_sort_key(path: Path) -> tuple[int, str]:
    match = re.match(r"layer_(\d+)", path.name)
    return (int(match.group(1)) if match else 10**6, path.name)


def folder_bytes(root: Path = SHIPPED_SAES_DIR) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def library_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "sae-lens", "transformer-lens")} | {"torch_runtime": torch.__version__}
