"""A loopback stand-in for the Hugging Face hub's file endpoints (``/{repo}/resolve/{rev}/{path}``).

Serves in-memory files with the headers huggingface_hub expects (commit hash, ETag, size), supports HTTP Range
requests (sae_lens reads safetensors headers that way), and can be told to answer some paths with an error status.
Only for tests; binds 127.0.0.1 on a free port.
"""

from __future__ import annotations

import hashlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, files: dict[str, bytes], fail: dict[str, int] | None = None) -> None:
        self.files = files  # "owner/repo/path/in/repo" -> bytes
        self.fail = fail or {}
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def _lookup(self) -> tuple[int, bytes | None]:
                hub.requests.append(f"{self.command} {self.path}")
                match = re.match(r"^/(?:api/models/)?([^/]+/[^/]+)/resolve/[^/]+/(.+?)(\?.*)?$", self.path)
                if match is None:
                    return 404, None
                key = f"{match.group(1)}/{match.group(2)}"
                for pattern, status in hub.fail.items():
                    if pattern in key:
                        return status, None
                data = hub.files.get(key)
                return (200, data) if data is not None else (404, None)

            def _headers(self, status: int, data: bytes | None, body_len: int) -> None:
                self.send_response(status)
                if data is not None:
                    self.send_header("X-Repo-Commit", COMMIT)
                    etag = hashlib.sha256(data).hexdigest()
                    self.send_header("ETag", f'"{etag}"')
                    self.send_header("X-Linked-Etag", f'"{etag}"')
                    self.send_header("X-Linked-Size", str(len(data)))
                    self.send_header("Accept-Ranges", "bytes")
                else:
                    self.send_header("X-Error-Code", "EntryNotFound" if status == 404 else "ServerError")
                    if status == 429:
                        self.send_header("Retry-After", "0")
                self.send_header("Content-Length", str(body_len))
                self.end_headers()

            def do_HEAD(self) -> None:  # noqa: N802 - http.server API
                status, data = self._lookup()
                self._headers(status, data, len(data) if data is not None else 0)

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                status, data = self._lookup()
                if data is None:
                    self._headers(status, None, 0)
                    return
                rng = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                if rng:
                    start = int(rng.group(1))
                    end = int(rng.group(2)) if rng.group(2) else len(data) - 1
                    body = data[start : end + 1]
                    self._headers(206, data, len(body))
                    self.wfile.write(body)
                    return
                self._headers(200, data, len(data))
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
