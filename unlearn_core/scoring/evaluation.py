"""Scoring a model under a condition: perplexity, knowledge probes and generations.

Perplexity follows the reference study: every text gets BOS prepended, the NLL of each predicted token is summed
over all texts and divided by the number of predicted tokens (token-weighted), then exponentiated. Here it is
computed in batches: texts sorted by length, right-padded (causal attention means padding after a text cannot
change its scores, so no attention mask is needed), and the vocabulary projection is done only for real
positions, in chunks, so a 262k-token vocabulary never materialises as one huge logits tensor.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from unlearn_core.ablation.interventions import Hook, Intervention, LatentSelection, intervened, intervention_hooks
from unlearn_core.data.probes import ProbeSet, answer_continuation
from unlearn_core.errors import InputError
from unlearn_core.models.loading import LoadedModel

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(done, total)``; units are tokens for scoring and steps for generation."""

CONDITIONS: tuple[str, ...] = ("baseline", "ablated", "reconstruction_only", "random_control")
DEFAULT_MAX_SEQ_LEN = 1024
DEFAULT_BATCH_TOKENS = 2048
UNEMBED_CHUNK = 512


# --------------------------------------------------------------------------------------------- conditions


@dataclass(frozen=True)
class Condition:
    """A named way of running the model: which latents of which SAEs are edited, and how."""

    name: str
    selections: tuple[LatentSelection, ...] = ()
    intervention: Intervention = field(default_factory=Intervention)

    def hooks(self, protect_first_position: bool = True) -> list[Hook]:
        if not self.selections:
            return []
        return intervention_hooks(self.selections, self.intervention, protect_first_position)

    @property
    def n_latents(self) -> int:
        return sum(len(s.latents) for s in self.selections)


def build_conditions(
    names: Sequence[str],
    selections: Sequence[LatentSelection],
    intervention: Intervention,
    seed: int = 0,
) -> list[Condition]:
    """The requested conditions for a forget set.

    * ``baseline``: the unhooked model;
    * ``ablated``: the forget set edited with ``intervention``;
    * ``reconstruction_only``: the same SAEs spliced in with nothing edited (identical to baseline when the error
      term is kept; the SAE reconstruction error alone in ``replace`` mode);
    * ``random_control``: per SAE, as many latents as the forget set has there, drawn uniformly (seeded) from the
      latents not in the forget set, edited the same way (a relative clamp reuses the chosen latents' values).
    """
    unknown = [n for n in names if n not in CONDITIONS]
    if unknown:
        raise InputError(f"unknown condition(s) {unknown}; choose from {list(CONDITIONS)}")
    out = []
    for name in names:
        if name == "baseline":
            out.append(Condition("baseline"))
        elif name == "ablated":
            out.append(Condition("ablated", tuple(selections), intervention))
        elif name == "reconstruction_only":
            empty = tuple(LatentSelection(s.sae, ()) for s in selections)
            out.append(Condition("reconstruction_only", empty, intervention))
        else:
            out.append(Condition("random_control", random_selections(selections, seed), intervention))
    return out


def random_selections(selections: Sequence[LatentSelection], seed: int) -> tuple[LatentSelection, ...]:
    """Same-size random latent sets per SAE, disjoint from the chosen ones; deterministic in ``seed``."""
    rng = random.Random(seed)
    out = []
    for sel in selections:
        chosen = set(sel.latents)
        pool = [i for i in range(sel.sae.width) if i not in chosen]
        latents = tuple(sorted(rng.sample(pool, min(len(chosen), len(pool)))))
        reference = None
        if sel.reference is not None:
            # the chosen latents' clamp values, shuffled onto the random ones: the same strength, elsewhere
            reference = list(sel.reference)[: len(latents)]
            rng.shuffle(reference)
            reference = tuple(reference)
        out.append(LatentSelection(sel.sae, latents, reference))
    return tuple(out)


# --------------------------------------------------------------------------------------------- tokenising


def tokenize_with_bos(lm: LoadedModel, texts: Sequence[str], max_seq_len: int = DEFAULT_MAX_SEQ_LEN) -> list[list[int]]:
    """Token ids of each text with BOS prepended, truncated to ``max_seq_len`` tokens (BOS included)."""
    if max_seq_len < 2:
        raise InputError("max_seq_len must be at least 2 (BOS plus one token)")
    max_seq_len = min(max_seq_len, lm.n_ctx)
    encoded = lm.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [([lm.bos_token_id] + ids)[:max_seq_len] for ids in encoded]


# --------------------------------------------------------------------------------------------- scoring core


@dataclass(frozen=True)
class TokenScores:
    """For one sequence of T tokens: log p(token_t | tokens_<t) for t = 1..T-1, and whether token_t was the argmax."""

    logprobs: torch.Tensor
    is_argmax: torch.Tensor


def batches_by_length(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Group sequence indices, longest first, so each padded batch has at most ``batch_tokens`` tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = lengths[current[0]] if current else lengths[i]
        if current and width * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def right_padded(
    lm: LoadedModel, sequences: Sequence[Sequence[int]], batch: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``sequences[batch]`` right-padded into one [rows, longest] tensor, with each column's position and each
    row's length (so masks are ``positions < lengths[:, None]`` and friends)."""
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    batch_lengths = torch.tensor([len(sequences[i]) for i in batch])
    width = int(batch_lengths.max())
    tokens = torch.full((len(batch), width), pad_id, dtype=torch.long)
    for row, i in enumerate(batch):
        tokens[row, : len(sequences[i])] = torch.tensor(list(sequences[i]), dtype=torch.long)
    return tokens, torch.arange(width).expand(len(batch), width), batch_lengths


def score_tokens(
    lm: LoadedModel,
    sequences: Sequence[Sequence[int]],
    hooks: Sequence[Hook] = (),
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: ProgressCallback | None = None,
) -> list[TokenScores]:
    """Per-token log-probabilities and argmax hits for each sequence, batched, under ``hooks``."""
    if any(len(s) < 2 for s in sequences):
        raise InputError("every sequence needs at least two tokens (BOS and one more)")
    lengths = [len(s) for s in sequences]
    total = sum(n - 1 for n in lengths)
    done = 0
    results: list[TokenScores | None] = [None] * len(sequences)
    with torch.inference_mode(), intervened(lm, hooks) as model:
        for batch in batches_by_length(lengths, batch_tokens):
            tokens, positions, batch_lengths = right_padded(lm, sequences, batch)
            tokens = tokens.to(lm.device)
            resid = model(tokens, stop_at_layer=model.cfg.n_layers)
            # Positions 0..n-2 of each row predict tokens 1..n-1; gather them all into one flat list.
            keep = (positions < (batch_lengths - 1)[:, None]).to(resid.device)
            targets = tokens[:, 1:][keep[:, :-1]]
            logp, hits = _final_logprobs(model, resid[keep], targets)
            offset = 0
            for i in batch:
                n = lengths[i] - 1
                results[i] = TokenScores(logp[offset : offset + n].cpu(), hits[offset : offset + n].cpu())
                offset += n
            done += sum(lengths[i] - 1 for i in batch)
            if progress is not None:
                progress(done, total)
    return [r for r in results if r is not None]


def _final_logprobs(model: Any, resid: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) and argmax hit for [N, d_model] final-layer residuals.

    The vocabulary projection dominates the cost of scoring (262k x 640 for Gemma 3), so it is done in chunks into
    one reused buffer, and the log-sum-exp is computed in place: no 1 GB temporaries, no page-fault storms.
    """
    from transformer_lens.utilities.activation_functions import softcap_enabled

    n = resid.shape[0]
    if n == 0:
        return torch.zeros(0), torch.zeros(0, dtype=torch.bool)
    if model.cfg.normalization_type is not None:
        resid = model.ln_final(resid.unsqueeze(0))[0]
    w_u = model.W_U
    b_u = model.b_U if bool(model.b_U.any()) else None
    cap = model.cfg.output_logits_soft_cap
    buf = torch.empty(min(UNEMBED_CHUNK, n), w_u.shape[1], dtype=torch.float32, device=resid.device)
    logps, hits = [], []
    for start in range(0, n, UNEMBED_CHUNK):
        x = resid[start : start + UNEMBED_CHUNK]
        logits = buf[: x.shape[0]]
        if w_u.dtype == torch.float32:
            torch.mm(x.float(), w_u, out=logits)
        else:
            logits.copy_(x @ w_u)
        if b_u is not None:
            logits.add_(b_u.float())
        if softcap_enabled(cap):
            logits.div_(cap).tanh_().mul_(cap)  # = apply_softcap, without a chunk-sized temporary
        tgt = targets[start : start + UNEMBED_CHUNK]
        tgt_logits = logits.gather(1, tgt[:, None])[:, 0]
        top, arg = logits.max(dim=-1)
        logits.sub_(top[:, None]).exp_()
        logsumexp = top + logits.sum(dim=-1).log()
        logps.append(tgt_logits - logsumexp)
        hits.append(arg == tgt)
    return torch.cat(logps), torch.cat(hits)


def _next_token_logits(model: Any, resid: torch.Tensor) -> torch.Tensor:
    """Final norm, unembedding and soft-cap of one position ([1, 1, d_model] -> [d_vocab] float32)."""
    from transformer_lens.utilities.activation_functions import softcap_enabled

    x = model.ln_final(resid)[0, 0]
    logits = (x @ model.W_U).float()
    if bool(model.b_U.any()):
        logits = logits + model.b_U.float()
    cap = model.cfg.output_logits_soft_cap
    if softcap_enabled(cap):
        logits = torch.tanh(logits / cap) * cap
    return logits


# --------------------------------------------------------------------------------------------- perplexity


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    nll_sum: float
    n_tokens: int
    n_texts: int


def perplexity(
    lm: LoadedModel,
    texts: Sequence[str],
    hooks: Sequence[Hook] = (),
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: ProgressCallback | None = None,
) -> PerplexityResult:
    """The study's perplexity (BOS prepended, token-weighted mean NLL over all texts, exp), batched."""
    *_, final = iter_perplexity(lm, texts, hooks, max_seq_len, batch_tokens, progress)
    return final


def iter_perplexity(
    lm: LoadedModel,
    texts: Sequence[str],
    hooks: Sequence[Hook] = (),
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: ProgressCallback | None = None,
) -> Iterator[PerplexityResult]:
    """:func:`perplexity`, yielding the running result after each batch (the last one is the final answer).

    Lets a caller show a first number early and stop between batches; ``n_texts`` counts the texts scored so far.
    Each batch takes the model's lock separately, so other sessions' work interleaves with a long run.
    """
    sequences = [s for s in tokenize_with_bos(lm, texts, max_seq_len) if len(s) >= 2]
    if not sequences:
        raise InputError("no text with at least one token to score")
    lengths = [len(s) for s in sequences]
    total = sum(n - 1 for n in lengths)
    nll, n, n_texts = 0.0, 0, 0
    for batch in batches_by_length(lengths, batch_tokens):
        scores = score_tokens(lm, [sequences[i] for i in batch], hooks, batch_tokens)
        nll -= sum(float(s.logprobs.double().sum()) for s in scores)
        n += sum(int(s.logprobs.numel()) for s in scores)
        n_texts += len(scores)
        if progress is not None:
            progress(n, total)
        yield PerplexityResult(perplexity=float(torch.tensor(nll / n).exp()), nll_sum=nll, n_tokens=n, n_texts=n_texts)


def perplexity_one_at_a_time(
    lm: LoadedModel,
    texts: Sequence[str],
    hooks: Sequence[Hook] = (),
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
) -> PerplexityResult:
    """The reference study's loop: one text per forward with ``return_type="loss"``. For checks and benchmarks."""
    sequences = [s for s in tokenize_with_bos(lm, texts, max_seq_len) if len(s) >= 2]
    nll, n = 0.0, 0
    with torch.inference_mode(), intervened(lm, hooks) as model:
        for seq in sequences:
            tokens = torch.tensor([seq], dtype=torch.long, device=lm.device)
            loss = model(tokens, return_type="loss")
            nll += float(loss) * (len(seq) - 1)
            n += len(seq) - 1
    return PerplexityResult(perplexity=float(torch.tensor(nll / n).exp()), nll_sum=nll, n_tokens=n, n_texts=len(sequences))


# --------------------------------------------------------------------------------------------- probes


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
    scores = score_tokens(lm, sequences, hooks, batch_tokens, progress)
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


# --------------------------------------------------------------------------------------------- generation


def prompt_token_ids(lm: LoadedModel, prompt: str, max_tokens: int) -> list[int]:
    """BOS plus the prompt's tokens; a prompt too long keeps its end (what generation continues from)."""
    ids = lm.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return [lm.bos_token_id, *ids[-(max_tokens - 1) :]]


def generate(
    lm: LoadedModel,
    prompt: str,
    condition: Condition | None = None,
    max_new_tokens: int = 50,
    temperature: float = 0.0,
    seed: int = 0,
    max_prompt_tokens: int = 1024,
) -> str:
    """Continue ``prompt`` under ``condition`` (None = baseline). Greedy by default; sampling is seeded.

    Uses a key-value cache. The prompt pass leaves BOS untouched; later single-token passes edit every position
    (their position 0 is a generated token, not BOS).
    """
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    if not prompt.strip():
        raise InputError("the prompt is empty")
    if temperature < 0:
        raise InputError("temperature must be >= 0")
    if max_new_tokens < 1:
        raise InputError("max_new_tokens must be at least 1")
    condition = condition or Condition("baseline")
    room = min(max_prompt_tokens, lm.n_ctx - max_new_tokens)
    if room < 2:
        raise InputError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the {lm.n_ctx}-token context")
    ids = prompt_token_ids(lm, prompt, room)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    eos_ids = {lm.tokenizer.eos_token_id}
    new_tokens: list[int] = []
    prompt_hooks = condition.hooks(protect_first_position=True)
    step_hooks = condition.hooks(protect_first_position=False)
    with torch.inference_mode(), lm.exclusive() as model:
        cache = TransformerLensKeyValueCache.init_cache(model.cfg, lm.device, 1)
        step_input = torch.tensor([ids], dtype=torch.long, device=lm.device)
        for step in range(max_new_tokens):
            # An explicit mask: TransformerLens would otherwise mask any generated token equal to the pad id.
            mask = torch.ones_like(step_input)
            with intervened(lm, prompt_hooks if step == 0 else step_hooks):
                # Blocks only, then the unembedding of the last position alone: the prompt pass would otherwise
                # project every prompt position onto the 262k-token vocabulary.
                resid = model(step_input, past_kv_cache=cache, attention_mask=mask, stop_at_layer=model.cfg.n_layers)
                logits = _next_token_logits(model, resid[:, -1:])
            if temperature == 0:
                token = int(logits.argmax())
            else:
                probs = torch.softmax(logits / temperature, dim=-1).cpu()
                token = int(torch.multinomial(probs, 1, generator=generator))
            if token in eos_ids:
                break
            new_tokens.append(token)
            step_input = torch.tensor([[token]], dtype=torch.long, device=lm.device)
    return lm.tokenizer.decode(new_tokens, skip_special_tokens=True)
