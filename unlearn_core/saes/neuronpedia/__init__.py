"""Latent explanations from Neuronpedia, fetched over HTTP and cached on disk.

Neuronpedia's public API answers ``GET {base}/api/feature/{modelId}/{source}/{index}`` with a JSON object whose
``explanations[0].description`` is the human-readable explanation of one SAE latent, next to ``frac_nonzero``
(how often it fires) and ``maxActApprox`` (its largest activation). This package names an SAE on Neuronpedia by
one string, ``"<modelId>/<source>"`` (e.g. ``"gemma-3-270m/12-gemmascope-2-res-16k"``), plus a latent index.

:class:`NeuronpediaClient` fetches those answers:

* Configuration: the base URL comes from the argument, else ``$NEURONPEDIA_API_URL``, else
  :data:`DEFAULT_BASE_URL`; the API key from the argument, else ``$NEURONPEDIA_API_KEY`` (see
  :func:`api_key_from` for the app's secrets). The key is only ever sent as the ``x-api-key`` header, and only to
  the configured origin (never along a redirect to another host); it never appears in reprs, logs, error strings
  or the cache.
* Failures never raise: HTTP 429, 500, 502, 503 and 504, timeouts and connection errors are retried ``retries``
  times by urllib3's ``Retry`` with exponential backoff (``backoff * 2**attempt``, at most 8 s, or a
  ``Retry-After`` of up to 8 s); when nothing is listening the retries wait a flat ``backoff``, so a down server
  costs little. Other 4xx answers are not retried. What finally went wrong is returned as
  :attr:`Explanation.error`, a short human reason. Only bad arguments raise (:class:`~unlearn_core.errors.InputError`).
* A site that rate-limits (429), keeps failing (5xx) or cannot be reached is not asked again for a while: a
  process-wide circuit breaker per base URL (:mod:`.breaker`) makes every client's look-ups fail fast with
  "Neuronpedia rate-limited/unavailable ...; retrying after N s" until ``Retry-After`` (at most 60 s, default
  30 s) has passed; the site's next real answer closes it (:func:`reset_breakers` closes all at once). An answer
  whose ``Retry-After`` is longer than :data:`MAX_WAIT` is not retried by urllib3 either.
* Answers larger than ``max_response_bytes`` (4 MiB) are refused ("response too large"), read as a stream.
* Caching: successful answers (including "this latent has no explanation") are kept in memory and in one JSON
  file per site and Neuronpedia id under ``cache_dir()/neuronpedia``, written atomically; failures are never
  cached, so a later call tries again. A corrupt cache file is ignored.
* :meth:`NeuronpediaClient.explanations` fetches many latents on a thread pool, within an overall deadline
  (``batch_deadline``, 20 s; the rest are "unavailable (deadline ...)"). Once one of them finds the server
  unreachable or timing out, the fetches not yet started report the same reason at once.

Modules: :mod:`.explanation` (the answer type, ids, parsing), :mod:`.transport` (session, retries, key
protection, size cap), :mod:`.breaker` (the per-site circuit breaker), :mod:`.cache` (memory and disk),
:mod:`.client` (the client), :mod:`.search` (explanation search, cached), :mod:`.lists` (Neuronpedia lists through
the official ``neuronpedia`` client; imported on use), :mod:`.hosted` (which SAEs Neuronpedia hosts).
"""

from unlearn_core.saes.neuronpedia.breaker import DEFAULT_COOLDOWN, MAX_COOLDOWN, reset_breakers
from unlearn_core.saes.neuronpedia.client import BATCH_DEADLINE, NeuronpediaClient, ProgressFn
from unlearn_core.saes.neuronpedia.explanation import (
    API_KEY_ENV,
    BASE_URL_ENV,
    DEFAULT_BASE_URL,
    Explanation,
    api_key_from,
    neuronpedia_page_url,
)
from unlearn_core.saes.neuronpedia.search import SearchHit, search_explanations
from unlearn_core.saes.neuronpedia.transport import MAX_RESPONSE_BYTES, MAX_WAIT

__all__ = [
    "API_KEY_ENV",
    "BASE_URL_ENV",
    "BATCH_DEADLINE",
    "DEFAULT_BASE_URL",
    "DEFAULT_COOLDOWN",
    "MAX_COOLDOWN",
    "MAX_RESPONSE_BYTES",
    "MAX_WAIT",
    "Explanation",
    "NeuronpediaClient",
    "ProgressFn",
    "SearchHit",
    "api_key_from",
    "neuronpedia_page_url",
    "reset_breakers",
    "search_explanations",
]
