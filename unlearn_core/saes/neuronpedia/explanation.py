"""What Neuronpedia says about one latent (:class:`Explanation`), its page URL, and checks of ids and answers."""

from __future__ import annotations

import math
import operator
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from unlearn_core.errors import InputError

DEFAULT_BASE_URL = "https://www.neuronpedia.org"
BASE_URL_ENV = "NEURONPEDIA_API_URL"
API_KEY_ENV = "NEURONPEDIA_API_KEY"

_NEURONPEDIA_ID_RE = re.compile(r"^[^/\s]+/[^/\s]+$")

Parsed = tuple[str | None, float | None, float | None]
"""``(description, frac_nonzero, max_activation)`` of one latent."""


@dataclass(frozen=True)
class Explanation:
    """What Neuronpedia says about one latent, or why it could not be asked."""

    neuronpedia_id: str
    index: int
    description: str | None  # explanations[0].description; None when the latent has no explanation
    frac_nonzero: float | None
    max_activation: float | None  # Neuronpedia's maxActApprox
    error: str | None = None  # None when fetched fine, else a short human reason
    site: str = DEFAULT_BASE_URL  # where the human-readable page lives

    @property
    def ok(self) -> bool:
        """True when Neuronpedia answered (with or without an explanation)."""
        return self.error is None

    def text(self) -> str:
        """The explanation, or a short sentence saying there is none or why it is unavailable."""
        if self.error is not None:
            return f"explanation unavailable ({self.error})"
        return self.description if self.description is not None else "no explanation on Neuronpedia"

    @property
    def url(self) -> str:
        """The latent's page on Neuronpedia."""
        return neuronpedia_page_url(self.neuronpedia_id, self.index, base_url=self.site)


def api_key_from(secrets: Mapping[str, Any] | None = None) -> str | None:
    """The Neuronpedia API key: ``$NEURONPEDIA_API_KEY``, else ``secrets["NEURONPEDIA_API_KEY"]``, else None.

    ``secrets`` is any mapping; the app passes ``st.secrets``.
    """
    key = os.environ.get(API_KEY_ENV, "").strip()
    if key:
        return key
    if secrets is None:
        return None
    try:
        value = secrets.get(API_KEY_ENV)
    except Exception:  # st.secrets raises (not KeyError) when no secrets file exists at all
        return None
    return value.strip() or None if isinstance(value, str) else None


def neuronpedia_page_url(neuronpedia_id: str, index: int, base_url: str = DEFAULT_BASE_URL) -> str:
    """The human-readable page of one latent, e.g. ``https://www.neuronpedia.org/gemma-2-2b/12-gemmascope-res-16k/7``."""
    model_id, source = split_id(neuronpedia_id)
    return f"{base_url.rstrip('/')}/{quote(model_id, safe='')}/{quote(source, safe='')}/{check_index(index)}"


def feature_api_url(base_url: str, neuronpedia_id: str, index: int) -> str:
    """The API address of one latent: ``{base}/api/feature/{modelId}/{source}/{index}``."""
    model_id, source = split_id(neuronpedia_id)
    return f"{base_url}/api/feature/{quote(model_id, safe='')}/{quote(source, safe='')}/{check_index(index)}"


def split_id(neuronpedia_id: object) -> tuple[str, str]:
    """``(modelId, source)`` of a ``"<modelId>/<source>"`` id; :class:`InputError` for anything else."""
    if not isinstance(neuronpedia_id, str) or not _NEURONPEDIA_ID_RE.match(neuronpedia_id):
        raise InputError(
            f'Neuronpedia id must be "<modelId>/<source>" with one slash and no spaces '
            f'(e.g. "gemma-2-2b/12-gemmascope-res-16k"), got {neuronpedia_id!r}'
        )
    model_id, source = neuronpedia_id.split("/")
    if model_id in (".", "..") or source in (".", ".."):
        raise InputError(f"Neuronpedia id parts cannot be '.' or '..', got {neuronpedia_id!r}")
    return model_id, source


def check_index(index: object) -> int:
    """A latent index as an int (numpy and 0-d torch integers too); :class:`InputError` if not one, or negative."""
    if isinstance(index, bool):
        raise InputError(f"latent index must be a non-negative integer, got {index!r}")
    try:
        value = operator.index(index)  # accepts numpy and 0-d torch integers
    except TypeError:
        raise InputError(f"latent index must be a non-negative integer, got {index!r}") from None
    if value < 0:
        raise InputError(f"latent index must be a non-negative integer, got {value}")
    return value


def number(value: object) -> float | None:
    """A finite float, None for None or a non-finite number; ValueError for anything that is not a number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"not a number: {value!r}")
    return float(value) if math.isfinite(value) else None


def parse_feature(payload: object) -> Parsed:
    """``(description, frac_nonzero, max_activation)`` from a feature answer; ValueError if its shape is wrong."""
    if not isinstance(payload, dict):
        raise ValueError("not an object")
    explanations = payload.get("explanations")
    if not isinstance(explanations, list):
        raise ValueError("explanations is not a list")
    description = None
    if explanations:
        first = explanations[0]
        if not isinstance(first, dict):
            raise ValueError("explanation is not an object")
        text = first.get("description")
        if text is not None and not isinstance(text, str):
            raise ValueError("description is not a string")
        description = text.strip() or None if text else None
    return description, number(payload.get("frac_nonzero")), number(payload.get("maxActApprox"))
