"""Token by token (Compare page): one prompt's baseline and ablated continuations side by side, each token shaded by
how much the ablation moved its probability, the most-moved tokens, and where the forget set's latents fired.

The numbers come from :func:`unlearn_core.experiments.token_compare.compare_tokens`; results are kept per session
(:attr:`app_support.state.Session.token_compare`), so reruns and page switches reuse them. Tokens and prompts are
foreign text: they go into HTML escaped, into dataframes and ``st.text`` as text, never into Markdown.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import pandas as pd
import streamlit as st

from app_support import state
from app_support.jobs import stop_check
from app_support.safe_text import RUN_FAILURES, failure_message
from app_support.state import PERSIST, Key
from app_support.views import HIGHLIGHT_RGB
from unlearn_core.ablation.conditions import BASELINE, Condition
from unlearn_core.experiments.compare import condition_key, generation_key
from unlearn_core.experiments.token_compare import (
    MAX_NEW_TOKENS,
    Continuation,
    LatentFiring,
    MovedToken,
    TokenComparison,
    compare_tokens,
)
from unlearn_core.models.loading import LoadedModel

OWN_PROMPT = "(type a prompt)"
COLOURS = ("change under the ablation", "probability")
DEFAULT_NEW_TOKENS = 24
KEPT_RESULTS = 8
"""Comparisons kept per session (oldest dropped first)."""
DROP_RGB, RISE_RGB = "220, 38, 38", "37, 99, 235"  # red: less likely under the ablation; blue: more likely


def render_token_compare(lm: LoadedModel, conditions: Sequence[Condition], prompts: Sequence[str],
                         expander: str | None = "Token by token: baseline vs ablated") -> None:
    """The whole panel, inside an expander titled ``expander`` (None: drawn in place).

    ``conditions`` are the page's conditions (the baseline and any ablations or controls; the user picks one to
    compare with the baseline), ``prompts`` the page's prompts (the user may also type one).
    """
    if expander is None:
        _panel(lm, conditions, prompts)
        return
    with st.expander(expander):
        _panel(lm, conditions, prompts)


def _panel(lm: LoadedModel, conditions: Sequence[Condition], prompts: Sequence[str]) -> None:
    baseline = next((c for c in conditions if c.name == BASELINE), Condition(BASELINE))
    others = {c.name: c for c in conditions if c.name != BASELINE}
    if not others:
        st.info("Tick latents into the forget set first: there is nothing to compare the baseline with.")
        return
    options = [*dict.fromkeys(p for p in prompts if p.strip()), OWN_PROMPT]
    _keep_valid(Key.TOKENS_PROMPT, options)
    _keep_valid(Key.TOKENS_CONDITION, list(others))
    c1, c2, c3 = st.columns([4, 2, 1])
    choice = c1.selectbox("Prompt", options, key=Key.TOKENS_PROMPT, persist_state=PERSIST)
    name = c2.selectbox("Compare the baseline with", list(others), key=Key.TOKENS_CONDITION, persist_state=PERSIST,
                        format_func=lambda n: others[n].label)
    state.widget_default(Key.TOKENS_NEW_TOKENS, DEFAULT_NEW_TOKENS)
    new_tokens = int(c3.number_input("New tokens", 1, MAX_NEW_TOKENS, key=Key.TOKENS_NEW_TOKENS,
                                     persist_state=PERSIST))
    prompt = choice
    if choice == OWN_PROMPT:
        prompt = st.text_input("Your prompt", key=Key.TOKENS_OWN_PROMPT, persist_state=PERSIST)
    ablated = others[name]
    key = "|".join((condition_key(lm, baseline), condition_key(lm, ablated), ablated.name,
                    generation_key(prompt, new_tokens, 0.0, 0)))
    results: dict[str, TokenComparison] = state.session().token_compare
    if st.button("Compare token by token", key=Key.TOKENS_RUN, icon=":material/compare_arrows:",
                 disabled=not prompt.strip() or key in results):
        try:
            with st.spinner("Generating and scoring both continuations…"):
                found = compare_tokens(lm, prompt, baseline, ablated, max_new_tokens=new_tokens,
                                       should_stop=stop_check())
        except RUN_FAILURES as exc:
            st.error(failure_message(exc, "try fewer new tokens or a shorter prompt"))
            return
        results[key] = found
        while len(results) > KEPT_RESULTS:
            results.pop(next(iter(results)))
    result = results.get(key)
    if result is None:
        st.caption("Greedy continuations of one prompt under the baseline and the chosen condition, with every "
                   "token's log-probability under both (teacher-forced). Press the button to compute them.")
        return
    _show(result, ablated.label, st.radio("Shade tokens by", COLOURS, key=Key.TOKENS_COLOUR, horizontal=True,
                                          persist_state=PERSIST))


def _keep_valid(key: str, options: list[str]) -> None:
    """A selectbox whose options changed (other prompts, another forget set) starts again from its first option."""
    if state.widget_value(key) not in options:
        state.set_widget(key, options[0])


def _show(result: TokenComparison, ablated_label: str, colour: str) -> None:
    if result.diverge_at is None:
        st.caption("The two continuations are identical.")
    else:
        st.caption(f"The continuations part at token {result.diverge_at + 1} (underlined). Red: less likely under the "
                   "ablation than under the baseline, blue: more likely. Hover a token for its numbers.")
    by_delta = colour == COLOURS[0]
    scale = max([abs(d) for c in (result.baseline, result.ablated) for d in c.deltas] + [1.0])
    offset = len(result.prompt_tokens)
    left, right = st.columns(2)
    for col, cont, title in ((left, result.baseline, "baseline"), (right, result.ablated, ablated_label)):
        col.caption(f"{title} ({len(cont.tokens)} tokens)")
        fired = result.latents[offset:] if cont.generated_by == "baseline" else None
        col.html(_continuation_html(cont, by_delta, scale, result.diverge_at, fired))
        if cont.not_argmax:
            col.caption(f"{len(cont.not_argmax)} token(s) were not the teacher-forced argmax (a near-tie in low "
                        "precision).")
    dropped, risen = st.columns(2)
    dropped.markdown("**Fell most** (baseline continuation)")
    dropped.dataframe(_moved_frame(result.most_dropped), hide_index=True, width="stretch")
    risen.markdown("**Rose most** (baseline continuation)")
    risen.dataframe(_moved_frame(result.most_risen), hide_index=True, width="stretch")
    st.markdown("**Where the forget set's latents fired** (baseline: prompt, then its continuation)")
    st.html(_firing_html(result))
    rows = _firing_rows(result)
    if rows:
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    else:
        st.caption("No forget-set latent fired on these tokens.")


def _continuation_html(cont: Continuation, by_delta: bool, scale: float, diverge_at: int | None,
                       fired: Sequence[Sequence[LatentFiring]] | None) -> str:
    spans = []
    for i, tok in enumerate(cont.tokens):
        base, abl, delta = cont.logp_baseline[i], cont.logp_ablated[i], cont.deltas[i]
        if by_delta:
            rgb = DROP_RGB if delta < 0 else RISE_RGB
            alpha = min(1.0, abs(delta) / scale)
        else:
            rgb, alpha = HIGHLIGHT_RGB, math.exp(cont.logp_own[i])
        lines = [repr(tok), f"log p baseline {base:.3f} (p {math.exp(base):.3g})",
                 f"log p ablated {abl:.3f} (p {math.exp(abl):.3g})", f"change {delta:+.3f}"]
        if fired is not None and fired[i]:
            lines.append("latents: " + ", ".join(_firing_text(f) for f in fired[i]))
        spans.append(_span(tok, rgb, alpha, "\n".join(lines), underline=i == diverge_at))
    return _block(spans) if spans else "<div><i>(no tokens: the model ended at once)</i></div>"


def _firing_html(result: TokenComparison) -> str:
    strongest = [max((f.value for f in fired), default=0.0) for fired in result.latents]
    top = max(strongest, default=0.0) or 1.0
    n_prompt = len(result.prompt_tokens)
    spans = []
    for i, (tok, fired) in enumerate(zip(result.tokens, result.latents, strict=True)):
        where = "prompt" if i < n_prompt else "continuation"
        lines = [repr(tok), where] + ([_firing_text(f) for f in fired] or ["no forget-set latent"])
        alpha = 0.0 if strongest[i] <= 0 else min(1.0, 0.15 + 0.85 * strongest[i] / top)
        spans.append(_span(tok, HIGHLIGHT_RGB, alpha, "\n".join(lines), underline=i == n_prompt))
    return _block(spans)


def _firing_text(f: LatentFiring) -> str:
    return f"L{f.layer} #{f.latent} {f.value:.3g}"


def _firing_rows(result: TokenComparison) -> list[dict]:
    n_prompt = len(result.prompt_tokens)
    return [
        {"position": i, "part": "prompt" if i < n_prompt else "continuation", "token": _plain(tok),
         "latents (layer #id value)": ", ".join(_firing_text(f) for f in fired)}
        for i, (tok, fired) in enumerate(zip(result.tokens, result.latents, strict=True)) if fired
    ]


def _moved_frame(moved: Sequence[MovedToken]) -> pd.DataFrame:
    columns = ["position", "token", "logp baseline", "logp ablated", "change", "p baseline", "p ablated"]
    rows = [[m.position, _plain(m.token), m.logp_baseline, m.logp_ablated, m.delta, math.exp(m.logp_baseline),
             math.exp(m.logp_ablated)] for m in moved]
    return pd.DataFrame(rows, columns=columns)


def _plain(token: str) -> str:
    """A token as one line of text (newlines shown as ⏎)."""
    return token.replace("\n", "⏎")


def _span(token: str, rgb: str, alpha: float, title: str, underline: bool) -> str:
    shown = html.escape(token).replace("\n", "⏎").replace(" ", "&nbsp;") or "∅"
    border = "border-bottom:2px solid #111;" if underline else ""
    return (f'<span title="{html.escape(title, quote=True)}" style="background:rgba({rgb},{alpha:.2f});'
            f'padding:1px 0;border-radius:3px;{border}">{shown}</span>')


def _block(spans: Sequence[str]) -> str:
    return '<div style="font-family:ui-monospace,monospace;font-size:0.85rem;line-height:1.9;">' + "".join(spans) + "</div>"
