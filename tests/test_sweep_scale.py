"""Sweeps that outgrow one machine: resumable point stores, fan-out on Ray actors, sharded statistics (tiny models).

The Ray tests share one local Ray (``num_cpus=2``) and skip, with the reason, when ray is not installed
(``pip install -r requirements-dev.txt`` installs it).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from tiny_models import make_tiny_model, tiny_sae

from unlearn_core.experiments.sweep import Measurer, SweepConfig, load_sweep_data, run_sweep
from unlearn_core.experiments.sweep_store import PointStore
from unlearn_core.selection.stats import combine_latent_stats, compute_latent_stats, shard_sequences, stats_sequences
from unlearn_core.selection.suggest import SelectConfig, suggest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FORGET = [f"The wizard {n} cast a spell at the castle of {n}." for n in ("Zed", "Quill", "Vex", "Jax", "Kip", "Wyn")]
RETAIN = [f"The farmer {n} planted corn near the river in {n}." for n in ("Ann", "Bob", "Cal", "Dee", "Eve", "Fay")]
SAE_SEEDS = ((1, 8), (2, 9))
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="ray is not installed (pip install -r requirements-dev.txt)")


def tiny_saes():
    return [tiny_sae(layer=layer, seed=seed) for layer, seed in SAE_SEEDS]


@dataclass(frozen=True)
class TinyLoader:
    """What a Ray actor loads in place of a preset: the same tiny model and SAEs as the test process."""

    wants_gpu: bool = False

    def load(self):
        return make_tiny_model(), tiny_saes()


@dataclass
class Setup:
    folder: Path
    select: SelectConfig
    sweep: SweepConfig


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Setup:
    return make_setup(tmp_path_factory.mktemp("sweep-scale"))


def make_setup(folder: Path) -> Setup:
    """Forget/retain texts, probes and a quiz in ``folder``, and the selection and sweep settings that use them."""
    (folder / "forget.txt").write_text("\n\n".join(FORGET * 3), encoding="utf-8")
    (folder / "retain.txt").write_text("\n\n".join(RETAIN * 3), encoding="utf-8")
    (folder / "probes.json").write_text(json.dumps([{"prompt": "The wizard", "answer": " cast"},
                                                     {"prompt": "The farmer", "answer": "p"}]))
    (folder / "quiz.json").write_text(json.dumps([
        {"question": "Who casts?", "choices": ["wizard", "farmer"], "answer": 0},
        {"question": "Who ploughs?", "choices": ["wizard", "farmer"], "answer": 1}]))
    forget, retain, probes, quiz = (str(folder / f) for f in ("forget.txt", "retain.txt", "probes.json", "quiz.json"))
    select = SelectConfig(forget=forget, retain=retain, top=6, retain_threshold=0.5, min_forget_freq=0.0, stats_tokens=5000)
    sweep = SweepConfig(ns=[2, 6], interventions=["zero", "clamp:3x"], layer_sets=["all", "2"], forget_texts=forget,
                        retain_texts=retain, forget_probes=probes, retain_probes=probes, forget_quiz=quiz, retain_quiz=quiz,
                        adjacent_quiz="", max_forget_texts=4, max_retain_texts=4, max_seq_len=32, retain_ppl_budget=10.0,
                        retain_probe_budget=1.0)
    return Setup(folder, select, sweep)


@pytest.fixture(scope="module")
def ranked(setup, tiny_lm):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UNLEARN_CACHE_DIR", str(setup.folder / "cache"))
        return suggest(tiny_lm, tiny_saes(), setup.select)


@pytest.fixture(scope="module")
def sequential(setup, tiny_lm, ranked):
    return run_sweep(tiny_lm, tiny_saes(), ranked, setup.sweep)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed (pip install -r requirements-dev.txt)")
    import ray

    if ray.is_initialized():
        pytest.skip("Ray is already running in this process")
    cache = tmp_path_factory.mktemp("ray-cache")
    env = {"PYTHONPATH": f"{TESTS}:{REPO}", "UNLEARN_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def pool(ray_cluster):
    """Two actors with the tiny model, shared by the Ray tests (one replaced when a test kills it)."""
    from unlearn_core.experiments.sweep_ray import RayPool

    with RayPool(TinyLoader(), 2) as shared:
        yield shared


def assert_same_numbers(a, b, rel: float = 1e-9, where: str = "") -> None:
    """Every number of two sweep results agrees to ``rel`` (timing fields aside); everything else is equal."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) - {"seconds"} == set(b) - {"seconds"}, where
        for k in a:
            if k != "seconds":
                assert_same_numbers(a[k], b[k], rel, f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_numbers(x, y, rel, f"{where}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert isinstance(b, int | float) and math.isclose(a, b, rel_tol=rel, abs_tol=1e-12), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


class Interrupt(Exception):
    pass


def test_interrupted_sweep_resumes_without_recomputing(setup, tiny_lm, ranked, sequential, tmp_path, monkeypatch):
    calls = []
    real_measure = Measurer.measure
    monkeypatch.setattr(Measurer, "measure", lambda self, cond, progress=None: calls.append(cond.name)
                        or real_measure(self, cond, progress))
    saes, points_dir = tiny_saes(), tmp_path / "points"

    def stop_after_two(event):
        if event.done == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_sweep(tiny_lm, saes, ranked, setup.sweep, points_dir=points_dir, on_point=stop_after_two)
    assert calls == ["baseline", "n=2 zero L1+2"] and len(list(points_dir.glob("*.json"))) == 2
    calls.clear()
    lines: list[str] = []
    resumed = run_sweep(tiny_lm, saes, ranked, setup.sweep, status=lines.append, points_dir=points_dir)
    n_jobs = 1 + len(sequential["points"])
    assert "reusing 2 of 9 finished points" in lines and n_jobs == 9
    assert "baseline" not in calls and "n=2 zero L1+2" not in calls
    files = sorted(points_dir.glob("*.json"))  # one per distinct measurement (a control may equal a point)
    assert len(calls) == len(files) - 2 and len(files) >= n_jobs
    assert {k: v for k, v in resumed.items() if k != "seconds"} == {k: v for k, v in sequential.items() if k != "seconds"}
    json.dumps(resumed)

    # all finished: nothing measured again; a damaged file and one under another key are measured again
    files[0].write_text("{not json")
    other = json.loads(files[2].read_text())
    files[1].write_text(json.dumps(other))  # a valid point, but not this key's
    calls.clear()
    again = run_sweep(tiny_lm, saes, ranked, setup.sweep, points_dir=points_dir)
    assert len(calls) == 2
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in resumed.items() if k != "seconds"}
    store = PointStore(points_dir, list(sequential["baseline"]))
    assert all(store.load(f.stem) is not None for f in files)


def test_point_keys_follow_what_changes_a_number(setup, tiny_lm, ranked, tmp_path):
    from unlearn_core.ablation.interventions import Intervention
    from unlearn_core.experiments.sweep import measure_limits
    from unlearn_core.experiments.sweep_store import SCORING_VERSION, ConditionSpec, SweepKeys

    saes, data = tiny_saes(), load_sweep_data(setup.sweep)
    keys = SweepKeys(tiny_lm, saes, data, measure_limits(setup.sweep))
    spec = ConditionSpec("a", (("random:blocks.1.hook_resid_post", (1, 2), (0.5, 0.25)),))
    assert keys.key(spec) == keys.key(ConditionSpec("renamed", spec.selections))  # the name changes no number
    variants = [
        ConditionSpec("a", (("random:blocks.1.hook_resid_post", (1, 3), (0.5, 0.25)),)),
        ConditionSpec("a", (("random:blocks.1.hook_resid_post", (1, 2), (0.5, 0.2500001)),)),
        ConditionSpec("a", spec.selections, Intervention.from_spec("clamp:2x")),
    ]
    assert len({keys.key(spec), *map(keys.key, variants)}) == 4
    import dataclasses

    other_limits = SweepKeys(tiny_lm, saes, data, {**measure_limits(setup.sweep), "max_seq_len": 16})
    fewer_texts = SweepKeys(tiny_lm, saes, load_sweep_data(dataclasses.replace(setup.sweep, max_forget_texts=3)),
                            measure_limits(setup.sweep))
    other_sae = SweepKeys(tiny_lm, [tiny_sae(layer=1, seed=99), saes[1]], data, measure_limits(setup.sweep))
    assert len({keys.key(spec), other_limits.key(spec), fewer_texts.key(spec), other_sae.key(spec)}) == 4
    assert isinstance(SCORING_VERSION, int)


@pytest.mark.parametrize("n_shards", [2, 3])
def test_sharded_statistics_equal_single_pass(tiny_lm, setup, n_shards):
    saes = tiny_saes()
    from unlearn_core.data.texts import load_texts

    sequences = stats_sequences(tiny_lm, load_texts(setup.select.forget).texts, 3000, 40)
    shards = shard_sequences(sequences, n_shards)
    assert len(shards) == n_shards and [q for sh in shards for q in sh] == sequences and all(shards)
    whole = compute_latent_stats(tiny_lm, saes, sequences)
    combined = combine_latent_stats([compute_latent_stats(tiny_lm, saes, sh) for sh in shards])
    _assert_same_stats(whole, combined)


def _assert_same_stats(whole, combined) -> None:
    import torch

    assert set(whole) == set(combined)
    for ref, w in whole.items():
        c = combined[ref]
        assert (w.n_tokens, w.n_texts, w.sae_ref, w.hook_name) == (c.n_tokens, c.n_texts, c.sae_ref, c.hook_name)
        assert torch.equal(w.fire_count, c.fire_count) and torch.equal(w.text_count, c.text_count)
        # each shard is batched on its own, and a matrix product's last bits depend on the batch's shape
        assert torch.allclose(w.act_max, c.act_max, rtol=1e-5, atol=1e-6)
        assert c.act_sum.dtype == torch.float64 and torch.allclose(w.act_sum, c.act_sum, rtol=1e-6, atol=1e-6)
        assert int(w.fire_count.sum()) > 0


@needs_ray
def test_sweep_on_two_ray_workers_equals_sequential(setup, tiny_lm, ranked, sequential, pool, tmp_path):
    workers = []
    fanned = run_sweep(tiny_lm, tiny_saes(), ranked, setup.sweep, runner=pool.runner(setup.sweep),
                       points_dir=tmp_path / "points", on_point=lambda e: workers.append(e.worker))
    assert set(workers) == {0, 1}  # both workers measured points
    assert_same_numbers(sequential, fanned)
    assert len(list((tmp_path / "points").glob("*.json"))) == len(workers)


@needs_ray
def test_killed_worker_does_not_change_the_result(setup, tiny_lm, ranked, sequential, ray_cluster, pool):
    killed = []

    def kill_after_first(event):
        if not killed:
            killed.append(pool.actors[event.worker])
            ray_cluster.kill(killed[0])

    result = run_sweep(tiny_lm, tiny_saes(), ranked, setup.sweep, runner=pool.runner(setup.sweep),
                       on_point=kill_after_first)
    assert killed and all(a is not killed[0] for a in pool.actors)  # replaced by a fresh actor
    assert_same_numbers(sequential, result)


@needs_ray
def test_selection_statistics_on_ray_workers_equal_single_pass(setup, tiny_lm, ranked, pool):
    from unlearn_core.experiments.sweep_ray import suggest_on_ray

    saes = tiny_saes()
    sequences = stats_sequences(tiny_lm, RETAIN * 3, 3000, 40)
    _assert_same_stats(compute_latent_stats(tiny_lm, saes, sequences), pool.latent_stats(saes, sequences, 4096))
    on_ray = suggest_on_ray(tiny_lm, saes, setup.select, pool)
    assert {ref: [c.id for c in v] for ref, v in on_ray.items()} == {ref: [c.id for c in v] for ref, v in ranked.items()}


@needs_ray
def test_sweep_command_on_ray_workers_is_resumable(setup, tiny_lm, sequential, pool, tmp_path, monkeypatch, capsys):
    """``sweep --workers 2`` (the tiny model in place of the preset, the shared pool in place of a new one) writes
    the points, and a re-run reuses them."""
    from unlearn_core.cli import main, selection_cmds
    from unlearn_core.experiments import sweep_ray

    asked = []

    class SharedPool:  # the command's pool: the module's two actors (a second pool would not fit in 2 CPUs)
        def __init__(self, loader, workers, address=None):
            asked.append((loader, workers, address))

        def __enter__(self):
            return pool

        def __exit__(self, *exc):
            return None

    monkeypatch.setenv("UNLEARN_CACHE_DIR", str(setup.folder / "cache"))
    monkeypatch.setattr(selection_cmds, "_selection_setup", lambda args: (tiny_lm, tiny_saes(), _select_config(setup, args)))
    monkeypatch.setattr(selection_cmds, "_write_plots", lambda result, out_dir: None)
    monkeypatch.setattr(sweep_ray, "RayPool", SharedPool)
    argv = ["sweep", "--workers", "2", "--out-dir", str(tmp_path / "out"), *_sweep_flags(setup)]
    assert main(argv) == 0
    first = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert main(argv) == 0
    assert "reusing 9 of 9 finished points" in capsys.readouterr().err
    again = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert {k: v for k, v in first.items() if k != "seconds"} == {k: v for k, v in again.items() if k != "seconds"}
    assert_same_numbers({k: v for k, v in sequential.items() if k != "settings"},
                        {k: v for k, v in first.items() if k not in ("settings", "command")})
    # select --workers: the statistics in shards on the workers, the same list as a single pass
    from unlearn_core.forget_set import load_feature_list

    assert main(["select", "--workers", "2", "--out", str(tmp_path / "fl.json")]) == 0
    listed = {e.sae: [lat.id for lat in e.latents] for e in load_feature_list(tmp_path / "fl.json").saes}
    single = suggest(tiny_lm, tiny_saes(), setup.select)
    assert listed == {ref: [c.id for c in v] for ref, v in single.items() if v}
    assert main(["select", "--ray-address", "auto", "--out", str(tmp_path / "fl2.json")]) == 2
    spec = asked[0][0]
    assert asked[0][1:] == (2, None) and spec.preset == tiny_lm.preset.name and spec.device == "cpu" and not spec.wants_gpu
    assert spec.sae_refs == tuple(s.ref for s in tiny_saes())


def _select_config(setup: Setup, _args) -> SelectConfig:
    return setup.select


def _sweep_flags(setup: Setup) -> list[str]:
    c = setup.sweep
    return ["--ns", "2", "6", "--interventions", "zero", "clamp:3x", "--layer-sets", "all", "2",
            "--forget-texts", c.forget_texts, "--retain-texts", c.retain_texts, "--forget-probes", c.forget_probes,
            "--retain-probes", c.retain_probes, "--forget-quiz", c.forget_quiz, "--retain-quiz", c.retain_quiz,
            "--adjacent-quiz", "", "--max-forget-texts", "4", "--max-retain-texts", "4", "--max-seq-len", "32",
            "--retain-ppl-budget", "10", "--retain-probe-budget", "1"]


def test_ray_is_not_imported_without_workers(setup, tmp_path):
    """The library, the CLI and the app's modules import no Ray, and a sweep without --workers runs without it."""
    script = f"""
import sys
import unlearn_core.cli, unlearn_core.experiments.sweep, unlearn_core.experiments.sweep_ray
import app_support.shell, app_support.sweep_panel, app_support.suggest_panel
assert 'ray' not in sys.modules, 'imported ray'
sys.path.insert(0, {str(TESTS)!r})
import test_sweep_scale as t
from unlearn_core.cli import main, selection_cmds
setup = t.make_setup(__import__('pathlib').Path({str(setup.folder)!r}))
selection_cmds._selection_setup = lambda args: (t.make_tiny_model(), t.tiny_saes(), setup.select)
selection_cmds._write_plots = lambda result, out_dir: None
out = {str(tmp_path / 'out')!r}
for _ in range(2):
    assert main(['sweep', '--out-dir', out, *t._sweep_flags(setup)]) == 0
assert 'ray' not in sys.modules, 'a sweep without --workers imported ray'
"""
    env = {**os.environ, "UNLEARN_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "reusing 9 of 9 finished points" in done.stderr
    assert (tmp_path / "out" / "sweep.json").is_file() and len(list((tmp_path / "out" / "points").glob("*.json"))) >= 9
