"""The library under load and faults: one model shared by many sessions, Neuronpedia misbehaving, untrusted caches.

1. the model lock is fair (FIFO), re-entrant, and taken per batch by every scoring loop;
2. long scoring jobs stop within one batch when asked (``should_stop`` / :func:`stoppable`);
3. Neuronpedia: a process-wide circuit breaker per site, a deadline per batch, a response-size cap, per-site cache;
4. the SAE allow-list of a preset;
5. SAEs with per-call normalisation state are refused at load;
6. caches: stats files validated (never unpickled), unique temporary names, dashboards built once under a file
   lock, stale temporary files removed.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path

import pytest
import torch
from standins.fake_neuronpedia import FakeNeuronpedia, Reply, feature
from tiny_models import tiny_sae

from unlearn_core.data.probes import Probe, ProbeSet
from unlearn_core.data.quizzes import Quiz, QuizItem
from unlearn_core.errors import InputError, ModelUnavailableError
from unlearn_core.models.presets import REPO_ROOT
from unlearn_core.saes.neuronpedia import BASE_URL_ENV, NeuronpediaClient
from unlearn_core.scoring.activations import collect_activations, iter_activations
from unlearn_core.scoring.batching import score_tokens
from unlearn_core.scoring.choices import choice_scores
from unlearn_core.scoring.perplexity import iter_perplexity, perplexity, perplexity_one_at_a_time
from unlearn_core.scoring.probes import probe_scores

HOOK = "blocks.0.hook_resid_post"
NP_ID = "gemma-3-270m/12-gemmascope-2-res-16k"


def _sequences(n: int, length: int = 30, offset: int = 0) -> list[list[int]]:
    return [[1, *((5 + offset + i + j) % 200 + 3 for j in range(length - 1))] for i in range(n)]


def _texts(n: int, length: int = 29) -> list[str]:
    return [("abcdefghij"[i % 10] * length)[:length] for i in range(n)]


def _recorder(log: list[str], name: str):
    def hook(act: torch.Tensor, hook: object) -> None:  # noqa: ARG001 - TransformerLens signature
        log.append(name)

    return hook


# 1 ---------------------------------------------------------------------------------------------- the model lock
class SpyLock:
    """Wraps a lock and records which thread asked for it, so a test can wait until a thread is queued."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.asked: list[str] = []

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        self.asked.append(threading.current_thread().name)
        return self.inner.acquire(blocking, timeout)

    def release(self) -> None:
        self.inner.release()

    def __enter__(self) -> SpyLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _wait_until_queued(spy: SpyLock, name: str, n_waiting: int = 1) -> None:
    deadline = time.monotonic() + 10
    while name not in spy.asked:
        assert time.monotonic() < deadline, f"{name} never asked for the lock"
        time.sleep(0.005)
    waiting = getattr(spy.inner, "n_waiting", None)
    if waiting is None:  # a lock that cannot say (the old RLock): give the thread time to block
        time.sleep(0.2)
        return
    while spy.inner.n_waiting < n_waiting:
        assert time.monotonic() < deadline, f"{name} never queued for the lock"
        time.sleep(0.005)


LONG_JOBS = {
    "score_tokens": lambda lm, hooks, **kw: score_tokens(lm, _sequences(12), hooks, batch_tokens=30, **kw),
    "perplexity": lambda lm, hooks, **kw: perplexity(lm, _texts(12), hooks, batch_tokens=30, **kw),
    "iter_perplexity": lambda lm, hooks, **kw: list(iter_perplexity(lm, _texts(12), hooks, batch_tokens=30, **kw)),
    "perplexity_one_at_a_time": lambda lm, hooks, **kw: perplexity_one_at_a_time(lm, _texts(12), hooks, **kw),
    "iter_activations": lambda lm, hooks, **kw: list(
        iter_activations(lm, _sequences(12), ["blocks.1.hook_resid_post"], batch_tokens=30, extra_hooks=hooks, **kw)
    ),
    "collect_activations": lambda lm, hooks, **kw: collect_activations(
        lm, _sequences(12), ["blocks.1.hook_resid_post"], batch_tokens=30, extra_hooks=hooks, **kw
    ),
}


@pytest.mark.parametrize("job", sorted(LONG_JOBS))
def test_a_waiting_session_gets_the_model_within_one_batch(tiny_lm, job):
    """Session A runs a 12-batch job; session B asks for the model during A's first batch and must run next."""
    spy = SpyLock(type(tiny_lm.lock)())
    lm = dataclasses.replace(tiny_lm, lock=spy)
    order: list[str] = []
    b_thread = threading.Thread(
        target=lambda: score_tokens(lm, _sequences(1, 10), [(HOOK, _recorder(order, "B"))]), name="session-B"
    )

    def a_hook(act: torch.Tensor, hook: object) -> None:
        order.append("A")
        if order.count("A") == 1:  # A holds the model now: B arrives and waits
            b_thread.start()
            _wait_until_queued(spy, "session-B")

    LONG_JOBS[job](lm, [(HOOK, a_hook)])
    b_thread.join(10)
    assert order.count("A") == 12 and order.count("B") == 1
    assert order.index("B") <= 2, f"B waited for {order.index('B')} of A's batches: {''.join(order)}"


def test_fair_lock_serves_waiters_in_arrival_order():
    from unlearn_core.models.loading import FairRLock

    lock = FairRLock()
    spy = SpyLock(lock)
    order: list[str] = []

    def worker() -> None:
        with spy:
            order.append(threading.current_thread().name)
            time.sleep(0.01)

    spy.acquire()
    threads = [threading.Thread(target=worker, name=f"w{i}") for i in range(3)]
    for i, t in enumerate(threads):
        t.start()
        _wait_until_queued(spy, t.name, n_waiting=i + 1)
    spy.release()
    # the releasing thread asks again at once: it queues behind the three, it cannot barge in
    with spy:
        order.append("main")
    for t in threads:
        t.join(5)
    assert order == ["w0", "w1", "w2", "main"]
    assert lock.n_waiting == 0 and not lock.locked()


def test_fair_lock_is_reentrant_and_times_out_cleanly():
    from unlearn_core.models.loading import FairRLock

    lock = FairRLock()
    got: list[bool] = []

    def try_once(timeout: float) -> None:
        ok = lock.acquire(timeout=timeout)
        got.append(ok)
        if ok:
            lock.release()

    with lock:
        with lock:  # re-entrant for the owner
            assert lock.acquire(blocking=False)
            lock.release()
        t = threading.Thread(target=try_once, args=(0.05,))
        t.start()
        t.join(5)
        assert got == [False]  # still held once: the other thread timed out ...
        assert lock.n_waiting == 0  # ... and left the queue
    t = threading.Thread(target=try_once, args=(1.0,))
    t.start()
    t.join(5)
    assert got == [False, True]
    with pytest.raises(RuntimeError):
        lock.release()  # not held by this thread


def test_loaded_model_uses_the_fair_lock(tiny_lm):
    from unlearn_core.models.loading import FairRLock

    assert isinstance(tiny_lm.lock, FairRLock)


# 2 --------------------------------------------------------------------------------------------- stopping jobs
@pytest.mark.parametrize("job", sorted(LONG_JOBS))
def test_should_stop_ends_a_long_job_within_one_batch(tiny_lm, job):
    from unlearn_core.errors import Stopped, UnlearnError

    forwards: list[str] = []
    with pytest.raises(Stopped) as info:
        LONG_JOBS[job](tiny_lm, [(HOOK, _recorder(forwards, "x"))], should_stop=lambda: len(forwards) >= 1)
    assert len(forwards) == 1
    assert isinstance(info.value, UnlearnError)


def test_stoppable_scope_stops_probe_and_quiz_scoring(tiny_lm):
    from unlearn_core.errors import Stopped
    from unlearn_core.scoring.batching import stoppable

    probes = ProbeSet("p", tuple(Probe(f"prompt number {i} is", (f" answer {i}",), "cloze") for i in range(10)), "test")
    quiz = Quiz("q", tuple(QuizItem(f"question {i}?", ("yes", "no", "maybe"), 0) for i in range(10)), "test")
    for run in (lambda hooks: probe_scores(tiny_lm, probes, hooks, batch_tokens=30),
                lambda hooks: choice_scores(tiny_lm, quiz, hooks, batch_tokens=30)):
        forwards: list[str] = []
        hooks = [(HOOK, _recorder(forwards, "x"))]
        with stoppable(lambda f=forwards: len(f) >= 2), pytest.raises(Stopped):
            run(hooks)
        assert len(forwards) == 2
        run(hooks)  # outside the scope nothing stops it


# 3 ------------------------------------------------------------------------------------------------- Neuronpedia
def _np_path(index: int) -> str:
    return f"/api/feature/{NP_ID}/{index}"


@pytest.fixture(autouse=True)
def _fresh_breakers(monkeypatch):
    monkeypatch.delenv(BASE_URL_ENV, raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    try:
        from unlearn_core.saes.neuronpedia import reset_breakers
    except ImportError:
        yield
        return
    reset_breakers()
    yield
    reset_breakers()


@pytest.fixture()
def server():
    with FakeNeuronpedia() as stub:
        yield stub


def test_429_opens_the_breaker_and_later_lookups_fail_fast(server, tmp_path):
    server.script(_np_path(1), Reply(429, {"message": "slow down"}, {"Retry-After": "30"}))
    client = NeuronpediaClient(base_url=server.url, cache_dir=tmp_path / "a", backoff=0.01)
    start = time.monotonic()
    first = client.explanation(NP_ID, 1)
    assert time.monotonic() - start < 2.0  # a Retry-After longer than one wait is not slept through
    assert first.error is not None and "429" in first.error
    start = time.monotonic()
    batch = client.explanations(NP_ID, range(2, 102))
    other_session = NeuronpediaClient(base_url=server.url, cache_dir=tmp_path / "b")
    single = other_session.explanation(NP_ID, 7)
    assert time.monotonic() - start < 0.5
    assert server.count() == 1
    for got in [*batch.values(), single]:
        assert "rate-limited" in got.text() and "retrying after" in got.text(), got.text()
    assert "retrying after 30 s" in single.text() or "retrying after 29 s" in single.text()


def test_breaker_opens_after_repeated_server_errors_and_one_success_closes_it(server, tmp_path):
    server.script(_np_path(1), Reply(503))
    server.script(_np_path(2), Reply(503))
    server.script(_np_path(3), feature("fine"))
    client = NeuronpediaClient(base_url=server.url, cache_dir=tmp_path, retries=0)
    assert client.explanation(NP_ID, 1).error == "server error (HTTP 503)"
    assert client.explanation(NP_ID, 3).ok  # one failed latent is no verdict on the site
    client.explanation(NP_ID, 1)
    client.explanation(NP_ID, 2)  # two in a row are
    blocked = client.explanation(NP_ID, 4)
    assert "unavailable" in blocked.text() and "retrying after 30 s" in blocked.text()
    assert server.count(_np_path(4)) == 0

    server.script(_np_path(5), Reply(503, headers={"Retry-After": "1"}), feature("back"))
    from unlearn_core.saes.neuronpedia import reset_breakers

    reset_breakers()
    assert client.explanation(NP_ID, 5).error == "server error (HTTP 503)"  # its Retry-After opens it at once
    assert "retrying after 1 s" in client.explanation(NP_ID, 6).text() and server.count(_np_path(6)) == 0
    time.sleep(1.1)
    assert client.explanation(NP_ID, 5).description == "back"  # the wait is over, and a success closes it
    assert not client.explanation(NP_ID, 6).ok and server.count(_np_path(6)) == 1  # 404, but asked


def test_breaker_is_per_site(tmp_path):
    with FakeNeuronpedia() as sick, FakeNeuronpedia() as healthy:
        sick.script(_np_path(1), Reply(429, headers={"Retry-After": "30"}))
        healthy.script(_np_path(1), feature("healthy"))
        assert not NeuronpediaClient(base_url=sick.url, cache_dir=tmp_path, retries=0).explanation(NP_ID, 1).ok
        assert NeuronpediaClient(base_url=healthy.url, cache_dir=tmp_path).explanation(NP_ID, 1).ok


def test_unreachable_site_opens_the_breaker(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    client = NeuronpediaClient(base_url=url, cache_dir=tmp_path, retries=1, backoff=0.01)
    assert "unreachable" in client.explanation(NP_ID, 1).text()
    start = time.monotonic()
    got = client.explanation(NP_ID, 2).text()
    assert time.monotonic() - start < 0.05
    assert "unreachable" in got and "retrying after" in got


def test_batch_deadline(tmp_path):
    with FakeNeuronpedia(fallback=lambda p: Reply(body=feature("slow").body, delay=0.4)) as stub:
        client = NeuronpediaClient(base_url=stub.url, cache_dir=tmp_path, max_workers=2)
        start = time.monotonic()
        got = client.explanations(NP_ID, range(20), deadline=1.0)
        elapsed = time.monotonic() - start
    assert elapsed < 1.7, elapsed
    assert list(got) == list(range(20))
    late = [e for e in got.values() if not e.ok]
    assert 12 <= len(late) <= 18
    assert all("deadline" in e.text() for e in late)


def test_response_size_cap(server, tmp_path):
    big = {"explanations": [{"description": "big"}], "activations": ["y" * 1000] * 2000}  # about 2 MB
    server.script(_np_path(1), Reply(body=big))
    server.script(_np_path(2), Reply(body=big, send_length=False))  # no Content-Length: caught while reading
    server.script(_np_path(3), feature("small"))
    client = NeuronpediaClient(base_url=server.url, cache_dir=tmp_path, max_response_bytes=1_000_000)
    for index in (1, 2):
        got = client.explanation(NP_ID, index)
        assert got.error is not None and "too large" in got.error, got.error
        assert server.count(_np_path(index)) == 1
    assert client.explanation(NP_ID, 3).description == "small"  # not a verdict on the site


def test_disk_cache_is_keyed_by_site(tmp_path):
    with FakeNeuronpedia() as a, FakeNeuronpedia() as b:
        a.script(_np_path(1), feature("from a"))
        b.script(_np_path(1), feature("from b"))
        assert NeuronpediaClient(base_url=a.url, cache_dir=tmp_path).explanation(NP_ID, 1).description == "from a"
        assert NeuronpediaClient(base_url=b.url, cache_dir=tmp_path).explanation(NP_ID, 1).description == "from b"
        assert NeuronpediaClient(base_url=a.url, cache_dir=tmp_path).explanation(NP_ID, 1).description == "from a"
        assert a.count() == 1 and b.count() == 1


# 4 -------------------------------------------------------------------------------------------------- allow-list
def test_allowed_sae_refs_of_a_preset():
    from unlearn_core.saes.allow import allowed_sae_refs

    refs = allowed_sae_refs("gemma-3-270m-offline")
    assert "gemma-scope-2-270m-pt-res/layer_12_width_16k_l0_medium" in refs
    assert "gemma-scope-2-270m-pt-res-all/layer_3_width_16k_l0_small" in refs
    assert "saes/gemma-3-270m/layer_12_width_4k" in refs
    assert not any(r.startswith("gemma-scope-2b") for r in refs)
    assert "gemma-scope-2b-pt-res-canonical/layer_0/width_16k/canonical" in allowed_sae_refs("gemma-2-2b")


def test_check_sae_allowed(tmp_path):
    from unlearn_core.saes.allow import check_sae_allowed

    check_sae_allowed("saes/gemma-3-270m/layer_12_width_4k", "gemma-3-270m-offline")
    check_sae_allowed(str(REPO_ROOT / "saes/gemma-3-270m/layer_12_width_4k"), "gemma-3-270m-offline")
    check_sae_allowed("gemma-scope-2-270m-pt-res/layer_5_width_16k_l0_medium", "gemma-3-270m")
    with pytest.raises(InputError, match=r"SAE .*1m.* is not one of this preset's SAE families \(.*gemma-scope-2-16k"
                                         r".*\); the app loads only those; use the CLI for other SAEs"):
        check_sae_allowed("gemma-scope-2-270m-pt-res/layer_12_width_1m_l0_medium", "gemma-3-270m-offline")
    (tmp_path / "cfg.json").write_text("{}")
    with pytest.raises(InputError, match="not one of this preset's SAE families"):
        check_sae_allowed(str(tmp_path), "gemma-3-270m-offline")
    check_sae_allowed(str(tmp_path), "gemma-3-270m-offline", extra_allowed=[str(tmp_path)])


def test_sae_download_size(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from unlearn_core.saes.allow import sae_download_size

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert sae_download_size("saes/gemma-3-270m/layer_12_width_4k") == 0  # shipped: nothing to download
    ref = "gemma-scope-2-270m-pt-res/layer_12_width_16k_l0_medium"
    assert sae_download_size(ref) is None  # not cached, and offline: unknown
    assert sae_download_size("no-such-release/x") is None
    # a hub copy already in the Hugging Face cache: nothing to download either
    repo = tmp_path / "hub" / "models--google--gemma-scope-2-270m-pt"
    commit = "0" * 40
    folder = repo / "snapshots" / commit / "resid_post" / "layer_12_width_16k_l0_medium"
    folder.mkdir(parents=True)
    (repo / "blobs").mkdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name, size in (("params.safetensors", 1000), ("config.json", 10)):
        blob = repo / "blobs" / f"{name}-blob"
        blob.write_bytes(b"x" * size)
        (folder / name).symlink_to(blob)
    assert sae_download_size(ref) == 0


# 5 ---------------------------------------------------------------------------------------------- stateful SAEs
@pytest.mark.parametrize("norm", ["layer_norm", "constant_norm_rescale"])
def test_saes_with_per_call_state_are_refused_at_load(tmp_path, norm):
    from sae_lens import StandardSAE, StandardSAEConfig

    from unlearn_core.saes.loading import load_sae

    cfg = StandardSAEConfig(d_in=8, d_sae=16, normalize_activations=norm)
    cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    StandardSAE(cfg).save_model(tmp_path / "sae")
    with pytest.raises(ModelUnavailableError, match=f"normalize_activations={norm!r}.*per-call state"):
        load_sae(str(tmp_path / "sae"))
    cfg.normalize_activations = "none"
    StandardSAE(cfg).save_model(tmp_path / "plain")
    assert load_sae(str(tmp_path / "plain")).width == 16


# 6 ----------------------------------------------------------------------------------------------------- caches
def _stats_setup(tiny_lm, tmp_path):
    from unlearn_core.selection.stats import cached_latent_stats

    sae = tiny_sae(layer=1, seed=3)
    seqs = _sequences(3, 20)
    first = cached_latent_stats(tiny_lm, [sae], seqs, directory=tmp_path)
    (path,) = tmp_path.glob("*.pt")
    return sae, seqs, first[sae.ref], path


@pytest.mark.parametrize("damage", ["short act_sum", "float fire_count", "missing key", "2-d act_max", "extra key"])
def test_stats_cache_with_wrong_shapes_or_dtypes_is_deleted_and_rebuilt(tiny_lm, tmp_path, monkeypatch, damage):
    import unlearn_core.selection.stats as stats

    sae, seqs, good, path = _stats_setup(tiny_lm, tmp_path)
    data = torch.load(path, weights_only=True)
    if damage == "short act_sum":
        data["act_sum"] = data["act_sum"][:-1]
    elif damage == "float fire_count":
        data["fire_count"] = data["fire_count"].float()
    elif damage == "missing key":
        del data["text_count"]
    elif damage == "2-d act_max":
        data["act_max"] = data["act_max"][None]
    else:
        data["surprise"] = torch.zeros(1)
    torch.save(data, path)
    calls = []
    compute = stats.compute_latent_stats
    monkeypatch.setattr(stats, "compute_latent_stats", lambda *a, **k: calls.append(1) or compute(*a, **k))
    again = stats.cached_latent_stats(tiny_lm, [sae], seqs, directory=tmp_path)[sae.ref]
    assert calls == [1]
    assert torch.equal(again.act_sum, good.act_sum) and torch.equal(again.fire_count, good.fire_count)
    assert set(torch.load(path, weights_only=True)) == {"n_tokens", "n_texts", *good.tensors()}  # rewritten whole


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_stats_cache_pickle_payload_is_not_executed(tiny_lm, tmp_path):
    from unlearn_core.selection.stats import cached_latent_stats

    sae, seqs, good, path = _stats_setup(tiny_lm, tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"n_tokens": _Payload(marker), **good.tensors()}, path)
    again = cached_latent_stats(tiny_lm, [sae], seqs, directory=tmp_path)[sae.ref]
    assert not marker.exists()
    assert torch.equal(again.fire_count, good.fire_count)
    torch.load(path, weights_only=True)  # replaced by a clean file


def test_stats_cache_writes_use_unique_temporary_names(tiny_lm, tmp_path, monkeypatch):
    import unlearn_core.selection.stats as stats

    sae, seqs, good, path = _stats_setup(tiny_lm, tmp_path)
    targets: list[Path] = []
    save = torch.save
    monkeypatch.setattr(stats.torch, "save", lambda obj, f, *a, **k: targets.append(Path(f)) or save(obj, f, *a, **k))
    stats._write_cache(path, good)
    stats._write_cache(path, good)
    assert len(targets) == 2 and targets[0] != targets[1]
    assert all(t.parent == path.parent and t.name.startswith(".") for t in targets)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_dashboards_are_built_once_by_two_concurrent_builders(tiny_lm, tmp_path, monkeypatch):
    from unlearn_core.explain import dashboard_cache

    monkeypatch.setenv("UNLEARN_CACHE_DIR", str(tmp_path))
    loaded = tiny_sae(layer=2, d_sae=32, seed=5)
    texts = ["The boy who lived.", "A plain sentence about rivers."]
    compute = dashboard_cache.compute_dashboards_from_texts
    calls = []

    def slow_compute(*args, **kwargs):
        calls.append(1)
        time.sleep(0.3)
        return compute(*args, **kwargs)

    monkeypatch.setattr(dashboard_cache, "compute_dashboards_from_texts", slow_compute)
    boards = []
    threads = [threading.Thread(target=lambda: boards.append(
        dashboard_cache.dashboards_for(tiny_lm, loaded, texts=texts, corpus="two", max_tokens=200))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(boards) == 2 and calls == [1]
    assert boards[0].latent(0) == boards[1].latent(0)


def test_stale_temporary_files_are_removed_at_the_next_start(tiny_lm, tmp_path, monkeypatch):
    from unlearn_core.explain import dashboard_cache
    from unlearn_core.models import offline
    from unlearn_core.selection.stats import cached_latent_stats

    monkeypatch.setenv("UNLEARN_CACHE_DIR", str(tmp_path))
    old = time.time() - 2 * 3600
    made: dict[str, Path] = {}
    for key, rel, is_dir in (("convert", ".convert-abc123", True), ("convert-new", ".convert-def456", True),
                             ("tl", ".gemma-3-270m-offline-fp32-transformer-lens-x1y2", True),
                             ("stats", "latent-stats/.k.pt.1a2b3c.tmp", False),
                             ("dash", "dashboards/.k.npz.q1w2e3.tmp", False),
                             ("np", "neuronpedia/.x.json.a1b2c3.tmp", False),
                             ("keep", "latent-stats/keep.pt", False)):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.mkdir() if is_dir else p.write_bytes(b"x")
        if key != "convert-new":
            os.utime(p, (old, old))
        made[key] = p

    monkeypatch.setattr(offline, "checkpoint_is_complete", lambda folder: True)  # a start with a whole checkpoint
    offline.convert_checkpoint(tmp_path / offline.OFFLINE_CHECKPOINT_NAME)
    offline.remove_stale_temp_files(tmp_path, (".gemma-3-270m-offline-fp32-transformer-lens-*",))
    cached_latent_stats(tiny_lm, [tiny_sae()], _sequences(1, 10), directory=tmp_path / "latent-stats")
    dashboard_cache.find_dashboards(tiny_sae(), max_tokens=10)
    NeuronpediaClient(base_url="http://127.0.0.1:9", cache_dir=tmp_path / "neuronpedia")
    gone = {k for k, p in made.items() if not p.exists()}
    assert gone == {"convert", "tl", "stats", "dash", "np"}
