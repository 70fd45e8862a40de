"""A minimal distribution registry serving one built image, whose largest blob stops halfway
until released: so a test can act (kill a daemon) while a pull is certainly mid-layer."""

from __future__ import annotations

import http.server
import threading
from types import TracebackType
from typing import Any


class StallingRegistry:
    def __init__(self, image: Any, repository: str, tag: str) -> None:
        self.manifest = image.manifest_bytes
        self.manifest_digest = image.digest
        self.media_type = image.manifest.media_type
        self.blobs: dict[str, bytes] = dict(image.blobs)
        self.stall_digest = max(image.layers, key=lambda layer: len(layer.blob)).digest
        self.repository, self.tag = repository, tag
        self.stalled = threading.Event()
        self._released = threading.Event()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def release(self) -> None:
        self._released.set()

    def __enter__(self) -> StallingRegistry:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        registry = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, body: bytes, media_type: str, digest: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", media_type)
                self.send_header("Content-Length", str(len(body)))
                if digest:
                    self.send_header("Docker-Content-Digest", digest)
                self.end_headers()
                if self.command == "HEAD":
                    return
                if digest == registry.stall_digest and not registry._released.is_set():
                    half = len(body) // 2
                    self.wfile.write(body[:half])
                    self.wfile.flush()
                    registry.stalled.set()
                    registry._released.wait(120)
                    body = body[half:]
                self.wfile.write(body)

            def do_GET(self) -> None:
                prefix = f"/v2/{registry.repository}/"
                if self.path == "/v2/":
                    self._send(b"{}", "application/json", "")
                elif self.path in (
                    prefix + f"manifests/{registry.tag}",
                    prefix + f"manifests/{registry.manifest_digest}",
                ):
                    self._send(registry.manifest, registry.media_type, registry.manifest_digest)
                elif (
                    self.path.startswith(prefix + "blobs/") and self.path.rsplit("/", 1)[1] in registry.blobs
                ):
                    digest = self.path.rsplit("/", 1)[1]
                    self._send(registry.blobs[digest], "application/octet-stream", digest)
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

            do_HEAD = do_GET

        return Handler
