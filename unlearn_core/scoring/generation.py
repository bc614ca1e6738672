"""Text generation under a condition: greedy or seeded sampling, with a key-value cache."""

from __future__ import annotations

from typing import Any

import torch

from unlearn_core.ablation.conditions import Condition
from unlearn_core.ablation.interventions import intervened
from unlearn_core.errors import InputError
from unlearn_core.models.loading import LoadedModel


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
