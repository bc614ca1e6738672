"""Latent dashboards: what a latent responds to and what it writes, for any SAE, offline.

Per latent: activation frequency, max activation, top activating contexts (a window of tokens around the activating
token, with the latent's value on every token), the tokens its decoder direction promotes and suppresses through the
unembedding (``W_dec[i] @ W_U``, no final norm: Neuronpedia's convention), and an **automatic** label made from the
tokens it fires on most strongly.

This module holds the data (:class:`Dashboards`, one SAE's dashboards as compact arrays, and its ``.npz`` file
format); :mod:`unlearn_core.explain.dashboard_build` computes them and :mod:`unlearn_core.explain.dashboard_cache`
finds them: shipped ``dashboards.npz`` next to an SAE's weights, or computed once over a small built-in corpus and
cached.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unlearn_core.errors import InputError

DASHBOARD_FILE = "dashboards.npz"
CONTEXTS_PER_LATENT = 8
TOKENS_BEFORE = 10
TOKENS_AFTER = 3
LOGIT_TOKENS = 10
AUTO_LABEL_PREFIX = "auto: "
FORMAT_VERSION = 1
READ_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error)
"""What reading a missing, truncated or corrupt ``.npz`` can raise; :meth:`Dashboards.load` turns each into InputError."""


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
        promoted = [(self.vocab[t], float(v)) for t, v in zip(self.promoted_tokens[i], self.promoted_values[i], strict=True)]
        return LatentDashboard(
            latent=i,
            frequency=float(self.frequency[i]),
            max_activation=float(self.max_activation[i]),
            contexts=contexts,
            promoted=promoted,
            suppressed=[
                (self.vocab[t], float(v)) for t, v in zip(self.suppressed_tokens[i], self.suppressed_values[i], strict=True)
            ],
            auto_label=auto_label(contexts, promoted=promoted),
            corpus=str(self.meta.get("corpus", "")),
            n_tokens=int(self.meta.get("n_tokens", 0)),
            frequency_by_source=(
                {}
                if self.source_frequency is None
                else {name: float(f) for name, f in zip(self.meta["sources"], self.source_frequency[i], strict=True)}
            ),
        )

    def save(self, path: Path | str) -> None:
        """Write atomically as a compressed ``.npz`` (no pickles): a unique temporary file in the same folder, then
        one rename, so readers never see half a file and concurrent writers never share a temporary file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez_compressed(
                    fh,
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
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @classmethod
    def load(cls, path: Path | str) -> Dashboards:
        """Read a file written by :meth:`save`, checked whole: any unreadable, truncated or inconsistent file raises
        :class:`InputError` (never a half-loaded board)."""
        try:
            with np.load(Path(path), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except READ_ERRORS as exc:
            raise InputError(f"cannot read dashboards from {path}: {exc}") from exc
        try:
            vocab = json.loads(str(arrays.pop("vocab")))
            meta = json.loads(str(arrays.pop("meta")))
            for name in ("context_values", "promoted_values", "suppressed_values"):
                arrays[name] = _from_bf16_bits(arrays[name])
            board = cls(vocab=vocab, meta=meta, **arrays)
            board.validate()
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{path} is not a dashboards file of this version: {exc}") from exc
        return board

    def validate(self) -> None:
        """Raise ValueError unless the arrays describe the dashboards of one SAE consistently."""
        version = self.meta.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ValueError(f"format version {version}, expected {FORMAT_VERSION}")
        if self.frequency.ndim != 1 or self.context_tokens.ndim != 3 or self.promoted_tokens.ndim != 2:
            raise ValueError("arrays of the wrong rank")
        d_sae, n_ctx, window = self.context_tokens.shape
        n_logit = self.promoted_tokens.shape[1]
        expected = {
            "frequency": (d_sae,),
            "max_activation": (d_sae,),
            "context_values": (d_sae, n_ctx, window),
            "context_focus": (d_sae, n_ctx),
            "promoted_values": (d_sae, n_logit),
            "suppressed_tokens": (d_sae, n_logit),
            "suppressed_values": (d_sae, n_logit),
        }
        if self.source_frequency is not None:
            expected["source_frequency"] = (d_sae, len(self.meta.get("sources", ())))
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, expected {shape}")
        for name in ("context_tokens", "promoted_tokens", "suppressed_tokens"):
            ids = getattr(self, name)
            if ids.size and (int(ids.max()) >= len(self.vocab) or int(ids.min()) < -1):
                raise ValueError(f"{name} indexes outside the {len(self.vocab)}-token vocabulary")
        if self.context_focus.size and int(self.context_focus.max()) >= window:
            raise ValueError("context_focus points outside the context window")


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



def bfloat16_round(values: np.ndarray) -> np.ndarray:
    """Values at the precision they are stored with, so a loaded file equals the computed dashboards."""
    return _from_bf16_bits(_bf16_bits(values))


def _focus_word(tokens: Sequence[str], focus: int) -> str:
    """The whole word the activating token is part of: sub-word tokens ("H" "og" "warts") are joined."""
    def joins(token: str) -> bool:  # continues the previous token's word
        return bool(token) and token[0].isalnum()

    start, end = focus, focus + 1
    while start > 0 and joins(tokens[start]) and tokens[start - 1].strip() and tokens[start - 1][-1].isalnum():
        start -= 1
    while end < len(tokens) and joins(tokens[end]) and tokens[end - 1][-1:].isalnum():
        end += 1
    word = "".join(tokens[start:end])
    return _visible(word) if word.strip() else _visible(tokens[focus])


def _is_word(token: str) -> bool:
    stripped = token.strip()
    return token[:1] == " " and len(stripped) >= 3 and stripped.isascii() and stripped.isalpha()


def auto_label(contexts: Sequence[Context], n: int = 3, promoted: Sequence[tuple[str, float]] = ()) -> str:
    """An automatic label: the words the latent fires on most often in its top contexts (weighted by value, sub-word
    tokens joined into their word), then what it writes, when its top promoted tokens include whole words."""
    weights: Counter[str] = Counter()
    for c in contexts:
        weights[_focus_word(c.tokens, c.focus)] += c.value
    if not weights:
        return AUTO_LABEL_PREFIX + "(no activations seen)"
    label = AUTO_LABEL_PREFIX + " · ".join(t for t, _ in weights.most_common(n))
    words = [t.strip() for t, _ in promoted[:5] if _is_word(t)]
    if len(words) >= 2:
        label += " (writes: " + ", ".join(dict.fromkeys(words[:3])) + ")"
    return label
