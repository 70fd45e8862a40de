"""The gRPC server: every gRPC plugin's services on one unix socket.

Each handler runs with the request's namespace and lease bound and its errors turned into
statuses by the shared edge (``corral.api.edge``), so service plugins stay thin.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import structlog
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError

from corral.api.edge import RequestObserver, RequestTracer, bound_request, provides, status_of
from corral.api.grpc._grpclib import StreamHandler, UnimplementedMapping
from corral.api.grpc._http2 import GRPCServer as GRPCServer
from corral.api.grpc._http2 import ServerStream as ServerStream
from corral.api.grpc.codec import RequestCodec, UndecodableRequest
from corral.kernel import PluginRecord

log = structlog.get_logger("corral.grpc")


@runtime_checkable
class GRPCServicePlugin(Protocol):
    """What an ``io.containerd.grpc.v1`` plugin's instance offers: grpclib service objects."""

    def grpc_services(self) -> Iterable[Any]: ...


_KINDS = {
    Cardinality.UNARY_UNARY: "unary",
    Cardinality.STREAM_UNARY: "client_stream",
    Cardinality.UNARY_STREAM: "server_stream",
    Cardinality.STREAM_STREAM: "bidi_stream",
}


def _wrap(path: str, func: StreamHandler, cardinality: Cardinality) -> StreamHandler:
    client_streaming = cardinality in (Cardinality.STREAM_UNARY, Cardinality.STREAM_STREAM)

    async def handle(stream: ServerStream) -> None:
        try:
            with bound_request(stream.metadata or {}):
                await func(stream)
        except GRPCError:
            raise
        except UndecodableRequest as exc:
            # grpc-go's words, which differ between a unary request and a stream's messages.
            text = (
                "failed to unmarshal the received message"
                if client_streaming
                else "error unmarshalling request:"
            )
            raise GRPCError(Status.INTERNAL, f"grpc: {text} {exc}") from None
        except Exception as exc:
            code, message = status_of(exc, path)
            raise GRPCError(Status(code), message) from None

    return handle


class _CountingStream:
    """A stream seen through by observers: messages each way are counted."""

    def __init__(self, stream: ServerStream) -> None:
        self._stream = stream
        self.received = 0
        self.sent = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    async def recv_message(self) -> Any:
        message = await self._stream.recv_message()
        if message is not None:
            self.received += 1
        return message

    async def send_message(self, message: Any, **kwargs: Any) -> None:
        await self._stream.send_message(message, **kwargs)
        self.sent += 1


def _observed(
    path: str, kind: str, func: StreamHandler, observers: Sequence[RequestObserver]
) -> StreamHandler:
    async def handle(stream: ServerStream) -> None:
        for observer in observers:
            observer.request_started(path, kind)
        counting = _CountingStream(stream)
        started = time.perf_counter()
        code = 0
        try:
            await func(counting)
        except GRPCError as exc:
            code = exc.status.value
            raise
        except BaseException:
            code = 1  # cancelled: the client went away
            raise
        finally:
            seconds = time.perf_counter() - started
            for observer in observers:
                observer.request_finished(path, kind, code, seconds, counting.received, counting.sent)

    return handle


def _traced(path: str, func: StreamHandler, tracer: RequestTracer) -> StreamHandler:
    async def handle(stream: ServerStream) -> None:
        with tracer.request_span("grpc", path, stream.metadata or {}) as span:
            code, message = 0, ""
            try:
                await func(stream)
            except GRPCError as exc:
                code, message = exc.status.value, exc.message or ""
                raise
            except BaseException:
                code, message = 1, "context canceled"  # the client went away
                raise
            finally:
                span.finish(code, message)

    return handle


def build_mapping(records: Iterable[PluginRecord]) -> dict[str, Handler]:
    """Collect the handlers of every ok gRPC plugin, in start order; a path served twice is an error.

    Every ok plugin that is a ``RequestObserver`` sees each request (metrics), and every ok
    ``RequestTracer`` serves each request in a span of its own (tracing)."""
    records = list(records)
    observers = [r.instance for r in records if r.ok and provides(r.instance, RequestObserver)]
    tracers = [r.instance for r in records if r.ok and provides(r.instance, RequestTracer)]
    mapping: dict[str, Handler] = {}
    owner: dict[str, str] = {}
    for rec in records:
        if not rec.ok or not provides(rec.instance, GRPCServicePlugin):
            continue
        for service in rec.instance.grpc_services():
            for path, handler in service.__mapping__().items():
                if path in mapping:
                    raise RuntimeError(f"{path} is served by both {owner[path]} and {rec.uri}")
                owner[path] = rec.uri
                func = _wrap(path, handler.func, handler.cardinality)
                if observers:
                    func = _observed(path, _KINDS[handler.cardinality], func, observers)
                for tracer in tracers:
                    func = _traced(path, func, tracer)
                mapping[path] = handler._replace(func=func)
    return mapping


def listen_backlog() -> int:
    """The kernel's limit on pending connections (``net.core.somaxconn``), as Go's listeners use.

    A backlog of 100 (grpclib's default) makes a burst of clients (200 ``ctr`` processes started together)
    find the queue full: their connects fail with EAGAIN and grpc-go retries them after a back-off
    of a second, past ``ctr``'s dial timeout."""
    try:
        with open("/proc/sys/net/core/somaxconn") as limit:
            return max(int(limit.read()), 128)
    except (OSError, ValueError):
        return 4096


@contextlib.asynccontextmanager
async def serve_unix(
    mapping: Mapping[str, Handler], address: str, *, mode: int = 0o660, uid: int = -1, gid: int = -1
) -> AsyncIterator[GRPCServer]:
    """Listen on ``address`` with the given mode and owner; remove the socket afterwards."""
    path = Path(address)
    path.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    server = GRPCServer(UnimplementedMapping(mapping).get, RequestCodec())
    # The socket is the security boundary: never briefly world-accessible.
    old = os.umask(0o777 & ~mode)
    try:
        await server.start(path=str(path), backlog=listen_backlog())
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
