"""Familiarity of generations: how often greedy continuations of Harry Potter prompts use Harry Potter terms,
per condition (baseline, ablated, controls) - the "does it still talk like it knows the books" check."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from unlearn_core.ablation.conditions import Condition
from unlearn_core.data.familiarity import FamiliarityPrompt, familiar_terms, hp_terms
from unlearn_core.models.loading import LoadedModel
from unlearn_core.scoring.generation import generate_batch

DEFAULT_FAMILIARITY_TOKENS = 32


@dataclass
class FamiliarityScore:
    """One condition: the share of continuations using at least one HP term, and using one the prompt did not."""

    share: float
    share_new_terms: float
    mean_terms: float
    n: int
    generations: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"share": self.share, "share_new_terms": self.share_new_terms, "mean_terms": self.mean_terms,
                "n": self.n, "generations": self.generations}


def familiarity(
    lm: LoadedModel,
    conditions: Sequence[Condition],
    prompts: Sequence[FamiliarityPrompt],
    max_new_tokens: int = DEFAULT_FAMILIARITY_TOKENS,
    on_step: Callable[[int, dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, FamiliarityScore]:
    """Greedy continuations of every prompt under every condition (one batched generation), scored by the term
    list; the generations are kept so a reader can check the counts."""
    texts = generate_batch(lm, [p.prompt for p in prompts], conditions, max_new_tokens=max_new_tokens,
                           on_step=on_step, should_stop=should_stop)
    terms = hp_terms()
    out = {}
    for cond in conditions:
        rows, familiar, new, n_terms = [], 0, 0, 0
        for i, p in enumerate(prompts):
            text = texts.get((i, cond.name), "")
            used = familiar_terms(text, terms)
            in_prompt = set(familiar_terms(p.prompt, terms))
            familiar += bool(used)
            new += any(t not in in_prompt for t in used)
            n_terms += len(used)
            rows.append({"id": p.id, "prompt": p.prompt, "continuation": text, "terms": used})
        n = max(len(prompts), 1)
        out[cond.name] = FamiliarityScore(familiar / n, new / n, n_terms / n, len(prompts), rows)
    return out
