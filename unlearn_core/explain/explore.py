"""Explore: which SAE latents fire on a set of prompts, across the prompts, per prompt and per token.

One forward pass serves every SAE: activations at all their hook sites are captured in a single batched run that
stops after the deepest block needed (no unembedding). BOS is excluded: its residual stream carries massive
activations that would dominate every ranking. Latent activations are kept sparse (JumpReLU/TopK SAEs fire on a
few hundred of thousands of latents per token), so long prompts and wide SAEs stay cheap.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch

from unlearn_core.data.texts import DATA_DIR
from unlearn_core.errors import InputError
from unlearn_core.explain.ranking import THEME_WEIGHT, ReferenceRates, specificity, theme_weights
from unlearn_core.models.loading import LoadedModel
from unlearn_core.saes.loading import LoadedSae
from unlearn_core.scoring.activations import collect_activations

MAX_PROMPT_TOKENS = 1024
"""Tokens analysed per prompt (BOS included); a longer prompt keeps its beginning and gets a notice."""
MAX_PROMPTS = 100
ENCODE_CHUNK = 4096

RankBy = Literal["specific", "max", "mean", "frequency"]
RANKINGS: tuple[RankBy, ...] = ("specific", "max", "mean", "frequency")
"""``specific`` (the default): smoothed log lift over general text and any contrast prompts
(:mod:`unlearn_core.explain.ranking`); the others rank by the raw statistic on the prompts."""

STUDY_PROMPTS: tuple[tuple[str, str], ...] = (
    ("Who is Harry Potter?", "Harry Potter"),
    ("Tell me about Harry Potter's adventures at Hogwarts", "Harry Potter"),
    ("What is the significance of the Sorting Hat in Hogwarts?", "Harry Potter"),
    ("Describe a Quidditch match at Hogwarts", "Harry Potter"),
    ("Explain the history of the Roman Empire", "unrelated"),
    ("What are the benefits of a healthy diet?", "unrelated"),
    ("Describe a typical day in a modern city", "unrelated"),
)
"""The reference study's generation prompts: 4 about Harry Potter, 3 unrelated (with their group)."""
REFERENCE_PROMPTS_FILE = DATA_DIR / "reference_prompts.txt"
"""Everyday prompts (one per line) on many topics, written for this project: what prompt-like text looks like to an
SAE, the specificity ranking's second reference (:mod:`unlearn_core.explain.ranking`). None is about Harry Potter
or fantasy magic, nor about the topics of the study's or the development prompt sets."""


def study_prompts() -> list[str]:
    """The study's seven prompts, Harry Potter ones first."""
    return [p for p, _ in STUDY_PROMPTS]


def reference_prompts() -> list[str]:
    """The prompts of :data:`REFERENCE_PROMPTS_FILE`."""
    return split_prompts(REFERENCE_PROMPTS_FILE.read_text(encoding="utf-8"))


def split_prompts(text: str) -> list[str]:
    """Prompts pasted as text: one per non-empty line, stripped."""
    return [line.strip() for line in text.splitlines() if line.strip()]


@dataclass(frozen=True)
class PreparedPrompts:
    """Prompts as the model sees them: BOS-first token ids, plus notices about anything changed (truncation)."""

    prompts: tuple[str, ...]
    token_ids: tuple[tuple[int, ...], ...]
    notices: tuple[str, ...]


def prepare_prompts(lm: LoadedModel, prompts: Sequence[str], max_tokens: int = MAX_PROMPT_TOKENS) -> PreparedPrompts:
    """Validate and tokenize prompts; empty ones are dropped, long ones truncated (keeping their start) with a notice.

    Raises :class:`InputError` when no prompt is left or there are too many.
    """
    kept = [p.strip() for p in prompts if p and p.strip()]
    if not kept:
        raise InputError("enter at least one prompt (one per line)")
    if len(kept) > MAX_PROMPTS:
        raise InputError(f"{len(kept)} prompts given; explore at most {MAX_PROMPTS} at once")
    limit = min(max_tokens, lm.n_ctx)
    if limit < 2:
        raise InputError("max_tokens must be at least 2 (BOS plus one token)")
    notices = []
    ids: list[tuple[int, ...]] = []
    for i, prompt in enumerate(kept):
        # Tokenizing a huge prompt in full would be wasted work; 64 characters per kept token is ample.
        cut = len(prompt) > limit * 64
        tokens = lm.tokenizer(prompt[: limit * 64], add_special_tokens=False)["input_ids"]
        if cut or len(tokens) > limit - 1:
            size = f"{len(prompt):,} characters" if cut else f"{len(tokens):,} tokens"
            notices.append(
                f"prompt {i + 1} is {size} long; only its first {limit - 1:,} tokens are analysed (the limit per prompt)"
            )
            tokens = tokens[: limit - 1]
        ids.append((lm.bos_token_id, *tokens))
    return PreparedPrompts(tuple(kept), tuple(ids), tuple(notices))


@dataclass(frozen=True)
class LatentStats:
    """How one latent behaved on the explored prompts (BOS excluded)."""

    latent: int
    max_activation: float
    mean_activation: float
    """Mean over all analysed tokens, zeros included."""
    frequency: float
    """Fraction of analysed tokens on which the latent is active (> 0)."""
    n_prompts: int
    """Number of prompts on which it fires at least once."""
    top_token: str
    """The token with the highest activation."""
    top_prompt: int
    """Index of the prompt holding that token."""
    score: float = 0.0
    """The ranking's score (the statistic ranked by; for ``specific`` the log lift)."""


@dataclass
class SaeActivations:
    """Sparse latent activations of one SAE on every analysed token: ``rows[k]`` token has ``values[k]`` on
    latent ``latents[k]``."""

    sae: LoadedSae
    rows: torch.Tensor
    latents: torch.Tensor
    values: torch.Tensor


@dataclass
class ExploreResult:
    """Latent activations of several SAEs on a set of prompts, from one forward pass."""

    prepared: PreparedPrompts
    tokens: list[list[str]]
    """Per prompt, the analysed tokens (BOS excluded) as decoded strings."""
    row_prompt: torch.Tensor
    """[n_rows] prompt index of each analysed token (rows are prompt-major, then position)."""
    row_position: torch.Tensor
    """[n_rows] position within the prompt (1 = first token after BOS)."""
    by_sae: dict[str, SaeActivations]
    """Keyed by SAE reference, in the order the SAEs were given."""

    @property
    def n_rows(self) -> int:
        return int(self.row_prompt.numel())

    def sae_refs(self) -> list[str]:
        return list(self.by_sae)

    def _get(self, ref: str) -> SaeActivations:
        try:
            return self.by_sae[ref]
        except KeyError:
            raise InputError(f"SAE {ref!r} was not part of this exploration") from None

    def _check_latent(self, sa: SaeActivations, latent: int) -> None:
        if not 0 <= latent < sa.sae.width:
            raise InputError(f"latent {latent} is out of range: {sa.sae.ref} has latents 0..{sa.sae.width - 1}")

    def _rows_of(self, sa: SaeActivations, prompt: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """The sparse entries restricted to one prompt (or all), and the number of tokens they range over."""
        if prompt is None:
            return sa.rows, sa.latents, sa.values, self.n_rows
        if not 0 <= prompt < len(self.tokens):
            raise InputError(f"prompt {prompt} does not exist; there are {len(self.tokens)} prompts")
        mask = self.row_prompt[sa.rows] == prompt
        return sa.rows[mask], sa.latents[mask], sa.values[mask], len(self.tokens[prompt])

    def counts(self, ref: str, prompt: int | None = None) -> tuple[torch.Tensor, int]:
        """Per latent, the number of analysed tokens (of one prompt, or all) it fires on; and that token count."""
        sa = self._get(ref)
        _, latents, _, n_tokens = self._rows_of(sa, prompt)
        return torch.bincount(latents, minlength=sa.sae.width), n_tokens

    def top_latents(
        self,
        ref: str,
        k: int = 20,
        by: RankBy = "specific",
        prompt: int | None = None,
        exclude: Collection[int] = (),
        reference: ReferenceRates | None = None,
        contrast: ExploreResult | None = None,
    ) -> list[LatentStats]:
        """The ``k`` latents of SAE ``ref`` that fire on the prompts (all, or one), best first.

        ``by``: ``specific`` (needs ``reference``, the general-text rates, e.g. ``ranking.general_reference`` of the
        SAE's dashboards; ``contrast`` is an exploration of other prompts with the same SAE to rank against), or
        ``max``/``mean``/``frequency`` of the activation on the prompts. Latents in ``exclude`` (e.g. dense ones) are
        skipped; ties keep the lower latent id first.
        """
        if by not in RANKINGS:
            raise InputError(f"rank by one of {list(RANKINGS)}, not {by!r}")
        if k < 1:
            raise InputError("k must be at least 1")
        sa = self._get(ref)
        rows, latents, values, n_tokens = self._rows_of(sa, prompt)
        if latents.numel() == 0:
            return []
        width = sa.sae.width
        counts = torch.zeros(width, dtype=torch.float64).index_add_(0, latents, torch.ones_like(values, dtype=torch.float64))
        active = counts > 0
        if exclude:
            active[torch.tensor(sorted(exclude), dtype=torch.long)] = False
        if by == "specific":
            if reference is None:
                raise InputError("ranking by specificity needs the SAE's reference rates (its dashboards)")
            contrast_counts, contrast_tokens = contrast.counts(ref) if contrast is not None else (None, 0)
            score = specificity(counts, n_tokens, reference, contrast_counts, contrast_tokens)
            if prompt is None:
                considered = torch.where(active, score, torch.full_like(score, -torch.inf))
                pairs = torch.unique(torch.stack([latents, self.row_prompt[rows]], dim=1), dim=0)
                score = score + THEME_WEIGHT * torch.log(theme_weights(considered, pairs, len(self.tokens)))
        elif by == "max":
            score = torch.zeros(width).scatter_reduce(0, latents, values, reduce="amax", include_self=True).double()
        elif by == "mean":
            score = torch.zeros(width, dtype=torch.float64).index_add_(0, latents, values.double()) / max(n_tokens, 1)
        else:
            score = counts / max(n_tokens, 1)
        score = torch.where(active, score, torch.full_like(score, -torch.inf))
        order = torch.argsort(score, descending=True, stable=True)[: min(k, int(active.sum()))]
        return [
            replace(self._stats(sa, int(i), rows, latents, values, n_tokens), score=float(score[i])) for i in order
        ]

    def latents_by_token(
        self, ref: str, prompt: int, k: int = 3, reference: ReferenceRates | None = None, exclude: Collection[int] = ()
    ) -> list[tuple[str, list[tuple[int, float]]]]:
        """For each analysed token of one prompt, its ``k`` latents as ``(latent, activation)``: the most specific
        ones (lowest general-text rate) when ``reference`` is given, else the most strongly active."""
        sa = self._get(ref)
        if not 0 <= prompt < len(self.tokens):
            raise InputError(f"prompt {prompt} does not exist; there are {len(self.tokens)} prompts")
        start = sum(len(t) for t in self.tokens[:prompt])
        rarity = None if reference is None else -torch.log(reference.smoothed())
        skip = set(exclude)
        key = (lambda p: (float(rarity[p[0]]), p[1])) if rarity is not None else (lambda p: p[1])
        out: list[tuple[str, list[tuple[int, float]]]] = []
        for offset, token in enumerate(self.tokens[prompt]):
            mine = sa.rows == start + offset
            pairs = [(int(lat), float(v)) for lat, v in zip(sa.latents[mine], sa.values[mine], strict=True)
                     if int(lat) not in skip]
            pairs.sort(key=key, reverse=True)
            out.append((token, pairs[:k]))
        return out

    def latent_stats(self, ref: str, latent: int, prompt: int | None = None) -> LatentStats:
        """Statistics of one latent (it may not fire at all: then everything is zero)."""
        sa = self._get(ref)
        self._check_latent(sa, latent)
        rows, latents, values, n_tokens = self._rows_of(sa, prompt)
        return self._stats(sa, latent, rows, latents, values, n_tokens)

    def _stats(
        self, sa: SaeActivations, latent: int, rows: torch.Tensor, latents: torch.Tensor, values: torch.Tensor, n_tokens: int
    ) -> LatentStats:
        mine = latents == latent
        vals, where = values[mine], rows[mine]
        if vals.numel() == 0:
            return LatentStats(latent, 0.0, 0.0, 0.0, 0, "", -1)
        best = int(vals.argmax())
        row = int(where[best])
        prompt = int(self.row_prompt[row])
        position = int(self.row_position[row])
        return LatentStats(
            latent=latent,
            max_activation=float(vals[best]),
            mean_activation=float(vals.sum()) / max(n_tokens, 1),
            frequency=vals.numel() / max(n_tokens, 1),
            n_prompts=int(self.row_prompt[where].unique().numel()),
            top_token=self.tokens[prompt][position - 1],
            top_prompt=prompt,
        )

    def token_values(self, ref: str, latent: int) -> list[list[float]]:
        """Per prompt, the latent's activation on each analysed token (aligned with :attr:`tokens`)."""
        sa = self._get(ref)
        self._check_latent(sa, latent)
        dense = torch.zeros(self.n_rows)
        mine = sa.latents == latent
        dense[sa.rows[mine]] = sa.values[mine]
        out, start = [], 0
        for toks in self.tokens:
            out.append([float(v) for v in dense[start : start + len(toks)]])
            start += len(toks)
        return out


def reference_prompt_counts(lm: LoadedModel, saes: Sequence[LoadedSae], prompts: Sequence[str] | None = None
                            ) -> dict[str, tuple[torch.Tensor, int]]:
    """Per SAE reference, each latent's firing count on the reference prompts (:func:`reference_prompts` unless
    given) and their token count (BOS excluded), for :func:`unlearn_core.explain.ranking.with_reference_prompts`.
    A few thousand tokens: a second or two on a CPU; callers cache it per model and SAE."""
    chosen = list(reference_prompts() if prompts is None else prompts)
    totals: dict[str, tuple[torch.Tensor, int]] = {}
    for start in range(0, len(chosen), MAX_PROMPTS):
        part = explore(lm, saes, chosen[start : start + MAX_PROMPTS])
        for loaded in saes:
            counts, n_tokens = part.counts(loaded.ref)
            before = totals.get(loaded.ref)
            totals[loaded.ref] = (counts, n_tokens) if before is None else (before[0] + counts, before[1] + n_tokens)
    return totals


def explore(lm: LoadedModel, saes: Sequence[LoadedSae], prompts: PreparedPrompts | Sequence[str]) -> ExploreResult:
    """Encode the prompts' activations with every SAE, from one forward pass stopped after the deepest SAE's block."""
    if not saes:
        raise InputError("choose at least one SAE (layer) to explore")
    refs = [s.ref for s in saes]
    if len(set(refs)) != len(refs):
        raise InputError("the same SAE was given twice")
    prepared = prompts if isinstance(prompts, PreparedPrompts) else prepare_prompts(lm, prompts)
    hook_names = list(dict.fromkeys(s.hook_name for s in saes))
    batch = collect_activations(lm, prepared.token_ids, hook_names, include_bos=False)
    tokens_text: list[list[str]] = []
    for ids in prepared.token_ids:
        tokens_text.append([lm.tokenizer.decode([t]) for t in ids[1:]])
    by_sae: dict[str, SaeActivations] = {}
    with torch.inference_mode():
        for loaded in saes:
            acts = batch.acts[loaded.hook_name]
            rows_l, lat_l, val_l = [], [], []
            for start in range(0, acts.shape[0], ENCODE_CHUNK):
                chunk = acts[start : start + ENCODE_CHUNK].to(loaded.sae.W_enc.dtype)
                feats = loaded.sae.encode(chunk).float().cpu()
                nz = (feats > 0).nonzero(as_tuple=False)
                rows_l.append(nz[:, 0] + start)
                lat_l.append(nz[:, 1])
                val_l.append(feats[nz[:, 0], nz[:, 1]])
            by_sae[loaded.ref] = SaeActivations(
                sae=loaded,
                rows=torch.cat(rows_l) if rows_l else torch.zeros(0, dtype=torch.long),
                latents=torch.cat(lat_l) if lat_l else torch.zeros(0, dtype=torch.long),
                values=torch.cat(val_l) if val_l else torch.zeros(0),
            )
    return ExploreResult(
        prepared=prepared,
        tokens=tokens_text,
        row_prompt=batch.sequence_index.cpu(),
        row_position=batch.position.cpu(),
        by_sae=by_sae,
    )
