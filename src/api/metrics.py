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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import structlog

from corral.kernel import (
    PROPERTY_METRICS_ADDRESS,
    PROPERTY_METRICS_HISTOGRAM,
    InitContext,
    Registration,
    SkipPlugin,
)
from corral.plugins import types

if TYPE_CHECKING:
    from corral.api.prometheus import PrometheusMetrics

log = structlog.get_logger("corral.metrics")


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
    from corral.api.prometheus import METRICS_PATH, PrometheusMetrics  # only when it is wanted

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
