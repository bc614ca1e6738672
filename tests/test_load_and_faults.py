"""The shared app's engine under load and under faults, on the real offline model (loopback only, bounded in time).

* Load: one thread runs a long Compare-like job (perplexity on 40 texts, a probe set, generations of the study's 7
  prompts x 40 tokens) while three others run Explore as the page does (the study's 7 prompts x 3 layers), one after
  another during the job. The model's fair lock is taken per batch or decode step, so each Explore waits for at most
  the batch that holds the model when it asks (plus CPU shared with the job's work outside the lock): it must finish
  within its solo time + 2 x the longest single batch/step of the job, both measured here and printed.
* Faults: processes killed with SIGKILL in the middle of saving a feature list, of writing the statistics and
  dashboards caches, and of the first conversion of the offline model (a fresh ``UNLEARN_CACHE_DIR``); then a fresh
  start must find the list whole (the old or the new one), trust no damaged cache, and ``streamlit run app.py`` must
  answer ``/_stcore/health``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from unlearn_core.models.loading import LoadedModel

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration
LAYERS = (5, 9, 12)


# ------------------------------------------------------------------------------------------------ load


@dataclass
class HoldLog:
    """Wraps a model's lock and records, per thread, how long each outermost hold lasted."""

    inner: object
    holds: dict[str, list[float]] = field(default_factory=dict)
    phase: str = ""
    """What the long job is doing (set by it): its holds are also recorded per phase."""
    by_phase: dict[str, float] = field(default_factory=dict)
    _local: threading.local = field(default_factory=threading.local)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        got = self.inner.acquire(blocking, timeout)  # type: ignore[attr-defined]
        if got:
            depth = getattr(self._local, "depth", 0)
            if depth == 0:
                self._local.since = time.perf_counter()
            self._local.depth = depth + 1
        return got

    def release(self) -> None:
        self._local.depth -= 1
        if self._local.depth == 0:
            held = time.perf_counter() - self._local.since
            name = threading.current_thread().name
            self.holds.setdefault(name, []).append(held)
            if name == "compare-job":
                self.by_phase[self.phase] = max(held, self.by_phase.get(self.phase, 0.0))
        self.inner.release()  # type: ignore[attr-defined]

    __enter__ = acquire

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def _long_job(lm: LoadedModel, conditions, log: HoldLog, done: threading.Event, errors: list[BaseException]) -> None:
    from unlearn_core.data.quizzes import knowledge_set_names, load_knowledge_probes
    from unlearn_core.data.texts import load_texts
    from unlearn_core.experiments.compare import knowledge_cell, perplexity_cell
    from unlearn_core.explain.explore import study_prompts
    from unlearn_core.scoring.generation import generate_batch

    try:
        texts = load_texts("hp-fanwiki", 40)
        log.phase = "perplexity (1024-token batches, as the page)"
        for cond in conditions:
            for _ in perplexity_cell(lm, cond, texts, max_seq_len=128, batch_tokens=1024):
                pass
        probes = load_knowledge_probes(knowledge_set_names()[0], 40)
        log.phase = "probe set"
        for cond in conditions:
            knowledge_cell(lm, cond, probes, batch_tokens=1024)
        log.phase = "generation (7 prompts x 40 tokens)"
        generate_batch(lm, study_prompts(), conditions, max_new_tokens=40)
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)
    finally:
        done.set()


def test_explore_is_not_starved_by_a_long_compare_job(real_lm):
    from unlearn_core.ablation.interventions import Intervention
    from unlearn_core.experiments.compare import comparison_conditions
    from unlearn_core.explain.explore import explore, prepare_prompts, study_prompts
    from unlearn_core.forget_set import load_feature_list
    from unlearn_core.forget_set.selections import load_selections
    from unlearn_core.models.presets import get_preset
    from unlearn_core.saes.loading import load_sae

    lm = real_lm
    family = get_preset("gemma-3-270m-offline").family()
    saes = [load_sae(family.ref(layer)) for layer in LAYERS]
    prepared = prepare_prompts(lm, study_prompts())
    fl = load_feature_list(REPO / "feature_lists" / "example_gemma-3-270m-offline_harry-potter.json")
    selections = load_selections(fl)
    conditions = comparison_conditions(selections, Intervention(), per_layer=False, controls=())  # baseline, ablated

    def solo_runs() -> list[float]:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            explore(lm, saes, prepared)
            times.append(time.perf_counter() - start)
        return times

    explore(lm, saes, prepared)  # warm-up
    solo_times = solo_runs()

    log = HoldLog(lm.lock)
    lm.lock = log  # type: ignore[assignment]
    done, job_errors = threading.Event(), []
    waits: list[tuple[float, bool]] = []
    try:
        job = threading.Thread(target=_long_job, args=(lm, conditions, log, done, job_errors), name="compare-job")
        job.start()
        time.sleep(1.0)  # the job is under way, taking the model batch after batch

        def one_explore() -> None:
            start = time.perf_counter()
            explore(lm, saes, prepared)
            waits.append((time.perf_counter() - start, not done.is_set()))

        for k in range(3):  # three sessions, one after another during the job, each in its own thread
            session = threading.Thread(target=one_explore, name=f"explore-{k}")
            session.start()
            session.join(timeout=120)
            time.sleep(0.5)
        done.wait(timeout=180)
        job.join(timeout=10)
    finally:
        lm.lock = log.inner  # type: ignore[assignment]
    # solo measured before and after the load phase; the smaller median is the warm solo time (the first runs after
    # the model is loaded can be much slower while its weights are paged in)
    after = solo_runs()
    solo = min(statistics.median(solo_times), statistics.median(after))
    solo_times += after
    assert not job_errors, job_errors
    job_holds = log.holds.get("compare-job", [])
    longest = max(job_holds)
    bound = solo + 2 * longest
    print(f"\nExplore solo {solo:.2f} s (runs {', '.join(f'{t:.2f}' for t in solo_times)}); longest batch/step of the "
          f"Compare job {longest:.2f} s over {len(job_holds)} holds (median {statistics.median(job_holds):.3f} s); "
          f"Explore under load {', '.join(f'{w:.2f}' for w, _ in waits)} s; bound {bound:.2f} s; longest hold per "
          f"phase: {', '.join(f'{k} {v:.2f} s' for k, v in log.by_phase.items())}")
    assert len(waits) == 3 and all(during for _, during in waits), "an Explore ran after the job had finished"
    for wall, _ in waits:
        assert wall <= bound, f"Explore took {wall:.2f} s under load; solo {solo:.2f} s + 2 x {longest:.2f} s"


# ------------------------------------------------------------------------------------------------ faults


def _child(code: str, env: dict[str, str] | None = None, args: tuple[object, ...] = ()) -> subprocess.Popen:
    """A Python process running ``code`` in the checkout, in its own process group (killed whole)."""
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=REPO, env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float, then: float = 0.0) -> None:
    """SIGKILL ``proc``'s whole process group ``then`` seconds after ``ready()`` first holds."""
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"the child ended before the kill: {proc.stderr.read()[-2000:]}")
        if time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError("the child never reached the point to kill it at")
        time.sleep(0.001)
    if then:
        time.sleep(then)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


SAVE_LOOP = """
import sys
from pathlib import Path
from unlearn_core.forget_set import load_feature_list, save_feature_list
path, old, new = Path(sys.argv[1]), load_feature_list(sys.argv[2]), load_feature_list(sys.argv[3])
Path(sys.argv[1] + ".started").touch()
while True:
    for fl in (new, old):
        save_feature_list(fl, path, overwrite=True, touch=False)
"""


def _writing(folder: Path, name: str) -> Callable[[], bool]:
    """True while a temporary file of an atomic write of ``name`` exists in ``folder`` (the write is under way)."""
    def check() -> bool:
        return any(f.startswith(f".{name}.") and f.endswith(".tmp") for f in os.listdir(folder))
    return check


def _big_list(path: Path, name: str, n_latents: int) -> None:
    from unlearn_core.forget_set import new_feature_list, save_feature_list
    from unlearn_core.forget_set.editing import add_latents

    fl = new_feature_list(name, "google/gemma-3-270m", "a big list, to make each save slow")
    family_ref = "saes/gemma-3-270m/layer_{}_width_4k"
    for layer in (5, 9, 12, 15):
        add_latents(fl, sae=family_ref.format(layer), hook_name=f"blocks.{layer}.hook_resid_post", layer=layer,
                    neuronpedia=None, ids=range(n_latents), notes={i: f"note {i} " + "x" * 1500 for i in range(n_latents)},
                    width=4096)
    save_feature_list(fl, path, overwrite=True)


def test_a_save_killed_midway_leaves_the_old_or_the_new_list(tmp_path):
    from unlearn_core.forget_set import content_signature, load_feature_list

    old_path, new_path, target = tmp_path / "old.json", tmp_path / "new.json", tmp_path / "lists" / "mine.json"
    target.parent.mkdir()
    _big_list(old_path, "old version", 4096)
    _big_list(new_path, "new version", 4000)
    target.write_bytes(old_path.read_bytes())
    signatures = {content_signature(load_feature_list(p)) for p in (old_path, new_path)}
    started = Path(str(target) + ".started")
    # kill in the middle of a write (its temporary file is there) and at a few moments of the save cycle
    for kill_at in ("writing", "writing", 0.13, 0.47):
        proc = _child(SAVE_LOOP, args=(target, old_path, new_path))
        if kill_at == "writing":
            _kill_when(proc, lambda: started.exists() and _writing(target.parent, target.name)(), 90)
        else:
            _kill_when(proc, started.exists, 90, then=float(kill_at))
        started.unlink()
        text = target.read_text(encoding="utf-8")
        json.loads(text)  # valid JSON, whole
        assert content_signature(load_feature_list(target)) in signatures
    leftovers = [p.name for p in target.parent.iterdir() if p.name != target.name]
    print(f"\ntemporary files left by the kills (ignored by the Open menu): {leftovers}")
    assert leftovers, "no kill landed during a write: the test did not test a torn write"
    from unlearn_core.forget_set import list_feature_lists

    assert list_feature_lists(target.parent) == [target]


CACHE_LOOP = """
import sys, torch
from pathlib import Path
from unlearn_core.explain.dashboards import Dashboards
from unlearn_core.selection.stats import _CACHE_DTYPES, LatentStats, _write_cache
stats_path, boards_path, shipped = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
width = 1 << 21  # 2M latents: a slow write
stats = LatentStats(sae_ref="x", hook_name="blocks.5.hook_resid_post", n_tokens=10, n_texts=1,
                    **{name: torch.ones(width, dtype=dtype) for name, dtype in _CACHE_DTYPES.items()})
boards = Dashboards.load(shipped)
Path(sys.argv[1] + ".started").touch()
while True:
    _write_cache(stats_path, stats)
    boards.save(boards_path)
"""


def test_cache_writes_killed_midway_are_never_trusted(tmp_path):
    import dataclasses

    import torch

    from unlearn_core.explain.dashboard_cache import load_cached
    from unlearn_core.explain.dashboards import DASHBOARD_FILE
    from unlearn_core.selection.stats import _read_cache

    shipped = REPO / "saes" / "gemma-3-270m" / "layer_5_width_4k" / DASHBOARD_FILE
    stats_path, boards_path = tmp_path / "stats" / "k.pt", tmp_path / "dashboards" / "k.npz"
    stats_path.parent.mkdir()
    boards_path.parent.mkdir()
    fake_sae = dataclasses.make_dataclass("S", [("ref", str), ("hook_name", str), ("width", int)])
    started = Path(str(stats_path) + ".started")
    for writing in (_writing(stats_path.parent, stats_path.name), _writing(boards_path.parent, boards_path.name)):
        proc = _child(CACHE_LOOP, args=(stats_path, boards_path, shipped))
        _kill_when(proc, lambda w=writing: started.exists() and w(), 90)  # in the middle of that cache's write
        started.unlink()
        got = _read_cache(stats_path, fake_sae("x", "blocks.5.hook_resid_post", 1 << 21))
        assert got is None or bool(torch.all(got.fire_count == 1))  # whole, or not there
        board = load_cached(boards_path)
        assert board is None or board.width == 4096
    # a damaged file (cut short, as a disk-full write would leave it) is not trusted: ignored or removed, then rebuilt
    for path in (stats_path, boards_path):
        if path.exists():
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert _read_cache(stats_path, fake_sae("x", "blocks.5.hook_resid_post", 1 << 21)) is None
    assert load_cached(boards_path) is None and not boards_path.exists()


CONVERT = """
from unlearn_core.models.loading import offline_checkpoint
offline_checkpoint()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_killed_first_conversion_is_not_trusted_and_the_app_still_starts(tmp_path):
    from unlearn_core.models.offline import OFFLINE_CHECKPOINT_NAME, checkpoint_is_complete

    cache = tmp_path / "cache"
    cache.mkdir()
    proc = _child(CONVERT, {"UNLEARN_CACHE_DIR": str(cache)})
    started = time.time()
    # the conversion writes into a temporary folder next to its target; kill it once that folder fills up
    _kill_when(proc, lambda: any(p.name.startswith(".convert-") and any(p.iterdir()) for p in cache.iterdir()
                                 if p.is_dir()), 120, then=1.0)
    print(f"\nconversion killed {time.time() - started:.1f} s in; left: {sorted(p.name for p in cache.iterdir())}")
    target = cache / OFFLINE_CHECKPOINT_NAME
    assert not checkpoint_is_complete(target)  # nothing half-written is taken for a checkpoint

    # the app starts on the damaged cache (it loads the model only for a visitor), answering its health check
    lists = tmp_path / "lists"
    lists.mkdir()
    port = _free_port()
    log = (tmp_path / "streamlit.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"), "--server.headless=true",
         f"--server.port={port}", "--server.address=127.0.0.1", "--browser.gatherUsageStats=false"],
        cwd=REPO, env={**os.environ, "UNLEARN_CACHE_DIR": str(cache), "UNLEARN_FEATURE_LISTS_DIR": str(lists)},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, status = time.time() + 60, None
        while time.time() < deadline and status != 200:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                    status = r.status
            except OSError:
                time.sleep(0.5)
        assert status == 200, (tmp_path / "streamlit.log").read_text()[-2000:]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    # the next load finds no whole checkpoint (convert_checkpoint checks it before trusting it) and converts again;
    # converting here would cost ~40 s of both cores, so the test stops at "not trusted"
    assert not checkpoint_is_complete(target)
