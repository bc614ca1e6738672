"""A loopback stand-in for Neuronpedia's feature API, scripted per path.

Each path maps to a list of :class:`Reply` objects used in order, the last one repeated; paths without a script
get ``fallback(path)`` or a 404. Every request is recorded (path and headers). Only for tests; binds 127.0.0.1
on a free port.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: Any = None  # bytes/str sent as is, anything else JSON-encoded
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to sleep before answering
    send_length: bool = True  # False: no Content-Length, the body ends when the connection closes


def feature(description: str | None = None, frac_nonzero: float | None = 0.01, max_act: float | None = 3.5) -> Reply:
    """A 200 answer shaped like Neuronpedia's (with some of the many other fields it carries)."""
    explanations = [] if description is None else [{"description": description, "typeName": "oai_token-act-pair"}]
    body = {
        "modelId": "gemma-3-270m",
        "layer": "12-gemmascope-2-res-16k",
        "index": "0",
        "explanations": explanations,
        "frac_nonzero": frac_nonzero,
        "maxActApprox": max_act,
        "activations": [{"tokens": ["a", "b"], "values": [0.0, 1.0]}],
    }
    return Reply(body=body)


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]  # lower-cased names


class FakeNeuronpedia:
    def __init__(self, routes: dict[str, list[Reply]] | None = None,
                 fallback: Callable[[str], Reply | None] | None = None) -> None:
        self.routes: dict[str, list[Reply]] = dict(routes or {})
        self.fallback = fallback
        self.requests: list[Request] = []
        self._served: dict[str, int] = {}
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                reply = stub._next(self.path, {k.lower(): v for k, v in self.headers.items()})
                if reply.delay:
                    time.sleep(reply.delay)
                body = reply.body
                if body is None:
                    data = b""
                elif isinstance(body, bytes):
                    data = body
                elif isinstance(body, str):
                    data = body.encode()
                else:
                    data = json.dumps(body).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    if reply.send_length:
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # a short poll interval keeps shutdown() (and so each test) fast
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def _next(self, path: str, headers: dict[str, str]) -> Reply:
        with self._lock:
            self.requests.append(Request(path, headers))
            script = self.routes.get(path)
            if not script:
                reply = self.fallback(path) if self.fallback else None
                return reply if reply is not None else Reply(404, {"message": "not found"})
            n = self._served.get(path, 0)
            self._served[path] = n + 1
            return script[min(n, len(script) - 1)]

    def script(self, path: str, *replies: Reply) -> None:
        """(Re)script one path; its replies start from the first again."""
        with self._lock:
            self.routes[path] = list(replies)
            self._served.pop(path, None)

    def count(self, path: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if path is None or r.path == path)

    def __enter__(self) -> FakeNeuronpedia:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
