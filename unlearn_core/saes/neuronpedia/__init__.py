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
* Caching: successful answers (including "this latent has no explanation") are kept in memory and in one JSON
  file per Neuronpedia id under ``cache_dir()/neuronpedia``, written atomically; failures are never cached, so
  a later call tries again. A corrupt cache file is ignored.
* :meth:`NeuronpediaClient.explanations` fetches many latents on a thread pool. Once one of them finds the
  server unreachable or timing out, the fetches not yet started report the same reason at once.

Modules: :mod:`.explanation` (the answer type, ids, parsing), :mod:`.transport` (session, retries, key
protection), :mod:`.cache` (memory and disk), :mod:`.client` (the client).
"""

from unlearn_core.saes.neuronpedia.client import NeuronpediaClient, ProgressFn
from unlearn_core.saes.neuronpedia.explanation import (
    API_KEY_ENV,
    BASE_URL_ENV,
    DEFAULT_BASE_URL,
    Explanation,
    api_key_from,
    neuronpedia_page_url,
)
from unlearn_core.saes.neuronpedia.transport import MAX_WAIT

__all__ = [
    "API_KEY_ENV",
    "BASE_URL_ENV",
    "DEFAULT_BASE_URL",
    "MAX_WAIT",
    "Explanation",
    "NeuronpediaClient",
    "ProgressFn",
    "api_key_from",
    "neuronpedia_page_url",
]
