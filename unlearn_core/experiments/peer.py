"""The peer: plain Hugging Face transformers on the same weights as our offline model, used as a user would.

``AutoModelForCausalLM`` loads the offline model's safetensors checkpoint (the one our TransformerLens model is
converted from). :func:`hf_perplexity` scores the same token ids in the same batches as
:func:`unlearn_core.scoring.perplexity.perplexity` (length-sorted, right-padded) with an attention mask and the
NLL from full logits (``labels=``); :func:`hf_generate_ids` is greedy ``generate`` from the same prompt ids.
``python -m unlearn_core bench`` times both sides (:mod:`unlearn_core.experiments.bench`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from unlearn_core.models.loading import LoadedModel, offline_checkpoint
from unlearn_core.scoring.batching import (
    DEFAULT_BATCH_TOKENS,
    DEFAULT_MAX_SEQ_LEN,
    batches_by_length,
    right_padded,
    tokenize_with_bos,
)
from unlearn_core.scoring.generation import prompt_token_ids
from unlearn_core.scoring.perplexity import PerplexityResult


def load_hf_model(dtype: torch.dtype) -> Any:
    """``AutoModelForCausalLM`` on the offline model's safetensors checkpoint (the weights ours are built from)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(offline_checkpoint()), dtype=dtype).eval()


def hf_perplexity(hf_model: Any, lm: LoadedModel, texts: Sequence[str], max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
                  batch_tokens: int = DEFAULT_BATCH_TOKENS) -> PerplexityResult:
    """Our perplexity computed as a transformers user would: the same token ids and batches (length-sorted,
    right-padded), an attention mask, and the batch's mean NLL from full logits via ``labels``."""
    seqs = [s for s in tokenize_with_bos(lm, texts, max_seq_len) if len(s) >= 2]
    nll, n = 0.0, 0
    for batch in batches_by_length([len(s) for s in seqs], batch_tokens):
        tokens, positions, lengths = right_padded(lm, seqs, batch)
        mask = (positions < lengths[:, None]).long()
        with torch.inference_mode():
            loss = hf_model(input_ids=tokens, attention_mask=mask, labels=tokens.masked_fill(mask == 0, -100)).loss
        count = int(mask[:, 1:].sum())
        nll += float(loss) * count
        n += count
    return PerplexityResult(perplexity=math.exp(nll / n), nll_sum=nll, n_tokens=n, n_texts=len(seqs))


def hf_generate_ids(hf_model: Any, lm: LoadedModel, prompt: str, max_new_tokens: int) -> list[int]:
    """Greedy ``generate`` from our prompt ids (BOS + prompt); the new ids, EOS excluded."""
    ids = torch.tensor([prompt_token_ids(lm, prompt, 1024)])
    eos = lm.tokenizer.eos_token_id
    with torch.inference_mode():
        out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                                top_p=None, top_k=None, eos_token_id=eos, pad_token_id=lm.tokenizer.pad_token_id)
    return [int(t) for t in out[0, ids.shape[1]:] if int(t) != eos]
