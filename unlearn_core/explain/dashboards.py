"""Latent dashboards: what a latent responds to and what it writes, for any SAE, offline.

Per latent: activation frequency, max activation, top activating contexts (a window of tokens around the activating
token, with the latent's value on every token), the tokens its decoder direction promotes and suppresses through the
unembedding (``W_dec[i] @ W_U``, no final norm: Neuronpedia's convention), and an **automatic** label made from the
tokens it fires on most strongly. Shipped SAEs carry precomputed dashboards (``dashboards.npz`` next to the weights);
for any other SAE :func:`dashboards_for` computes them over a small built-in corpus once and caches them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unlearn_core.errors import InputError
from unlearn_core.models.loading import LoadedModel, cache_dir

DASHBOARD_FILE = "dashboards.npz"
CONTEXTS_PER_LATENT = 8
TOKENS_BEFORE = 10
TOKENS_AFTER = 3
LOGIT_TOKENS = 10
ENCODE_CHUNK = 8192
AUTO_LABEL_PREFIX = "auto: "
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Context:
    """Tokens around one activation; ``focus`` indexes the token with the (max) value ``value``."""

    tokens: list[str]
    values: list[float]
    focus: int
    value: float


@dataclass(frozen=True)
class LatentDashboard:
    latent: int
    frequency: float
    max_activation: float
    contexts: list[Context]
    promoted: list[tuple[str, float]]
    suppressed: list[tuple[str, float]]
    auto_label: str
    corpus: str
    n_tokens: int
    frequency_by_source: dict[str, float]
    """Activation frequency on each part of the corpus (e.g. books / WikiText-2 / Harry Potter fan wiki), if known."""

    @property
    def is_dead(self) -> bool:
        return self.frequency == 0.0


@dataclass
class Dashboards:
    """Dashboards of every latent of one SAE, as compact arrays. Token ids index ``vocab`` (local strings)."""

    frequency: np.ndarray  # [d_sae] float32
    max_activation: np.ndarray  # [d_sae] float32
    context_tokens: np.ndarray  # [d_sae, C, W] int32 into vocab, -1 = none
    context_values: np.ndarray  # [d_sae, C, W] float32 (stored as bfloat16: massive activations exceed float16)
    context_focus: np.ndarray  # [d_sae, C] int8, -1 = no context
    promoted_tokens: np.ndarray  # [d_sae, L] int32 into vocab
    promoted_values: np.ndarray  # [d_sae, L] float32 (stored as bfloat16)
    suppressed_tokens: np.ndarray
    suppressed_values: np.ndarray
    vocab: list[str]
    meta: dict[str, Any]
    source_frequency: np.ndarray | None = None  # [d_sae, n_sources] float32; names in meta["sources"]

    @property
    def width(self) -> int:
        return int(self.frequency.shape[0])

    def latent(self, i: int) -> LatentDashboard:
        if not 0 <= i < self.width:
            raise InputError(f"latent {i} is out of range: this SAE has latents 0..{self.width - 1}")
        contexts = []
        for c in range(self.context_tokens.shape[1]):
            focus = int(self.context_focus[i, c])
            if focus < 0:
                continue
            ids = self.context_tokens[i, c]
            keep = ids >= 0
            contexts.append(
                Context(
                    tokens=[self.vocab[t] for t in ids[keep]],
                    values=[float(v) for v in self.context_values[i, c][keep]],
                    focus=focus,
                    value=float(self.context_values[i, c, focus]),
                )
            )
        return LatentDashboard(
            latent=i,
            frequency=float(self.frequency[i]),
            max_activation=float(self.max_activation[i]),
            contexts=contexts,
            promoted=[(self.vocab[t], float(v)) for t, v in zip(self.promoted_tokens[i], self.promoted_values[i], strict=True)],
            suppressed=[
                (self.vocab[t], float(v)) for t, v in zip(self.suppressed_tokens[i], self.suppressed_values[i], strict=True)
            ],
            auto_label=auto_label(contexts),
            corpus=str(self.meta.get("corpus", "")),
            n_tokens=int(self.meta.get("n_tokens", 0)),
            frequency_by_source=(
                {}
                if self.source_frequency is None
                else {name: float(f) for name, f in zip(self.meta["sources"], self.source_frequency[i], strict=True)}
            ),
        )

    def save(self, path: Path | str) -> None:
        """Write atomically as a compressed ``.npz`` (no pickles)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(
            tmp,
            frequency=self.frequency,
            max_activation=self.max_activation,
            context_tokens=self.context_tokens,
            context_values=_bf16_bits(self.context_values),
            context_focus=self.context_focus,
            promoted_tokens=self.promoted_tokens,
            promoted_values=_bf16_bits(self.promoted_values),
            suppressed_tokens=self.suppressed_tokens,
            suppressed_values=_bf16_bits(self.suppressed_values),
            vocab=np.array(json.dumps(self.vocab)),
            meta=np.array(json.dumps({**self.meta, "format_version": FORMAT_VERSION})),
            **({} if self.source_frequency is None else {"source_frequency": self.source_frequency}),
        )
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path | str) -> Dashboards:
        try:
            with np.load(Path(path), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"cannot read dashboards from {path}: {exc}") from exc
        try:
            vocab = json.loads(str(arrays.pop("vocab")))
            meta = json.loads(str(arrays.pop("meta")))
            for name in ("context_values", "promoted_values", "suppressed_values"):
                arrays[name] = _from_bf16_bits(arrays[name])
            return cls(vocab=vocab, meta=meta, **arrays)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{path} is not a dashboards file of this version: {exc}") from exc


def _visible(token: str) -> str:
    """A token as a label: stripped, or named when it is only whitespace (line breaks, spaces)."""
    stripped = token.strip()
    if stripped:
        return stripped
    if "\n" in token:
        return "⏎" * token.count("\n")
    return "␣" * len(token) if token else "(empty)"


def _bf16_bits(values: np.ndarray) -> np.ndarray:
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(torch.bfloat16).view(torch.int16).numpy()


def _from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    if bits.dtype != np.int16:
        raise ValueError(f"values stored as {bits.dtype}, expected bfloat16 bits")
    return torch.from_numpy(np.ascontiguousarray(bits)).view(torch.bfloat16).float().numpy()


def _bf16_round(values: np.ndarray) -> np.ndarray:
    """Values at the precision they are stored with, so a loaded file equals the computed dashboards."""
    return _from_bf16_bits(_bf16_bits(values))


def auto_label(contexts: Sequence[Context], n: int = 3) -> str:
    """An automatic label: the tokens the latent fires on most often in its top contexts (weighted by value)."""
    weights: Counter[str] = Counter()
    for c in contexts:
        weights[_visible(c.tokens[c.focus])] += c.value
    if not weights:
        return AUTO_LABEL_PREFIX + "(no activations seen)"
    return AUTO_LABEL_PREFIX + " · ".join(t for t, _ in weights.most_common(n))


# --------------------------------------------------------------------------------------------- computing


def compute_dashboards(
    sae: Any,
    acts: Any,
    tokens: np.ndarray,
    sequence_index: np.ndarray,
    unembed: torch.Tensor,
    decode_token: Callable[[int], str],
    corpus: str,
    progress: Callable[[str, int, int], None] | None = None,
    row_source: np.ndarray | None = None,
    source_names: Sequence[str] = (),
) -> Dashboards:
    """Dashboards for every latent of ``sae`` from activations ``acts`` [N, d_in] (array or memmap).

    Rows of one sequence must be contiguous and in position order (BOS excluded); ``tokens`` and
    ``sequence_index`` give each row's token and sequence. ``unembed`` is the model's W_U [d_in, vocab].
    ``row_source`` (each row's index into ``source_names``) adds the firing frequency on each source.
    """
    n_rows = int(tokens.shape[0])
    d_sae = int(sae.cfg.d_sae)
    keep = 2 * CONTEXTS_PER_LATENT
    count = torch.zeros(d_sae, dtype=torch.long)
    per_source = torch.zeros(len(source_names), d_sae, dtype=torch.long)
    best_vals = torch.zeros(keep, d_sae)
    best_rows = torch.full((keep, d_sae), -1, dtype=torch.long)
    dtype = sae.W_enc.dtype
    with torch.inference_mode():
        for start in range(0, n_rows, ENCODE_CHUNK):
            x = torch.from_numpy(np.array(acts[start : start + ENCODE_CHUNK], dtype=np.float32)).to(sae.W_enc.device, dtype)
            feats = sae.encode(x).float().cpu()
            count += (feats > 0).sum(0)
            if row_source is not None:
                src = torch.from_numpy(row_source[start : start + ENCODE_CHUNK]).long()
                per_source.index_add_(0, src, (feats > 0).long())
            vals, rows = _best_row_per_sequence(feats, torch.from_numpy(sequence_index[start : start + ENCODE_CHUNK]), keep)
            merged_vals = torch.cat([best_vals, vals])
            merged_rows = torch.cat([best_rows, torch.where(rows >= 0, rows + start, -1)])
            best_vals, pick = merged_vals.topk(keep, dim=0)
            best_rows = merged_rows.gather(0, pick)
            if progress is not None:
                progress("activations", min(start + ENCODE_CHUNK, n_rows), n_rows)
        chosen = _distinct_sequence_rows(best_vals, best_rows, sequence_index)
        ctx_tokens, ctx_values, ctx_focus = _context_arrays(sae, acts, tokens, sequence_index, chosen, progress)
        promoted, promoted_v, suppressed, suppressed_v = _logit_effects(sae, unembed, progress)
    used = np.unique(np.concatenate([ctx_tokens[ctx_tokens >= 0].ravel(), promoted.ravel(), suppressed.ravel()]))
    index = {int(t): j for j, t in enumerate(used)}
    remap = np.vectorize(lambda t: index[int(t)] if t >= 0 else -1, otypes=[np.int32])
    return Dashboards(
        frequency=(count.float() / max(n_rows, 1)).numpy().astype(np.float32),
        max_activation=best_vals[0].clamp(min=0).numpy().astype(np.float32),
        context_tokens=remap(ctx_tokens) if ctx_tokens.size else ctx_tokens,
        context_values=_bf16_round(ctx_values),
        context_focus=ctx_focus,
        promoted_tokens=remap(promoted),
        promoted_values=_bf16_round(promoted_v),
        suppressed_tokens=remap(suppressed),
        suppressed_values=_bf16_round(suppressed_v),
        vocab=[decode_token(int(t)) for t in used],
        meta={"corpus": corpus, "n_tokens": n_rows, "hook_name": sae.cfg.metadata.hook_name, "d_sae": d_sae,
              "sources": list(source_names)},
        source_frequency=_source_frequency(per_source, row_source, len(source_names)),
    )


def _source_frequency(per_source: torch.Tensor, row_source: np.ndarray | None, n_sources: int) -> np.ndarray | None:
    if row_source is None:
        return None
    rows = np.bincount(row_source, minlength=n_sources).clip(min=1)
    return (per_source.float() / torch.from_numpy(rows).float()[:, None]).T.contiguous().numpy()


def _best_row_per_sequence(feats: torch.Tensor, sequence: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per latent, the ``keep`` best sequences of a chunk: each one's max value and the row holding it (-1 if none).

    Taking the best row of each sequence first means a latent that fires on every token of one text cannot fill
    all its top contexts with that one text.
    """
    n, d = feats.shape
    _, inverse = torch.unique(sequence, return_inverse=True)
    n_seq = int(inverse.max()) + 1
    index = inverse[:, None].expand(n, d)
    seq_max = torch.zeros(n_seq, d).scatter_reduce(0, index, feats, "amax", include_self=True)
    is_max = (feats == seq_max[inverse]) & (feats > 0)
    rows = torch.where(is_max, torch.arange(n)[:, None].expand(n, d), n)
    seq_row = torch.full((n_seq, d), n).scatter_reduce(0, index, rows, "amin", include_self=True)
    k = min(keep, n_seq)
    vals, pick = seq_max.topk(k, dim=0)
    best_rows = torch.where(vals > 0, seq_row.gather(0, pick), -1)
    if k < keep:
        vals = torch.cat([vals, torch.zeros(keep - k, d)])
        best_rows = torch.cat([best_rows, torch.full((keep - k, d), -1)])
    return vals, best_rows


def _distinct_sequence_rows(vals: torch.Tensor, rows: torch.Tensor, sequence_index: np.ndarray) -> np.ndarray:
    """Per latent, up to CONTEXTS_PER_LATENT top rows from distinct sequences with positive value; -1 pads."""
    keep, d_sae = vals.shape
    chosen = np.full((d_sae, CONTEXTS_PER_LATENT), -1, dtype=np.int64)
    vals_np, rows_np = vals.numpy(), rows.numpy()
    for i in range(d_sae):
        seen: set[int] = set()
        j = 0
        for r in range(keep):
            row = int(rows_np[r, i])
            if vals_np[r, i] <= 0 or row < 0:
                break
            seq = int(sequence_index[row])
            if seq in seen:
                continue
            seen.add(seq)
            chosen[i, j] = row
            j += 1
            if j == CONTEXTS_PER_LATENT:
                break
    return chosen


def _context_arrays(
    sae: Any,
    acts: Any,
    tokens: np.ndarray,
    sequence_index: np.ndarray,
    chosen: np.ndarray,
    progress: Callable[[str, int, int], None] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d_sae, n_ctx = chosen.shape
    width = TOKENS_BEFORE + 1 + TOKENS_AFTER
    offsets = np.arange(-TOKENS_BEFORE, TOKENS_AFTER + 1)
    grid = chosen[:, :, None] + offsets[None, None, :]  # rows of each context window
    n_rows = tokens.shape[0]
    centre_seq = np.where(chosen >= 0, sequence_index[np.clip(chosen, 0, n_rows - 1)], -2)
    clipped = np.clip(grid, 0, n_rows - 1)
    valid = (chosen[:, :, None] >= 0) & (grid >= 0) & (grid < n_rows) & (sequence_index[clipped] == centre_seq[:, :, None])
    ctx_tokens = np.where(valid, tokens[clipped], -1).astype(np.int32)
    ctx_values = np.zeros((d_sae, n_ctx, width), dtype=np.float32)
    block = max(1, ENCODE_CHUNK // (n_ctx * width))
    dtype = sae.W_enc.dtype
    for start in range(0, d_sae, block):
        stop = min(start + block, d_sae)
        unique_rows = np.unique(clipped[start:stop])  # sorted
        x = torch.from_numpy(np.array(acts[unique_rows], dtype=np.float32)).to(sae.W_enc.device, dtype)
        feats = sae.encode(x).float().cpu().numpy()
        where = np.searchsorted(unique_rows, clipped[start:stop])  # [b, C, W]
        latent_ids = np.arange(start, stop)[:, None, None]
        ctx_values[start:stop] = feats[where, latent_ids]
        if progress is not None:
            progress("contexts", stop, d_sae)
    ctx_values = np.where(valid, ctx_values, 0.0)
    focus = np.where(chosen >= 0, _tokens_before(valid), -1).astype(np.int8)
    # Left-align each window: drop the invalid (other-sequence) slots in front of the first real token.
    shift = TOKENS_BEFORE - _tokens_before(valid)
    for i, c in zip(*np.nonzero(shift > 0), strict=True):
        s = shift[i, c]
        ctx_tokens[i, c] = np.concatenate([ctx_tokens[i, c, s:], np.full(s, -1, np.int32)])
        ctx_values[i, c] = np.concatenate([ctx_values[i, c, s:], np.zeros(s, np.float32)])
    return ctx_tokens, ctx_values, focus


def _tokens_before(valid: np.ndarray) -> np.ndarray:
    """How many valid slots precede the centre slot in each window."""
    return valid[:, :, :TOKENS_BEFORE].sum(axis=2)


def _logit_effects(
    sae: Any, unembed: torch.Tensor, progress: Callable[[str, int, int], None] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    d_sae = int(sae.cfg.d_sae)
    w_u = unembed.float()
    block = 256
    out = [np.zeros((d_sae, LOGIT_TOKENS), np.int64), np.zeros((d_sae, LOGIT_TOKENS), np.float32),
           np.zeros((d_sae, LOGIT_TOKENS), np.int64), np.zeros((d_sae, LOGIT_TOKENS), np.float32)]
    for start in range(0, d_sae, block):
        direction = sae.W_dec[start : start + block].float().to(w_u.device)
        direction = direction / direction.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        logits = direction @ w_u
        top = logits.topk(LOGIT_TOKENS, dim=-1)
        bottom = logits.topk(LOGIT_TOKENS, dim=-1, largest=False)
        stop = start + direction.shape[0]
        out[0][start:stop], out[1][start:stop] = top.indices.cpu().numpy(), top.values.cpu().numpy()
        out[2][start:stop], out[3][start:stop] = bottom.indices.cpu().numpy(), bottom.values.cpu().numpy()
        if progress is not None:
            progress("logits", stop, d_sae)
    return out[0], out[1], out[2], out[3]


# --------------------------------------------------------------------------------------------- lookup


def _cache_key(loaded: Any, texts: Sequence[str], max_tokens: int, corpus: str | None) -> str:
    """Names the SAE (reference and a weight fingerprint) and the corpus, so a changed either recomputes."""
    digest = hashlib.sha256()
    digest.update(loaded.ref.encode())
    digest.update(loaded.sae.W_dec[:4].detach().float().cpu().numpy().tobytes())
    digest.update(f"{max_tokens}|{corpus}".encode())
    for text in texts:
        digest.update(text.encode("utf-8", errors="replace") + b"\0")
    return digest.hexdigest()[:20]


def shipped_dashboard_path(loaded: Any) -> Path | None:
    """``dashboards.npz`` next to a local SAE's weights, if there is one."""
    from unlearn_core.saes.loading import resolve_local_path

    path = resolve_local_path(loaded.ref)
    if path is None:
        return None
    candidate = path / DASHBOARD_FILE
    return candidate if candidate.exists() else None


def dashboards_for(
    lm: LoadedModel,
    loaded: Any,
    texts: Sequence[str] | None = None,
    corpus: str | None = None,
    max_tokens: int = 40_000,
    progress: Callable[[str, int, int], None] | None = None,
) -> Dashboards:
    """Dashboards of a loaded SAE: shipped files when present (and no ``texts`` given), else computed once over
    ``texts`` and cached.

    Default corpus: the built-in WikiText-2 test rows and Harry Potter fan-wiki paragraphs, interleaved, up to
    ``max_tokens`` tokens.
    """
    shipped = shipped_dashboard_path(loaded) if texts is None else None
    if shipped is not None:
        return Dashboards.load(shipped)
    if texts is None:
        texts, corpus = default_dashboard_texts()
    cached = _cached_path(loaded, texts, corpus, max_tokens)
    if cached.exists():
        return Dashboards.load(cached)
    board = compute_dashboards_from_texts(lm, loaded, texts, corpus or "user texts", max_tokens, progress)
    cached.parent.mkdir(parents=True, exist_ok=True)
    board.save(cached)
    return board


def find_dashboards(loaded: Any, max_tokens: int = 40_000) -> Dashboards | None:
    """Dashboards that exist without computing anything: shipped with the SAE, or cached by an earlier
    :func:`dashboards_for` on the default corpus. None otherwise."""
    shipped = shipped_dashboard_path(loaded)
    if shipped is not None:
        return Dashboards.load(shipped)
    cached = _cached_path(loaded, *default_dashboard_texts(), max_tokens)
    return Dashboards.load(cached) if cached.exists() else None


def _cached_path(loaded: Any, texts: Sequence[str], corpus: str | None, max_tokens: int) -> Path:
    return cache_dir() / "dashboards" / f"{_cache_key(loaded, texts, max_tokens, corpus)}.npz"


def default_dashboard_texts() -> tuple[list[str], str]:
    from unlearn_core.data.texts import load_texts

    wiki = load_texts("wikitext2").texts
    hp = load_texts("hp-fanwiki").texts
    mixed = [t for pair in zip(wiki, hp, strict=False) for t in pair] + list(wiki[len(hp):])
    return mixed, "WikiText-2 test rows 0-999 interleaved with Harry Potter fan-wiki paragraphs"


def compute_dashboards_from_texts(
    lm: LoadedModel,
    loaded: Any,
    texts: Sequence[str],
    corpus: str,
    max_tokens: int = 40_000,
    progress: Callable[[str, int, int], None] | None = None,
) -> Dashboards:
    """Run the model over ``texts`` (up to ``max_tokens`` tokens), then compute the dashboards of ``loaded``."""
    from unlearn_core.scoring.activations import collect_activations
    from unlearn_core.scoring.evaluation import tokenize_with_bos

    sequences = []
    total = 0
    for seq in tokenize_with_bos(lm, texts, 256):
        if len(seq) < 2:
            continue
        sequences.append(seq)
        total += len(seq) - 1
        if total >= max_tokens:
            break
    if not sequences:
        raise InputError("no text to compute dashboards on")
    batch = collect_activations(lm, sequences, [loaded.hook_name])
    acts = batch.acts[loaded.hook_name].float().cpu().numpy()
    return compute_dashboards(
        loaded.sae,
        acts,
        batch.tokens.numpy(),
        batch.sequence_index.numpy(),
        lm.model.W_U.detach(),
        lambda t: lm.tokenizer.decode([t]),
        corpus,
        progress,
    )


def latent_dashboard(lm: LoadedModel, loaded: Any, latent: int) -> LatentDashboard:
    """One latent's dashboard for any loaded SAE (shipped files, cached, or computed now; see :func:`dashboards_for`)."""
    return dashboards_for(lm, loaded).latent(latent)
