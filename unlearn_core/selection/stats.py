"""Per-latent activation statistics over a text corpus: how often each SAE latent fires and how strongly.

Selection rules (:mod:`unlearn_core.selection.rules`) contrast these statistics on forget text against retain text.
Every SAE of a model is fed from one batched forward pass, stopped after the deepest SAE's layer; batches are
streamed so the corpus never has to fit in memory; BOS is excluded (its activations are huge and carry no text).
Results are cached on disk, keyed by everything that determines them (model, SAE weights, exact token ids).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from unlearn_core.errors import InputError
from unlearn_core.models.loading import LoadedModel, cache_dir
from unlearn_core.models.offline import remove_stale_temp_files
from unlearn_core.saes.loading import LoadedSae
from unlearn_core.scoring.activations import iter_activations
from unlearn_core.scoring.batching import DEFAULT_BATCH_TOKENS, ProgressCallback

CACHE_FORMAT = 2
DEFAULT_STATS_TOKENS = 100_000
DEFAULT_STATS_SEQ_LEN = 256


@dataclass(frozen=True)
class LatentStats:
    """Firing statistics of every latent of one SAE over ``n_tokens`` non-BOS tokens.

    ``fire_count[i]`` counts tokens where latent i is > 0, ``act_sum[i]`` sums its activation, ``act_max[i]`` is
    its largest activation, and ``text_count[i]`` counts texts in which it fired at least once.
    """

    sae_ref: str
    hook_name: str
    n_tokens: int
    n_texts: int
    fire_count: torch.Tensor
    act_sum: torch.Tensor
    act_max: torch.Tensor
    text_count: torch.Tensor

    @property
    def frequency(self) -> torch.Tensor:
        """Fraction of tokens on which each latent fires."""
        return self.fire_count.double() / max(self.n_tokens, 1)

    @property
    def mean_activation(self) -> torch.Tensor:
        """Mean activation over the tokens where the latent fires (0 for latents that never fire)."""
        return torch.where(self.fire_count > 0, self.act_sum / self.fire_count.clamp(min=1), torch.zeros_like(self.act_sum))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"fire_count": self.fire_count, "act_sum": self.act_sum, "act_max": self.act_max, "text_count": self.text_count}


def stats_sequences(
    lm: LoadedModel, texts: Sequence[str], max_tokens: int = DEFAULT_STATS_TOKENS, max_seq_len: int = DEFAULT_STATS_SEQ_LEN
) -> list[list[int]]:
    """Token ids (BOS first) of the texts, in order, until ``max_tokens`` non-BOS tokens are collected.

    Long texts are cut into windows of ``max_seq_len`` tokens (each with its own BOS), so the whole of a long
    paragraph counts rather than only its start.
    """
    if max_tokens < 1:
        raise InputError("max_tokens must be at least 1")
    if max_seq_len < 2:
        raise InputError("max_seq_len must be at least 2 (BOS and one token)")
    body_len = max_seq_len - 1
    sequences: list[list[int]] = []
    total = 0
    for text in texts:
        ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids), body_len):
            window = ids[start : start + body_len][: max_tokens - total]
            if not window:
                break
            sequences.append([lm.bos_token_id, *window])
            total += len(window)
            if total >= max_tokens:
                return sequences
    return sequences


def compute_latent_stats(
    lm: LoadedModel,
    saes: Sequence[LoadedSae],
    sequences: Sequence[Sequence[int]],
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: ProgressCallback | None = None,
) -> dict[str, LatentStats]:
    """Statistics of every latent of every SAE over the token sequences (BOS first; BOS itself excluded)."""
    if not saes:
        raise InputError("no SAEs given")
    if not sequences:
        raise InputError("no text to compute statistics on")
    hooks = sorted({s.hook_name for s in saes})
    acc = {
        s.ref: {
            "fire_count": torch.zeros(s.width, dtype=torch.long),
            "act_sum": torch.zeros(s.width, dtype=torch.float64),
            "act_max": torch.zeros(s.width, dtype=torch.float32),
            "text_count": torch.zeros(s.width, dtype=torch.long),
        }
        for s in saes
    }
    n_tokens = 0
    for batch in iter_activations(lm, sequences, hooks, include_bos=False, batch_tokens=batch_tokens, progress=progress):
        n_tokens += int(batch.tokens.numel())
        # which sequence of the batch each row belongs to, numbered 0..k-1: shared by every SAE below
        uniq, inverse = torch.unique(batch.sequence_index, return_inverse=True)
        with torch.inference_mode():
            for s in saes:
                f = s.sae.encode(batch.acts[s.hook_name].to(s.sae.dtype)).float().cpu()
                a = acc[s.ref]
                active = f > 0
                a["fire_count"] += active.sum(dim=0)
                a["act_sum"] += f.sum(dim=0, dtype=torch.float64)
                a["act_max"] = torch.maximum(a["act_max"], f.max(dim=0).values)
                # texts in which each latent fired: count its active rows per sequence, then count sequences > 0
                per_text = torch.zeros(len(uniq), s.width)
                per_text.index_add_(0, inverse, active.float())
                a["text_count"] += (per_text > 0).sum(dim=0)
    return {
        s.ref: LatentStats(
            sae_ref=s.ref, hook_name=s.hook_name, n_tokens=n_tokens, n_texts=len(sequences), **acc[s.ref]
        )
        for s in saes
    }


def shard_sequences(sequences: Sequence[Sequence[int]], n_shards: int) -> list[list[Sequence[int]]]:
    """The sequences cut into at most ``n_shards`` contiguous, non-empty runs of about equal token counts, in order
    (their concatenation is ``sequences``), for computing statistics in parts (:func:`combine_latent_stats`)."""
    if n_shards < 1:
        raise InputError("the number of shards must be at least 1")
    n_shards = min(n_shards, len(sequences))
    if not sequences:
        return []
    scaled = [0]  # token count before each sequence, times n_shards (exact integer comparisons)
    for seq in sequences:
        scaled.append(scaled[-1] + len(seq) * n_shards)
    total = scaled[-1] // n_shards
    starts = [0]
    for k in range(1, n_shards):
        cut = bisect.bisect_left(scaled, k * total)  # the first sequence starting at or after k/n of the tokens
        starts.append(min(max(cut, starts[-1] + 1), len(sequences) - (n_shards - k)))
    starts.append(len(sequences))
    return [list(sequences[a:b]) for a, b in zip(starts, starts[1:], strict=False)]


def combine_latent_stats(parts: Sequence[dict[str, LatentStats]]) -> dict[str, LatentStats]:
    """The statistics of the concatenated corpus, from those of its shards: counts, token and text totals add up
    (exactly), activation sums add up in float64, maxima take the maximum."""
    if not parts:
        raise InputError("no statistics to combine")
    out: dict[str, LatentStats] = {}
    for ref, first in parts[0].items():
        shards = [p[ref] for p in parts]
        if len({s.fire_count.numel() for s in shards}) != 1:
            raise InputError(f"statistics of SAE {ref} have different widths in different shards")
        out[ref] = LatentStats(
            sae_ref=first.sae_ref,
            hook_name=first.hook_name,
            n_tokens=sum(s.n_tokens for s in shards),
            n_texts=sum(s.n_texts for s in shards),
            fire_count=torch.stack([s.fire_count.long() for s in shards]).sum(dim=0),
            act_sum=torch.stack([s.act_sum.double() for s in shards]).sum(dim=0),
            act_max=torch.stack([s.act_max for s in shards]).amax(dim=0),
            text_count=torch.stack([s.text_count.long() for s in shards]).sum(dim=0),
        )
    return out


def stats_cache_key(lm: LoadedModel, sae: LoadedSae, sequences: Sequence[Sequence[int]]) -> str:
    """A digest of everything the statistics depend on: model, SAE weights, and the exact token ids."""
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_FORMAT, lm.preset.name, lm.preset.loader, lm.preset.model_id, str(lm.dtype), sae.ref,
                          sae.hook_name]).encode())
    with torch.inference_mode():
        for name in ("W_enc", "b_enc", "threshold", "b_dec"):
            tensor = getattr(sae.sae, name, None)
            if isinstance(tensor, torch.Tensor):
                h.update(name.encode())
                h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    for seq in sequences:
        h.update(len(seq).to_bytes(4, "little"))
        h.update(torch.tensor(seq, dtype=torch.int32).numpy().tobytes())
    return h.hexdigest()[:32]


def stats_cache_dir() -> Path:
    return cache_dir() / "latent-stats"


def cached_latent_stats(
    lm: LoadedModel,
    saes: Sequence[LoadedSae],
    sequences: Sequence[Sequence[int]],
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: ProgressCallback | None = None,
    directory: Path | None = None,
) -> dict[str, LatentStats]:
    """:func:`compute_latent_stats`, reading and writing an on-disk cache (one file per SAE and corpus).

    Only the SAEs missing from the cache are computed, all in one forward pass. Cache files are validated when
    read (a damaged one is deleted and recomputed) and written atomically under a unique temporary name.
    """
    directory = directory or stats_cache_dir()
    remove_stale_temp_files(directory, (".*.tmp",))  # left by a write killed over an hour ago
    keys = {s.ref: stats_cache_key(lm, s, sequences) for s in saes}
    found: dict[str, LatentStats] = {}
    for s in saes:
        cached = _read_cache(directory / f"{keys[s.ref]}.pt", s)
        if cached is not None:
            found[s.ref] = cached
    missing = [s for s in saes if s.ref not in found]
    if missing:
        computed = compute_latent_stats(lm, missing, sequences, batch_tokens, progress)
        for s in missing:
            _write_cache(directory / f"{keys[s.ref]}.pt", computed[s.ref])
        found.update(computed)
    elif progress is not None:
        total = sum(len(q) for q in sequences)
        progress(total, total)
    return {s.ref: found[s.ref] for s in saes}


_CACHE_DTYPES = {"fire_count": torch.long, "act_sum": torch.float64, "act_max": torch.float32, "text_count": torch.long}
"""The tensors of a stats file and their dtypes; each is one value per latent."""


def _read_cache(path: Path, sae: LoadedSae) -> LatentStats | None:
    """The statistics in a cache file, or None when there is none. The file is loaded with ``weights_only=True``
    (plain tensors and numbers, never arbitrary pickled objects) and checked against the SAE: exactly the expected
    keys, one value per latent, the expected dtypes. A file that fails any check is deleted (and so recomputed)."""
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        stats = _checked_stats(data, sae)
    except Exception:  # noqa: BLE001 - whatever torch.load raised for a damaged or hostile file: recompute
        stats = None
    if stats is None:
        path.unlink(missing_ok=True)
    return stats


def _checked_stats(data: object, sae: LoadedSae) -> LatentStats | None:
    if not isinstance(data, dict) or set(data) != {"n_tokens", "n_texts", *_CACHE_DTYPES}:
        return None
    counts = [data["n_tokens"], data["n_texts"]]
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts):
        return None
    for name, dtype in _CACHE_DTYPES.items():
        tensor = data[name]
        if not isinstance(tensor, torch.Tensor) or tensor.dtype != dtype or tuple(tensor.shape) != (sae.width,):
            return None
    return LatentStats(sae_ref=sae.ref, hook_name=sae.hook_name, n_tokens=counts[0], n_texts=counts[1],
                       **{name: data[name] for name in _CACHE_DTYPES})


def _write_cache(path: Path, stats: LatentStats) -> None:
    """Write atomically: a temporary file with a unique name in the same folder, then one ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        torch.save({"n_tokens": stats.n_tokens, "n_texts": stats.n_texts, **stats.tensors()}, tmp)
        os.replace(tmp, path)
    except OSError:
        pass  # a cache we cannot write only costs a recomputation next time
    finally:
        tmp.unlink(missing_ok=True)


__all__ = [
    "DEFAULT_STATS_SEQ_LEN",
    "DEFAULT_STATS_TOKENS",
    "LatentStats",
    "cached_latent_stats",
    "combine_latent_stats",
    "compute_latent_stats",
    "shard_sequences",
    "stats_cache_key",
    "stats_sequences",
]
