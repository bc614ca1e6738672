"""The linear-probe attack: does Harry Potter text stay linearly detectable in the residual stream after the edit?

An attacker who owns the edited model reads the residual stream right after the deepest edited layer, mean-pools it
over each text's tokens (BOS excluded), and fits a logistic regression telling Harry Potter paragraphs (class 1)
from other text (class 0) on dev texts; the probe is scored on held-out test texts (accuracy, AUROC).

The logistic regression is plain torch: features standardised with the training set's mean and standard deviation,
mean binary cross-entropy + ``l2 / 2 * ||w||^2`` (bias not penalised), minimised with L-BFGS from zero weights in
float64, so a fit is deterministic.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from unlearn_core.ablation.interventions import Hook
from unlearn_core.data.texts import load_texts
from unlearn_core.errors import InputError
from unlearn_core.models.loading import LoadedModel
from unlearn_core.scoring.activations import iter_activations
from unlearn_core.scoring.batching import DEFAULT_BATCH_TOKENS, ProgressCallback, tokenize_with_bos

DEFAULT_L2 = 1e-2
PROBE_MAX_SEQ_LEN = 256
"""Tokens per probe text, BOS included (a longer paragraph keeps its start)."""
MIN_WORDS = 8
"""Texts with fewer words (WikiText headings, one-line captions) are left out, so the probe sees prose on both sides."""
FORGET_TEXTS = {"dev": "hp-fanwiki:dev", "test": "hp-fanwiki:test"}
OTHER_TEXTS = {"dev": "wikitext2:dev", "test": "wikitext2:test"}


@dataclass(frozen=True)
class ProbeTexts:
    """Labelled texts for a probe: 1 = the forget topic, 0 = other text; train on ``train``, score on ``test``."""

    train_texts: tuple[str, ...]
    train_labels: tuple[int, ...]
    test_texts: tuple[str, ...]
    test_labels: tuple[int, ...]
    sources: dict[str, str]
    """Which text set each part comes from (``train_1``, ``train_0``, ``test_1``, ``test_0``)."""


@dataclass(frozen=True)
class ProbeResult:
    """A probe's scores on its test texts."""

    accuracy: float
    auroc: float
    n_train: int
    n_test: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class LogisticProbe:
    """A fitted logistic regression: ``decision(x) = ((x - mean) / scale) @ weight + bias``."""

    mean: torch.Tensor
    scale: torch.Tensor
    weight: torch.Tensor
    bias: float

    def decision(self, x: torch.Tensor) -> torch.Tensor:
        """The logit of class 1 for each row of ``x``."""
        return ((x.double() - self.mean) / self.scale) @ self.weight + self.bias

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """1 where the logit is positive, else 0."""
        return (self.decision(x) > 0).long()


def fit_logistic(x: torch.Tensor, y: torch.Tensor | Sequence[int], l2: float = DEFAULT_L2, max_iter: int = 500) -> LogisticProbe:
    """Fit an L2-regularised logistic regression (see the module docstring) to rows ``x`` [n, d] and 0/1 labels ``y``."""
    labels = torch.as_tensor(y, dtype=torch.float64)
    if x.ndim != 2 or len(labels) != len(x):
        raise InputError(f"need one 0/1 label per row of a 2-d feature matrix, got {tuple(x.shape)} and {len(labels)}")
    if not ((labels == 0) | (labels == 1)).all() or labels.min() == labels.max():
        raise InputError("a probe needs 0/1 labels with both classes present")
    if l2 < 0:
        raise InputError("l2 must not be negative")
    feats = x.detach().to("cpu", torch.float64).clone()
    mean = feats.mean(dim=0)
    scale = feats.std(dim=0, unbiased=False)
    scale = torch.where(scale > 1e-12, scale, torch.ones_like(scale))
    z = (feats - mean) / scale
    weight = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-14,
                                history_size=20, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ weight + bias, labels)
            loss = loss + 0.5 * l2 * (weight * weight).sum()
            loss.backward()
            return loss

        opt.step(closure)
    return LogisticProbe(mean, scale, weight.detach(), float(bias.detach()))


def auroc(scores: torch.Tensor | Sequence[float], labels: torch.Tensor | Sequence[int]) -> float:
    """Area under the ROC curve: the probability that a random class-1 row scores above a random class-0 row
    (ties count one half), from average ranks (Mann-Whitney U)."""
    s = np.asarray(torch.as_tensor(scores, dtype=torch.float64).cpu(), dtype=np.float64)
    y = np.asarray(torch.as_tensor(labels).cpu()).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if len(s) != len(y) or n_pos == 0 or n_neg == 0:
        raise InputError("AUROC needs one score per label and both classes present")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based average rank of each distinct score
    ranks = average_rank[inverse]
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def mean_pooled_activations(
    lm: LoadedModel,
    texts: Sequence[str],
    hook_name: str,
    hooks: Sequence[Hook] = (),
    max_seq_len: int = PROBE_MAX_SEQ_LEN,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: ProgressCallback | None = None,
) -> torch.Tensor:
    """[len(texts), d] float64: each text's activation at ``hook_name`` averaged over its tokens (BOS excluded),
    read with ``hooks`` active (so an edit upstream is in the stream); the forward stops after that block."""
    sequences = tokenize_with_bos(lm, texts, max_seq_len)
    empty = [i for i, seq in enumerate(sequences) if len(seq) < 2]
    if empty:
        raise InputError(f"probe texts {empty[:5]} have no tokens")
    sums: torch.Tensor | None = None
    counts = torch.zeros(len(sequences), dtype=torch.float64)
    for batch in iter_activations(lm, sequences, [hook_name], include_bos=False, batch_tokens=batch_tokens,
                                  extra_hooks=hooks, progress=progress):
        acts = batch.acts[hook_name].to("cpu", torch.float64)
        if sums is None:
            sums = torch.zeros(len(sequences), acts.shape[1], dtype=torch.float64)
        index = batch.sequence_index.to("cpu")
        sums.index_add_(0, index, acts)
        counts.index_add_(0, index, torch.ones(len(index), dtype=torch.float64))
    assert sums is not None
    return sums / counts[:, None]


def score_probe(train_x: torch.Tensor, train_y: Sequence[int], test_x: torch.Tensor, test_y: Sequence[int],
                l2: float = DEFAULT_L2) -> ProbeResult:
    """Fit a probe on the training rows and score it on the test rows."""
    probe = fit_logistic(train_x, train_y, l2)
    decision = probe.decision(test_x)
    truth = torch.as_tensor(test_y, dtype=torch.long)
    accuracy = float((probe.predict(test_x) == truth).double().mean())
    return ProbeResult(accuracy, auroc(decision, truth), len(train_x), len(test_x))


def probe_under_hooks(
    lm: LoadedModel,
    data: ProbeTexts,
    hook_name: str,
    hooks: Sequence[Hook] = (),
    l2: float = DEFAULT_L2,
    max_seq_len: int = PROBE_MAX_SEQ_LEN,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: ProgressCallback | None = None,
) -> ProbeResult:
    """Train and test a probe on activations read under ``hooks`` (train and test texts in one batched pass)."""
    feats = mean_pooled_activations(lm, data.train_texts + data.test_texts, hook_name, hooks, max_seq_len,
                                    batch_tokens, progress)
    n = len(data.train_texts)
    return score_probe(feats[:n], data.train_labels, feats[n:], data.test_labels, l2)


def probe_texts(per_class: int = 200, seed: int = 0) -> ProbeTexts:
    """Balanced, seeded samples: dev HP Wiki paragraphs vs dev WikiText-2 paragraphs (``per_class`` each) to train,
    test HP Wiki vs test WikiText-2 (as many per class as both have, at most ``per_class``) to score."""
    if per_class < 2:
        raise InputError("a probe needs at least 2 texts per class")
    rng = random.Random(seed)
    parts: dict[str, tuple[list[str], list[int]]] = {}
    for split in ("dev", "test"):
        pos = [t for t in load_texts(FORGET_TEXTS[split]).texts if len(t.split()) >= MIN_WORDS]
        neg = [t for t in load_texts(OTHER_TEXTS[split]).texts if len(t.split()) >= MIN_WORDS]
        n = min(per_class, len(pos), len(neg))
        if n < 2:
            raise InputError(f"too few {split} texts for a probe ({len(pos)} and {len(neg)})")
        texts = rng.sample(pos, n) + rng.sample(neg, n)
        parts[split] = (texts, [1] * n + [0] * n)
    return ProbeTexts(tuple(parts["dev"][0]), tuple(parts["dev"][1]), tuple(parts["test"][0]), tuple(parts["test"][1]),
                      {"train_1": FORGET_TEXTS["dev"], "train_0": OTHER_TEXTS["dev"], "test_1": FORGET_TEXTS["test"],
                       "test_0": OTHER_TEXTS["test"]})
