"""Finding an SAE's dashboards: shipped next to its weights, or computed once and kept in the cache folder.

A cached file is written atomically (:meth:`Dashboards.save`) and checked whole when read; one that cannot be read
(truncated, corrupt, another format) is deleted and rebuilt, never trusted. A shipped file that cannot be read is an
error: it is part of the SAE, not a cache. Building a cached file holds an exclusive lock on its own lock file
(``fcntl.flock``, where the platform has it; see :func:`build_lock`), so two threads or processes asking for the
same dashboards build them once: the second waits, then reads the first one's file. Temporary files of a write
killed over an hour ago are removed when the cache folder is first used.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from unlearn_core.errors import InputError
from unlearn_core.explain.dashboard_build import compute_dashboards_from_texts, default_dashboard_texts
from unlearn_core.explain.dashboards import DASHBOARD_FILE, Dashboards, LatentDashboard
from unlearn_core.models.loading import LoadedModel, cache_dir
from unlearn_core.models.offline import remove_stale_temp_files

try:
    import fcntl
except ImportError:  # Windows: no advisory file locks; concurrent builders may both build (each write is atomic)
    fcntl = None  # type: ignore[assignment]


def _cache_key(loaded: Any, texts: Sequence[str], max_tokens: int, corpus: str | None) -> str:
    """Names the SAE (reference and a weight fingerprint) and the corpus, so a changed either recomputes."""
    digest = hashlib.sha256()
    digest.update(loaded.ref.encode())
    digest.update(loaded.sae.W_dec[:4].detach().float().cpu().numpy().tobytes())
    digest.update(f"{max_tokens}|{corpus}".encode())
    for text in texts:
        digest.update(text.encode("utf-8", errors="replace") + b"\0")
    return digest.hexdigest()[:20]


def shipped_dashboard_path(loaded: Any) -> Path | None:
    """``dashboards.npz`` next to a local SAE's weights, if there is one."""
    from unlearn_core.saes.loading import resolve_local_path

    path = resolve_local_path(loaded.ref)
    if path is None:
        return None
    candidate = path / DASHBOARD_FILE
    return candidate if candidate.exists() else None


def dashboards_for(
    lm: LoadedModel,
    loaded: Any,
    texts: Sequence[str] | None = None,
    corpus: str | None = None,
    max_tokens: int = 40_000,
    progress: Callable[[str, int, int], None] | None = None,
) -> Dashboards:
    """Dashboards of a loaded SAE: shipped files when present (and no ``texts`` given), else computed once over
    ``texts`` and cached (a cached file that cannot be read is rebuilt).

    Default corpus: the built-in WikiText-2 test rows and Harry Potter fan-wiki paragraphs, interleaved, up to
    ``max_tokens`` tokens.
    """
    shipped = shipped_dashboard_path(loaded) if texts is None else None
    if shipped is not None:
        return Dashboards.load(shipped)
    if texts is None:
        texts, corpus = default_dashboard_texts()
    cached = cached_dashboard_path(loaded, texts, corpus, max_tokens)
    board = load_cached(cached)
    if board is not None:
        return board
    with build_lock(cached):
        board = load_cached(cached)  # built by another thread or process while this one waited
        if board is None:
            board = compute_dashboards_from_texts(lm, loaded, texts, corpus or "user texts", max_tokens, progress)
            board.save(cached)
    return board


@contextlib.contextmanager
def build_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock (blocking) on ``<folder>.locks/<file name>.lock`` while ``path`` is built.

    Lock files live in a sibling folder, so the cache folder holds only cache files; they are kept (removing a
    lock file while another process waits on it would let a third one lock a new file and build at the same time).
    """
    if fcntl is None:
        yield
        return
    locks = path.parent.with_name(path.parent.name + ".locks")
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / (path.name + ".lock"), "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def find_dashboards(loaded: Any, max_tokens: int = 40_000) -> Dashboards | None:
    """Dashboards that exist without computing anything: shipped with the SAE, or cached by an earlier
    :func:`dashboards_for` on the default corpus. None otherwise."""
    shipped = shipped_dashboard_path(loaded)
    if shipped is not None:
        return Dashboards.load(shipped)
    return load_cached(cached_dashboard_path(loaded, *default_dashboard_texts(), max_tokens))


def load_cached(path: Path) -> Dashboards | None:
    """The cached dashboards at ``path``; None when there are none, or when the file cannot be read (then it is
    deleted, so the caller rebuilds it)."""
    remove_stale_temp_files(path.parent, (".*.tmp",))
    if not path.exists():
        return None
    try:
        return Dashboards.load(path)
    except InputError:
        path.unlink(missing_ok=True)
        return None


def cached_dashboard_path(loaded: Any, texts: Sequence[str], corpus: str | None, max_tokens: int) -> Path:
    """Where :func:`dashboards_for` keeps the dashboards of ``loaded`` over ``texts``."""
    return cache_dir() / "dashboards" / f"{_cache_key(loaded, texts, max_tokens, corpus)}.npz"


def latent_dashboard(lm: LoadedModel, loaded: Any, latent: int) -> LatentDashboard:
    """One latent's dashboard for any loaded SAE (shipped files, cached, or computed now; see :func:`dashboards_for`)."""
    return dashboards_for(lm, loaded).latent(latent)
