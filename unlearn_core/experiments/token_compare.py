"""Default vs ablated, token by token: one prompt's two greedy continuations, their per-token log-probabilities under
both conditions, the tokens whose probability moved most, and where the forget set's latents fired.

* Generation is :func:`unlearn_core.scoring.generation.generate_batch_ids` (greedy, both conditions in one batch),
  so the continuations are exactly the Compare page's generations.
* Log-probabilities are teacher-forced: per condition, one batched forward over prompt + each continuation
  (:func:`unlearn_core.scoring.batching.score_tokens`: inference mode, fp32 log-softmax over the vocabulary). So for
  every token of each continuation there is its log-probability under the condition that generated it and under
  the other one; ``delta = logp_ablated - logp_baseline``.
* Latent firings: the residual at each SAE's own ``hook_name`` (baseline condition, prompt + baseline continuation),
  encoded with that SAE restricted to its forget-set latents; BOS excluded.

Every forward pass goes through the scoring stage, which holds the model's lock per batch or decode step, so a
comparison never sees another session's hooks and never blocks it for longer than one batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from unlearn_core.ablation.conditions import Condition
from unlearn_core.ablation.interventions import Hook, LatentSelection, encode_latents
from unlearn_core.errors import InputError
from unlearn_core.models.loading import LoadedModel
from unlearn_core.scoring.activations import collect_activations
from unlearn_core.scoring.batching import StopCheck, check_stop, score_tokens
from unlearn_core.scoring.generation import generate_batch_ids, prompt_token_ids

MAX_NEW_TOKENS = 256
"""The most continuation tokens one comparison generates (the Compare page's limit)."""
MAX_PROMPT_TOKENS = 512
"""Prompt tokens (BOS excluded) a comparison accepts by default; a longer prompt is refused, never cut."""
MAX_PROMPT_CHARS = 20_000
"""Characters refused before tokenizing (no tokenizer work for a pasted book)."""
MAX_TOP = 100
"""The most moved tokens listed per direction, and latents listed per token."""
MIN_MOVE = 1e-4
"""A change of log-probability smaller than this (nats) is rounding, not a move: such tokens are in neither list."""

Side = Literal["baseline", "ablated"]


@dataclass(frozen=True)
class LatentFiring:
    """One forget-set latent active at one token: which SAE (reference and layer), which latent, how strongly."""

    sae_ref: str
    layer: int
    latent: int
    value: float


@dataclass(frozen=True)
class Continuation:
    """One condition's greedy continuation (EOS excluded) with every token's log-probability under both conditions.

    ``logp_baseline[i]`` and ``logp_ablated[i]`` are log p(token i | prompt, tokens < i) under the baseline and the
    ablated condition, teacher-forced on this continuation.
    """

    generated_by: Side
    condition: str
    """The name of the condition that generated it."""
    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]
    text: str
    logp_baseline: tuple[float, ...]
    logp_ablated: tuple[float, ...]
    not_argmax: tuple[int, ...] = ()
    """Positions whose token is not the argmax of the teacher-forced distribution of its own condition (should be
    empty; low precision can break near-ties differently with and without the key-value cache)."""

    @property
    def deltas(self) -> tuple[float, ...]:
        """``logp_ablated - logp_baseline`` per token."""
        return tuple(a - b for a, b in zip(self.logp_ablated, self.logp_baseline, strict=True))

    @property
    def logp_own(self) -> tuple[float, ...]:
        """Each token's log-probability under the condition that generated it."""
        return self.logp_baseline if self.generated_by == "baseline" else self.logp_ablated

    @property
    def logp_other(self) -> tuple[float, ...]:
        return self.logp_ablated if self.generated_by == "baseline" else self.logp_baseline


@dataclass(frozen=True)
class MovedToken:
    """A token of the baseline continuation whose probability changed under the ablation."""

    position: int
    """Index in the baseline continuation (0 = first generated token)."""
    token_id: int
    token: str
    logp_baseline: float
    logp_ablated: float

    @property
    def delta(self) -> float:
        return self.logp_ablated - self.logp_baseline


@dataclass(frozen=True)
class TokenComparison:
    """Everything :func:`compare_tokens` measured for one prompt."""

    prompt: str
    prompt_ids: tuple[int, ...]
    """BOS first, exactly what generation continued from."""
    prompt_tokens: tuple[str, ...]
    """The prompt's tokens as text, BOS excluded."""
    prompt_logp_baseline: tuple[float, ...]
    """log p of each prompt token (BOS excluded; given the ones before it) under the baseline, one per prompt token."""
    prompt_logp_ablated: tuple[float, ...]
    baseline: Continuation
    ablated: Continuation
    diverge_at: int | None
    """First index where the two continuations differ (one ending early counts); None when they are identical."""
    most_dropped: tuple[MovedToken, ...]
    """Baseline-continuation tokens whose log-probability fell most under the ablation, largest fall first."""
    most_risen: tuple[MovedToken, ...]
    """Those whose log-probability rose most, largest rise first."""
    latents: tuple[tuple[LatentFiring, ...], ...]
    """Per token of prompt (BOS excluded) + baseline continuation: the strongest forget-set latents active there."""
    max_new_tokens: int = 0

    @property
    def tokens(self) -> tuple[str, ...]:
        """The tokens :attr:`latents` is indexed by: prompt (BOS excluded), then the baseline continuation."""
        return self.prompt_tokens + self.baseline.tokens

    @property
    def identical(self) -> bool:
        return self.diverge_at is None


def compare_tokens(
    lm: LoadedModel,
    prompt: str,
    baseline_condition: Condition,
    ablated_condition: Condition,
    max_new_tokens: int = 40,
    top_moved: int = 10,
    latent_saes: Sequence[LatentSelection] | None = None,
    top_latents: int = 5,
    max_prompt_tokens: int = MAX_PROMPT_TOKENS,
    should_stop: StopCheck | None = None,
) -> TokenComparison:
    """Compare one prompt's greedy continuations under ``baseline_condition`` and ``ablated_condition``.

    ``latent_saes`` (default: the ablated condition's selections) are the forget-set latents whose firings are
    reported, at most ``top_latents`` per token. ``should_stop`` is asked before every decode step and batch
    (:class:`~unlearn_core.errors.Stopped`). Raises :class:`InputError` for an empty or too long prompt, bounds out
    of range, or two conditions with the same name.
    """
    _check_args(prompt, baseline_condition, ablated_condition, max_new_tokens, top_moved, top_latents,
                max_prompt_tokens)
    prompt_ids = _prompt_ids(lm, prompt, max_new_tokens, max_prompt_tokens)
    conditions = [baseline_condition, ablated_condition]
    generated = generate_batch_ids(lm, [prompt], conditions, max_new_tokens, temperature=0.0,
                                   max_prompt_tokens=len(prompt_ids), should_stop=should_stop)
    check_stop(should_stop)
    base_ids = generated[(0, baseline_condition.name)]
    abl_ids = generated[(0, ablated_condition.name)]
    sequences = [[*prompt_ids, *base_ids], [*prompt_ids, *abl_ids]]
    under_base = score_tokens(lm, sequences, _hooks(baseline_condition), should_stop=should_stop)
    under_abl = score_tokens(lm, sequences, _hooks(ablated_condition), should_stop=should_stop)
    start = len(prompt_ids) - 1  # scores are of tokens 1..: the prompt's (BOS excluded) come first

    def continuation(side: Side, row: int, ids: list[int]) -> Continuation:
        own = under_base[row] if side == "baseline" else under_abl[row]
        misses = (~own.is_argmax[start:]).nonzero().flatten().tolist()
        cond = baseline_condition if side == "baseline" else ablated_condition
        return Continuation(
            generated_by=side, condition=cond.name, token_ids=tuple(ids), tokens=_token_texts(lm, ids),
            text=lm.tokenizer.decode(ids, skip_special_tokens=True),
            logp_baseline=_floats(under_base[row].logprobs[start:]), logp_ablated=_floats(under_abl[row].logprobs[start:]),
            not_argmax=tuple(int(i) for i in misses),
        )

    baseline = continuation("baseline", 0, base_ids)
    ablated = continuation("ablated", 1, abl_ids)
    dropped, risen = most_moved(baseline, top_moved)
    selections = ablated_condition.selections if latent_saes is None else tuple(latent_saes)
    firings = latent_firings(lm, sequences[0], selections, top_latents, _hooks(baseline_condition), should_stop)
    return TokenComparison(
        prompt=prompt, prompt_ids=tuple(prompt_ids), prompt_tokens=_token_texts(lm, prompt_ids[1:]),
        prompt_logp_baseline=_floats(under_base[0].logprobs[:start]),
        prompt_logp_ablated=_floats(under_abl[0].logprobs[:start]),
        baseline=baseline, ablated=ablated, diverge_at=first_divergence(base_ids, abl_ids),
        most_dropped=dropped, most_risen=risen, latents=firings, max_new_tokens=max_new_tokens,
    )


def most_moved(continuation: Continuation, top: int) -> tuple[tuple[MovedToken, ...], tuple[MovedToken, ...]]:
    """The ``top`` tokens whose log-probability fell most (largest fall first) and rose most (largest rise first);
    tokens that moved less than :data:`MIN_MOVE` are in neither. Ties keep the earlier position first."""
    moved = [
        MovedToken(i, tid, tok, b, a)
        for i, (tid, tok, b, a) in enumerate(zip(continuation.token_ids, continuation.tokens, continuation.logp_baseline,
                                                 continuation.logp_ablated, strict=True))
    ]
    dropped = sorted((m for m in moved if m.delta <= -MIN_MOVE), key=lambda m: (m.delta, m.position))[:top]
    risen = sorted((m for m in moved if m.delta >= MIN_MOVE), key=lambda m: (-m.delta, m.position))[:top]
    return tuple(dropped), tuple(risen)


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """The first index where two token sequences differ (a shorter one differs where it ends); None if equal."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def latent_firings(
    lm: LoadedModel,
    token_ids: Sequence[int],
    selections: Sequence[LatentSelection],
    top: int = 5,
    hooks: Sequence[Hook] = (),
    should_stop: StopCheck | None = None,
) -> tuple[tuple[LatentFiring, ...], ...]:
    """Per token of ``token_ids`` (BOS first, BOS excluded from the result): the chosen latents of ``selections``
    active there, strongest first, at most ``top``. Each SAE reads its own ``hook_name``, on the model with
    ``hooks`` (default none: the baseline)."""
    chosen = [s for s in selections if s.latents]
    n = len(token_ids) - 1
    if not chosen or n < 1:
        return tuple(() for _ in range(max(n, 0)))
    hook_names = list(dict.fromkeys(s.sae.hook_name for s in chosen))
    acts = collect_activations(lm, [list(token_ids)], hook_names, include_bos=False, extra_hooks=hooks,
                               should_stop=should_stop).acts
    per_token: list[list[LatentFiring]] = [[] for _ in range(n)]
    with torch.inference_mode():
        for sel in chosen:
            sae = sel.sae.sae
            index = torch.tensor(sel.latents, dtype=torch.long, device=sae.W_enc.device)
            values = encode_latents(sae, acts[sel.sae.hook_name].to(sae.W_enc.dtype), index).float().cpu()
            for pos, k in (values > 0).nonzero().tolist():
                per_token[pos].append(LatentFiring(sel.sae.ref, sel.sae.layer, sel.latents[k], float(values[pos, k])))
    return tuple(tuple(sorted(f, key=lambda x: (-x.value, x.layer, x.latent))[:top]) for f in per_token)


def _check_args(prompt: str, baseline: Condition, ablated: Condition, max_new_tokens: int, top_moved: int,
                top_latents: int, max_prompt_tokens: int) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("the prompt is empty: enter some text to continue")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InputError(f"the prompt is {len(prompt):,} characters long; compare at most {MAX_PROMPT_CHARS:,}")
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise InputError(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS}, got {max_new_tokens}")
    if not 0 <= top_moved <= MAX_TOP:
        raise InputError(f"top_moved must be between 0 and {MAX_TOP}, got {top_moved}")
    if not 1 <= top_latents <= MAX_TOP:
        raise InputError(f"top_latents must be between 1 and {MAX_TOP}, got {top_latents}")
    if max_prompt_tokens < 1:
        raise InputError("max_prompt_tokens must be at least 1")
    if baseline.name == ablated.name:
        raise InputError(f"the two conditions must differ, both are named {baseline.name!r}")


def _prompt_ids(lm: LoadedModel, prompt: str, max_new_tokens: int, max_prompt_tokens: int) -> list[int]:
    """BOS plus the prompt's tokens, as generation sees them; a prompt that does not fit is refused, never cut."""
    ids = prompt_token_ids(lm, prompt, lm.n_ctx + 1)
    room = min(max_prompt_tokens, lm.n_ctx - max_new_tokens - 1)
    if room < 1:
        raise InputError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the {lm.n_ctx}-token context")
    if len(ids) - 1 > room:
        raise InputError(f"the prompt is {len(ids) - 1:,} tokens long; with {max_new_tokens} new tokens at most "
                         f"{room:,} fit")
    return ids


def _hooks(condition: Condition) -> list[Hook]:
    """The teacher-forced pass's hooks: BOS untouched, as in generation's prompt pass; none for a condition that
    provably equals the baseline (generation shares the baseline's rows for it too)."""
    return [] if condition.same_as_baseline else condition.hooks(protect_first_position=True)


def _token_texts(lm: LoadedModel, ids: Sequence[int]) -> tuple[str, ...]:
    return tuple(lm.tokenizer.decode([int(t)]) for t in ids)


def _floats(t: torch.Tensor) -> tuple[float, ...]:
    return tuple(float(v) for v in t.tolist())
