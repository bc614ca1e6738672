"""Sweeps and latent statistics fanned out over Ray actors, on this machine or on a cluster.

Each actor (:class:`SweepWorker`) loads the model and the SAEs once, with the driver's preset, device, dtype and
SAE references (:class:`ModelSpec`), and asks Ray for a GPU when the device is CUDA. The driver keeps everything
small: it ranks the latents, builds every condition by value (:class:`~unlearn_core.experiments.sweep_store.
ConditionSpec`) and ships the measuring sets once. A worker that dies (killed, out of memory, node lost) is
replaced and its job retried on the new actor, at most :data:`MAX_RETRIES` times per job.

Ray is imported only here, and only when a pool starts: without ``--workers`` nothing imports it.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch

from unlearn_core.data.texts import load_texts
from unlearn_core.errors import InputError, ModelUnavailableError, UnlearnError
from unlearn_core.experiments.sweep import Measurer, SweepConfig, load_sweep_data
from unlearn_core.experiments.sweep_store import ConditionSpec, DoneFn, Job, SweepData
from unlearn_core.models.loading import LoadedModel, load_model
from unlearn_core.saes.loading import LoadedSae, load_sae
from unlearn_core.selection.rules import ScoredLatent, ranked_candidates
from unlearn_core.selection.stats import (
    LatentStats,
    cached_latent_stats,
    combine_latent_stats,
    shard_sequences,
    stats_sequences,
)
from unlearn_core.selection.suggest import SelectConfig

MAX_RETRIES = 2
"""How many times one job is retried on a fresh actor after the actor running it died."""
FORWARDED_ENV: tuple[str, ...] = ("HF_TOKEN",)
"""Variables of the driver's environment handed to every worker with its actor (:class:`WorkerEnv`)."""
CountFn = Callable[[str, int, int], None]
"""``progress(stage, done, total)``, counting finished jobs."""


class WorkerLostError(UnlearnError):
    """A job's worker died more often than :data:`MAX_RETRIES` allows."""


class ModelLoader(Protocol):
    """What an actor is given to load its own model and SAEs (picklable)."""

    @property
    def wants_gpu(self) -> bool: ...

    def load(self) -> tuple[LoadedModel, list[LoadedSae]]: ...


@dataclass(frozen=True)
class ModelSpec:
    """The driver's model and SAEs, by name: a preset, device, dtype and SAE references."""

    preset: str
    sae_refs: tuple[str, ...]
    device: str | None = None
    dtype: str | torch.dtype | None = None

    @classmethod
    def of(cls, lm: LoadedModel, saes: Sequence[LoadedSae]) -> ModelSpec:
        """What loads ``lm`` and ``saes`` again: the same preset, device, dtype and SAE references."""
        return cls(lm.preset.name, tuple(s.ref for s in saes), lm.device, lm.dtype)

    @property
    def wants_gpu(self) -> bool:
        return str(self.device or "").startswith("cuda")

    def load(self) -> tuple[LoadedModel, list[LoadedSae]]:
        lm = load_model(self.preset, device=self.device, dtype=self.dtype)
        return lm, [load_sae(ref, device=lm.device, dtype=lm.dtype) for ref in self.sae_refs]


@dataclass(frozen=True)
class WorkerEnv:
    """Environment variables (a token) shipped to each actor as an argument and set in its process before it loads
    the model. Not through Ray's ``runtime_env``: Ray's runtime-env agent writes ``env_vars`` to its log in plain
    text. The values never appear in a repr."""

    values: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @classmethod
    def from_environ(cls, names: Sequence[str] = FORWARDED_ENV) -> WorkerEnv:
        return cls(tuple((n, os.environ[n]) for n in names if os.environ.get(n)))

    def __repr__(self) -> str:
        return f"WorkerEnv({[name for name, _ in self.values]})"

    def apply(self) -> None:
        os.environ.update(dict(self.values))


@dataclass(frozen=True)
class MeasureSetup:
    """What every measuring job of one sweep shares (sent to the cluster once)."""

    config: SweepConfig
    data: SweepData


class SweepWorker:
    """One actor: its own model and SAEs (loaded once) measuring conditions and computing statistics."""

    def __init__(self, loader: ModelLoader, env: WorkerEnv | None = None) -> None:
        if env is not None:
            env.apply()
        self.lm, saes = loader.load()
        self.saes = {s.ref: s for s in saes}

    def ready(self) -> str:
        """The device the worker's model is on (awaiting it waits for the model to load)."""
        return self.lm.device

    def measure(self, setup: MeasureSetup, spec: ConditionSpec) -> dict[str, Any]:
        return asdict(Measurer(self.lm, setup.config, setup.data).measure(spec.build(self.saes)))

    def latent_stats(self, refs: Sequence[str], sequences: Sequence[Sequence[int]], batch_tokens: int) -> dict[str, LatentStats]:
        """Statistics of one shard (cached on the worker's disk, keyed by the shard's tokens)."""
        return cached_latent_stats(self.lm, [self.saes[r] for r in refs], sequences, batch_tokens)


class RayPool:
    """``workers`` actors, on a local Ray started (and shut down) here, or on the cluster at ``address``.

    Use it as a context manager. If Ray is already initialised (a test, a notebook), the pool uses it and leaves
    it running.
    """

    def __init__(self, loader: ModelLoader, workers: int, address: str | None = None) -> None:
        if workers < 1:
            raise InputError("--workers must be >= 1")
        self.loader, self.workers, self.address = loader, workers, address
        self.actors: list[Any] = []
        self._env = WorkerEnv.from_environ()
        self._started_ray = False
        self._cpus_per_worker = 1

    def __enter__(self) -> RayPool:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start (or join) Ray and the actors, and wait until every actor has loaded its model."""
        import ray
        from ray.exceptions import RayActorError

        if not ray.is_initialized():
            try:
                if self.address:
                    ray.init(address=self.address)
                else:  # this machine's cores shared out: each actor's torch uses its share (Ray sets OMP_NUM_THREADS)
                    cores = max(os.cpu_count() or 1, self.workers)
                    ray.init(num_cpus=cores, include_dashboard=False)
                    self._cpus_per_worker = cores // self.workers
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise InputError(f"cannot start or join Ray ({self.address or 'on this machine'}): {exc}") from None
            self._started_ray = True
        self._actor_class = ray.remote(SweepWorker)
        self.actors = [self._new_actor() for _ in range(self.workers)]
        try:
            ray.get([a.ready.remote() for a in self.actors])
        except RayActorError as exc:
            self.close()
            raise ModelUnavailableError(f"a Ray worker could not load the model or the SAEs: {exc}") from None

    def close(self) -> None:
        """Stop the actors, and Ray if this pool started it."""
        import ray

        for actor in self.actors:
            _kill(actor)
        self.actors = []
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False

    def _new_actor(self) -> Any:
        gpus = 1 if self.loader.wants_gpu else 0
        cpus = 1 if gpus else self._cpus_per_worker
        return self._actor_class.options(num_cpus=cpus, num_gpus=gpus, max_restarts=0).remote(self.loader, self._env)

    def map(self, method: str, calls: Sequence[tuple[Any, ...]], on_result: Callable[[int, Any, int], None]) -> None:
        """Run ``actor.method(*call)`` for every call, each on the next free actor; ``on_result(i, value, slot)`` as
        each finishes. A call whose actor died is retried on a fresh actor in the same slot (:data:`MAX_RETRIES`)."""
        import ray
        from ray.exceptions import NodeDiedError, OutOfMemoryError, RayActorError, WorkerCrashedError

        lost = (RayActorError, WorkerCrashedError, NodeDiedError, OutOfMemoryError)  # the worker, not the job, failed
        queue = deque((i, 0) for i in range(len(calls)))
        idle = deque(range(len(self.actors)))
        pending: dict[Any, tuple[int, int, int]] = {}
        while queue or pending:
            while queue and idle:
                (i, tries), slot = queue.popleft(), idle.popleft()
                pending[getattr(self.actors[slot], method).remote(*calls[i])] = (i, tries, slot)
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            i, tries, slot = pending.pop(ref)
            try:
                value = ray.get(ref)
            except lost as exc:
                if tries >= MAX_RETRIES:
                    raise WorkerLostError(f"gave up on job {i + 1} after {tries + 1} workers died running it: {exc}") from None
                _kill(self.actors[slot])
                self.actors[slot] = self._new_actor()
                queue.appendleft((i, tries + 1))
                idle.append(slot)
                continue
            idle.append(slot)
            on_result(i, value, slot)

    def runner(self, config: SweepConfig, data: SweepData | None = None) -> RayRunner:
        """A sweep runner measuring on this pool (``data``: the sweep's sets, loaded here if not given)."""
        import ray

        setup = MeasureSetup(config, data if data is not None else load_sweep_data(config))
        return RayRunner(self, ray.put(setup))

    def latent_stats(
        self, saes: Sequence[LoadedSae], sequences: Sequence[Sequence[int]], batch_tokens: int,
        progress: CountFn | None = None, stage: str = "statistics",
    ) -> dict[str, LatentStats]:
        """Statistics of the sequences, one contiguous shard per actor, combined (equal to a single pass)."""
        shards = shard_sequences(sequences, len(self.actors))
        parts: list[dict[str, LatentStats]] = [{} for _ in shards]
        refs = [s.ref for s in saes]

        def got(i: int, value: dict[str, LatentStats], _slot: int) -> None:
            parts[i] = value
            if progress is not None:
                progress(stage, sum(1 for p in parts if p), len(shards))

        self.map("latent_stats", [(refs, shard, batch_tokens) for shard in shards], got)
        return combine_latent_stats(parts)


class RayRunner:
    """A :class:`~unlearn_core.experiments.sweep_store.Runner` on a :class:`RayPool`."""

    def __init__(self, pool: RayPool, setup: Any) -> None:
        self.pool, self.setup = pool, setup

    def run(self, jobs: Sequence[Job], done: DoneFn) -> None:
        self.pool.map("measure", [(self.setup, spec) for _, spec in jobs],
                      lambda i, value, slot: done(jobs[i][0], value, slot))


def suggest_on_ray(
    lm: LoadedModel, saes: Sequence[LoadedSae], config: SelectConfig, pool: RayPool, progress: CountFn | None = None
) -> dict[str, list[ScoredLatent]]:
    """:func:`~unlearn_core.selection.suggest.suggest`, with each corpus' statistics computed in shards on the pool."""
    stats = []
    for role, name in zip(("forget", "retain"), config.corpora(), strict=True):
        sequences = stats_sequences(lm, load_texts(name).texts, config.stats_tokens, config.stats_seq_len)
        stats.append(pool.latent_stats(saes, sequences, config.batch_tokens, progress, f"{role} statistics on {name}"))
    return ranked_candidates(stats[0], stats[1], config.top, config.method, config.retain_threshold,
                             config.min_forget_freq, [s.ref for s in saes])


def _kill(actor: Any) -> None:
    import ray

    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001 - already dead, or its node is gone: nothing left to stop
        pass
