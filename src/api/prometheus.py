"""The Prometheus side of ``io.corral.metrics.v1.prometheus`` (registered in ``corral.api.metrics``):
the registry, the request observer and the HTTP exposition. Imported only when ``[metrics] address``
is set, so a daemon without one never loads prometheus-client."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.abc
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from corral.api.edge import CODE_NAMES
from corral.kernel import PluginSet

METRICS_PATH = "/v1/metrics"
MAX_REQUEST = 8192
_LABELS = ("grpc_type", "grpc_service", "grpc_method")


def _split(path: str) -> tuple[str, str]:
    service, _, method = path.lstrip("/").rpartition("/")
    return service, method


class _KernelCollector(Collector):
    """What the kernel and the GC scheduler know, read at each scrape."""

    def __init__(self, plugins: PluginSet, scheduler: Any) -> None:
        self._plugins = plugins
        self._scheduler = scheduler

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        status = GaugeMetricFamily(
            "corral_plugin_status", "1 for each plugin in its status", labels=("plugin", "status")
        )
        init = GaugeMetricFamily(
            "corral_plugin_init_seconds", "How long each plugin's init took", labels=("plugin",)
        )
        for rec in self._plugins.records():
            status.add_metric((rec.uri, rec.status.value), 1)
            if rec.init_seconds is not None:
                init.add_metric((rec.uri,), rec.init_seconds)
        yield status
        yield init
        if self._scheduler is not None:
            collections = CounterMetricFamily("corral_gc_collections", "Garbage collections run")
            collections.add_metric((), getattr(self._scheduler, "collections", 0))
            yield collections
            last = getattr(self._scheduler, "last", None)
            if last is not None:
                pause = GaugeMetricFamily(
                    "corral_gc_last_pause_seconds", "How long the last collection held the metadata store"
                )
                pause.add_metric((), last.seconds)
                yield pause


class PrometheusMetrics:
    """The plugin's instance: a request observer for the gRPC edge, and the scrape endpoint."""

    def __init__(self, *, histogram: bool, plugins: PluginSet, scheduler: Any) -> None:
        self.registry = CollectorRegistry()
        self._started = Counter(
            "grpc_server_started",
            "Total number of RPCs started on the server.",
            _LABELS,
            registry=self.registry,
        )
        self._handled = Counter(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            (*_LABELS, "grpc_code"),
            registry=self.registry,
        )
        self._received = Counter(
            "grpc_server_msg_received", "Total number of RPC stream messages received on the server.",
            _LABELS, registry=self.registry,
        )  # fmt: skip
        self._sent = Counter(
            "grpc_server_msg_sent", "Total number of gRPC stream messages sent by the server.",
            _LABELS, registry=self.registry,
        )  # fmt: skip
        self._seconds = (
            Histogram(
                "grpc_server_handling_seconds",
                "Histogram of response latency (seconds) of gRPC that had been application-level handled"
                " by the server.",
                _LABELS,
                registry=self.registry,
            )
            if histogram
            else None
        )
        self.registry.register(_KernelCollector(plugins, scheduler))

    def request_started(self, method: str, kind: str) -> None:
        service, name = _split(method)
        self._started.labels(kind, service, name).inc()

    def request_finished(
        self, method: str, kind: str, code: int, seconds: float, received: int, sent: int
    ) -> None:
        service, name = _split(method)
        labels = (kind, service, name)
        code_name = CODE_NAMES[code] if 0 <= code < len(CODE_NAMES) else str(code)
        self._handled.labels(*labels, code_name).inc()
        if received:
            self._received.labels(*labels).inc(received)
        if sent:
            self._sent.labels(*labels).inc(sent)
        if self._seconds is not None:
            self._seconds.labels(*labels).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    async def serve(self, listener: anyio.abc.Listener[Any]) -> None:
        async with listener:
            await listener.serve(self._answer)

    async def _answer(self, stream: anyio.abc.ByteStream) -> None:
        """A deliberately small HTTP/1.x responder: GET of the metrics path, anything else 404/405."""
        async with stream:
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                with anyio.fail_after(10):
                    request = await _read_head(stream)
                parts = request.split(b"\r\n", 1)[0].split()
                if len(parts) < 2:
                    await _respond(stream, 400, b"bad request\n")
                elif parts[0] not in (b"GET", b"HEAD"):
                    await _respond(stream, 405, b"method not allowed\n")
                elif parts[1].split(b"?", 1)[0] != METRICS_PATH.encode():
                    await _respond(stream, 404, b"not found\n")
                else:
                    body = self.exposition()
                    await _respond(
                        stream, 200, body if parts[0] == b"GET" else b"", CONTENT_TYPE_LATEST, len(body)
                    )


async def _read_head(stream: anyio.abc.ByteStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data and b"\n\n" not in data:
        chunk = await stream.receive(4096)
        data += chunk
        if len(data) > MAX_REQUEST:
            break
    return data


async def _respond(
    stream: anyio.abc.ByteStream,
    code: int,
    body: bytes,
    content_type: str = "text/plain",
    length: int | None = None,
) -> None:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}[code]
    head = (
        f"HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\nConnection: close\r\n\r\n"
    )
    await stream.send(head.encode() + body)
