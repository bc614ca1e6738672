"""``describe_hub_error`` classifies huggingface_hub's typed errors (and requests', and network errors) by type,
wherever they sit in the exception chain, with the same user-facing sentences as before."""

from __future__ import annotations

import importlib

import pytest
import requests
import torch
from huggingface_hub import errors as hub

from unlearn_core.models.hub import describe_hub_error, exception_chain

URL = "https://huggingface.co/google/gemma-2-2b/resolve/main/config.json"
REFUSED = "access to m was refused by the Hugging Face hub: set HF_TOKEN"
NOT_FOUND = "m was not found on the Hugging Face hub (HTTP 404): check the name"
OFFLINE = "m is not in the local Hugging Face cache and hub access is off (HF_HUB_OFFLINE=1)"
NO_NETWORK = "could not reach the Hugging Face hub to fetch m (no network?)"


def hub_response(status: int):
    """A response of the HTTP library huggingface_hub itself uses (httpx or httpx2; its errors carry one)."""
    http = importlib.import_module(hub.Response.__module__.split(".")[0])
    return http.Response(status, request=http.Request("GET", URL))


def requests_error(status: int) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(f"{status} Error for url: {URL}", response=response)


def raised_from(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BaseException as exc:
        return exc


@pytest.mark.parametrize("make,expected", [
    (lambda: hub.GatedRepoError("gated", response=hub_response(403)), REFUSED),
    (lambda: hub.HfHubHTTPError("Invalid credentials", response=hub_response(401)), REFUSED),
    # the hub answers 401 for a repository that does not exist (to anonymous users); the type says which
    (lambda: hub.RepositoryNotFoundError("no repo", response=hub_response(401)), NOT_FOUND),
    (lambda: hub.RevisionNotFoundError("no revision", response=hub_response(404)), NOT_FOUND),
    (lambda: hub.RemoteEntryNotFoundError("no file", response=hub_response(404)), NOT_FOUND),
    (lambda: hub.HfHubHTTPError("slow down", response=hub_response(429)), "rate-limiting requests for m (HTTP 429)"),
    (lambda: hub.HfHubHTTPError("bad gateway", response=hub_response(502)), "server error (HTTP 502) for m"),
    (lambda: hub.OfflineModeIsEnabled("offline"), OFFLINE),
    (lambda: hub.LocalEntryNotFoundError("not cached, traffic disabled"), OFFLINE),
    (lambda: requests_error(503), "server error (HTTP 503) for m"),
    (lambda: requests_error(403), REFUSED),
    (lambda: requests.exceptions.ConnectionError("Max retries exceeded"), NO_NETWORK),
    (lambda: requests.exceptions.ReadTimeout("read timed out"), NO_NETWORK),
    (lambda: TimeoutError("timed out"), NO_NETWORK),
    (lambda: torch.OutOfMemoryError("CUDA out of memory"), "not enough memory to load m"),
])
def test_typed_errors(make, expected):
    assert expected in describe_hub_error("m", make())


def test_the_chain_is_searched_by_type():
    # transformers wraps hub errors in a plain OSError raised from them
    gated = raised_from(OSError("You are trying to access a gated repo."), hub.GatedRepoError("g", response=hub_response(403)))
    assert REFUSED in describe_hub_error("m", gated)
    offline = raised_from(OSError("We couldn't connect to 'https://huggingface.co'"), hub.LocalEntryNotFoundError("x"))
    assert OFFLINE in describe_hub_error("m", offline)
    # not cached because the hub could not be reached: that is a network problem, not offline mode
    unreachable = raised_from(hub.LocalEntryNotFoundError("x"), ConnectionRefusedError("[Errno 111] Connection refused"))
    assert NO_NETWORK in describe_hub_error("m", raised_from(OSError("load failed"), unreachable))
    assert len(exception_chain(raised_from(OSError("load failed"), unreachable))) == 3


def test_untyped_errors_fall_back_to_their_message(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert "HTTP 404" in describe_hub_error("m", OSError(f"404 Client Error: Not Found for url: {URL}"))
    assert describe_hub_error("m", ValueError("boom\nsecond line")) == (
        "could not load m from the Hugging Face hub (ValueError: boom)"
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert OFFLINE in describe_hub_error("m", ValueError("boom"))
