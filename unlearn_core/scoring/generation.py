"""Text generation under conditions: greedy or seeded sampling with a key-value cache, many rows at once.

A *row* is one prompt continued under one condition. :func:`generate_batch` decodes a whole prompt x condition
grid together, one token for every row per forward pass:

* prompt pass: the rows of one prompt (equal lengths, so no padding) run in one forward, each condition's hooks
  editing only its own rows and leaving BOS alone, exactly as a single-row pass does;
* the rows' key-value caches are then left-padded to a common width (zero keys and values, masked out) and
  stacked, so every later pass feeds one new token per row. TransformerLens derives rotary positions from the
  attention mask (``get_offset_position_ids``), so the real tokens of every row keep positions 0..n-1, and the
  padded slots get no attention weight. Those passes edit every position (it is a generated token);
* a row that emits EOS (or has all its tokens) leaves the batch; generation ends when no row is left;
* a single row with no hooks (one prompt, a baseline) decodes through
  :class:`~unlearn_core.models.lean_decode.LeanDecode` (speed patches on): the same tokens, about an eighth less
  time (`scripts/gen_speed_check.py`).

The model lock is taken for one forward pass at a time, so other callers sharing the model get a turn between
steps. Greedy results equal one-at-a-time generation token for token (``tests/test_generation.py``); the numbers
behind them may differ in the last bits of fp32, since a batch changes matrix shapes and so summation order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from unlearn_core.ablation.conditions import BASELINE, Condition
from unlearn_core.ablation.interventions import Hook, intervened
from unlearn_core.errors import InputError
from unlearn_core.models.greedy import greedy_tokens
from unlearn_core.models.lean_decode import LeanDecode
from unlearn_core.models.loading import LoadedModel
from unlearn_core.models.patches import speed_patches_enabled
from unlearn_core.scoring.batching import DEFAULT_BATCH_TOKENS, unembed

GenerationKey = tuple[int, str]
"""``(prompt index, condition name)``: one cell of a generation grid."""
StepCallback = Callable[[int, dict[GenerationKey, str]], None]
"""``on_step(step, partial)``: decode steps done so far (1-based, counted over all chunks) and the text of every
row started so far."""

DEFAULT_MAX_BATCH_ROWS = 64
PREFILL_TOKENS = DEFAULT_BATCH_TOKENS
"""At most this many prompt tokens per prompt-pass forward (rows of one long prompt are split across forwards)."""


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
    (their position 0 is a generated token, not BOS). One row of :func:`generate_batch`.
    """
    condition = condition or Condition(BASELINE)
    texts = generate_batch(lm, [prompt], [condition], max_new_tokens, temperature, seed, max_prompt_tokens)
    return texts[(0, condition.name)]


def generate_batch(
    lm: LoadedModel,
    prompts: Sequence[str],
    conditions: Sequence[Condition],
    max_new_tokens: int = 40,
    temperature: float = 0.0,
    seed: int = 0,
    max_prompt_tokens: int = 1024,
    on_step: StepCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS,
) -> dict[GenerationKey, str]:
    """Continue every prompt under every condition; ``{(prompt index, condition name): text}`` in grid order.

    Each row gets what :func:`generate` gives it alone: greedy by default, and with ``temperature`` > 0 sampled
    from its own generator seeded with ``seed``. Rows run together, at most ``max_batch_rows`` per batch (larger
    grids run in consecutive chunks). Conditions that provably compute the baseline (no latent edited, error
    term kept) share the baseline's rows, as do repeated prompts.

    ``should_stop()`` is asked before each decode step; when it says True, generation ends and the texts so far
    are returned (rows of chunks not yet started are absent). ``on_step(step, partial)`` is called after each
    step with the texts so far; a call takes at most ``max_new_tokens`` steps per chunk.
    """
    ids = generate_batch_ids(lm, prompts, conditions, max_new_tokens, temperature, seed, max_prompt_tokens,
                             on_step, should_stop, max_batch_rows)
    return {key: lm.tokenizer.decode(tokens, skip_special_tokens=True) for key, tokens in ids.items()}


def generate_batch_ids(
    lm: LoadedModel,
    prompts: Sequence[str],
    conditions: Sequence[Condition],
    max_new_tokens: int = 40,
    temperature: float = 0.0,
    seed: int = 0,
    max_prompt_tokens: int = 1024,
    on_step: StepCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS,
) -> dict[GenerationKey, list[int]]:
    """:func:`generate_batch` giving each row's new token ids (EOS excluded) instead of their text."""
    if temperature < 0:
        raise InputError("temperature must be >= 0")
    if max_new_tokens < 1:
        raise InputError("max_new_tokens must be at least 1")
    if max_batch_rows < 1:
        raise InputError("max_batch_rows must be at least 1")
    names = [c.name for c in conditions]
    if len(set(names)) != len(names):
        raise InputError(f"condition names must be unique, got {names}")
    for i, prompt in enumerate(prompts):
        if not prompt.strip():
            raise InputError("the prompt is empty" if len(prompts) == 1 else f"prompt {i + 1} of {len(prompts)} is empty")
    room = min(max_prompt_tokens, lm.n_ctx - max_new_tokens)
    if room < 2:
        raise InputError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the {lm.n_ctx}-token context")
    run = _Run(lm, max_new_tokens, temperature, seed, on_step, should_stop)
    run.add_rows([prompt_token_ids(lm, p, room) for p in prompts], conditions)
    for start in range(0, len(run.rows), max_batch_rows):
        if not run.decode(run.rows[start : start + max_batch_rows]):
            break
    return {key: list(row.tokens) for key, row in run.row_of.items() if row.started}


def per_row_hooks(row_groups: Sequence[str | None], hooks_by_group: Mapping[str | None, Sequence[Hook]]) -> list[Hook]:
    """Hooks for a batch whose rows belong to different conditions: one per hook point, applying each group's
    hooks (``hooks_by_group[row_groups[row]]``) only to that group's rows, in the group's own order."""
    rows_of: dict[str | None, list[int]] = {}
    for row, group in enumerate(row_groups):
        rows_of.setdefault(group, []).append(row)
    sites: dict[str, list[tuple[torch.Tensor | None, Callable[..., torch.Tensor]]]] = {}
    for group, rows in rows_of.items():
        index = None if len(rows) == len(row_groups) else torch.tensor(rows, dtype=torch.long)
        for hook_name, fn in hooks_by_group[group]:
            sites.setdefault(hook_name, []).append((index, fn))
    return [(hook_name, _rows_hook(edits)) for hook_name, edits in sites.items()]


def _rows_hook(edits: list[tuple[torch.Tensor | None, Callable[..., torch.Tensor]]]) -> Callable[..., torch.Tensor]:
    def hook(activation: torch.Tensor, hook: Any) -> torch.Tensor:
        out = activation
        for rows, fn in edits:
            if rows is None:  # the group is the whole batch
                out = fn(out, hook)
                continue
            if out is activation:
                out = activation.clone()
            index = rows.to(out.device)
            out[index] = fn(out[index], hook)
        return out

    return hook


@dataclass
class _Row:
    """One continuation being decoded: a prompt under one condition (or the shared baseline, ``group=None``)."""

    ids: tuple[int, ...]
    group: str | None
    generator: torch.Generator
    tokens: list[int] = field(default_factory=list)
    started: bool = False


class _Run:
    """The state of one :func:`generate_batch` call: its rows, their hooks and the step count."""

    def __init__(self, lm: LoadedModel, max_new_tokens: int, temperature: float, seed: int,
                 on_step: StepCallback | None, should_stop: Callable[[], bool] | None) -> None:
        self.lm = lm
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.seed = seed
        self.on_step = on_step
        self.should_stop = should_stop
        self.eos_ids = {lm.tokenizer.eos_token_id}
        self.rows: list[_Row] = []
        self.row_of: dict[GenerationKey, _Row] = {}
        self.lean: LeanDecode | None = None
        self.lean_tried = False
        self.prompt_hooks: dict[str | None, list[Hook]] = {None: []}
        self.step_hooks: dict[str | None, list[Hook]] = {None: []}
        self.steps = 0

    def add_rows(self, prompt_ids: Sequence[list[int]], conditions: Sequence[Condition]) -> None:
        """One row per distinct (prompt, computation), rows of one prompt next to each other."""
        shared: dict[tuple[tuple[int, ...], str | None], _Row] = {}
        for cond in conditions:
            if not _is_identity(cond):
                self.prompt_hooks[cond.name] = cond.hooks(protect_first_position=True)
                self.step_hooks[cond.name] = cond.hooks(protect_first_position=False)
        for i, ids in enumerate(prompt_ids):
            for cond in conditions:
                work = (tuple(ids), None if _is_identity(cond) else cond.name)
                if work not in shared:
                    generator = torch.Generator(device="cpu").manual_seed(self.seed)
                    shared[work] = _Row(work[0], work[1], generator)
                    self.rows.append(shared[work])
                self.row_of[(i, cond.name)] = shared[work]

    def texts(self) -> dict[GenerationKey, str]:
        """The text of every row started so far, in grid order."""
        decode = self.lm.tokenizer.decode
        return {key: decode(row.tokens, skip_special_tokens=True) for key, row in self.row_of.items() if row.started}

    def decode(self, rows: list[_Row]) -> bool:
        """Generate ``rows`` to the end; False when ``should_stop`` ended it early."""
        active = rows
        cache = None
        self.lean, self.lean_tried = None, False
        for _ in range(self.max_new_tokens):
            if self.should_stop is not None and self.should_stop():
                return False
            if cache is None:
                cache, logits = self._prompt_pass(active)
            else:
                logits, cache = self._step_pass(active, cache)
            keep = self._take_tokens(active, logits)
            self.steps += 1
            if self.on_step is not None:
                self.on_step(self.steps, self.texts())
            if not keep:
                break
            if len(keep) < len(active):
                active = [active[j] for j in keep]
                with torch.inference_mode():
                    cache = _select_rows(cache, keep)
        return True

    def _prompt_pass(self, rows: list[_Row]) -> tuple[Any, torch.Tensor]:
        """Run the prompts (rows of one prompt together), then stack their caches, left-padded."""
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        parts: list[tuple[Any, int]] = []
        logits = []
        for group in _prompt_groups(rows):
            tokens = torch.tensor([rows[j].ids for j in group], dtype=torch.long, device=self.lm.device)
            hooks = per_row_hooks([rows[j].group for j in group], self.prompt_hooks)
            with torch.inference_mode(), intervened(self.lm, hooks) as model:
                cache = TransformerLensKeyValueCache.init_cache(model.cfg, self.lm.device, len(group))
                logits.append(self._forward(model, tokens, cache))
            parts.append((cache, tokens.shape[1]))
            for j in group:
                rows[j].started = True
        if len({t.dim() for t in logits}) > 1:  # greedy ids for some groups, full logits for others
            logits = [t if t.dim() == 1 else t.argmax(dim=-1) for t in logits]
        with torch.inference_mode():
            return _left_padded(parts), torch.cat(logits)

    def _step_pass(self, rows: list[_Row], cache: Any) -> tuple[torch.Tensor, Any]:
        """One token for every row; the logits (or greedy ids) and the cache to go on with. One unhooked row goes
        through :class:`~unlearn_core.models.lean_decode.LeanDecode` (speed patches on), handing back a library
        cache the moment it no longer applies."""
        tokens = torch.tensor([[row.tokens[-1]] for row in rows], dtype=torch.long, device=self.lm.device)
        hooks = per_row_hooks([row.group for row in rows], self.step_hooks)
        lean_rows = len(rows) == 1 and not hooks and speed_patches_enabled(self.lm.speed_patches)
        with torch.inference_mode(), intervened(self.lm, hooks) as model:
            if lean_rows and self.lean is None and not self.lean_tried:
                self.lean_tried = True
                self.lean = LeanDecode.start(model, cache, len(rows[0].ids) + self.max_new_tokens)
            if self.lean is not None:
                resid = self.lean.step(model, rows[0].tokens[-1]) if lean_rows else None
                if resid is not None:
                    return self._next_token(model, resid), cache
                cache, self.lean = self.lean.to_cache(), None
            return self._forward(model, tokens, cache), cache

    def _forward(self, model: Any, tokens: torch.Tensor, cache: Any) -> torch.Tensor:
        """Each row's next-token logits [rows, d_vocab], or, greedy with the speed patches on, the greedy token ids
        themselves [rows] (:func:`unlearn_core.models.greedy.greedy_tokens`: the same tokens, without the full
        unembedding)."""
        # An explicit mask: TransformerLens would otherwise mask any generated token equal to the pad id.
        mask = torch.ones_like(tokens)
        # Blocks only, then the unembedding of the last position alone: the prompt pass would otherwise project
        # every prompt position onto the (262k-token) vocabulary.
        resid = model(tokens, past_kv_cache=cache, attention_mask=mask, stop_at_layer=model.cfg.n_layers)
        return self._next_token(model, resid)

    def _next_token(self, model: Any, resid: torch.Tensor) -> torch.Tensor:
        """From the last block's residual stream: the logits of the last position, or the greedy ids (see
        :meth:`_forward`)."""
        x = model.ln_final(resid[:, -1:])[:, 0]
        if self.temperature == 0 and speed_patches_enabled(self.lm.speed_patches):
            chosen = greedy_tokens(model, x)
            if chosen is not None:
                return chosen
        return unembed(model, x)

    def _take_tokens(self, rows: list[_Row], logits: torch.Tensor) -> list[int]:
        """Pick each row's next token (``logits`` may already be the greedy ids); the positions (in ``rows``) of the
        rows still going."""
        if logits.dim() == 1:
            chosen = logits.tolist()
        elif self.temperature == 0:
            chosen = logits.argmax(dim=-1).tolist()
        else:
            probs = torch.softmax(logits / self.temperature, dim=-1).cpu()
            chosen = [int(torch.multinomial(probs[j], 1, generator=row.generator)) for j, row in enumerate(rows)]
        keep = []
        for j, (row, token) in enumerate(zip(rows, chosen, strict=True)):
            if token in self.eos_ids:
                continue
            row.tokens.append(int(token))
            if len(row.tokens) < self.max_new_tokens:
                keep.append(j)
        return keep


def _is_identity(condition: Condition) -> bool:
    """No latent edited and the error term kept: its hooks leave every activation exactly as it is."""
    return condition.n_latents == 0 and condition.intervention.keeps_error_term


def _prompt_groups(rows: Sequence[_Row]) -> list[list[int]]:
    """Indices of consecutive rows with the same prompt, at most :data:`PREFILL_TOKENS` tokens per group."""
    groups: list[list[int]] = []
    for j, row in enumerate(rows):
        last = groups[-1] if groups else None
        if last is not None and rows[last[0]].ids == row.ids and (len(last) + 1) * len(row.ids) <= PREFILL_TOKENS:
            last.append(j)
        else:
            groups.append([j])
    return groups


def _left_padded(parts: Sequence[tuple[Any, int]]) -> Any:
    """One cache from per-group caches of different prompt lengths: keys and values left-padded with zeros, and
    an attention mask that hides the padding."""
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

    if len(parts) == 1:
        return parts[0][0]
    width = max(length for _, length in parts)

    def pad(t: torch.Tensor, length: int) -> torch.Tensor:
        return torch.cat([t.new_zeros((t.shape[0], width - length, *t.shape[2:])), t], dim=1)

    entries = [
        TransformerLensKeyValueCacheEntry(
            past_keys=torch.cat([pad(c.entries[layer].past_keys, n) for c, n in parts]),
            past_values=torch.cat([pad(c.entries[layer].past_values, n) for c, n in parts]),
        )
        for layer in range(len(parts[0][0].entries))
    ]
    mask = torch.cat([pad(c.previous_attention_mask, n) for c, n in parts])
    return TransformerLensKeyValueCache(entries=entries, previous_attention_mask=mask)


def _select_rows(cache: Any, keep: list[int]) -> Any:
    """The cache of the rows ``keep`` only."""
    index = torch.tensor(keep, dtype=torch.long, device=cache.previous_attention_mask.device)
    for entry in cache.entries:
        rows = index.to(entry.past_keys.device)
        entry.past_keys = entry.past_keys[rows]
        entry.past_values = entry.past_values[rows]
    cache.previous_attention_mask = cache.previous_attention_mask[index]
    return cache
