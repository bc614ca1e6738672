"""The alternatives to Explore's specificity ranking that were tried on the development prompt sets and dev text
(never the study's prompts or test text), each as a total of concept latents in the top 10 per layer and set.

    python scripts/explore_ranking_variants.py

``A`` is the lift over general text (the previous default), ``B`` also over the everyday reference prompts;
``+λ log m`` adds a bonus for the number of prompts m a latent fires on; ``m>=2`` demotes latents firing on one
prompt; ``prompt-level`` counts prompts instead of tokens; ``theme λ`` is the shipped theme weight with weight λ
(``B theme 2`` is the default of :mod:`unlearn_core.explain.ranking`). What counts as a concept latent is what
``scripts/explore_specificity.py --dev`` counts.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch

from unlearn_core.data.texts import load_texts
from unlearn_core.explain.dashboard_cache import find_dashboards
from unlearn_core.explain.explore import explore, reference_prompt_counts
from unlearn_core.explain.ranking import dense_latents, general_reference, theme_weights
from unlearn_core.models.loading import load_model
from unlearn_core.models.presets import get_preset
from unlearn_core.saes.loading import load_sae
from unlearn_core.selection.stats import cached_latent_stats, stats_sequences

_SPEC = importlib.util.spec_from_file_location("explore_specificity", Path(__file__).with_name("explore_specificity.py"))
assert _SPEC is not None and _SPEC.loader is not None
_MEASURE = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_MEASURE)


def _variants(result, loaded, board, prompt_counts) -> dict[str, torch.Tensor]:
    reference = general_reference(board)
    counts, n = result.counts(loaded.ref)
    counts = counts.double()
    sa = result.by_sae[loaded.ref]
    n_prompts = len(result.tokens)
    pairs = torch.unique(torch.stack([sa.latents, result.row_prompt[sa.rows]], dim=1), dim=0)
    m = torch.bincount(pairs[:, 0], minlength=loaded.width).double()
    general = reference.smoothed()
    on_prompts = prompt_counts[0].double() / prompt_counts[1]
    ok = counts > 0
    ok[sorted(dense_latents(board))] = False
    out: dict[str, torch.Tensor] = {}
    for name, ref in (("A", general), ("B", torch.maximum(general, on_prompts))):
        base = torch.where(ok, torch.log((counts + 1) / n / ref), torch.full_like(counts, -math.inf))
        out[name] = base
        for lam in (0.5, 1.0):
            out[f"{name} +{lam} log m"] = base + lam * torch.log(m.clamp_min(1))
        out[f"{name} m>=2"] = torch.where(m >= 2, base, base - 100)
        per_prompt = 1 - (1 - ref) ** (n / n_prompts)
        out[f"{name} prompt-level"] = torch.where(ok, torch.log((m + 1) / n_prompts / per_prompt), base)
        weights = theme_weights(base, pairs, n_prompts)
        for lam in (1.0, 2.0, 4.0):
            out[f"{name} theme {lam:g}"] = base + lam * torch.log(weights)
    return out


def main() -> None:
    preset = get_preset("gemma-3-270m-offline")
    lm = load_model(preset, dtype="float32")
    saes = [load_sae(preset.family().ref(layer)) for layer in (5, 9, 12)]
    rates = {}
    for name in ("hp-fanwiki:dev", "wikitext2:dev"):
        stats = cached_latent_stats(lm, saes, stats_sequences(lm, load_texts(name).texts, max_tokens=_MEASURE.MEASURE_TOKENS))
        rates[name] = {ref: s.frequency for ref, s in stats.items()}
    boards = {s.ref: find_dashboards(s) for s in saes}
    prompt_counts = reference_prompt_counts(lm, saes)
    totals: dict[str, list[int]] = {}
    for prompts in _MEASURE.DEV_PROMPT_SETS:
        result = explore(lm, saes, list(prompts))
        for s in saes:
            for name, score in _variants(result, s, boards[s.ref], prompt_counts[s.ref]).items():
                top = torch.argsort(score, descending=True, stable=True)[:10].tolist()
                on, off = rates["hp-fanwiki:dev"][s.ref], rates["wikitext2:dev"][s.ref]
                totals.setdefault(name, []).append(sum(float(on[i]) > 0 and float(on[i]) >= 3 * float(off[i]) for i in top))
    print("concept latents in the top 10, per dev set and layer (5, 9, 12), on hp-fanwiki:dev vs wikitext2:dev")
    for name, per in totals.items():
        print(f"  {name:18s} {per}  total {sum(per)}/90")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
