"""Token by token (unlearn_core.experiments.token_compare and its Compare-page panel) on the tiny random model."""

from __future__ import annotations

import pytest
import torch
from streamlit.testing.v1 import AppTest
from tiny_models import make_tiny_model, tiny_sae

from unlearn_core.ablation.conditions import Condition
from unlearn_core.ablation.interventions import Intervention, LatentSelection
from unlearn_core.errors import InputError, Stopped
from unlearn_core.experiments.token_compare import compare_tokens, first_divergence
from unlearn_core.scoring.generation import generate_batch, generate_batch_ids

PROMPT = "Harry Potter is"
N_NEW = 12


@pytest.fixture(scope="module")
def lm():
    return make_tiny_model()


@pytest.fixture(scope="module")
def forget(lm):
    return (LatentSelection(tiny_sae(layer=1), tuple(range(0, 96, 3))), LatentSelection(tiny_sae(layer=0, seed=1), (1, 5, 9)))


@pytest.fixture(scope="module")
def ablated(forget):
    return Condition("ablated", forget, Intervention("clamp", 4.0))


@pytest.fixture(scope="module")
def result(lm, ablated):
    return compare_tokens(lm, PROMPT, Condition("baseline"), ablated, max_new_tokens=N_NEW, top_moved=5)


def teacher_forced(lm, ids, condition):
    """log p of tokens 1.. of ``ids`` from a plain full forward with full logits (no batching, no chunking)."""
    tokens = torch.tensor([ids])
    with torch.inference_mode():
        logits = lm.model.run_with_hooks(tokens, fwd_hooks=condition.hooks())
    logp = torch.log_softmax(logits[0, :-1].float(), dim=-1)
    return logp.gather(1, tokens[0, 1:, None])[:, 0], logp.max(dim=-1).values


@pytest.mark.parametrize("identity", [
    Condition("reconstruction_only", (LatentSelection(tiny_sae(layer=1), ()),), Intervention("zero")),
    Condition("scale_by_one", (LatentSelection(tiny_sae(layer=1), tuple(range(96))),), Intervention("scale", 1.0)),
], ids=["reconstruction_only", "scale_by_one"])
def test_an_identity_condition_changes_nothing(lm, identity):
    got = compare_tokens(lm, PROMPT, Condition("baseline"), identity, max_new_tokens=8)
    assert got.identical and got.baseline.token_ids == got.ablated.token_ids
    assert max(abs(d) for d in got.baseline.deltas + got.ablated.deltas) < 1e-5
    assert max(abs(a - b) for a, b in zip(got.prompt_logp_ablated, got.prompt_logp_baseline, strict=True)) < 1e-5
    assert not got.most_dropped and not got.most_risen


def test_continuations_are_generate_batchs_greedy_output(lm, ablated, result):
    conds = [Condition("baseline"), ablated]
    ids = generate_batch_ids(lm, [PROMPT], conds, N_NEW)
    texts = generate_batch(lm, [PROMPT], conds, N_NEW)
    assert result.baseline.token_ids == tuple(ids[(0, "baseline")]) and result.baseline.text == texts[(0, "baseline")]
    assert result.ablated.token_ids == tuple(ids[(0, "ablated")]) and result.ablated.text == texts[(0, "ablated")]
    assert len(result.baseline.tokens) == len(result.baseline.token_ids) == len(result.baseline.logp_ablated)
    assert result.diverge_at == first_divergence(result.baseline.token_ids, result.ablated.token_ids)
    assert result.diverge_at is not None  # the clamp changes this random model's continuation
    assert result.prompt_ids[0] == lm.bos_token_id and len(result.prompt_tokens) == len(PROMPT)  # one byte per token


def test_log_probabilities_match_a_plain_forward_and_the_greedy_choice(lm, ablated, result):
    base_cond = Condition("baseline")
    n_prompt = len(result.prompt_ids) - 1
    for cont in (result.baseline, result.ablated):
        ids = [*result.prompt_ids, *cont.token_ids]
        for cond, got in ((base_cond, cont.logp_baseline), (ablated, cont.logp_ablated)):
            want, best = teacher_forced(lm, ids, cond)
            assert torch.allclose(torch.tensor(got), want[n_prompt:], atol=1e-5)
            if cond.name == cont.condition:  # each generated token is its own condition's greedy choice
                assert torch.allclose(torch.tensor(cont.logp_own), best[n_prompt:], atol=1e-5)
        assert cont.not_argmax == ()
    want, _ = teacher_forced(lm, [*result.prompt_ids, *result.baseline.token_ids], ablated)
    assert torch.allclose(torch.tensor(result.prompt_logp_ablated), want[:n_prompt], atol=1e-5)
    deltas = [a - b for a, b in zip(result.baseline.logp_ablated, result.baseline.logp_baseline, strict=True)]
    assert result.baseline.deltas == pytest.approx(deltas)


def test_most_moved_are_sorted_and_taken_from_the_baseline_continuation(result):
    cont = result.baseline
    for moved, sign in ((result.most_dropped, -1), (result.most_risen, 1)):
        assert len(moved) <= 5
        assert all(sign * m.delta > 0 for m in moved)
        assert [sign * m.delta for m in moved] == sorted((sign * m.delta for m in moved), reverse=True)
        for m in moved:
            assert (m.token_id, m.logp_baseline, m.logp_ablated) == (cont.token_ids[m.position],
                                                                      cont.logp_baseline[m.position],
                                                                      cont.logp_ablated[m.position])
    assert result.most_dropped  # a clamp of 35 latents lowers some probabilities
    biggest_fall = min(cont.deltas)
    assert result.most_dropped[0].delta == pytest.approx(biggest_fall)


def test_reported_latents_fire_and_belong_to_the_forget_set(lm, forget, result):
    assert len(result.latents) == len(result.prompt_tokens) + len(result.baseline.tokens)  # BOS excluded
    chosen = {(s.sae.ref, i) for s in forget for i in s.latents}
    by_ref = {s.sae.ref: s.sae for s in forget}
    ids = torch.tensor([[*result.prompt_ids, *result.baseline.token_ids]])
    with torch.inference_mode():
        _, cache = lm.model.run_with_cache(ids)
    n_fired = 0
    for pos, fired in enumerate(result.latents):
        assert len(fired) <= 5 and [f.value for f in fired] == sorted((f.value for f in fired), reverse=True)
        for f in fired:
            assert f.value > 0 and (f.sae_ref, f.latent) in chosen
            sae = by_ref[f.sae_ref]
            with torch.inference_mode():
                full = sae.sae.encode(cache[sae.hook_name][0, pos + 1])  # +1: position 0 is BOS
            assert float(full[f.latent]) == pytest.approx(f.value, rel=1e-5, abs=1e-6)
            n_fired += 1
    assert n_fired > 0


def test_no_forget_latents_means_no_firings(lm):
    got = compare_tokens(lm, PROMPT, Condition("baseline"), Condition("ablated"), max_new_tokens=4)
    assert got.identical and all(f == () for f in got.latents)


@pytest.mark.parametrize("kwargs", [
    {"prompt": ""}, {"prompt": "   \n"}, {"prompt": "x" * 20_001}, {"prompt": "y" * 100},  # 100 + 40 > 128 context
    {"max_new_tokens": 0}, {"max_new_tokens": 257}, {"top_moved": -1}, {"top_latents": 0},
    {"max_prompt_tokens": 0}, {"same_names": True},
], ids=lambda kw: next(iter(kw)) + "=" + repr(next(iter(kw.values())))[:12])
def test_bad_inputs_are_refused(lm, ablated, kwargs):
    kwargs = dict(kwargs)
    other = Condition("baseline") if kwargs.pop("same_names", False) else ablated
    args = {"prompt": PROMPT, "max_new_tokens": 40, **kwargs}
    with pytest.raises(InputError):
        compare_tokens(lm, args.pop("prompt"), Condition("baseline"), other, **args)


def test_a_stop_ends_it_and_the_lock_is_free(lm, ablated):
    with pytest.raises(Stopped):
        compare_tokens(lm, PROMPT, Condition("baseline"), ablated, max_new_tokens=4, should_stop=lambda: True)
    assert not lm.lock.locked()


def test_first_divergence():
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([1, 2], [1, 2, 3]) == 2
    assert first_divergence([], []) is None


def _panel_page() -> None:
    import streamlit as st
    from tiny_models import make_tiny_model, tiny_sae

    from app_support.token_compare_panel import render_token_compare
    from unlearn_core.ablation.conditions import Condition
    from unlearn_core.ablation.interventions import Intervention, LatentSelection

    if "tiny_lm" not in st.session_state:  # one model for the test's runs, like the app's shared model
        st.session_state["tiny_lm"] = make_tiny_model()
    sel = (LatentSelection(tiny_sae(layer=1), tuple(range(0, 96, 3))),)
    conditions = [Condition("baseline"), Condition("ablated", sel, Intervention("clamp", 4.0))]
    render_token_compare(st.session_state["tiny_lm"], conditions, ["Harry Potter is", "<b>x</b> [a](http://e)"],
                         expander=None)


def test_panel_shows_both_continuations_tables_and_latents():
    from app_support.state import SESSION_KEY, Key

    at = AppTest.from_function(_panel_page, default_timeout=60)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    at.number_input(key=Key.TOKENS_NEW_TOKENS).set_value(8)
    at.selectbox(key=Key.TOKENS_PROMPT).set_value("<b>x</b> [a](http://e)")
    at.run()
    at.button(key=Key.TOKENS_RUN).click()
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    [found] = at.session_state[SESSION_KEY].token_compare.values()
    assert found.prompt == "<b>x</b> [a](http://e)" and len(found.baseline.token_ids) <= 8
    assert len(at.dataframe) == 3  # fell most, rose most, latents per token
    assert list(at.dataframe[0].value.columns)[:5] == ["position", "token", "logp baseline", "logp ablated", "change"]
    page = " ".join(m.proto.body for m in at.get("html"))
    assert len(at.get("html")) == 3 and ">&lt;</span>" in page  # both continuations, then the prompt's latents
    assert "<b>" not in page and "<a " not in page  # the prompt's tokens are escaped
    at.radio(key=Key.TOKENS_COLOUR).set_value("probability")
    at.run()
    assert not at.exception and len(at.session_state[SESSION_KEY].token_compare) == 1  # reused, not recomputed
