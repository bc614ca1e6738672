"""Knowledge probes: how well the model continues each probe's prompt with one of its accepted answers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from unlearn_core.ablation.interventions import Hook
from unlearn_core.data.probes import ProbeSet, answer_continuation
from unlearn_core.errors import InputError
from unlearn_core.models.loading import LoadedModel
from unlearn_core.scoring.batching import DEFAULT_BATCH_TOKENS, ProgressCallback, StopCheck, score_tokens


@dataclass(frozen=True)
class ProbeResult:
    top1: float
    """Fraction of probes whose first answer token (of any accepted answer) is the model's argmax."""
    mean_logprob: float
    """Mean over probes of the best answer's mean per-token log-probability."""
    n: int


def probe_scores(
    lm: LoadedModel,
    probe_set: ProbeSet,
    hooks: Sequence[Hook] = (),
    max_seq_len: int = 256,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
) -> ProbeResult:
    """Score every probe's answers as continuations of its prompt, in one batched pass."""
    limit = min(max_seq_len, lm.n_ctx)
    if limit < 3:
        raise InputError("max_seq_len for probes must be at least 3 (BOS, prompt, answer)")
    sequences: list[list[int]] = []
    owners: list[tuple[int, int]] = []  # (probe index, number of answer tokens)
    for p_index, probe in enumerate(probe_set.probes):
        prompt_ids = lm.tokenizer(probe.prompt, add_special_tokens=False)["input_ids"]
        for answer in probe.answers:
            answer_ids = lm.tokenizer(answer_continuation(probe.prompt, answer), add_special_tokens=False)["input_ids"]
            if not answer_ids or len(answer_ids) > limit - 2:
                continue  # nothing to score, or no room for any prompt
            # keep BOS and the end of the prompt: the answer must follow the prompt's last tokens
            body = (prompt_ids + answer_ids)[-(limit - 1) :]
            sequences.append([lm.bos_token_id, *body])
            owners.append((p_index, len(answer_ids)))
    if not sequences:
        raise InputError(f"probe set {probe_set.name} has no scorable answers")
    scores = score_tokens(lm, sequences, hooks, batch_tokens, progress, should_stop)
    best_logprob = [float("-inf")] * len(probe_set.probes)
    hit = [False] * len(probe_set.probes)
    for (p_index, n_answer), sc in zip(owners, scores, strict=False):
        answer_logp = sc.logprobs[-n_answer:]
        best_logprob[p_index] = max(best_logprob[p_index], float(answer_logp.mean()))
        hit[p_index] = hit[p_index] or bool(sc.is_argmax[-n_answer])
    scored = [i for i, lp in enumerate(best_logprob) if lp != float("-inf")]
    return ProbeResult(
        top1=sum(hit[i] for i in scored) / len(scored),
        mean_logprob=sum(best_logprob[i] for i in scored) / len(scored),
        n=len(scored),
    )
