"""io.corral.metrics.v1.prometheus — Prometheus metrics at ``[metrics] address``, path ``/v1/metrics``.

The gRPC metrics carry containerd's names (go-grpc-prometheus: ``grpc_server_started_total``,
``grpc_server_handled_total``, ``grpc_server_msg_received_total``, ``grpc_server_msg_sent_total``
and, with ``grpc_histogram = true``, ``grpc_server_handling_seconds``), so dashboards built for
containerd keep working. corral adds what its kernel knows: each plugin's status and init time,
and the garbage collector's collections and pauses. The address is ``host:port`` (TCP, as
containerd's) or a unix socket path (``/path`` or ``unix:///path``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from corral.api.edge import CODE_NAMES
from corral.kernel import (
    PROPERTY_METRICS_ADDRESS,
    PROPERTY_METRICS_HISTOGRAM,
    InitContext,
    PluginSet,
    Registration,
    SkipPlugin,
)
from corral.plugins import types

METRICS_PATH = "/v1/metrics"
MAX_REQUEST = 8192
_LABELS = ("grpc_type", "grpc_service", "grpc_method")

log = structlog.get_logger("corral.metrics")


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


async def _listen(address: str) -> anyio.abc.Listener[Any]:
    if address.startswith("unix://"):
        address = address[len("unix://") :]
    if address.startswith("/"):
        path = Path(address)
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        listener = await anyio.create_unix_listener(path)
        os.chmod(path, 0o660)
        return listener
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"[metrics] address {address!r}: expected host:port or a unix socket path")
    return await anyio.create_tcp_listener(local_host=host or None, local_port=int(port))


async def init(ic: InitContext) -> PrometheusMetrics:
    address = ic.properties.get(PROPERTY_METRICS_ADDRESS, "")
    if not address:
        raise SkipPlugin("no [metrics] address in config.toml")
    schedulers = ic.get_by_type(types.GC)
    metrics = PrometheusMetrics(
        histogram=ic.properties.get(PROPERTY_METRICS_HISTOGRAM) == "true",
        plugins=ic.plugins,
        scheduler=next(iter(schedulers.values()), None),
    )
    # Bound here, so an address that cannot be used fails the plugin (naming it) rather than later.
    listener = await _listen(address)
    log.info("metrics_listening", address=address, path=METRICS_PATH)

    async def serve() -> None:
        await metrics.serve(listener)

    ic.start_soon(serve, "metrics")
    ic.meta.exports["address"] = address
    return metrics


registration = Registration(
    type="io.corral.metrics.v1",
    id="prometheus",
    init=init,
    after=(types.GC,),
    description="Prometheus metrics (containerd's gRPC metric names, plugin and GC metrics) at [metrics] address",
)
