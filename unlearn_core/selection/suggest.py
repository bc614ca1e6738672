"""Suggest a forget set: firing statistics on forget vs retain text -> a selection rule -> a feature list.

This is what ``python -m unlearn_core select`` and the app's "Suggest latents" button run. The list it writes
carries, per latent, the statistics that chose it (in its note, and machine-readable under ``"stats"``), how it
was chosen (``"selection"``) and the intervention to apply (``"intervention"``), so ``evaluate`` on the list
reproduces the numbers with no tuning flags.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from unlearn_core.ablation.interventions import Intervention, LatentSelection
from unlearn_core.data.texts import load_texts, selection_split
from unlearn_core.errors import InputError
from unlearn_core.forget_set import FeatureList, Latent, SaeEntry, SelectionRecord, new_feature_list
from unlearn_core.forget_set import LatentStats as ListedStats
from unlearn_core.models.loading import LoadedModel
from unlearn_core.models.presets import ModelPreset
from unlearn_core.saes.loading import LoadedSae, load_sae
from unlearn_core.scoring.batching import DEFAULT_BATCH_TOKENS, ProgressCallback
from unlearn_core.selection.attribution import DEFAULT_LAMBDA, FORGET_ITEMS, RETAIN_ITEMS, attribution_candidates
from unlearn_core.selection.gating import calibrate_gate
from unlearn_core.selection.rules import (
    DEFAULT_METHOD,
    DEFAULT_MIN_FORGET_FREQ,
    DEFAULT_RETAIN_THRESHOLDS,
    DEFAULT_TOP,
    ScoredLatent,
    ranked_candidates,
)
from unlearn_core.selection.stats import (
    DEFAULT_STATS_SEQ_LEN,
    DEFAULT_STATS_TOKENS,
    LatentStats,
    cached_latent_stats,
    stats_sequences,
)

DEFAULT_FORGET = "hp-fanwiki"
DEFAULT_RETAIN = "wikitext2"
DEFAULT_INTERVENTION = Intervention(mode="clamp", value=4.0, relative=True)
"""The intervention written into suggested lists: the best point of the committed sweep (docs/selection.md)."""

StageProgressFn = Callable[[str, int, int], None]


@dataclass
class SelectConfig:
    """Everything that determines a suggested forget set."""

    forget: str = DEFAULT_FORGET
    retain: str = DEFAULT_RETAIN
    method: str = DEFAULT_METHOD
    top: int = DEFAULT_TOP
    retain_threshold: float | None = None
    min_forget_freq: float = DEFAULT_MIN_FORGET_FREQ
    stats_tokens: int = DEFAULT_STATS_TOKENS
    stats_seq_len: int = DEFAULT_STATS_SEQ_LEN
    batch_tokens: int = DEFAULT_BATCH_TOKENS
    intervention: Intervention = field(default_factory=lambda: DEFAULT_INTERVENTION)
    attribution_lambda: float = DEFAULT_LAMBDA
    """``attribution`` only: the retain penalty (score = A_forget/n - lambda * max(A_retain/n, 0))."""
    attribution_objective: str = "logprob"
    """``attribution`` only: ``logprob`` (the correct answers' log-probability) or ``margin`` (minus distractors')."""

    def corpora(self) -> tuple[str, str]:
        """The text sets statistics are computed on: the selection splits of built-ins, or the given files."""
        return selection_split(self.forget), selection_split(self.retain)


def default_sae_refs(preset: ModelPreset, family: str | None = None) -> list[str]:
    """The preset's SAEs at every layer of its (default: first, bundled) family."""
    fam = preset.family(family)
    return [fam.ref(layer) for layer in fam.layers]


def corpus_stats(
    lm: LoadedModel,
    saes: Sequence[LoadedSae],
    config: SelectConfig,
    progress: StageProgressFn | None = None,
    forget_texts: Sequence[str] | None = None,
    retain_texts: Sequence[str] | None = None,
) -> tuple[dict[str, LatentStats], dict[str, LatentStats]]:
    """Firing statistics of every SAE on the forget and the retain corpus (cached on disk).

    The corpora are ``config``'s (selection splits of built-ins, or files), unless texts are given directly
    (an upload in the app).
    """
    forget_name, retain_name = config.corpora()
    out = []
    for role, name, given in (("forget", forget_name, forget_texts), ("retain", retain_name, retain_texts)):
        texts = tuple(given) if given is not None else load_texts(name).texts
        seqs = stats_sequences(lm, texts, config.stats_tokens, config.stats_seq_len)
        stage_progress: ProgressCallback | None = None
        if progress is not None:
            stage = f"{role} statistics on {name}"
            stage_progress = lambda done, total, stage=stage: progress(stage, done, total)  # noqa: E731
        out.append(cached_latent_stats(lm, saes, seqs, config.batch_tokens, stage_progress))
    return out[0], out[1]


def suggest(
    lm: LoadedModel,
    saes: Sequence[LoadedSae],
    config: SelectConfig,
    progress: StageProgressFn | None = None,
    forget_texts: Sequence[str] | None = None,
    retain_texts: Sequence[str] | None = None,
) -> dict[str, list[ScoredLatent]]:
    """The chosen latents per SAE reference, best first (texts as in :func:`corpus_stats`)."""
    if not saes:
        raise InputError("no SAEs to select latents from")
    forget, retain = corpus_stats(lm, saes, config, progress, forget_texts, retain_texts)
    if config.method == "attribution":
        stage: ProgressCallback | None = None
        if progress is not None:
            stage = lambda done, total: progress("attribution on dev knowledge items", done, total)  # noqa: E731
        threshold = DEFAULT_RETAIN_THRESHOLDS["attribution"] if config.retain_threshold is None else config.retain_threshold
        return attribution_candidates(lm, saes, forget, retain, config.top, config.attribution_lambda, threshold,
                                      config.attribution_objective, progress=stage)  # type: ignore[return-value]
    return ranked_candidates(
        forget, retain, config.top, config.method, config.retain_threshold, config.min_forget_freq, [s.ref for s in saes]
    )


def suggested_feature_list(
    lm: LoadedModel,
    saes: Sequence[LoadedSae],
    chosen: dict[str, list[ScoredLatent]],
    config: SelectConfig,
    name: str | None = None,
) -> FeatureList:
    """A feature list of the chosen latents (notes and ``stats`` per latent, ``selection`` and ``intervention``)."""
    forget_name, retain_name = config.corpora()
    fl = new_feature_list(
        name or f"suggested: {config.method} rule, {config.forget} vs {config.retain}",
        lm.preset.model_id,
        description=(
            f"Suggested by the {config.method} rule on {forget_name} (forget) vs {retain_name} (retain), top "
            f"{config.top} latents per SAE, {config.stats_tokens} tokens of each corpus"
            + (f", attribution of the dev answers of {', '.join(FORGET_ITEMS)} vs {', '.join(RETAIN_ITEMS)} "
               f"(lambda {config.attribution_lambda:g}, {config.attribution_objective})"
               if config.method == "attribution" else "")
        ),
    )
    for sae in saes:
        latents = [
            Latent(id=c.id, label=None, note=c.note(config.method), stats=ListedStats.from_dict(c.stats()))
            for c in chosen.get(sae.ref, [])
        ]
        if latents:
            fl.saes.append(SaeEntry(sae.ref, sae.hook_name, sae.layer, sae.neuronpedia, latents))
    if not fl.saes:
        raise InputError(
            "no latent passed the selection rule; lower --retain-threshold or --min-forget-freq, or give more text"
        )
    fl.saes.sort(key=lambda e: (e.layer, e.hook_name, e.sae))
    settings = asdict(config)
    settings.pop("intervention")
    settings.update(forget_corpus=forget_name, retain_corpus=retain_name, preset=lm.preset.name)
    if config.method == "attribution":
        settings.update(attribution_forget_items=list(FORGET_ITEMS), attribution_retain_items=list(RETAIN_ITEMS))
    else:  # the attribution settings mean nothing for the other rules: keep their records as they were
        settings.pop("attribution_lambda")
        settings.pop("attribution_objective")
    fl.selection = SelectionRecord.from_dict(settings)
    intervention = config.intervention
    if intervention.gate is not None and not intervention.gate.calibrated:
        # a gated intervention is calibrated for exactly these latents (on dev retain text)
        sels = [LatentSelection(s, tuple(c.id for c in chosen[s.ref])) for s in saes if chosen.get(s.ref)]
        intervention = calibrate_gate(lm, sels, intervention)
    fl.description += f". Apply with: {intervention.describe()}."
    fl.intervention = intervention
    return fl


def load_saes(refs: Sequence[str], device: str, dtype: Any) -> list[LoadedSae]:
    return [load_sae(ref, device=device, dtype=dtype) for ref in refs]
