"""Searching Neuronpedia's explanations, against a loopback stand-in of its search API (never the internet)."""

from __future__ import annotations

import json
import logging

import pytest
from standins.fake_neuronpedia_api import FakeNeuronpediaApi, Reply

from unlearn_core.errors import InputError, RemoteServiceError
from unlearn_core.saes.neuronpedia.explanation import API_KEY_ENV, BASE_URL_ENV
from unlearn_core.saes.neuronpedia.search import MAX_QUERY_CHARS, SEARCH_PATH, SearchHit, search_explanations

KEY = "np-search-secret-51ab"
SOURCES = ["12-gemmascope-res-16k", "20-gemmascope-res-16k"]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (BASE_URL_ENV, API_KEY_ENV, "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                 "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture()
def server():
    with FakeNeuronpediaApi(keys={KEY: "u"}) as stub:
        stub.explanations = [
            {"modelId": "gemma-2-2b", "layer": "12-gemmascope-res-16k", "index": 7, "description": "Harry Potter wizard"},
            {"modelId": "gemma-2-2b", "layer": "20-gemmascope-res-16k", "index": 99, "description": "wizard  hats"},
            {"modelId": "gemma-2-2b", "layer": "5-gemmascope-res-16k", "index": 1, "description": "wizard elsewhere"},
            {"modelId": "gemma-2-2b", "layer": "12-gemmascope-res-16k", "index": 8, "description": "cooking recipes"},
        ]
        yield stub


def search(stub: FakeNeuronpediaApi, tmp_path, query: str = "harry potter wizard", **kwargs):
    kwargs.setdefault("backoff", 0.01)
    return search_explanations(query, "gemma-2-2b", kwargs.pop("sources", SOURCES), base_url=stub.url,
                               cache_dir=tmp_path / "search", **kwargs)


def test_results_are_parsed_and_the_request_is_the_apis(server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    hits = search(server, tmp_path, "  harry   potter wizard ", api_key=KEY,
                  sources=["gemma-2-2b/12-gemmascope-res-16k", "20-gemmascope-res-16k"])
    assert hits == [
        SearchHit("gemma-2-2b", "12-gemmascope-res-16k", 7, "Harry Potter wizard", 1.0, server.url),
        SearchHit("gemma-2-2b", "20-gemmascope-res-16k", 99, "wizard hats", 0.6667, server.url),
    ]
    assert hits[0].neuronpedia_id == "gemma-2-2b/12-gemmascope-res-16k"
    assert hits[0].url == f"{server.url}/gemma-2-2b/12-gemmascope-res-16k/7"
    (seen,) = server.requests
    assert (seen.method, seen.path) == ("POST", SEARCH_PATH)
    assert seen.body == {"modelId": "gemma-2-2b", "layers": SOURCES, "query": "harry potter wizard", "offset": 0}
    assert seen.headers.get("x-api-key") == KEY and KEY not in caplog.text


def test_repeated_queries_come_from_the_disk_cache_and_failures_are_not_cached(server, tmp_path):
    server.fail(SEARCH_PATH, Reply(400, {"message": "nope"}))
    with pytest.raises(RemoteServiceError, match="request rejected \\(HTTP 400\\)"):
        search(server, tmp_path)
    first = search(server, tmp_path)
    assert search(server, tmp_path) == first and server.count() == 2  # the third call never asked
    assert search(server, tmp_path, use_cache=False) == first and server.count() == 3
    assert search(server, tmp_path, offset=20) == [] and server.count() == 4
    (cached, *_) = sorted((tmp_path / "search").glob("*.json"))
    cached.write_text("{broken")
    assert len(search(server, tmp_path)) + len(search(server, tmp_path, offset=20)) == 2  # refetched, no crash
    assert all("np-" not in p.read_text() for p in (tmp_path / "search").glob("*.json"))


def test_429_then_ok_is_retried(server, tmp_path):
    server.fail(SEARCH_PATH, Reply(429, {"message": "slow"}, {"Retry-After": "0"}), Reply(503, "down"))
    assert [h.index for h in search(server, tmp_path)] == [7, 99]
    assert server.count(SEARCH_PATH) == 3


def test_5xx_gives_a_clear_message(server, tmp_path):
    server.fail(SEARCH_PATH, *[Reply(503, "<html>down</html>")] * 3)
    with pytest.raises(RemoteServiceError, match="searching Neuronpedia: server error \\(HTTP 503\\)"):
        search(server, tmp_path, retries=2)
    assert server.count(SEARCH_PATH) == 3


@pytest.mark.parametrize("body", [b"<html>not json</html>", json.dumps({"results": "no"}),
                                  json.dumps({"results": [{"modelId": "gemma-2-2b", "layer": "x"}]})])
def test_garbage_gives_a_clear_message(server, tmp_path, body):
    server.fail(SEARCH_PATH, Reply(200, body))
    with pytest.raises(RemoteServiceError, match="searching Neuronpedia: malformed response"):
        search(server, tmp_path)


def test_a_huge_answer_is_refused(server, tmp_path):
    server.fail(SEARCH_PATH, Reply(200, json.dumps({"results": [], "pad": "x" * 5000})))
    with pytest.raises(RemoteServiceError, match="response too large"):
        search(server, tmp_path, max_response_bytes=1000)


@pytest.mark.parametrize(("query", "sources", "message"), [
    ("", SOURCES, "at least 3 characters"),
    ("   ab ", SOURCES, "at least 3 characters"),
    ("x" * (MAX_QUERY_CHARS + 1), SOURCES, "too long"),
    ("wizard", [], "at least one SAE"),
    ("wizard", ["gpt2-small/9-res-jb"], "not gemma-2-2b"),
    ("wizard", ["12 gemmascope"], "Neuronpedia id must be"),
])
def test_bad_arguments_are_input_errors_without_a_request(server, tmp_path, query, sources, message):
    with pytest.raises(InputError, match=message):
        search(server, tmp_path, query, sources=sources)
    assert server.count() == 0
