"""The ``attribution`` selection method: latents that carry the *knowledge*, by gradient x activation.

Firing contrast (``ratio``, ``frequency``) finds latents that fire on Harry Potter *text*, mostly names; clamping
them makes the names unlikely but barely moves multiple-choice knowledge. This method asks instead which latents the
model *uses to answer* HP questions, as SAE feature-circuit work does (attribution patching; Marks et al. 2024):

* every SAE is spliced in at its own hook with its error term kept, so the forward pass is the clean model's: at
  each non-BOS position, ``f = encode(x)`` becomes a leaf with gradient and ``x' = x + decode(f) - decode(f).detach()``
  (value exactly ``x``; d x'/d f = W_dec; d x'/d x = I, so a latent's gradient includes its paths through every later
  layer, later SAEs included - the total derivative, which is what ablating the latent would change);
* the objective L is the summed log-probability of the correct answers of knowledge items: the correct choice of
  each quiz item after ``"Question: {question}\\nAnswer:"`` (the lm-eval formatting of
  :mod:`unlearn_core.scoring.choices`) and the first accepted answer of each cloze probe after its prompt (as
  :mod:`unlearn_core.scoring.probes` scores it); with ``objective="margin"`` a quiz item instead contributes the
  correct choice's log-probability minus the mean of its distractors' (knowledge, not a prior on names);
* ``attribution_i = sum over positions of f_i * dL/df_i``: the first-order change of L when latent i is
  zero-ablated (L - L_ablated ~ attribution_i; checked against exact ablations in tests/test_attribution.py).

It is computed on the forget items (``hp-quiz:dev``, ``hp-cloze:dev``) and the retain items (``general-quiz:dev``,
``adjacent-quiz:dev``, ``general-cloze:dev``) - dev splits only, test splits are refused by name - and latents are
ranked by ``A_forget / n_forget - lambda * max(A_retain / n_retain, 0)`` (per item, so the sets' sizes do not
matter), among latents that fire on the forget *text* at all and on less than ``retain_threshold`` of retain text
(the same firing statistics ``select`` computes, which also give the relative clamp its reference activations).

Batched on the model's device in its dtype; the model's lock is taken per batch; gradients are taken only with
respect to the latents (the model's parameters are frozen for the pass and restored after).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from unlearn_core.ablation.interventions import _is_plain_affine, intervened
from unlearn_core.data.probes import SPLIT_PROBES, ProbeSet, answer_continuation, load_probes
from unlearn_core.data.quizzes import BUILTIN_QUIZZES, Quiz, load_quiz
from unlearn_core.errors import InputError
from unlearn_core.models.loading import LoadedModel
from unlearn_core.saes.loading import LoadedSae
from unlearn_core.scoring.batching import (
    ProgressCallback,
    StopCheck,
    batches_by_length,
    check_stop,
    right_padded,
    unembed,
)
from unlearn_core.scoring.choices import QUIZ_TEMPLATE, choice_continuation
from unlearn_core.selection.rules import ScoredLatent
from unlearn_core.selection.stats import LatentStats

FORGET_ITEMS: tuple[str, ...] = ("hp-quiz:dev", "hp-cloze:dev")
RETAIN_ITEMS: tuple[str, ...] = ("general-quiz:dev", "adjacent-quiz:dev", "general-cloze:dev")
OBJECTIVES: tuple[str, ...] = ("logprob", "margin")
DEFAULT_LAMBDA = 1.0
DEFAULT_ATTRIBUTION_BATCH_TOKENS = 512
"""Smaller than scoring's batches: a backward pass keeps every layer's activations."""
ITEM_SEQ_LEN = 256
_DEV_PROBES = {"hp-cloze", "general-cloze", *(name for name in SPLIT_PROBES if name.endswith(":dev"))}


@dataclass(frozen=True)
class AnswerSequence:
    """BOS + prompt + answer token ids; the last ``n_answer`` are the answer, weighted by ``weight`` in L."""

    tokens: tuple[int, ...]
    n_answer: int
    weight: float = 1.0


@dataclass(frozen=True)
class KnowledgeItems:
    """The sequences of one knowledge set and how many items (questions, facts) they come from."""

    name: str
    sequences: tuple[AnswerSequence, ...]
    n_items: int


def check_dev_set(name: str) -> None:
    """Refuse anything but a built-in dev split: attribution tunes a forget set, and test splits are for reporting."""
    base = name.rpartition(":")[0] or name
    if name.endswith(":dev") and (base in BUILTIN_QUIZZES or name in SPLIT_PROBES):
        return
    if name in _DEV_PROBES:
        return
    if name.endswith(":test"):
        raise InputError(f"attribution may only use dev splits, and {name!r} is a test split (use {base}:dev)")
    if name in BUILTIN_QUIZZES:
        raise InputError(f"{name!r} spans the dev and the test split; attribution may only use {name}:dev")
    raise InputError(f"attribution uses built-in dev splits only (e.g. {', '.join(FORGET_ITEMS)}); got {name!r}")


def load_knowledge_items(lm: LoadedModel, name: str, objective: str = "logprob",
                         max_seq_len: int = ITEM_SEQ_LEN) -> KnowledgeItems:
    """A built-in dev quiz or cloze set as answer sequences (test splits refused)."""
    check_dev_set(name)
    if name.rpartition(":")[0] in BUILTIN_QUIZZES:
        return quiz_items(lm, load_quiz(name), objective, max_seq_len)
    return cloze_items(lm, load_probes(name), max_seq_len)


def quiz_items(lm: LoadedModel, quiz: Quiz, objective: str = "logprob", max_seq_len: int = ITEM_SEQ_LEN) -> KnowledgeItems:
    """Each item's correct choice after its question (``margin``: minus the mean of its distractors)."""
    if objective not in OBJECTIVES:
        raise InputError(f"unknown attribution objective {objective!r}; choose one of {list(OBJECTIVES)}")
    if any(item.split == "test" for item in quiz.items):
        raise InputError(f"quiz {quiz.name} has test-split items; attribution may only use dev items")
    limit = min(max_seq_len, lm.n_ctx)
    seqs = []
    for item in quiz.items:
        prompt = lm.tokenizer(QUIZ_TEMPLATE.format(question=item.question), add_special_tokens=False)["input_ids"]
        others = len(item.choices) - 1
        for j, choice in enumerate(item.choices):
            if j != item.answer and objective == "logprob":
                continue
            weight = 1.0 if j == item.answer else -1.0 / others
            cont = lm.tokenizer(choice_continuation(choice), add_special_tokens=False)["input_ids"]
            if cont and len(cont) <= limit - 2:
                seqs.append(AnswerSequence((lm.bos_token_id, *(prompt + cont)[-(limit - 1):]), len(cont), weight))
    return KnowledgeItems(quiz.name, tuple(seqs), len(quiz.items))


def cloze_items(lm: LoadedModel, probes: ProbeSet, max_seq_len: int = ITEM_SEQ_LEN) -> KnowledgeItems:
    """Each probe's first scorable accepted answer after its prompt."""
    limit = min(max_seq_len, lm.n_ctx)
    seqs = []
    for probe in probes.probes:
        prompt = lm.tokenizer(probe.prompt, add_special_tokens=False)["input_ids"]
        for answer in probe.answers:
            ids = lm.tokenizer(answer_continuation(probe.prompt, answer), add_special_tokens=False)["input_ids"]
            if ids and len(ids) <= limit - 2:
                seqs.append(AnswerSequence((lm.bos_token_id, *(prompt + ids)[-(limit - 1):]), len(ids)))
                break
    return KnowledgeItems(probes.name, tuple(seqs), len(probes.probes))


@dataclass
class AttributionTotals:
    """Per latent of one SAE: summed attribution over some items, and on how many token positions it fired."""

    sae_ref: str
    attribution: torch.Tensor
    fire_count: torch.Tensor
    n_items: int
    objective: float = 0.0
    """The objective L itself (summed weighted log-probability), for checks."""
    error_attribution: float = 0.0
    """``sum_pos e . dL/dx'`` for the SAE's error term e = x - decode(f): the first-order change of L when the error
    term is removed (what no latent of this dictionary can edit). With ``attribution.sum()`` (all latents) and
    ``bias_attribution`` (b_dec) it adds up to ``x . dL/dx'`` at the hook."""
    bias_attribution: float = 0.0

    @property
    def per_item(self) -> torch.Tensor:
        return self.attribution / max(self.n_items, 1)


@contextlib.contextmanager
def _frozen(*modules: Any) -> Iterator[None]:
    """Parameters of ``modules`` without gradients for the block (restored after): gradients go to latents only."""
    params = [p for m in modules for p in m.parameters()]
    saved = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, saved, strict=True):
            p.requires_grad_(flag)


def _splice_hook(sae: LoadedSae, leaves: dict[str, torch.Tensor], errors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> Any:
    """Splice ``sae`` in with its error term kept: x' = x + decode(f) - decode(f).detach(), f a leaf (BOS untouched).

    The residual stream after the splice is also a leaf-like tensor whose gradient is dL/dx' (``errors[ref]`` holds
    it with the error term e = x - decode(f)), so the error term's attribution is e . dL/dx'."""
    model_sae = sae.sae

    def hook(activation: torch.Tensor, hook: Any) -> torch.Tensor:  # noqa: ARG001 - TransformerLens signature
        x = activation[:, 1:]
        with torch.no_grad():
            f = model_sae.encode(x.detach().to(model_sae.dtype))
            error = (x.detach() - model_sae.decode(f).to(x.dtype)).detach()
        f = f.detach().requires_grad_(True)
        leaves[sae.ref] = f
        if _is_plain_affine(model_sae):
            moved = (f - f.detach()) @ model_sae.W_dec  # exactly 0 in value; W_dec in the gradient
        else:
            recon = model_sae.decode(f)
            moved = recon - recon.detach()
        probe = torch.zeros_like(x, requires_grad=True)  # dL/d(probe) = dL/dx'
        errors[sae.ref] = (probe, error)
        return torch.cat([activation[:, :1], x + moved.to(x.dtype) + probe], dim=1)

    return hook


def latent_attributions(
    lm: LoadedModel,
    saes: Sequence[LoadedSae],
    items: Sequence[KnowledgeItems],
    batch_tokens: int = DEFAULT_ATTRIBUTION_BATCH_TOKENS,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
) -> dict[str, AttributionTotals]:
    """Summed ``f * dL/df`` of every latent of every SAE over the items (see the module docstring)."""
    if not saes:
        raise InputError("no SAEs to attribute to")
    if len({s.hook_name for s in saes}) != len(saes):
        raise InputError("two SAEs share a hook; attribute to them separately")
    seqs = [s for kind in items for s in kind.sequences]
    if not seqs:
        raise InputError("no knowledge items to attribute")
    n_items = sum(kind.n_items for kind in items)
    totals = {s.ref: AttributionTotals(s.ref, torch.zeros(s.width, dtype=torch.float64),
                                       torch.zeros(s.width, dtype=torch.long), n_items) for s in saes}
    lengths = [len(s.tokens) for s in seqs]
    done, total = 0, sum(lengths)
    for batch in batches_by_length(lengths, batch_tokens):
        check_stop(should_stop)
        tokens, positions, batch_lengths = right_padded(lm, [seqs[i].tokens for i in batch], range(len(batch)))
        leaves: dict[str, torch.Tensor] = {}
        errors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        hooks = [(s.hook_name, _splice_hook(s, leaves, errors)) for s in saes]
        with intervened(lm, hooks) as model, _frozen(model, *(s.sae for s in saes)), torch.enable_grad():
            resid = model(tokens.to(lm.device), stop_at_layer=model.cfg.n_layers)
            objective = _answer_objective(model, resid, tokens.to(lm.device), [seqs[i] for i in batch], batch_lengths)
            wrt = [leaves[s.ref] for s in saes] + [errors[s.ref][0] for s in saes]
            grads = torch.autograd.grad(objective, wrt, allow_unused=True)
        real = (positions[:, 1:] < batch_lengths[:, None]).to(lm.device)  # non-BOS, non-padding positions
        for sae, grad, resid_grad in zip(saes, grads[: len(saes)], grads[len(saes):], strict=True):
            f = leaves[sae.ref].detach()
            if grad is None:  # the SAE's latents cannot reach the answers (nothing downstream of them is scored)
                grad = torch.zeros_like(f)
            contrib = (f * grad).double() * real[..., None]
            totals[sae.ref].attribution += contrib.sum(dim=(0, 1)).cpu()
            totals[sae.ref].fire_count += ((f > 0) & real[..., None]).sum(dim=(0, 1)).cpu()
            if resid_grad is not None:
                g = resid_grad.double() * real[..., None]
                totals[sae.ref].error_attribution += float((errors[sae.ref][1].double() * g).sum())
                b_dec = getattr(sae.sae, "b_dec", None)
                if b_dec is not None:
                    totals[sae.ref].bias_attribution += float((g.sum(dim=(0, 1)) * b_dec.detach().double()).sum())
        for t in totals.values():
            t.objective += float(objective.detach())
        done += sum(lengths[i] for i in batch)
        if progress is not None:
            progress(done, total)
    return totals


def _answer_objective(model: Any, resid: torch.Tensor, tokens: torch.Tensor, seqs: Sequence[AnswerSequence],
                      lengths: torch.Tensor) -> torch.Tensor:
    """Sum over rows of weight x the summed log-probability of the row's answer tokens (only those logits)."""
    rows, cols, targets, weights = [], [], [], []
    for r, seq in enumerate(seqs):
        n = int(lengths[r])
        for t in range(n - seq.n_answer, n):  # answer token t is predicted at position t - 1
            rows.append(r)
            cols.append(t - 1)
            targets.append(int(tokens[r, t]))
            weights.append(seq.weight)
    h = resid[torch.tensor(rows), torch.tensor(cols)]
    if model.cfg.normalization_type is not None:
        h = model.ln_final(h.unsqueeze(0))[0]
    logits = unembed(model, h)
    logp = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(targets, device=logits.device)[:, None])[:, 0]
    return (logp * torch.tensor(weights, dtype=logp.dtype, device=logp.device)).sum()


@dataclass(frozen=True)
class AttributedLatent(ScoredLatent):
    """A latent chosen by attribution: its firing statistics plus its per-item forget and retain attributions."""

    forget_attribution: float = 0.0
    retain_attribution: float = 0.0

    def note(self, method: str) -> str:
        return (f"{method}: ablating it lowers the answers' log-likelihood by ~{self.forget_attribution:.3g} per HP "
                f"item vs {self.retain_attribution:.3g} per retain item; fires on {self.forget_freq:.3%} of forget "
                f"tokens vs {self.retain_freq:.3%} of retain tokens; score {self.score:.4g}")

    def stats(self) -> dict[str, float]:
        return {**super().stats(), "forget_attribution": round(self.forget_attribution, 8),
                "retain_attribution": round(self.retain_attribution, 8)}


def attribution_scores(forget: AttributionTotals, retain: AttributionTotals, forget_stats: LatentStats,
                       retain_stats: LatentStats, lam: float = DEFAULT_LAMBDA,
                       retain_threshold: float = 0.01) -> torch.Tensor:
    """``A_f/n_f - lam * max(A_r/n_r, 0)`` per latent; ``-inf`` where excluded (never fires on forget text, fires on
    >= ``retain_threshold`` of retain text, or a score <= 0)."""
    if not math.isfinite(lam) or lam < 0:
        raise InputError(f"the retain penalty lambda must be a finite number >= 0, got {lam}")
    widths = {forget.attribution.numel(), retain.attribution.numel(), forget_stats.fire_count.numel(),
              retain_stats.fire_count.numel()}
    if len(widths) != 1:
        raise InputError("attributions and statistics come from SAEs of different widths")
    score = forget.per_item - lam * retain.per_item.clamp(min=0)
    excluded = (forget_stats.fire_count == 0) | (retain_stats.frequency >= retain_threshold) | (score <= 0)
    return torch.where(excluded, torch.full_like(score, -math.inf), score)


def rank_by_attribution(forget: AttributionTotals, retain: AttributionTotals, forget_stats: LatentStats,
                        retain_stats: LatentStats, top: int, lam: float = DEFAULT_LAMBDA,
                        retain_threshold: float = 0.01) -> list[AttributedLatent]:
    """The ``top`` best latents of one SAE by :func:`attribution_scores`, best first."""
    if top < 1:
        raise InputError("top must be at least 1")
    score = attribution_scores(forget, retain, forget_stats, retain_stats, lam, retain_threshold)
    out = []
    for idx in torch.argsort(score, descending=True, stable=True).tolist():
        if len(out) == top or not math.isfinite(float(score[idx])):
            break
        out.append(AttributedLatent(
            id=idx, score=float(score[idx]), forget_freq=float(forget_stats.frequency[idx]),
            retain_freq=float(retain_stats.frequency[idx]), forget_mean_act=float(forget_stats.mean_activation[idx]),
            retain_mean_act=float(retain_stats.mean_activation[idx]), forget_max_act=float(forget_stats.act_max[idx]),
            forget_attribution=float(forget.per_item[idx]), retain_attribution=float(retain.per_item[idx])))
    return out


def attribution_candidates(
    lm: LoadedModel,
    saes: Sequence[LoadedSae],
    forget_stats: dict[str, LatentStats],
    retain_stats: dict[str, LatentStats],
    top: int,
    lam: float = DEFAULT_LAMBDA,
    retain_threshold: float = 0.01,
    objective: str = "logprob",
    forget_items: Sequence[str] = FORGET_ITEMS,
    retain_items: Sequence[str] = RETAIN_ITEMS,
    progress: ProgressCallback | None = None,
) -> dict[str, list[AttributedLatent]]:
    """Attribution on the dev knowledge sets, then :func:`rank_by_attribution` for every SAE (by reference)."""
    forget_sets = [load_knowledge_items(lm, name, objective) for name in forget_items]
    retain_sets = [load_knowledge_items(lm, name, objective) for name in retain_items]
    forget = latent_attributions(lm, saes, forget_sets, progress=progress)
    retain = latent_attributions(lm, saes, retain_sets, progress=progress)
    missing = [s.ref for s in saes if s.ref not in forget_stats or s.ref not in retain_stats]
    if missing:
        raise InputError(f"no statistics for SAE(s) {missing}")
    return {s.ref: rank_by_attribution(forget[s.ref], retain[s.ref], forget_stats[s.ref], retain_stats[s.ref], top,
                                       lam, retain_threshold) for s in saes}
