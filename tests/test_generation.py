"""Batched generation (prompt x condition rows, left-padded KV cache, per-row hooks) against one-at-a-time decoding."""

from __future__ import annotations

import threading

import pytest
import torch
from tiny_models import make_tiny_model, tiny_sae

from unlearn_core.ablation.conditions import Condition
from unlearn_core.ablation.interventions import Intervention, LatentSelection, intervened
from unlearn_core.errors import InputError
from unlearn_core.scoring.generation import generate, generate_batch, generate_batch_ids, prompt_token_ids

PROMPTS = ["Once upon", "Hello there, how are you doing today?", "x", "The quick brown fox jumps", "Once upon"]


@pytest.fixture(scope="module")
def lm():
    """A tiny model of this module's own (tests here attach spies and change its EOS id)."""
    return make_tiny_model()


@pytest.fixture(scope="module")
def conditions():
    """Baseline, a clamp at one layer, a zero ablation at two layers, and a no-op that shares the baseline's rows."""
    sae1, sae0 = tiny_sae(layer=1), tiny_sae(layer=0, seed=1)
    return [
        Condition("baseline"),
        Condition("clamp", (LatentSelection(sae1, tuple(range(0, 96, 3))),), Intervention(mode="clamp", value=4)),
        Condition("zero", (LatentSelection(sae0, tuple(range(1, 96, 2))), LatentSelection(sae1, tuple(range(40)))),
                  Intervention(mode="zero")),
        Condition("reconstruction_only", (LatentSelection(sae1, ()),), Intervention(mode="zero")),
    ]


def one_at_a_time(lm, prompt, condition, n, temperature=0.0, seed=0):
    """The reference: one row, its own KV cache, full logits; BOS untouched on the prompt pass only."""
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    ids = prompt_token_ids(lm, prompt, min(1024, lm.n_ctx - n))
    generator = torch.Generator().manual_seed(seed)
    out: list[int] = []
    cache = TransformerLensKeyValueCache.init_cache(lm.model.cfg, lm.device, 1)
    step_input = torch.tensor([ids])
    for step in range(n):
        with torch.inference_mode(), intervened(lm, condition.hooks(protect_first_position=step == 0)) as model:
            logits = model(step_input, past_kv_cache=cache, attention_mask=torch.ones_like(step_input))[0, -1].float()
        if temperature == 0:
            token = int(logits.argmax())
        else:
            token = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator))
        if token == lm.tokenizer.eos_token_id:
            break
        out.append(token)
        step_input = torch.tensor([[token]])
    return out


def reference_grid(lm, prompts, conditions, n, **kw):
    return {(i, c.name): one_at_a_time(lm, p, c, n, **kw) for i, p in enumerate(prompts) for c in conditions}


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_batch_equals_one_at_a_time(lm, conditions, temperature):
    assert len({len(prompt_token_ids(lm, p, 100)) for p in PROMPTS}) > 2  # rows really are left-padded
    got = generate_batch_ids(lm, PROMPTS, conditions, max_new_tokens=16, temperature=temperature, seed=3)
    assert got == reference_grid(lm, PROMPTS, conditions, 16, temperature=temperature, seed=3)
    assert list(got) == [(i, c.name) for i in range(len(PROMPTS)) for c in conditions]
    for i in range(len(PROMPTS)):  # the edits do something, each on its own rows only
        assert got[(i, "clamp")] != got[(i, "baseline")] and got[(i, "zero")] != got[(i, "baseline")]
    texts = generate_batch(lm, PROMPTS, conditions, max_new_tokens=16, temperature=temperature, seed=3)
    assert texts == {k: lm.tokenizer.decode(v) for k, v in got.items()}
    for c in conditions:
        assert generate(lm, PROMPTS[1], c, max_new_tokens=16, temperature=temperature, seed=3) == texts[(1, c.name)]


def test_one_forward_per_step_with_shared_rows_and_chunks(lm, conditions):
    batch_rows: list[int] = []

    def spy(activation, hook):
        batch_rows.append(activation.shape[0])

    with lm.model.hooks(fwd_hooks=[("hook_embed", spy)]):
        got = generate_batch_ids(lm, PROMPTS, conditions, max_new_tokens=6)
    # 4 distinct prompts x 3 computations (reconstruction_only is the baseline): one prompt pass per distinct
    # prompt, then one forward per step for all 12 rows but those that ended (EOS) before it
    distinct = [v for (i, name), v in got.items() if i < 4 and name != "reconstruction_only"]
    assert batch_rows == [3, 3, 3, 3] + [sum(len(v) >= k for v in distinct) for k in range(1, 6)]
    assert batch_rows[4] == 12
    assert all(got[(i, "reconstruction_only")] == got[(i, "baseline")] for i in range(len(PROMPTS)))
    assert got[(4, "zero")] == got[(0, "zero")]
    assert generate_batch_ids(lm, PROMPTS, conditions, max_new_tokens=6, max_batch_rows=5) == got


def test_eos_ends_a_row_and_the_run(lm, conditions, monkeypatch):
    rows = generate_batch_ids(lm, PROMPTS[:3], conditions[:3], max_new_tokens=12)
    key, k = next((key, k) for key, t in rows.items() for k in range(3, len(t)) if t[k] not in t[:k])
    monkeypatch.setattr(lm.tokenizer, "eos_token_id", rows[key][k])  # a token this row first emits at step k
    got = generate_batch_ids(lm, PROMPTS[:3], conditions[:3], max_new_tokens=12)
    assert got[key] == rows[key][:k]
    assert got == reference_grid(lm, PROMPTS[:3], conditions[:3], 12)

    steps: list[int] = []
    monkeypatch.setattr(lm.tokenizer, "eos_token_id", rows[(0, "baseline")][0])  # the only row ends at once
    got = generate_batch_ids(lm, PROMPTS[:1], conditions[:1], max_new_tokens=12, on_step=lambda s, _: steps.append(s))
    assert got == {(0, "baseline"): []} and steps == [1]


def lock_is_free(lm) -> bool:
    """Whether another thread can take the model lock now."""
    got: list[bool] = []

    def take() -> None:
        got.append(lm.lock.acquire(timeout=10))
        if got[-1]:
            lm.lock.release()

    thread = threading.Thread(target=take)
    thread.start()
    thread.join()
    return got == [True]


def test_steps_report_progress_can_stop_and_free_the_lock(lm, conditions):
    full = generate_batch_ids(lm, PROMPTS[:2], conditions, max_new_tokens=5)
    assert all(len(v) == 5 for v in full.values())  # no early EOS: every chunk takes 5 steps
    seen: list[tuple[int, dict]] = []
    free: list[bool] = []

    def on_step(step, partial):
        seen.append((step, dict(partial)))
        free.append(lock_is_free(lm))

    got = generate_batch(lm, PROMPTS[:2], conditions, max_new_tokens=5, on_step=on_step, should_stop=lambda: len(seen) >= 3)
    assert [s for s, _ in seen] == [1, 2, 3] and free == [True] * 3
    assert seen[-1][1] == got and got == {k: lm.tokenizer.decode(v[:3]) for k, v in full.items()}
    assert [len(p[(0, "clamp")]) for _, p in seen] == [1, 2, 3]
    assert generate_batch_ids(lm, PROMPTS[:2], conditions, max_new_tokens=5, should_stop=lambda: True) == {}
    # in chunks (6 distinct rows, 4 + 2): a stop after the first chunk keeps its rows whole, leaves the rest out
    seen.clear()
    part = generate_batch_ids(lm, PROMPTS[:2], conditions, max_new_tokens=5, max_batch_rows=4,
                              on_step=lambda s, p: seen.append((s, p)), should_stop=lambda: len(seen) >= 5)
    assert [s for s, _ in seen] == [1, 2, 3, 4, 5]
    assert part == {k: v for k, v in full.items() if k not in {(1, "clamp"), (1, "zero")}}


def test_inputs_are_checked(lm, conditions):
    assert generate_batch(lm, [], conditions) == {} and generate_batch(lm, PROMPTS, []) == {}
    with pytest.raises(InputError, match="prompt 2 of 2 is empty"):
        generate_batch(lm, ["hi", "  "], conditions)
    with pytest.raises(InputError, match="unique"):
        generate_batch(lm, ["hi"], [conditions[0], conditions[0]])
    with pytest.raises(InputError, match="max_batch_rows"):
        generate_batch(lm, ["hi"], conditions, max_batch_rows=0)
    with pytest.raises(InputError, match="temperature"):
        generate_batch(lm, ["hi"], conditions, temperature=-1)
    with pytest.raises(InputError, match="no room"):
        generate_batch(lm, ["hi"], conditions, max_new_tokens=lm.n_ctx)


@pytest.mark.integration
def test_real_model_batch_equals_one_at_a_time(real_lm):
    from pathlib import Path

    from unlearn_core.explain.explore import study_prompts
    from unlearn_core.forget_set.io import load_feature_list
    from unlearn_core.forget_set.selections import load_selections

    path = Path(__file__).resolve().parent.parent / "feature_lists" / "example_gemma-3-270m-offline_hp-suggested.json"
    selections = tuple(load_selections(load_feature_list(path)))
    conds = [Condition("baseline"), Condition("clamp", selections, Intervention("clamp", 4.0, relative=True)),
             Condition("zero", selections, Intervention("zero"))]
    prompts = study_prompts()
    got = generate_batch_ids(real_lm, prompts, conds, max_new_tokens=12)
    assert got == reference_grid(real_lm, prompts, conds, 12)
    assert sum(got[(i, "clamp")] != got[(i, "baseline")] for i in range(len(prompts))) >= 2
