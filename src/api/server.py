"""The grpclib server: every gRPC plugin's services on one unix socket.

Each handler runs with the request's namespace bound and its errors translated to gRPC
statuses here, so service plugins stay thin.
"""

from __future__ import annotations

import binascii
import contextlib
import os
import stat
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import hyperframe.frame
import structlog
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server, Stream

from corral.api.errors import status_for
from corral.api.types.google import protobuf
from corral.kernel import CorralError, PluginRecord, PluginUnavailable, bound_namespace
from corral.plugins.metadata._leases import LEASE_HEADER, bound_lease

log = structlog.get_logger("corral.grpc")


def _short_data_repr(data: bytes | None) -> str:
    if not data:
        return "None"
    shown = binascii.hexlify(data[:11]).decode("ascii")
    return "<hex:" + (shown[:20] + "..." if len(shown) > 20 else shown) + ">"


# h2 formats every received frame for a trace log line it then discards, and hyperframe hexes the
# whole payload (16 KiB per DATA frame) to keep 20 characters: a quarter of the event loop's time
# during a large ingest. Hex only what is shown; the text is the same.
if hasattr(hyperframe.frame, "_raw_data_repr"):
    hyperframe.frame._raw_data_repr = _short_data_repr

NAMESPACE_HEADER = "containerd-namespace"

StreamHandler = Callable[[Stream[Any, Any]], Coroutine[Any, Any, None]]


@runtime_checkable
class GRPCServicePlugin(Protocol):
    """What an ``io.containerd.grpc.v1`` plugin's instance offers: grpclib service objects."""

    def grpc_services(self) -> Iterable[Any]: ...


def _wrap(path: str, func: StreamHandler) -> StreamHandler:
    async def handle(stream: Stream[Any, Any]) -> None:
        metadata: Mapping[str, Any] = stream.metadata or {}
        ns, lease = metadata.get(NAMESPACE_HEADER), metadata.get(LEASE_HEADER)
        try:
            with bound_namespace(str(ns) if ns else None), bound_lease(str(lease) if lease else None):
                await func(stream)
        except (CorralError, PluginUnavailable) as exc:
            raise GRPCError(status_for(exc), str(exc)) from None
        except GRPCError:
            raise
        except Exception as exc:
            log.exception("grpc_handler_failed", method=path)
            raise GRPCError(Status.UNKNOWN, f"{type(exc).__name__}: {exc}") from None

    return handle


class _Unimplemented:
    """grpc-go's answer for unknown paths, sent through the normal trailers (with content-type)."""

    @staticmethod
    def handler(path: str) -> Handler:
        service, _, method = path.lstrip("/").rpartition("/")

        async def reply(stream: Stream[Any, Any]) -> None:
            raise GRPCError(Status.UNIMPLEMENTED, f"unknown method {method} for service {service}")

        return Handler(reply, Cardinality.UNARY_UNARY, protobuf.Empty, protobuf.Empty)


class _Mapping(dict[str, Handler]):
    """Known paths map to wrapped handlers; unknown ones to an Unimplemented handler.

    grpclib's own reply for an unknown path has no content-type header, which grpc-go reads as
    a transport error, losing the Unimplemented status that clients fall back on.
    """

    def __init__(self, handlers: Mapping[str, Handler]) -> None:
        super().__init__(handlers)
        self._services = {p.lstrip("/").rpartition("/")[0] for p in handlers}

    def get(self, key: str, default: Any = None) -> Handler:
        found = super().get(key)
        if found is not None:
            return found
        service = key.lstrip("/").rpartition("/")[0]
        if service not in self._services:
            return Handler(_unknown_service(service), Cardinality.UNARY_UNARY, protobuf.Empty, protobuf.Empty)
        return _Unimplemented.handler(key)


def _unknown_service(service: str) -> StreamHandler:
    async def reply(stream: Stream[Any, Any]) -> None:
        raise GRPCError(Status.UNIMPLEMENTED, f"unknown service {service}")

    return reply


def build_mapping(records: Iterable[PluginRecord]) -> dict[str, Handler]:
    """Collect the handlers of every ok gRPC plugin, in start order; a path served twice is an error."""
    mapping: dict[str, Handler] = {}
    owner: dict[str, str] = {}
    for rec in records:
        if not rec.ok or not isinstance(rec.instance, GRPCServicePlugin):
            continue
        for service in rec.instance.grpc_services():
            for path, handler in service.__mapping__().items():
                if path in mapping:
                    raise RuntimeError(f"{path} is served by both {owner[path]} and {rec.uri}")
                owner[path] = rec.uri
                mapping[path] = handler._replace(func=_wrap(path, handler.func))
    return mapping


class _MappedServer(Server):
    def __init__(self, mapping: Mapping[str, Handler]) -> None:
        super().__init__([])
        self._mapping = _Mapping(mapping)


@contextlib.asynccontextmanager
async def serve_unix(
    mapping: Mapping[str, Handler], address: str, *, mode: int = 0o660, uid: int = -1, gid: int = -1
) -> AsyncIterator[Server]:
    """Listen on ``address`` with the given mode and owner; remove the socket afterwards."""
    path = Path(address)
    path.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    server = _MappedServer(mapping)
    # The socket is the security boundary: never briefly world-accessible.
    old = os.umask(0o777 & ~mode)
    try:
        await server.start(path=str(path))
    finally:
        os.umask(old)
    os.chmod(path, mode)
    if uid >= 0 or gid >= 0:
        os.chown(path, uid, gid)
    log.info("grpc_listening", address=str(path), mode=oct(mode))
    try:
        yield server
    finally:
        server.close()
        await server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
