"""A loopback stand-in for Neuronpedia's list and explanation-search API, as the ``neuronpedia`` client calls it.

Implemented (all ``POST``, JSON bodies, like the real routes in neuronpedia's ``apps/webapp/app/api``):

* ``/api/list/new`` ``{name, description}`` -> the list with its ``url``; needs a valid ``x-api-key`` (401 else);
* ``/api/list/add-features`` ``{listId, featuresToAdd: [{modelId, layer, index, description}]}`` -> the rows
  added; 400 over 100 features, 403 for another user's list, 404 for an unknown one;
* ``/api/list/get`` ``{listId}`` -> ``{id, name, description, neurons: [{modelId, layer, index, description}]}``;
  the key is optional (a wrong one is 401), 404 for an unknown list;
* ``/api/explanation/search`` ``{modelId, layers, query, offset}`` -> ``{request, results, resultsCount, hasMore,
  nextOffset}``, the stored explanations ranked by words shared with the query (20 per page).

``fail(path, *replies)`` queues scripted answers served before the real handling of that path (e.g. a 429, then
the normal answer). Every request is recorded (method, path, lower-cased headers, parsed body). Binds 127.0.0.1.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PAGE = 20


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: Any = None  # bytes/str sent as is, anything else JSON-encoded
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


class FakeNeuronpediaApi:
    def __init__(self, keys: dict[str, str] | None = None) -> None:
        self.keys = dict(keys or {})  # API key -> user id
        self.lists: dict[str, dict[str, Any]] = {}
        self.explanations: list[dict[str, Any]] = []  # {modelId, layer, index, description}
        self.requests: list[Seen] = []
        self._faults: dict[str, list[Reply]] = {}
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                self._send(Reply(405, {"error": "method not allowed"}))

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", "0") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                headers = {k.lower(): v for k, v in self.headers.items()}
                self._send(stub.handle(self.path, headers, body))

            def _send(self, reply: Reply) -> None:
                if isinstance(reply.body, bytes):
                    data = reply.body
                elif isinstance(reply.body, str):
                    data = reply.body.encode()
                else:
                    data = json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    # -- scripting and inspection ----------------------------------------------------------------------------------
    def fail(self, path: str, *replies: Reply) -> None:
        with self._lock:
            self._faults[path] = list(replies)

    def count(self, path: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if path is None or r.path == path)

    def add_list(self, list_id: str, name: str, neurons: list[dict[str, Any]], owner: str = "someone") -> None:
        with self._lock:
            self.lists[list_id] = {"id": list_id, "name": name, "description": "", "userId": owner,
                                   "neurons": [{**n, "index": str(n["index"]), "listId": list_id} for n in neurons]}

    # -- the API ---------------------------------------------------------------------------------------------------
    def handle(self, path: str, headers: dict[str, str], body: Any) -> Reply:
        with self._lock:
            self.requests.append(Seen("POST", path, headers, body))
            queued = self._faults.get(path)
            if queued:
                return queued.pop(0)
            key = headers.get("x-api-key")
            user = self.keys.get(key) if key else None
            if key and user is None:
                return Reply(401, {"error": "Invalid API key"})
            if not isinstance(body, dict):
                return Reply(400, {"message": "Invalid JSON body"})
            if path == "/api/explanation/search":
                return self._search(body)
            if path == "/api/list/get":
                found = self.lists.get(body.get("listId"))
                if found is None:
                    return Reply(404, {"error": "Not found"})
                return Reply(200, {k: v for k, v in found.items() if k != "userId"})
            if user is None:
                return Reply(401, {"error": "This endpoint requires authorization. Specify your API key in the "
                                            "header x-api-key."})
            if path == "/api/list/new":
                return self._new(body, user)
            if path == "/api/list/add-features":
                return self._add(body, user)
            return Reply(404, {"error": "no such route"})

    def _new(self, body: dict[str, Any], user: str) -> Reply:
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            return Reply(400, {"error": "Name must not be empty"})
        list_id = f"cl{len(self.lists) + 1:06d}"
        self.lists[list_id] = {"id": list_id, "name": name.strip(), "description": body.get("description") or "",
                               "userId": user, "neurons": []}
        return Reply(200, {"id": list_id, "name": name.strip(), "description": body.get("description") or "",
                           "userId": user, "url": f"{self.url}/list/{list_id}"})

    def _add(self, body: dict[str, Any], user: str) -> Reply:
        found = self.lists.get(body.get("listId"))
        features = body.get("featuresToAdd")
        if not isinstance(features, list):
            return Reply(400, {"error": "featuresToAdd must be a list"})
        if len(features) > 100:
            return Reply(400, {"error": "Too many features to add. Max is 100 at a time."})
        if found is None:
            return Reply(404, {"error": "Not found"})
        if found["userId"] != user:
            return Reply(403, {"error": "You do not own this list"})
        rows = []
        for feature in features:
            if not all(isinstance(feature.get(k), str) for k in ("modelId", "layer", "index")):
                return Reply(400, {"error": "modelId, layer and index must be strings"})
            key = (feature["modelId"], feature["layer"], feature["index"])
            if any((n["modelId"], n["layer"], n["index"]) == key for n in found["neurons"]):
                return Reply(500, {"error": "Unique constraint failed"})
            rows.append({"modelId": key[0], "layer": key[1], "index": key[2], "listId": found["id"],
                         "description": feature.get("description"), "userId": user})
        found["neurons"].extend(rows)
        return Reply(200, rows)

    def _search(self, body: dict[str, Any]) -> Reply:
        query, layers, model = body.get("query"), body.get("layers"), body.get("modelId")
        if not isinstance(query, str) or len(query) < 3 or not isinstance(layers, list) or not isinstance(model, str):
            return Reply(400, {"message": "query must be at least 3 characters"})
        words = set(query.lower().split())
        scored = [
            (len(words & set(e["description"].lower().split())) / max(len(words), 1), e)
            for e in self.explanations
            if e["modelId"] == model and e["layer"] in layers
        ]
        scored = [(s, e) for s, e in scored if s > 0]
        scored.sort(key=lambda pair: -pair[0])
        offset = int(body.get("offset") or 0)
        page = scored[offset:offset + PAGE]
        results = [{**e, "index": str(e["index"]), "explanationModelName": "gpt-4o-mini", "typeName": "oai_token-act-pair",
                    "cosine_similarity": round(0.5 + s / 2, 4), "neuron": {"activations": []}} for s, e in page]
        more = len(page) == PAGE
        return Reply(200, {"request": body, "results": results, "resultsCount": len(results), "hasMore": more,
                           "nextOffset": offset + len(page) if more else None})

    def __enter__(self) -> FakeNeuronpediaApi:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
