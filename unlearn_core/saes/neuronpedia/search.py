"""Search Neuronpedia's latent explanations by meaning: which latents of some hosted SAEs are about a concept.

``POST {site}/api/explanation/search`` with ``{"modelId", "layers": [source, ...], "query", "offset"}`` answers
``{"results": [{"modelId", "layer", "index", "description", "cosine_similarity", "neuron": {...}}, ...],
"hasMore", "nextOffset"}``: up to :data:`PAGE_SIZE` explanations nearest to the query (an embedding search), best
first; ``offset`` pages on. The key is optional for public SAEs.

:func:`search_explanations` goes through this package's transport (:class:`~.transport.KeyedSession`: urllib3
retries of 429/5xx/network errors with capped backoff, the key only to the configured origin, the size cap) and the
site's circuit breaker. Failures raise :class:`~unlearn_core.errors.RemoteServiceError` with a short reason; bad
arguments raise :class:`~unlearn_core.errors.InputError`. Answers are cached on disk (one JSON file per site,
model, sources, query and offset; :data:`CACHE_TTL`), never failures, and never the key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from unlearn_core.errors import InputError, RemoteServiceError
from unlearn_core.files import write_json_atomic
from unlearn_core.saes.neuronpedia.breaker import breaker_for
from unlearn_core.saes.neuronpedia.explanation import (
    API_KEY_ENV,
    BASE_URL_ENV,
    DEFAULT_BASE_URL,
    neuronpedia_page_url,
    number,
    split_id,
)
from unlearn_core.saes.neuronpedia.transport import MAX_RESPONSE_BYTES, KeyedSession, request_json

log = logging.getLogger("unlearn_core.saes.neuronpedia")

SEARCH_PATH = "/api/explanation/search"
PAGE_SIZE = 20
"""Results per answer (Neuronpedia's ``MAX_EXPLANATION_SEARCH_RESULTS``)."""
MIN_QUERY_CHARS = 3
MAX_QUERY_CHARS = 500
MAX_SOURCES = 50
CACHE_TTL = 7 * 24 * 3600.0
"""Seconds a cached answer is used (explanations change rarely)."""
_CACHE_VERSION = 1


@dataclass(frozen=True)
class SearchHit:
    """One latent whose explanation matches a query."""

    model_id: str
    """Neuronpedia's model id, e.g. ``"gemma-2-2b"``."""
    source: str
    """Neuronpedia's source (``layer``), e.g. ``"12-gemmascope-res-16k"``."""
    index: int
    description: str
    similarity: float | None = None
    """Cosine similarity of the explanation to the query (higher is closer), when Neuronpedia gives it."""
    site: str = DEFAULT_BASE_URL

    @property
    def neuronpedia_id(self) -> str:
        """``"<modelId>/<source>"``, as a feature list's ``neuronpedia`` field."""
        return f"{self.model_id}/{self.source}"

    @property
    def url(self) -> str:
        """The latent's page on Neuronpedia."""
        return neuronpedia_page_url(self.neuronpedia_id, self.index, base_url=self.site)


def search_explanations(
    query: str,
    model_id: str,
    source_ids: Sequence[str],
    *,
    offset: int = 0,
    base_url: str | None = None,
    api_key: str | None = None,
    cache_dir: Path | None = None,
    use_cache: bool = True,
    timeout: float = 15.0,
    retries: int = 2,
    backoff: float = 0.5,
    max_response_bytes: int = MAX_RESPONSE_BYTES,
) -> list[SearchHit]:
    """Latents of ``source_ids`` (Neuronpedia sources of ``model_id``, e.g. ``["12-gemmascope-res-16k"]``, or full
    ``"<modelId>/<source>"`` ids of that model) whose explanations are nearest to ``query``, best first.

    At most :data:`PAGE_SIZE` hits; pass ``offset=20`` and so on for more. ``model_id`` is Neuronpedia's model id
    (``"gemma-2-2b"``). The base URL and key default to ``$NEURONPEDIA_API_URL`` and ``$NEURONPEDIA_API_KEY``;
    ``cache_dir`` to ``cache_dir()/neuronpedia/search``. Raises :class:`InputError` for an empty, too short or too
    long query, no or malformed sources, and :class:`RemoteServiceError` when the search fails.
    """
    text = " ".join(str(query).split()) if isinstance(query, str) else ""
    if len(text) < MIN_QUERY_CHARS:
        raise InputError(f"type at least {MIN_QUERY_CHARS} characters to search Neuronpedia's explanations")
    if len(text) > MAX_QUERY_CHARS:
        raise InputError(f"search query too long ({len(text)} characters; at most {MAX_QUERY_CHARS})")
    sources = _sources(model_id, source_ids)
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise InputError(f"offset must be a non-negative integer, got {offset!r}")
    base = (base_url or os.environ.get(BASE_URL_ENV, "").strip() or DEFAULT_BASE_URL).rstrip("/")
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError(f"Neuronpedia URL must start with http:// or https://, got {base!r}")
    request = {"modelId": model_id, "layers": sources, "query": text, "offset": offset}
    cache = _cache_path(cache_dir, base, request) if use_cache else None
    if cache is not None:
        cached = _read_cache(cache, base, request)
        if cached is not None:
            return cached
    site = breaker_for(base)
    blocked = site.blocked()
    if blocked is not None:
        raise RemoteServiceError(f"searching Neuronpedia: {blocked}")
    key = (api_key or os.environ.get(API_KEY_ENV, "")).strip() or None
    with KeyedSession(base, key, retries, backoff, pool_size=2, methods=("GET", "POST")) as session:
        payload, outcome = request_json(session, "POST", base + SEARCH_PATH, timeout, max_response_bytes, body=request)
    site.record(outcome.status, outcome.error, outcome.network, outcome.retry_after)
    if outcome.error is not None:
        raise RemoteServiceError(f"searching Neuronpedia: {outcome.error}")
    try:
        hits = parse_search(payload, model_id, set(sources), base)
    except ValueError as exc:
        raise RemoteServiceError(f"searching Neuronpedia: malformed response ({exc})") from None
    if cache is not None:
        _write_cache(cache, base, request, hits)
    return hits


def parse_search(payload: object, model_id: str, sources: set[str], site: str = DEFAULT_BASE_URL) -> list[SearchHit]:
    """The hits of a search answer, in its order, keeping only the asked model and sources; ValueError if its shape
    is wrong."""
    if not isinstance(payload, dict) or not isinstance(payload.get("results"), list):
        raise ValueError("no results list")
    hits: list[SearchHit] = []
    seen: set[tuple[str, int]] = set()
    for row in payload["results"]:
        if not isinstance(row, dict):
            raise ValueError("a result is not an object")
        model, source, index, text = row.get("modelId"), row.get("layer"), row.get("index"), row.get("description")
        if not isinstance(model, str) or not isinstance(source, str) or not isinstance(text, str):
            raise ValueError("a result lacks modelId, layer or description")
        if isinstance(index, str) and index.isascii() and index.isdigit():
            index = int(index)
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError("a result has no latent index")
        if model != model_id or source not in sources or (source, index) in seen:
            continue
        seen.add((source, index))
        try:
            similarity = number(row.get("cosine_similarity"))
        except ValueError:  # a similarity is a nicety: a strange one is not worth refusing the answer
            similarity = None
        hits.append(SearchHit(model, source, index, " ".join(text.split()), similarity, site))
    return hits


def _sources(model_id: str, source_ids: Sequence[str]) -> list[str]:
    if not isinstance(model_id, str) or not model_id.strip() or "/" in model_id or any(c.isspace() for c in model_id):
        raise InputError(f"model id must be Neuronpedia's (e.g. 'gemma-2-2b'), got {model_id!r}")
    if isinstance(source_ids, str):
        source_ids = [source_ids]
    out: list[str] = []
    for given in source_ids:
        text = str(given).strip()
        if "/" in text:
            model, source = split_id(text)
            if model != model_id:
                raise InputError(f"{text} is an SAE of {model}, not {model_id}")
            text = source
        else:
            split_id(f"{model_id}/{text}")  # the same checks as a full id
        if text not in out:
            out.append(text)
    if not out:
        raise InputError("choose at least one SAE hosted on Neuronpedia to search")
    if len(out) > MAX_SOURCES:
        raise InputError(f"at most {MAX_SOURCES} SAEs per search, got {len(out)}")
    return out


def _cache_path(cache_dir: Path | None, base: str, request: dict[str, Any]) -> Path:
    if cache_dir is None:
        from unlearn_core.models.loading import cache_dir as default_cache_dir  # lazy: models imports torch

        cache_dir = default_cache_dir() / "neuronpedia" / "search"
    digest = hashlib.sha256(json.dumps([base, request], sort_keys=True).encode()).hexdigest()[:32]
    return Path(cache_dir) / f"{digest}.json"


def _read_cache(path: Path, base: str, request: dict[str, Any]) -> list[SearchHit] | None:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable Neuronpedia search cache %s (%s)", path, type(exc).__name__)
        return None
    try:
        if (raw["version"], raw["site"], raw["request"]) != (_CACHE_VERSION, base, request):
            return None
        if not 0 <= time.time() - float(raw["fetched_at"]) < CACHE_TTL:
            return None
        return parse_search({"results": raw["hits"]}, request["modelId"], set(request["layers"]), base)
    except (KeyError, TypeError, ValueError):
        log.warning("ignoring malformed Neuronpedia search cache %s", path)
        return None


def _write_cache(path: Path, base: str, request: dict[str, Any], hits: list[SearchHit]) -> None:
    data = {"version": _CACHE_VERSION, "site": base, "request": request, "fetched_at": time.time(),
            "hits": [{"modelId": h.model_id, "layer": h.source, "index": h.index, "description": h.description,
                      "cosine_similarity": h.similarity} for h in hits]}
    try:
        write_json_atomic(path, data)
    except OSError as exc:
        log.warning("could not write the Neuronpedia search cache %s (%s)", path, exc.strerror)
