"""Compare: baseline vs the forget set's ablation and controls - perplexity, knowledge probes, generations."""

from __future__ import annotations

import html
import itertools
import json

import pandas as pd
import plotly.express as px
import streamlit as st

from app_support import shell, state, sweep_panel, token_compare_panel
from app_support.jobs import stop_check
from app_support.resources import get_sae
from app_support.safe_text import RUN_FAILURES, failure_message, md_escape
from app_support.uploads import decoded
from unlearn_core.data.familiarity import familiar_terms, familiarity_prompts
from unlearn_core.data.probes import ProbeSet
from unlearn_core.data.quizzes import Quiz, knowledge_probes_from_bytes, knowledge_set_names, load_knowledge_probes
from unlearn_core.data.texts import BUILTIN_TEXTS, TextSet, load_texts, texts_from_bytes
from unlearn_core.errors import UnlearnError
from unlearn_core.experiments.attack_report import attack_table
from unlearn_core.experiments.attacks import HOOK_OFF_NOTE, AttackConfig, attack_selections
from unlearn_core.experiments.compare import (
    BASELINE,
    CONTROLS,
    DEFAULT_COMPARE_SEQ_LEN,
    DEFAULT_COMPARE_TEXTS,
    DEFAULT_NEW_TOKENS,
    comparison_conditions,
    condition_key,
    generation_key,
    knowledge_cell,
    perplexity_cell,
    probe_set_key,
    text_set_key,
)
from unlearn_core.experiments.results import ConditionScores, EvaluationResult, knowledge_score_from_dict
from unlearn_core.explain.explore import split_prompts, study_prompts
from unlearn_core.forget_set.selections import check_selections_fit_model, load_selections
from unlearn_core.scoring.batching import stoppable
from unlearn_core.scoring.generation import generate_batch
from unlearn_core.selection.gating import calibrated_conditions

ws = shell.page_setup(needs_model=True)
fl = state.forget_set(ws.preset.model_id)
st.title("Compare")
st.caption(f"Baseline vs **{md_escape(fl.name)}** ({fl.total_latents} latents) — {ws.intervention.describe()}. "
           "Results are cached: switching pages or re-running reuses every number already computed.")
if ws.error:
    st.error(md_escape(ws.error))
    st.stop()
if ws.lm is None:
    st.stop()
lm = ws.lm
if fl.model != ws.preset.model_id:
    st.warning(f"The forget set is for {fl.model}, but the model is {ws.preset.model_id}. Open a list for this model.")
    st.stop()

try:
    # the CLI's path: each SAE loaded (here from the shared cache, which loads only the SAEs this preset allows)
    # and checked against the list and the model
    selections = load_selections(fl, loader=lambda ref: get_sae(ref, ws.device, ws.dtype, preset=ws.preset))
    check_selections_fit_model(lm, selections, ws.intervention)
except UnlearnError as exc:
    st.error(f"{md_escape(exc)}. Open or import a list of this preset's SAEs on the Forget set page.")
    st.stop()
if not any(s.latents for s in selections):
    st.info("The forget set is empty, so only the baseline can run. Tick latents on the Explore page first.")

all_conditions = comparison_conditions(selections, ws.intervention, seed=int(state.widget_value(state.Key.COMPARE_SEED, 0)))
if ws.intervention.gate is not None and len(all_conditions) > 1:
    gated: dict = state.session().gated_conditions
    gate_key = tuple(condition_key(lm, c) for c in all_conditions)
    if gate_key not in gated:
        try:
            with st.spinner(f"Calibrating the gate on {md_escape(ws.intervention.gate.corpus)} for this forget set…"):
                gated[gate_key] = calibrated_conditions(lm, all_conditions)
        except RUN_FAILURES as exc:
            st.error(failure_message(exc, "turn the gate off or use a smaller forget set"))
            st.stop()
        while len(gated) > 4:
            gated.pop(next(iter(gated)))
    all_conditions = gated[gate_key]
    st.caption("Gate thresholds (summed forget-latent activation per SAE): "
               + ", ".join(f"{md_escape(h)} {t:.3g}" for h, t in all_conditions[1].intervention.gate.thresholds))
names = [c.label for c in all_conditions]
previous = state.widget_value(state.Key.COMPARE_CONDITIONS)
if not isinstance(previous, list) or not set(previous) <= set(names):
    state.set_widget(state.Key.COMPARE_CONDITIONS, names)
chosen_names = st.multiselect("Conditions", names, key=state.Key.COMPARE_CONDITIONS, persist_state=state.PERSIST,
                              help="Controls: " + ", ".join(CONTROLS) + ". Reconstruction only equals the baseline when "
                                   "the error term is kept.")
conditions = [c for c in all_conditions if c.label in chosen_names]
if BASELINE not in chosen_names:
    conditions.insert(0, all_conditions[0])  # ratios need it
cells: dict[str, dict] = state.session().compare_cells
DRAWS = itertools.count()  # a chart redrawn in one run (after every batch) needs a new key each time


def cell_key(kind: str, cond, data_key: str) -> str:
    return f"{kind}|{condition_key(lm, cond)}|{data_key}"


def stop_button(key: str) -> None:
    """Clicking it reruns the page, which interrupts the running loop between batches; finished cells are kept."""
    st.button("Stop", key=key, icon=":material/stop:", help="Stops after the current batch; results so far are kept.")


# ------------------------------------------------------------------------------------------------ perplexity
st.header("Perplexity")
c1, c2, c3 = st.columns([3, 1, 1])
state.widget_default(state.Key.COMPARE_TEXTS, ["wikitext2", "wikitext2-clean", "hp-fanwiki"])
text_names = c1.multiselect("Built-in texts", list(BUILTIN_TEXTS), key=state.Key.COMPARE_TEXTS, persist_state=state.PERSIST,
                            help="\n".join(f"- **{k}**: {v}" for k, v in BUILTIN_TEXTS.items()))
state.widget_default(state.Key.COMPARE_MAX_TEXTS, DEFAULT_COMPARE_TEXTS)
max_texts = c2.number_input("Texts per set", 1, 5000, key=state.Key.COMPARE_MAX_TEXTS, persist_state=state.PERSIST)
state.widget_default(state.Key.COMPARE_SEQ_LEN, DEFAULT_COMPARE_SEQ_LEN)
seq_len = c3.number_input("Tokens per text", 16, 2048, step=64, key=state.Key.COMPARE_SEQ_LEN, persist_state=state.PERSIST)
uploads = st.file_uploader("Your own texts (.txt, paragraphs separated by blank lines), e.g. a book you own",
                           type=["txt", "md"], accept_multiple_files=True, key="compare_uploads")
text_sets: list[TextSet] = [load_texts(n, int(max_texts)) for n in text_names]
for up in uploads or []:
    try:
        text_sets.append(decoded(up, "text", texts_from_bytes, int(max_texts)))  # size-checked, decoded once
    except UnlearnError as exc:
        st.error(f"{md_escape(exc)}. It is left out.")


ABLATED_COLORS = ["#c2410c", "#ea580c", "#f97316", "#fb923c", "#fdba74", "#9a3412"]


def condition_colors() -> dict[str, str]:
    """Baseline grey, controls blue, ablations in oranges: the same colours in every chart."""
    colors = {BASELINE: "#6b7280", "reconstruction only": "#93c5fd", "random control": "#2563eb"}
    ablated = [c.label for c in all_conditions if c.label not in colors]
    colors.update({name: ABLATED_COLORS[i % len(ABLATED_COLORS)] for i, name in enumerate(ablated)})
    return colors


def chart_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows for a plotly chart: dataset names (uploaded file names) escaped, so plotly's pseudo-HTML (links,
    styles) in a name is shown as text."""
    df = pd.DataFrame(rows)
    df["dataset"] = [html.escape(str(name), quote=False) for name in df["dataset"]]
    return df


def perplexity_rows() -> list[dict]:
    rows = []
    for ts in text_sets:
        tkey = text_set_key(ts, int(seq_len))
        base = cells.get(cell_key("ppl", conditions[0], tkey))
        for cond in conditions:
            got = cells.get(cell_key("ppl", cond, tkey))
            if got is None:
                continue
            ratio = got["value"] / base["value"] if base and base["complete"] else None
            rows.append({"condition": cond.label, "metric": "perplexity", "dataset": ts.name, "value": got["value"],
                         "ratio_to_baseline": ratio, "n": got["n"], "complete": got["complete"]})
    return rows


chart_slot = st.empty()


def draw_perplexity() -> None:
    rows = perplexity_rows()
    if not rows:
        chart_slot.info("Press **Run perplexity** to score the chosen texts under each condition.")
        return
    df = chart_frame(rows)
    df["label"] = [(f"×{r:.2f}" if r and c != BASELINE else f"{v:.1f}") + ("" if done else " …")
                   for v, r, c, done in zip(df["value"], df["ratio_to_baseline"], df["condition"], df["complete"], strict=True)]
    fig = px.bar(df, x="dataset", y="value", color="condition", barmode="group", text="label",
                 labels={"value": "perplexity", "dataset": ""}, title="Perplexity by text set (lower is better)",
                 color_discrete_map=condition_colors())
    fig.update_traces(textposition="outside", textangle=0, textfont_size=11, cliponaxis=False)
    fig.update_layout(legend_title_text="", height=440, margin={"t": 60, "b": 10}, uniformtext_minsize=9,
                      uniformtext_mode="hide")
    chart_slot.plotly_chart(fig, width="stretch", key=f"ppl_chart_{next(DRAWS)}",
                            config={"toImageButtonOptions": {"format": "png", "filename": "perplexity", "scale": 2}})


def computed(keys: set[str]) -> tuple[int, int]:
    """How many of these cells are finished, out of how many (conditions equal to the baseline share cells)."""
    return sum(1 for k in keys if k in cells and cells[k].get("complete", True)), len(keys)


def ppl_progress() -> tuple[int, int]:
    return computed({cell_key("ppl", c, text_set_key(ts, int(seq_len))) for ts in text_sets for c in conditions})


draw_perplexity()
if perplexity_rows():
    with st.expander("Perplexity table"):
        st.dataframe(pd.DataFrame(perplexity_rows()).drop(columns=["metric"]), hide_index=True, width="stretch")
done, total = ppl_progress()
st.caption(f"{done} of {total} perplexity results computed" + (" — Run computes the rest." if done < total else "."))
run_col, stop_col = st.columns([1, 5])
if run_col.button("Run perplexity", icon=":material/play_arrow:", type="primary", disabled=not text_sets):
    with stop_col:
        stop_button("stop_ppl")
    todo = [(ts, cond) for ts in text_sets for cond in conditions]
    bar = st.progress(0.0, text="Starting…")
    should_stop = stop_check()
    for n_done, (ts, cond) in enumerate(todo):
        tkey = text_set_key(ts, int(seq_len))
        key = cell_key("ppl", cond, tkey)
        if cells.get(key, {}).get("complete"):
            continue
        bar.progress(n_done / len(todo), text=f"{cond.label} on {md_escape(ts.name)}…")
        try:
            with stoppable(should_stop):  # asked before every batch: Stop ends the job within one batch
                for partial in perplexity_cell(lm, cond, ts, max_seq_len=int(seq_len), batch_tokens=1024):
                    cells[key] = {"value": partial.perplexity, "n": partial.n_tokens, "complete": False}
                    draw_perplexity()
        except RUN_FAILURES as exc:
            state.flash(f"{md_escape(ts.name)}: {failure_message(exc, 'try fewer texts or fewer tokens per text')}",
                        "error")  # shown after the rerun below
            break
        cells[key]["complete"] = True
        draw_perplexity()
    bar.progress(1.0, text="Done.")
    st.rerun()

# ------------------------------------------------------------------------------------------------ probes
st.header("Knowledge probes")
c1, c2 = st.columns([3, 1])
probe_names = c1.multiselect("Built-in probe sets", knowledge_set_names(), key=state.Key.COMPARE_PROBES,
                             persist_state=state.PERSIST,
                             help="Multiple-choice quizzes written for this project (HP, general knowledge, adjacent "
                                  "fiction) and the project's cloze sets, each with a dev and a test split; NQ-open "
                                  "(general). Add your own QA/cloze files (e.g. an external benchmark you hold) below.")
state.widget_default(state.Key.COMPARE_PROBE_ITEMS, 50)
max_items = c2.number_input("Items per set", 5, 2000, key=state.Key.COMPARE_PROBE_ITEMS, persist_state=state.PERSIST)
probe_uploads = st.file_uploader("Your own probe files: multiple choice {\"question\",\"choices\",\"answer\": index}, "
                                 "cloze {\"prompt\",\"answer\"} or QA {\"question\",\"answer\"}; JSON list or JSONL",
                                 type=["json", "jsonl"], accept_multiple_files=True, key="probe_uploads")
probe_sets: list[ProbeSet | Quiz] = [load_knowledge_probes(n, int(max_items)) for n in probe_names]
for up in probe_uploads or []:
    try:
        probe_sets.append(decoded(up, "probes", knowledge_probes_from_bytes, int(max_items)))
    except UnlearnError as exc:
        st.error(f"{md_escape(exc)}. It is left out.")

PROBE_METRICS = {"cloze": ("top1", "mean_logprob"), "quiz": ("acc_calibrated", "acc", "acc_norm")}
"""The headline metric first: top-1 for cloze/QA, lm-eval's calibrated accuracy for multiple choice."""


def probe_rows() -> list[dict]:
    rows = []
    for ps in probe_sets:
        pkey = probe_set_key(ps)
        base = cells.get(cell_key("probe", conditions[0], pkey))
        for cond in conditions:
            got = cells.get(cell_key("probe", cond, pkey))
            if got is None:
                continue
            for metric in PROBE_METRICS["quiz" if "acc" in got else "cloze"]:
                ratio = got[metric] / base[metric] if base and base.get(metric) else None
                rows.append({"condition": cond.label, "metric": f"probe {metric}", "dataset": ps.name,
                             "value": got[metric], "ratio_to_baseline": ratio, "n": got["n"],
                             "chance": got.get("chance"), "complete": True})
    return rows


probe_slot = st.empty()


def draw_probes() -> None:
    rows = [r for r in probe_rows() if r["metric"] in ("probe top1", "probe acc_calibrated")]
    if not rows:
        probe_slot.info("Choose or upload probe sets, then **Run probes**.")
        return
    fig = px.bar(chart_frame(rows), x="dataset", y="value", color="condition", barmode="group", text_auto=".2f",
                 labels={"value": "accuracy", "dataset": ""},
                 title="Knowledge probes: cloze top-1, multiple-choice calibrated accuracy (dotted: chance)",
                 color_discrete_map=condition_colors())
    for chance in {r["chance"] for r in rows if r["chance"]}:
        fig.add_hline(y=chance, line_dash="dot", line_color="#6b7280")
    fig.update_layout(legend_title_text="", height=380, margin={"t": 50, "b": 10}, yaxis_range=[0, 1])
    probe_slot.plotly_chart(fig, width="stretch", key=f"probe_chart_{next(DRAWS)}",
                            config={"toImageButtonOptions": {"format": "png", "filename": "probes", "scale": 2}})


draw_probes()
run_col, stop_col = st.columns([1, 5])
if run_col.button("Run probes", icon=":material/play_arrow:", disabled=not probe_sets):
    with stop_col:
        stop_button("stop_probes")
    todo = [(ps, cond) for ps in probe_sets for cond in conditions]
    bar = st.progress(0.0)
    should_stop = stop_check()
    for n_done, (ps, cond) in enumerate(todo):
        key = cell_key("probe", cond, probe_set_key(ps))
        if key in cells:
            continue
        bar.progress(n_done / len(todo), text=f"{cond.label} on {md_escape(ps.name)}…")
        try:
            with stoppable(should_stop):  # probe and quiz scores ask it before every batch
                cells[key] = knowledge_cell(lm, cond, ps)
        except RUN_FAILURES as exc:
            state.flash(f"{md_escape(ps.name)}: {failure_message(exc, 'try fewer items')}", "error")
            break
        draw_probes()
    st.rerun()

# ------------------------------------------------------------------------------------------------ generations
st.header("Generations")
state.widget_default(state.Key.COMPARE_PROMPTS, "\n".join(study_prompts()))
b1, b2, _ = st.columns([2, 3, 3])
b1.button("The study's 7 prompts", on_click=state.set_widget, args=(state.Key.COMPARE_PROMPTS, "\n".join(study_prompts())))
b2.button("HP completion prompts (familiarity, test split)", on_click=state.set_widget,
          args=(state.Key.COMPARE_PROMPTS, "\n".join(p.prompt for p in familiarity_prompts("test"))),
          help="30 prompts written for this project that invite Harry Potter content; each continuation is checked "
               "against the project's Harry Potter term list, and the share per condition is shown below.")
prompts_text = st.text_area("Prompts, one per line (default: the study's 4 Harry Potter + 3 unrelated prompts)",
                            key=state.Key.COMPARE_PROMPTS, persist_state=state.PERSIST, height=150)
c1, c2, c3 = st.columns(3)
state.widget_default(state.Key.COMPARE_NEW_TOKENS, DEFAULT_NEW_TOKENS)
new_tokens = int(c1.number_input("New tokens", 1, 256, key=state.Key.COMPARE_NEW_TOKENS, persist_state=state.PERSIST))
state.widget_default(state.Key.COMPARE_TEMPERATURE, 0.0)
temperature = float(c2.number_input("Temperature (0 = greedy)", 0.0, 2.0, step=0.1, key=state.Key.COMPARE_TEMPERATURE,
                                    persist_state=state.PERSIST))
state.widget_default(state.Key.COMPARE_SEED, 0)
seed = int(c3.number_input("Seed (sampling, random control)", 0, 2**31 - 1, key=state.Key.COMPARE_SEED,
                           persist_state=state.PERSIST))
prompts = split_prompts(prompts_text)


def generation_rows() -> list[dict]:
    rows = []
    for prompt in prompts:
        gkey = generation_key(prompt, new_tokens, temperature, seed)
        for cond in conditions:
            got = cells.get(cell_key("gen", cond, gkey))
            if got is not None:
                rows.append({"prompt": prompt, "condition": cond.label, "generation": got["text"],
                             "hp_terms": ", ".join(familiar_terms(got["text"]))})
    return rows


gen_slot = st.container()


def draw_generations() -> None:
    rows = generation_rows()
    if not rows:
        gen_slot.info("Press **Run generations** to continue each prompt under each condition.")
        return
    by_prompt: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt"], {})[r["condition"]] = r
    for prompt, outs in by_prompt.items():
        gen_slot.markdown(f"**{md_escape(prompt)}**")  # escaped: typed text is never read as Markdown
        cols = gen_slot.columns(len(conditions))
        for col, cond in zip(cols, conditions, strict=True):
            col.caption(cond.label)
            got = outs.get(cond.label)
            col.text(got["generation"] if got else "…")
            if got and got["hp_terms"]:
                col.caption("HP terms: " + got["hp_terms"])
    familiar = {label: sum(bool(r["hp_terms"]) for r in rows if r["condition"] == label) for label in
                dict.fromkeys(r["condition"] for r in rows)}
    counts = {label: sum(1 for r in rows if r["condition"] == label) for label in familiar}
    gen_slot.caption("Familiarity (continuations using a Harry Potter term from the project's list): " + "; ".join(
        f"{label} {familiar[label]}/{counts[label]}" for label in familiar))


GEN_PROMPTS_PER_BATCH = 4
"""Prompts generated together (all conditions at once); the page fills in after each batch."""

gen_done, gen_total = computed(
    {cell_key("gen", c, generation_key(p, new_tokens, temperature, seed)) for p in prompts for c in conditions})
st.caption(f"{gen_done} of {gen_total} generations computed" + (" — Run computes the rest." if gen_done < gen_total else "."))
run_col, stop_col = st.columns([1, 5])
if run_col.button("Run generations", icon=":material/play_arrow:", disabled=not prompts):
    with stop_col:
        stop_button("stop_gen")
    todo = [p for p in prompts if any(cell_key("gen", c, generation_key(p, new_tokens, temperature, seed)) not in cells
                                      for c in conditions)]
    bar = st.progress(0.0, text="Starting…")
    should_stop = stop_check()
    for start in range(0, len(todo), GEN_PROMPTS_PER_BATCH):
        batch = todo[start : start + GEN_PROMPTS_PER_BATCH]

        def on_step(step: int, partial: dict, start: int = start, size: int = len(batch)) -> None:  # Stop lands here
            done = (start + size * min(step / new_tokens, 1.0)) / len(todo)
            bar.progress(min(done, 1.0), text=f"prompts {start + 1}-{start + size} of {len(todo)}: "
                                              f"token {step} of {new_tokens}")

        try:
            texts = generate_batch(lm, batch, conditions, new_tokens, temperature, seed, on_step=on_step,
                                   should_stop=should_stop)  # asked before every decode step
        except RUN_FAILURES as exc:
            state.flash(failure_message(exc, "try fewer prompts or fewer new tokens"), "error")
            break
        for (i, name), text in texts.items():
            cond = next(c for c in conditions if c.name == name)
            cells[cell_key("gen", cond, generation_key(batch[i], new_tokens, temperature, seed))] = {"text": text}
    st.rerun()
draw_generations()
token_compare_panel.render_token_compare(lm, all_conditions, prompts)

# ------------------------------------------------------------------------------------------------ attacks
st.header("Attacks: can the forgotten knowledge come back?")
st.caption("The HP quiz's test split under baseline, the forget set and a same-size random control, asked plainly, "
           "paraphrased without the names, after 3 true QA pairs, in French and Spanish; a linear probe on the "
           "residual stream after the deepest edited layer; and with the hooks removed. Each row: the fraction of "
           "the forgotten accuracy it recovers (calibrated accuracy). The same as `python -m unlearn_core attack`.")
a1, a2 = st.columns([1, 1])
attack_items = int(a1.number_input("Quiz questions", 10, 120, 40, step=10, key="compare_attack_items"))
probe_texts = int(a2.number_input("Linear-probe texts per class", 10, 200, 40, step=10, key="compare_attack_texts"))
attack_key = f"attacks|{condition_key(lm, all_conditions[1]) if len(all_conditions) > 1 else 'none'}|{attack_items}|{probe_texts}"
run_col, stop_col = st.columns([1, 5])
if run_col.button("Run attacks", icon=":material/play_arrow:", disabled=len(all_conditions) < 2):
    with stop_col:
        stop_button("stop_attacks")
    chosen_sel = [s for s in selections if s.latents]
    with st.spinner("Scoring the quiz variants under each condition (minutes on a CPU)…"), stoppable(stop_check()):
        try:
            res = attack_selections(lm, chosen_sel, all_conditions[1].intervention,  # its gate calibrated, if any
                                    AttackConfig(forget_set=fl.name, max_items=attack_items, probe_texts_per_class=probe_texts,
                                                 seed=seed))
            cells[attack_key] = res.to_dict()
        except RUN_FAILURES as exc:
            state.flash(failure_message(exc, "try fewer attack items or probe texts"), "error")
    st.rerun()
if attack_key in cells:
    table = attack_table(cells[attack_key])
    st.code("\n".join(table), language=None)  # plain text: the numbers, never Markdown
    st.caption(HOOK_OFF_NOTE)
else:
    st.info("Press **Run attacks** to measure recovery (the forget set must have latents).")

# ------------------------------------------------------------------------------------------------ downloads
st.header("Download")
numbers = perplexity_rows() + probe_rows()
settings = {
    "model": ws.preset.model_id, "preset": ws.preset.name, "device": ws.device, "dtype": ws.dtype,
    "forget_set": json.loads(json.dumps(fl.to_dict())), "intervention": ws.intervention.describe(),
    "texts_per_set": int(max_texts), "tokens_per_text": int(seq_len), "probe_items": int(max_items),
    "new_tokens": new_tokens, "temperature": temperature, "seed": seed,
    "conditions": {c.name: {"label": c.label, "n_latents": c.n_latents, "same_as_baseline": c.same_as_baseline,
                            "latents": {s.sae.ref: list(s.latents) for s in c.selections}} for c in conditions},
}


def compare_result() -> EvaluationResult:
    """The finished cells as the same typed result ``evaluate --json`` writes (conditions by name)."""
    result = EvaluationResult(settings=settings)
    for cond in conditions:
        scores = ConditionScores()
        for ts in text_sets:
            got = cells.get(cell_key("ppl", cond, text_set_key(ts, int(seq_len))))
            if got is not None and got["complete"]:
                scores.perplexity[ts.name] = got["value"]
        for ps in probe_sets:
            got = cells.get(cell_key("probe", cond, probe_set_key(ps)))
            if got is not None:
                scores.probes[ps.name] = knowledge_score_from_dict(got)
        result.conditions[cond.name] = scores
    return result


c1, c2, c3 = st.columns(3)
c1.download_button("Numbers (CSV)", pd.DataFrame(numbers).to_csv(index=False).encode(), "compare_numbers.csv",
                   "text/csv", disabled=not numbers)
c2.download_button("Everything (JSON)", json.dumps({**compare_result().to_dict(), "numbers": numbers,
                                                    "generations": generation_rows()}, indent=1).encode(),
                   "compare_results.json", "application/json", disabled=not (numbers or generation_rows()))
c3.download_button("Generations (CSV)", pd.DataFrame(generation_rows()).to_csv(index=False).encode(),
                   "compare_generations.csv", "text/csv", disabled=not generation_rows())
st.caption("Charts download as PNG from the camera icon in their top-right toolbar.")

sweep_panel.render()
