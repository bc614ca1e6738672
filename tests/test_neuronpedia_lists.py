"""Feature lists to and from Neuronpedia lists, through the official client, against a loopback stand-in."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
from standins.fake_neuronpedia_api import FakeNeuronpediaApi, Reply

from unlearn_core.cli import main
from unlearn_core.errors import FeatureListError, InputError, RemoteServiceError
from unlearn_core.forget_set import FeatureList, Latent, SaeEntry, load_feature_list, now_iso
from unlearn_core.forget_set.neuronpedia import export_feature_list, import_neuronpedia_list, list_features
from unlearn_core.saes.neuronpedia.explanation import API_KEY_ENV, BASE_URL_ENV
from unlearn_core.saes.neuronpedia.lists import parse_list_ref

KEY = "np-list-secret-7d1e"
MODEL = "google/gemma-2-2b"


def entry(layer: int, ids: list[int], neuronpedia: bool = True) -> SaeEntry:
    return SaeEntry(
        sae=f"gemma-scope-2b-pt-res-canonical/layer_{layer}/width_16k/canonical",
        hook_name=f"blocks.{layer}.hook_resid_post",
        layer=layer,
        neuronpedia=f"gemma-2-2b/{layer}-gemmascope-res-16k" if neuronpedia else None,
        latents=[Latent(id=i, note=f"note {i}" if i % 2 else None, label="wizard" if i == 4 else None) for i in ids],
    )


def forget_set(*entries: SaeEntry) -> FeatureList:
    stamp = now_iso()
    return FeatureList(name="HP names", description="Harry Potter names", model=MODEL, saes=list(entries),
                       created=stamp, updated=stamp)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (BASE_URL_ENV, API_KEY_ENV, "USE_LOCALHOST", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy",
                 "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture()
def server():
    with FakeNeuronpediaApi(keys={KEY: "user-1"}) as stub:
        yield stub


def test_export_then_import_round_trips_a_forget_set(server, caplog):
    caplog.set_level(logging.DEBUG)
    fl = forget_set(entry(12, [3, 4, 5]), entry(20, list(range(100, 250))))  # 153 latents: two add-features calls
    done = []
    exported = export_feature_list(fl, base_url=server.url, api_key=KEY, progress=lambda d, t: done.append((d, t)))

    assert exported.url == f"{server.url}/list/{exported.list_id}" and exported.features == 153
    assert done == [(100, 153), (153, 153)]
    new, *adds = server.requests
    assert (new.method, new.path, new.body) == ("POST", "/api/list/new", {"name": "HP names",
                                                                          "description": "Harry Potter names"})
    assert [a.path for a in adds] == ["/api/list/add-features"] * 2
    assert all(r.headers.get("x-api-key") == KEY for r in server.requests)
    first = adds[0].body
    assert first["listId"] == exported.list_id and len(first["featuresToAdd"]) == 100
    assert first["featuresToAdd"][:3] == [
        {"modelId": "gemma-2-2b", "layer": "12-gemmascope-res-16k", "index": "3", "description": "note 3"},
        {"modelId": "gemma-2-2b", "layer": "12-gemmascope-res-16k", "index": "4", "description": "wizard"},
        {"modelId": "gemma-2-2b", "layer": "12-gemmascope-res-16k", "index": "5", "description": "note 5"},
    ]

    imported = import_neuronpedia_list(exported.url, base_url=server.url, api_key=KEY)
    assert server.requests[-1].path == "/api/list/get" and server.requests[-1].body == {"listId": exported.list_id}
    back = imported.feature_list
    assert imported.skipped == () and imported.url == exported.url
    assert back.model == MODEL and back.name == "HP names" and exported.url in back.description
    assert [(e.sae, e.hook_name, e.layer, e.neuronpedia, e.latent_ids) for e in back.saes] == [
        (e.sae, e.hook_name, e.layer, e.neuronpedia, e.latent_ids) for e in fl.saes
    ]
    assert [lat.note for lat in back.saes[0].latents] == ["note 3", "wizard", "note 5"]
    assert KEY not in caplog.text and "Sending POST request" in caplog.text  # the client's prints, logged


def test_an_entry_without_neuronpedia_id_is_looked_up_and_unhosted_saes_refused(server):
    fl = forget_set(entry(12, [1], neuronpedia=False))
    features, skipped = list_features(fl)
    assert features[0].neuronpedia_id == "gemma-2-2b/12-gemmascope-res-16k" and skipped == ()

    offline = SaeEntry("saes/gemma-3-270m/layer_12_width_4k", "blocks.12.hook_resid_post", 12, None, [Latent(id=1)])
    mixed = FeatureList("offline", "", "google/gemma-3-270m", [offline], now_iso(), now_iso())
    with pytest.raises(InputError, match="does not host 1 SAE.*layer_12_width_4k"):
        export_feature_list(mixed, base_url=server.url, api_key=KEY)
    with pytest.raises(InputError, match="nothing to export"):
        export_feature_list(mixed, base_url=server.url, api_key=KEY, skip_unhosted=True)
    assert server.count() == 0


def test_no_key_is_a_clear_input_error_before_any_request(server):
    fl = forget_set(entry(12, [1]))
    with pytest.raises(InputError, match=f"needs a Neuronpedia API key: set {API_KEY_ENV}"):
        export_feature_list(fl, base_url=server.url)
    with pytest.raises(InputError, match="API key"):
        import_neuronpedia_list("cl000001", base_url=server.url)
    with pytest.raises(InputError, match="spaces or control characters"):
        export_feature_list(fl, base_url=server.url, api_key="abc\r\nX-Evil: 1")
    assert server.count() == 0


def test_401_says_check_the_key_and_never_shows_it(server, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "np-wrong-key-0000"
    with pytest.raises(RemoteServiceError, match=f"did not accept the API key \\(HTTP 401\\); check {API_KEY_ENV}") as err:
        export_feature_list(forget_set(entry(12, [1])), base_url=server.url, api_key=wrong)
    assert wrong not in str(err.value) and wrong not in caplog.text
    assert server.count("/api/list/new") == 1  # not retried


def test_429_is_retried_then_succeeds_or_says_so(server):
    server.fail("/api/list/new", Reply(429, {"error": "slow down"}, {"Retry-After": "0"}))
    exported = export_feature_list(forget_set(entry(12, [1])), base_url=server.url, api_key=KEY, backoff=0.01)
    assert server.count("/api/list/new") == 2 and exported.features == 1

    server.fail("/api/list/get", *[Reply(429, {"error": "slow down"})] * 3)
    with pytest.raises(RemoteServiceError, match="rate-limited the request \\(HTTP 429, 3 tries\\)"):
        import_neuronpedia_list(exported.list_id, base_url=server.url, api_key=KEY, retries=2, backoff=0.01)
    with pytest.raises(RemoteServiceError, match="rate-limited.*retrying after"):  # the site's breaker is open now
        import_neuronpedia_list(exported.list_id, base_url=server.url, api_key=KEY, backoff=0.01)
    assert server.count("/api/list/get") == 3


def test_fetch_retries_5xx_but_create_never_resends(server):
    server.add_list("cl-abc", "shared", [{"modelId": "gemma-2-2b", "layer": "12-gemmascope-res-16k", "index": 9}])
    server.fail("/api/list/get", Reply(503, "<html>down</html>"))
    imported = import_neuronpedia_list("https://www.neuronpedia.org/list/cl-abc", base_url=server.url, api_key=KEY,
                                       backoff=0.01)
    assert imported.feature_list.saes[0].latent_ids == [9] and server.count("/api/list/get") == 2

    server.fail("/api/list/new", Reply(502, "bad gateway"))
    with pytest.raises(RemoteServiceError, match="server error \\(HTTP 502\\); try again later"):
        export_feature_list(forget_set(entry(12, [1])), base_url=server.url, api_key=KEY, backoff=0.01)
    assert server.count("/api/list/new") == 1


def test_404_garbage_and_unreachable_are_clear(server):
    with pytest.raises(RemoteServiceError, match="has no list 'nope' \\(HTTP 404\\)"):
        import_neuronpedia_list("nope", base_url=server.url, api_key=KEY)
    server.fail("/api/list/get", Reply(200, b"not json at all"))
    with pytest.raises(RemoteServiceError, match="malformed answer"):
        import_neuronpedia_list("nope", base_url=server.url, api_key=KEY)
    server.fail("/api/list/add-features", Reply(403, {"error": "You do not own this list"}))
    with pytest.raises(RemoteServiceError, match=r"HTTP 403\): You do not own this list.*list http://127\.0\.0\.1:\d+"
                                                 r"/list/cl\w+ was created with 0 of 1 features"):
        export_feature_list(forget_set(entry(12, [1])), base_url=server.url, api_key=KEY)
    with pytest.raises(RemoteServiceError, match="unreachable \\(connection refused\\)"):
        import_neuronpedia_list("abc", base_url="http://127.0.0.1:9", api_key=KEY, retries=0)


def test_a_redirect_is_not_followed_so_the_key_stays_home(server):
    with FakeNeuronpediaApi(keys={KEY: "u"}) as other:
        server.fail("/api/list/get", Reply(307, b"", {"Location": f"{other.url}/api/list/get"}))
        with pytest.raises(RemoteServiceError, match="redirect \\(HTTP 307\\) to 127.0.0.1"):
            import_neuronpedia_list("abc", base_url=server.url, api_key=KEY)
        assert other.count() == 0


def test_unknown_sources_and_other_models_are_reported_not_dropped(server, monkeypatch):
    directory = {"gemma-scope-2b-pt-att-canonical": SimpleNamespace(
        model="gemma-2-2b", neuronpedia_id={"layer_3/width_16k/canonical": "gemma-2-2b/3-gemmascope-att-16k"},
        config_overrides=None)}
    monkeypatch.setattr("unlearn_core.saes.loading._pretrained_directory", lambda: directory)
    server.add_list("cl-mix", "mixed", [
        {"modelId": "gemma-2-2b", "layer": "12-gemmascope-res-16k", "index": 5, "description": "wands"},
        {"modelId": "gemma-2-2b", "layer": "7-mystery-res-1k", "index": 1},
        {"modelId": "gemma-2-2b", "layer": "3-gemmascope-att-16k", "index": 2},
        {"modelId": "gpt2-small", "layer": "9-res-jb", "index": 3},
        {"modelId": "gemma-2-2b", "layer": "12-gemmascope-res-16k", "index": "x"},
    ])
    imported = import_neuronpedia_list("cl-mix", base_url=server.url, api_key=KEY)
    assert [(e.layer, e.latent_ids, e.latents[0].note) for e in imported.feature_list.saes] == [(12, [5], "wands")]
    reasons = {s.text() for s in imported.skipped}
    assert len(reasons) == 4
    assert any("7-mystery-res-1k #1: no SAE known to this project" in r for r in reasons)
    assert any("3-gemmascope-att-16k #2: " in r and "only residual-stream SAEs" in r for r in reasons)
    assert any("gpt2-small/9-res-jb #3: " in r and "not of google/gemma-2-2b" in r for r in reasons)
    assert any("index 'x' is not a latent index" in r for r in reasons)

    server.add_list("cl-none", "none of ours", [{"modelId": "gpt2-small", "layer": "9-res-jb", "index": 3}])
    with pytest.raises(FeatureListError, match="no feature of a model this project loads \\(it has gpt2-small\\)"):
        import_neuronpedia_list("cl-none", base_url=server.url, api_key=KEY)


def test_a_latent_out_of_range_refuses_the_import(server):
    server.add_list("cl-big", "too big", [{"modelId": "gemma-2-2b", "layer": "12-gemmascope-res-16k", "index": 1},
                                          {"modelId": "gemma-2-2b", "layer": "12-gemmascope-res-16k", "index": 16384}])
    with pytest.raises(FeatureListError, match="#16384 \\(the SAE has latents 0..16383\\)"):
        import_neuronpedia_list("cl-big", base_url=server.url, api_key=KEY)


def test_list_refs():
    assert parse_list_ref(" cm4x_9-Z ") == "cm4x_9-Z"
    assert parse_list_ref("https://www.neuronpedia.org/list/cm4x9") == "cm4x9"
    assert parse_list_ref("neuronpedia.org/list/cm4x9?tab=1") == "cm4x9"
    for bad in ("", "https://www.neuronpedia.org/gemma-2-2b/12-gemmascope-res-16k/5", "a b", "../x"):
        with pytest.raises(InputError):
            parse_list_ref(bad)


def test_cli_np_export_and_np_import(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(BASE_URL_ENV, server.url)
    monkeypatch.setenv(API_KEY_ENV, KEY)
    source = tmp_path / "hp.json"
    source.write_text(json.dumps(forget_set(entry(12, [3, 4])).to_dict()))
    assert main(["np-export", str(source)]) == 0
    url = capsys.readouterr().out.strip()
    assert url.startswith(f"{server.url}/list/")

    out = tmp_path / "feature_lists" / "from_np.json"
    out.parent.mkdir()
    assert main(["np-import", url, "--out", str(out)]) == 0
    assert load_feature_list(out).saes[0].latent_ids == [3, 4]
    assert main(["np-import", url, "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["np-import", url, "--out", str(out), "--force"]) == 0

    monkeypatch.delenv(API_KEY_ENV)
    assert main(["np-import", url, "--out", str(out), "--force"]) == 2
    err = capsys.readouterr().err
    assert "needs a Neuronpedia API key" in err and KEY not in err


def _panel_page(hosted: bool) -> None:
    """The panel on its own, with a hosted (Gemma Scope) or an offline forget set; shows what an import returned."""
    import streamlit as st

    from app_support.neuronpedia_panel import render_neuronpedia_lists
    from unlearn_core.forget_set import FeatureList, Latent, SaeEntry, now_iso

    if hosted:
        entry = SaeEntry("gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical", "blocks.12.hook_resid_post", 12,
                         "gemma-2-2b/12-gemmascope-res-16k", [Latent(id=3, note="wands")])
        fl = FeatureList("HP", "", "google/gemma-2-2b", [entry], now_iso(), now_iso())
    else:
        entry = SaeEntry("saes/gemma-3-270m/layer_12_width_4k", "blocks.12.hook_resid_post", 12, None, [Latent(id=1)])
        fl = FeatureList("offline", "", "google/gemma-3-270m", [entry], now_iso(), now_iso())
    got = render_neuronpedia_lists(fl, fl.model)
    if got is not None:
        st.code(f"imported {got.name}: {got.saes[0].latent_ids}")


def test_app_panel_exports_and_imports(server, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv(BASE_URL_ENV, server.url)
    at = AppTest.from_function(_panel_page, args=(False,), default_timeout=60)
    at.run()
    assert not at.exception
    assert at.button(key="np_lists_export").disabled
    assert any("does not host 1 of this list" in c.value for c in at.caption)

    at = AppTest.from_function(_panel_page, args=(True,), default_timeout=60)
    at.run()
    assert at.button(key="np_lists_export").disabled and any("needs a Neuronpedia API key" in c.value for c in at.caption)
    at.text_input(key="np_lists_key").input(KEY)
    at.run()
    assert not at.button(key="np_lists_export").disabled
    at.button(key="np_lists_export").click()
    at.run()
    assert not at.exception and not at.error
    url = at.text[0].value
    assert url.startswith(f"{server.url}/list/") and KEY not in str([m.value for m in [*at.markdown, *at.caption, *at.success]])
    at.text_input(key="np_lists_import_ref").input(url)
    at.run()
    at.button(key="np_lists_import").click()
    at.run()
    assert not at.error and at.code[0].value == "imported HP: [3]"
