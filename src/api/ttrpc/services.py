"""corrald's own ttrpc server at ``<grpc address>.ttrpc``: every plugin's ttrpc services on it.

As containerd's plugins implement ``TTRPCService``, a plugin whose instance has
``register_ttrpc(server)`` adds its handlers here; shims reach the daemon this way (Events/Forward).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from corral.api.edge import RequestTracer, provides
from corral.api.ttrpc.server import TTRPCServer
from corral.kernel import PluginRecord


@runtime_checkable
class TTRPCServicePlugin(Protocol):
    """What a plugin's instance offers to serve over ttrpc."""

    def register_ttrpc(self, server: TTRPCServer) -> None: ...


def build_ttrpc_server(records: Iterable[PluginRecord]) -> TTRPCServer:
    """A server with the handlers of every ok plugin that registers some, in start order; every ok
    ``RequestTracer`` (tracing) serves each request in a span."""
    records = list(records)
    server = TTRPCServer(
        tracers=[r.instance for r in records if r.ok and provides(r.instance, RequestTracer)]
    )
    for rec in records:
        if rec.ok and provides(rec.instance, TTRPCServicePlugin):
            rec.instance.register_ttrpc(server)
    return server
