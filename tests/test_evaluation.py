"""Evaluation mechanics on the tiny model: batched perplexity, probes, conditions, generation."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny_models import tiny_sae

from unlearn_core.ablation.conditions import Condition, build_conditions, random_selections
from unlearn_core.ablation.interventions import Intervention, LatentSelection, intervened
from unlearn_core.data.probes import load_probes
from unlearn_core.errors import InputError
from unlearn_core.scoring.batching import score_tokens, tokenize_with_bos
from unlearn_core.scoring.generation import generate, prompt_token_ids
from unlearn_core.scoring.perplexity import perplexity, perplexity_one_at_a_time
from unlearn_core.scoring.probes import probe_scores

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hi",
    "A much longer text, so that the batch has to pad the shorter ones: " * 2,
    "Wizards and witches",
    "x",
    "Numbers 1 2 3 4 5 6 7 8 9 10",
]


def manual_perplexity(lm, texts, hooks=()):
    nll, n = 0.0, 0
    with intervened(lm, hooks) as model:
        for seq in tokenize_with_bos(lm, texts, 1024):
            logits = model(torch.tensor([seq]))[0].double()
            logp = torch.log_softmax(logits, -1)
            for t in range(1, len(seq)):
                nll -= float(logp[t - 1, seq[t]])
                n += 1
    return math.exp(nll / n)


@pytest.mark.parametrize("batch_tokens", [8, 64, 100000])
def test_batched_perplexity_equals_per_text(tiny_lm, batch_tokens):
    batched = perplexity(tiny_lm, TEXTS, batch_tokens=batch_tokens)
    loop = perplexity_one_at_a_time(tiny_lm, TEXTS)
    assert abs(batched.perplexity / loop.perplexity - 1) <= 1e-4
    assert abs(batched.perplexity / manual_perplexity(tiny_lm, TEXTS) - 1) <= 1e-4
    # n_ctx is 128: the long text is truncated to BOS + 127 tokens
    assert batched.n_tokens == loop.n_tokens == sum(min(len(t.encode()), 127) for t in TEXTS)


def test_batched_perplexity_equals_per_text_under_ablation(tiny_lm):
    sae = tiny_sae()
    hooks = Condition("a", (LatentSelection(sae, (1, 4, 9)),), Intervention(mode="clamp", value=3)).hooks()
    batched = perplexity(tiny_lm, TEXTS, hooks, batch_tokens=64)
    assert abs(batched.perplexity / perplexity_one_at_a_time(tiny_lm, TEXTS, hooks).perplexity - 1) <= 1e-4
    assert abs(batched.perplexity / perplexity(tiny_lm, TEXTS).perplexity - 1) > 1e-3


def test_truncation_and_progress(tiny_lm):
    seen = []
    res = perplexity(tiny_lm, TEXTS, max_seq_len=5, progress=lambda d, t: seen.append((d, t)))
    assert res.n_tokens == sum(min(len(t.encode()), 4) for t in TEXTS)
    assert seen[-1][0] == seen[-1][1] == res.n_tokens
    with pytest.raises(InputError):
        perplexity(tiny_lm, ["", "   "][:0] or [""])


def test_score_tokens_argmax_flags(tiny_lm):
    seq = tokenize_with_bos(tiny_lm, ["hello world"])[0]
    (scores,) = score_tokens(tiny_lm, [seq])
    logits = tiny_lm.model(torch.tensor([seq]))[0]
    assert torch.equal(scores.is_argmax, logits[:-1].argmax(-1) == torch.tensor(seq[1:]))
    expected = torch.log_softmax(logits[:-1], -1).gather(1, torch.tensor(seq[1:])[:, None])[:, 0]
    assert torch.allclose(scores.logprobs, expected, atol=1e-5)


def test_probe_scores_match_manual_computation(tiny_lm, tmp_path):
    items = [
        {"prompt": "The capital of France is", "answer": "Paris"},
        {"question": "Who wrote Hamlet?", "answer": ["Shakespeare", "William Shakespeare"]},
        {"prompt": "1 2 3 4 ", "answer": "5"},
    ]
    path = tmp_path / "probes.jsonl"
    path.write_text("\n".join(json.dumps(i) for i in items))
    ps = load_probes(str(path))
    res = probe_scores(tiny_lm, ps)
    assert res.n == 3
    # manual: best alias mean log-prob and first-token argmax
    tops, lps = [], []
    for probe in ps.probes:
        best, hit = -1e9, False
        for ans in probe.answers:
            cont = (" " + ans) if not probe.prompt[-1].isspace() else ans
            p_ids = [1] + tiny_lm.tokenizer(probe.prompt)["input_ids"]
            a_ids = tiny_lm.tokenizer(cont)["input_ids"]
            logits = tiny_lm.model(torch.tensor([p_ids + a_ids]))[0]
            logp = torch.log_softmax(logits, -1)
            vals = [float(logp[len(p_ids) - 1 + k, a]) for k, a in enumerate(a_ids)]
            best = max(best, sum(vals) / len(vals))
            hit = hit or int(logits[len(p_ids) - 1].argmax()) == a_ids[0]
        tops.append(hit)
        lps.append(best)
    assert res.top1 == pytest.approx(sum(tops) / 3)
    assert res.mean_logprob == pytest.approx(sum(lps) / 3, abs=1e-4)


def test_conditions(tiny_lm):
    sae = tiny_sae()
    sel = [LatentSelection(sae, (1, 2, 3, 4))]
    conds = build_conditions(["baseline", "ablated", "reconstruction_only", "random_control"], sel, Intervention(), seed=7)
    assert [c.name for c in conds] == ["baseline", "ablated", "reconstruction_only", "random_control"]
    assert [c.n_latents for c in conds] == [0, 4, 0, 4]
    rand = conds[3].selections[0].latents
    assert not set(rand) & {1, 2, 3, 4}
    assert random_selections(sel, 7)[0].latents == rand
    assert random_selections(sel, 8)[0].latents != rand
    # with the error term kept, reconstruction_only is the baseline exactly
    baseline = perplexity(tiny_lm, TEXTS).perplexity
    assert perplexity(tiny_lm, TEXTS, conds[2].hooks()).perplexity == pytest.approx(baseline, rel=1e-6)
    # in replace mode it is not: it carries the reconstruction error
    rec = build_conditions(["reconstruction_only"], sel, Intervention(mode="replace"))[0]
    assert abs(perplexity(tiny_lm, TEXTS, rec.hooks()).perplexity / perplexity(tiny_lm, TEXTS).perplexity - 1) > 1e-3
    with pytest.raises(InputError, match="unknown condition"):
        build_conditions(["nope"], sel, Intervention())


def recompute_generation(lm, prompt, condition, n):
    """Greedy generation without a KV cache: every step reruns the whole sequence (BOS protected)."""
    ids = tokenize_with_bos(lm, [prompt])[0]
    out = []
    for _ in range(n):
        with intervened(lm, condition.hooks() if condition else []) as model:
            token = int(model(torch.tensor([ids + out]))[0, -1].argmax())
        if token == lm.tokenizer.eos_token_id:
            break
        out.append(token)
    return lm.tokenizer.decode(out)


def test_generation_with_kv_cache_matches_full_recompute(tiny_lm):
    sae = tiny_sae()
    cond = Condition("ablated", (LatentSelection(sae, tuple(range(0, 96, 3))),), Intervention(mode="clamp", value=4))
    for c in (None, cond):
        assert generate(tiny_lm, "Once upon", c, max_new_tokens=12) == recompute_generation(tiny_lm, "Once upon", c, 12)
    assert generate(tiny_lm, "Once upon", cond, max_new_tokens=12) != generate(tiny_lm, "Once upon", None, max_new_tokens=12)


def test_generation_is_reproducible(tiny_lm):
    a = generate(tiny_lm, "Hello", max_new_tokens=10, temperature=1.0, seed=3)
    assert a == generate(tiny_lm, "Hello", max_new_tokens=10, temperature=1.0, seed=3)
    assert generate(tiny_lm, "Hello", max_new_tokens=10) == generate(tiny_lm, "Hello", max_new_tokens=10)
    with pytest.raises(InputError, match="empty"):
        generate(tiny_lm, "   ")


def test_long_probe_prompt_keeps_bos_and_scores_the_answer(tiny_lm, tmp_path):
    prompt = "word " * 80 + "The answer is"
    path = tmp_path / "long.json"
    path.write_text(json.dumps([{"prompt": prompt, "answer": "yes"}]))
    res = probe_scores(tiny_lm, load_probes(str(path)), max_seq_len=20)
    answer = tiny_lm.tokenizer(" yes")["input_ids"]
    body = (tiny_lm.tokenizer(prompt)["input_ids"] + answer)[-19:]
    seq = [tiny_lm.bos_token_id, *body]
    logp = torch.log_softmax(tiny_lm.model(torch.tensor([seq]))[0], -1)
    expected = sum(float(logp[len(seq) - len(answer) - 1 + k, a]) for k, a in enumerate(answer)) / len(answer)
    assert res.n == 1 and res.mean_logprob == pytest.approx(expected, abs=1e-4)


def test_long_generation_prompt_keeps_its_end(tiny_lm):
    ids = prompt_token_ids(tiny_lm, "x" * 500 + "END", 10)
    assert ids[0] == tiny_lm.bos_token_id and len(ids) == 10
    assert tiny_lm.tokenizer.decode(ids[1:]).endswith("END")
    assert len(generate(tiny_lm, "y" * 500, max_new_tokens=5)) <= 5 * 4
    with pytest.raises(InputError, match="no room"):
        generate(tiny_lm, "hi", max_new_tokens=tiny_lm.n_ctx)


def test_intervention_values_are_checked():
    with pytest.raises(InputError, match="finite"):
        Intervention(mode="clamp", value=float("nan"))
    with pytest.raises(InputError, match="takes no value"):
        Intervention(mode="zero", value=3.0)
    assert Intervention(mode="clamp").strength == 10.0
