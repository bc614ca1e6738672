"""The Neuronpedia client against a scripted loopback stand-in of its API (never the internet)."""

from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path

import pytest
from standins.fake_neuronpedia import FakeNeuronpedia, Reply, feature

from unlearn_core.errors import InputError
from unlearn_core.saes.neuronpedia import (
    API_KEY_ENV,
    BASE_URL_ENV,
    DEFAULT_BASE_URL,
    Explanation,
    NeuronpediaClient,
    api_key_from,
    neuronpedia_page_url,
)

NP_ID = "gemma-3-270m/12-gemmascope-2-res-16k"
KEY = "np-secret-key-3f9a7c"


def path(index: int, np_id: str = NP_ID) -> str:
    return f"/api/feature/{np_id}/{index}"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (BASE_URL_ENV, API_KEY_ENV, "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                 "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture()
def server():
    with FakeNeuronpedia() as stub:
        yield stub


def client_for(stub: FakeNeuronpedia, tmp_path: Path, **kwargs) -> NeuronpediaClient:
    kwargs.setdefault("backoff", 0.01)
    return NeuronpediaClient(base_url=stub.url, cache_dir=tmp_path / "np", **kwargs)


def free_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


# 1 -------------------------------------------------------------------------------------------------------------
def test_success_parses_sends_key_and_never_leaks_it(server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    server.script(path(7), feature("mentions of cooking recipes", frac_nonzero=0.0123, max_act=41.5))
    server.script(path(8), Reply(503))
    client = client_for(server, tmp_path, api_key=KEY, retries=1)

    got = client.explanation(NP_ID, 7)
    assert got == Explanation(NP_ID, 7, "mentions of cooking recipes", 0.0123, 41.5, site=server.url)
    assert got.ok and got.text() == "mentions of cooking recipes"
    assert got.url == f"{server.url}/{NP_ID}/7"
    assert server.requests[0].headers.get("x-api-key") == KEY
    assert "authorization" not in server.requests[0].headers

    failed = client.explanation(NP_ID, 8)
    assert not failed.ok
    assert KEY not in failed.text() and KEY not in repr(failed)
    assert KEY not in repr(client) and KEY not in str(client) and server.url in repr(client)
    cache_files = list((tmp_path / "np").rglob("*"))
    assert cache_files, "the success should have been cached"
    assert all(KEY not in f.read_text() for f in cache_files if f.is_file())
    assert path(7) in caplog.text  # the URL is logged at DEBUG ...
    assert KEY not in caplog.text  # ... the key is not


def test_no_key_no_header_and_no_explanation_text(server, tmp_path):
    server.script(path(1), feature(None, frac_nonzero=None, max_act=None))
    got = client_for(server, tmp_path).explanation(NP_ID, 1)
    assert got.ok and got.description is None and got.frac_nonzero is None and got.max_activation is None
    assert got.text() == "no explanation on Neuronpedia"
    assert "x-api-key" not in server.requests[0].headers


def test_key_is_not_sent_along_a_redirect_to_another_host(tmp_path):
    with FakeNeuronpedia() as other, FakeNeuronpedia() as home:
        other.script(path(3), feature("elsewhere"))
        home.script(path(3), Reply(302, headers={"Location": f"{other.url}{path(3)}"}))
        home.script(path(4), Reply(302, headers={"Location": path(5)}))
        home.script(path(5), feature("same host"))
        client = client_for(home, tmp_path, api_key=KEY)
        assert client.explanation(NP_ID, 3).description == "elsewhere"
        assert "x-api-key" not in other.requests[0].headers
        assert client.explanation(NP_ID, 4).description == "same host"
        assert home.requests[-1].path == path(5) and home.requests[-1].headers.get("x-api-key") == KEY


# 2 -------------------------------------------------------------------------------------------------------------
def test_cache_memory_disk_and_failures_not_cached(server, tmp_path):
    server.script(path(2), feature("first"))
    client = client_for(server, tmp_path)
    assert client.explanation(NP_ID, 2).description == "first"
    assert client.explanation(NP_ID, 2).description == "first"
    assert server.count() == 1

    fresh = client_for(server, tmp_path)
    assert fresh.explanation(NP_ID, 2).description == "first"
    assert server.count() == 1
    (cache_file,) = (tmp_path / "np").glob("*.json")
    on_disk = json.loads(cache_file.read_text())
    assert set(on_disk) == {"2"}
    assert set(on_disk["2"]) == {"description", "frac_nonzero", "max_activation", "fetched_at"}

    server.script(path(9), Reply(503))
    assert client.explanation(NP_ID, 9).error == "server error (HTTP 503)"
    server.script(path(9), feature("fixed"))
    assert client.explanation(NP_ID, 9).description == "fixed"
    assert set(json.loads(cache_file.read_text())) == {"2", "9"}


def test_corrupt_cache_file_is_ignored(server, tmp_path):
    server.script(path(2), feature("from server"))
    client_for(server, tmp_path).explanation(NP_ID, 2)
    (cache_file,) = (tmp_path / "np").glob("*.json")
    cache_file.write_text("{ not json")
    fresh = client_for(server, tmp_path)
    assert fresh.explanation(NP_ID, 2).description == "from server"
    assert server.count() == 2
    assert "2" in json.loads(cache_file.read_text())  # rewritten cleanly


def test_default_cache_dir_honours_unlearn_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("UNLEARN_CACHE_DIR", str(tmp_path / "cache"))
    assert NeuronpediaClient().cache_dir == tmp_path / "cache" / "neuronpedia"


# 3 -------------------------------------------------------------------------------------------------------------
def test_429_then_200_retries_and_honours_retry_after(server, tmp_path):
    server.script(path(4), Reply(429, headers={"Retry-After": "0"}), feature("after a wait"))
    client = client_for(server, tmp_path, backoff=5.0)  # a backoff this long would blow the time bound
    start = time.monotonic()
    got = client.explanation(NP_ID, 4)
    assert time.monotonic() - start < 2.0
    assert got.description == "after a wait" and server.count(path(4)) == 2

    server.script(path(5), Reply(429, headers={"Retry-After": "0.4"}), feature("waited"))
    start = time.monotonic()
    assert client_for(server, tmp_path).explanation(NP_ID, 5).ok
    assert time.monotonic() - start >= 0.4


# 4 -------------------------------------------------------------------------------------------------------------
def test_server_error_forever_gives_up_after_retries(server, tmp_path):
    server.script(path(6), Reply(503))
    start = time.monotonic()
    got = client_for(server, tmp_path, retries=2, backoff=0.1).explanation(NP_ID, 6)
    assert time.monotonic() - start >= 0.1 + 0.2  # exponential backoff between the three tries
    assert got.error == "server error (HTTP 503)" and "503" in got.text()
    assert server.count(path(6)) == 3


# 5 -------------------------------------------------------------------------------------------------------------
def test_timeout(server, tmp_path):
    server.script(path(7), Reply(body=feature("slow").body, delay=1.0))
    start = time.monotonic()
    got = client_for(server, tmp_path, timeout=0.2, retries=1).explanation(NP_ID, 7)
    assert time.monotonic() - start < 1.5
    assert got.error is not None and "timed out" in got.error, got.error
    assert server.count(path(7)) == 2


# 6 -------------------------------------------------------------------------------------------------------------
def test_server_down_is_reported_quickly(tmp_path):
    client = NeuronpediaClient(base_url=f"http://127.0.0.1:{free_port()}", cache_dir=tmp_path, retries=2, backoff=0.01)
    start = time.monotonic()
    got = client.explanation(NP_ID, 1)
    assert time.monotonic() - start < 5.0
    assert got.error == "Neuronpedia unreachable (connection refused)", got.error
    assert got.text() == "explanation unavailable (Neuronpedia unreachable (connection refused))"
    assert not list(tmp_path.iterdir())  # failures are not cached


def test_batch_against_a_down_server_stops_early(tmp_path):
    client = NeuronpediaClient(base_url=f"http://127.0.0.1:{free_port()}", cache_dir=tmp_path, retries=3,
                               backoff=0.3, max_workers=2)
    start = time.monotonic()
    got = client.explanations(NP_ID, range(40))
    # serially that would be 40 x 0.9 s of flat backoff; the first verdict stops the rest
    assert time.monotonic() - start < 4.0
    assert len(got) == 40 and all("unreachable" in (e.error or "") for e in got.values())


# 7 -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body", [b"{ this is not json", b"[1, 2, 3]", {"explanations": "nope"}, {"explanations": ["text"]},
             {"explanations": [], "frac_nonzero": "high"}, b""],
)
def test_malformed_response(server, tmp_path, body):
    server.script(path(3), Reply(body=body))
    got = client_for(server, tmp_path).explanation(NP_ID, 3)
    assert got.error == "malformed response"
    assert server.count(path(3)) == 1


# 8 -------------------------------------------------------------------------------------------------------------
def test_404_is_not_retried(server, tmp_path):
    got = client_for(server, tmp_path, retries=3).explanation(NP_ID, 12345)  # unscripted path -> 404
    assert got.error == "not found (HTTP 404)"
    assert server.count() == 1


# 9 -------------------------------------------------------------------------------------------------------------
def test_explanations_in_parallel(tmp_path):
    def reply(p: str) -> Reply:
        index = int(p.rsplit("/", 1)[1])
        return Reply(body=feature(f"latent {index}").body, delay=0.1)

    with FakeNeuronpedia(fallback=reply) as stub:
        client = client_for(stub, tmp_path, max_workers=4)
        calls: list[tuple[int, int]] = []
        wanted = [*range(20), 3, 3, 19, 0]
        start = time.monotonic()
        got = client.explanations(NP_ID, wanted, progress=lambda d, t: calls.append((d, t)))
        elapsed = time.monotonic() - start
        assert elapsed < 0.6 * 20 * 0.1, elapsed
        assert list(got) == list(range(20))
        assert all(got[i].description == f"latent {i}" for i in range(20))
        assert stub.count() == 20
        assert calls[0] == (0, 20) and calls[-1] == (20, 20)
        assert [d for d, _ in calls] == sorted(d for d, _ in calls)

        # a second batch answers the known ones from the cache and fetches only the new ones
        calls.clear()
        more = client.explanations(NP_ID, [5, 25], progress=lambda d, t: calls.append((d, t)))
        assert more[25].description == "latent 25" and stub.count() == 21
        assert calls == [(1, 2), (2, 2)]


# 10 ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("np_id", ["no-slash", "a/b/c", "a b/c", "/source", "model/", "", "../x"])
def test_bad_neuronpedia_id(tmp_path, np_id):
    client = NeuronpediaClient(base_url="http://127.0.0.1:9", cache_dir=tmp_path)
    with pytest.raises(InputError, match="Neuronpedia id"):
        client.explanation(np_id, 1)
    with pytest.raises(InputError):
        client.explanations(np_id, [1])


@pytest.mark.parametrize("index", [-1, True, 1.5, "3"])
def test_bad_index(tmp_path, index):
    client = NeuronpediaClient(base_url="http://127.0.0.1:9", cache_dir=tmp_path)
    with pytest.raises(InputError, match="latent index"):
        client.explanation(NP_ID, index)
    with pytest.raises(InputError, match="latent index"):
        client.explanations(NP_ID, [0, index])


# 11 ------------------------------------------------------------------------------------------------------------
def test_base_url_and_key_from_env(server, tmp_path, monkeypatch):
    server.script(path(1), feature("via env"))
    monkeypatch.setenv(BASE_URL_ENV, server.url + "/")
    monkeypatch.setenv(API_KEY_ENV, KEY)
    client = NeuronpediaClient(cache_dir=tmp_path, backoff=0.01)
    assert client.base_url == server.url
    got = client.explanation(NP_ID, 1)
    assert got.description == "via env" and got.url.startswith(server.url + "/")
    assert server.requests[0].headers.get("x-api-key") == KEY
    monkeypatch.delenv(BASE_URL_ENV)
    assert NeuronpediaClient(cache_dir=tmp_path).base_url == DEFAULT_BASE_URL


def test_api_key_from(monkeypatch):
    class NoSecretsFile(dict):  # like st.secrets when there is no secrets.toml
        def get(self, *args, **kwargs):
            raise FileNotFoundError("no secrets.toml")

    assert api_key_from() is None
    assert api_key_from({}) is None
    assert api_key_from({API_KEY_ENV: "from-secrets"}) == "from-secrets"
    assert api_key_from(NoSecretsFile()) is None
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    assert api_key_from({API_KEY_ENV: "from-secrets"}) == "from-env"
    assert api_key_from() == "from-env"


def test_page_url():
    assert neuronpedia_page_url("gemma-2-2b/12-gemmascope-res-16k", 7) == (
        "https://www.neuronpedia.org/gemma-2-2b/12-gemmascope-res-16k/7"
    )
    with pytest.raises(InputError):
        neuronpedia_page_url("gemma-2-2b", 7)
