"""A ttrpc server on a unix socket: handlers keyed by (service, method), each request its own task.

Each handler runs with the request's namespace bound, its deadline applied and its errors
turned into statuses here, as the gRPC server does, so handlers stay thin.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.abc
import grpclib.const
import structlog

from corral.api.edge import RequestTracer, bound_request, status_of
from corral.api.ttrpc import envelope
from corral.api.ttrpc._socket import FrameSocket
from corral.api.ttrpc.framing import MAX_PAYLOAD, FrameDecoder, FrameTooLarge, MessageType, encode_frame
from corral.api.ttrpc.protowire import DecodeError
from corral.kernel import Internal

log = structlog.get_logger("corral.ttrpc")

M = TypeVar("M")

_UCRED = struct.Struct("3i")

_Code = grpclib.const.Status


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """The connecting process as the kernel recorded it at connect time (SO_PEERCRED)."""

    pid: int
    uid: int
    gid: int


@dataclass(frozen=True, slots=True)
class TTRPCContext:
    """What a handler knows about its request besides the payload."""

    service: str
    method: str
    stream_id: int
    metadata: Mapping[str, str]
    """The first value of each key (ttrpc allows repeats; ``request.metadata`` has them all)."""
    deadline: float | None
    """On ``anyio.current_time()``'s clock, from the request's timeout_nano; None when it sent none."""
    peer: PeerCredentials
    request: envelope.Request


Handler = Callable[[bytes, TTRPCContext], Awaitable[bytes]]
"""A raw handler: the request's payload in, the reply's payload out; raise a kernel error kind to fail."""


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return PeerCredentials(pid, uid, gid)


def same_user(peer: PeerCredentials) -> bool:
    """ttrpc's UnixSocketRequireSameUser: the peer's uid and gid equal this process's effective ones."""
    return peer.uid == os.geteuid() and peer.gid == os.getegid()


def _status_of(exc: Exception, method: str) -> envelope.Status:
    return envelope.Status(*status_of(exc, method))


class _Connection:
    """One accepted connection: its reader and its in-flight requests, each a task in its task group."""

    def __init__(self, server: TTRPCServer, sock: FrameSocket, peer: PeerCredentials) -> None:
        self.server = server
        self.socket = sock
        self.peer = peer
        self.active = 0
        self.idle = anyio.Event()
        self.idle.set()
        self.last_stream_id = 0
        self.scope = anyio.CancelScope()

    async def run(self) -> None:
        with self.scope:
            async with anyio.create_task_group() as tg:
                await self._receive(tg)
                # The client went away (or the server is closing): in-flight handlers are abandoned.
                tg.cancel_scope.cancel()
        await self.socket.aclose()

    def close(self) -> None:
        self.scope.cancel()

    async def _receive(self, tg: anyio.abc.TaskGroup) -> None:
        decoder = FrameDecoder(MAX_PAYLOAD)
        while True:
            try:
                data = await self.socket.receive()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                return
            if not data:
                return
            decoder.feed(data)
            while True:
                try:
                    frame = decoder.next_frame()
                except FrameTooLarge as exc:
                    await self._send_status(exc.stream_id, _Code.RESOURCE_EXHAUSTED, str(exc))
                    continue
                if frame is None:
                    break
                if frame.stream_id % 2 != 1:
                    await self._send_status(
                        frame.stream_id,
                        _Code.INVALID_ARGUMENT,
                        "StreamID must be odd for client initiated streams",
                    )
                elif frame.type == MessageType.REQUEST:
                    await self._request(tg, frame.stream_id, frame.payload)
                elif frame.type == MessageType.DATA:
                    # Only unary methods are served, so no stream is ever open for data.
                    await self._send_status(
                        frame.stream_id, _Code.INVALID_ARGUMENT, "StreamID is no longer active"
                    )
                # Other types are ignored, for compatibility with later protocol versions.

    async def _request(self, tg: anyio.abc.TaskGroup, stream_id: int, payload: bytes) -> None:
        if stream_id <= self.last_stream_id:
            await self._send_status(
                stream_id, _Code.INVALID_ARGUMENT, "StreamID cannot be re-used and must increment"
            )
            return
        self.last_stream_id = stream_id
        try:
            request = envelope.decode_request(payload)
        except DecodeError as exc:
            await self._send_status(stream_id, _Code.INVALID_ARGUMENT, f"unmarshal request error: {exc}")
            return
        methods = self.server._services.get(request.service)
        if methods is None:
            await self._send_status(stream_id, _Code.UNIMPLEMENTED, f"service {request.service}")
            return
        handler = methods.get(request.method)
        if handler is None:
            await self._send_status(stream_id, _Code.UNIMPLEMENTED, f"method {request.method}")
            return
        if not self.active:
            self.idle = anyio.Event()
        self.active += 1
        tg.start_soon(self._handle, stream_id, request, handler)

    async def _handle(self, stream_id: int, request: envelope.Request, handler: Handler) -> None:
        try:
            if self.server._tracers:
                response = await self._traced(self.server._tracers, stream_id, request, handler)
            else:
                response = await self._run(stream_id, request, handler)
            await self._send_response(stream_id, response)
        finally:
            self.active -= 1
            if not self.active:
                self.idle.set()

    async def _traced(
        self,
        tracers: Sequence[RequestTracer],
        stream_id: int,
        request: envelope.Request,
        handler: Handler,
    ) -> envelope.Response:
        metadata: dict[str, str] = {}
        for key, value in request.metadata:
            metadata.setdefault(key, value)
        path = f"/{request.service}/{request.method}"
        with tracers[0].request_span("ttrpc", path, metadata) as span:
            try:
                if len(tracers) > 1:
                    response = await self._traced(tracers[1:], stream_id, request, handler)
                else:
                    response = await self._run(stream_id, request, handler)
            except BaseException:
                span.finish(_Code.CANCELLED.value, "context canceled")
                raise
            status = response.status
            span.finish(status.code if status else 0, status.message if status else "")
            return response

    async def _run(self, stream_id: int, request: envelope.Request, handler: Handler) -> envelope.Response:
        metadata: dict[str, str] = {}
        for key, value in request.metadata:
            metadata.setdefault(key, value)
        deadline = anyio.current_time() + request.timeout_nano / 1e9 if request.timeout_nano > 0 else None
        ctx = TTRPCContext(request.service, request.method, stream_id, metadata, deadline, self.peer, request)
        if deadline is None:
            return await self._call(handler, ctx)
        with anyio.CancelScope(deadline=deadline) as scope:
            return await self._call(handler, ctx)
        # Only the request's own deadline lands here; a cancel from outside propagates.
        assert scope.cancelled_caught
        return envelope.Response(
            status=envelope.Status(_Code.DEADLINE_EXCEEDED.value, "context deadline exceeded")
        )

    @staticmethod
    async def _call(handler: Handler, ctx: TTRPCContext) -> envelope.Response:
        try:
            with bound_request(ctx.metadata):
                return envelope.Response(await handler(ctx.request.payload, ctx))
        except Exception as exc:
            return envelope.Response(status=_status_of(exc, f"/{ctx.service}/{ctx.method}"))

    async def _send_response(self, stream_id: int, response: envelope.Response) -> None:
        try:
            frame = encode_frame(stream_id, MessageType.RESPONSE, envelope.encode_response(response))
        except FrameTooLarge as exc:
            # Too big to send: the caller gets ResourceExhausted and the connection stays up.
            status = envelope.Status(_Code.RESOURCE_EXHAUSTED.value, str(exc))
            frame = encode_frame(
                stream_id, MessageType.RESPONSE, envelope.encode_response(envelope.Response(status=status))
            )
        await self._send(frame)

    async def _send_status(self, stream_id: int, code: grpclib.const.Status, message: str) -> None:
        response = envelope.Response(status=envelope.Status(code.value, message))
        await self._send(encode_frame(stream_id, MessageType.RESPONSE, envelope.encode_response(response)))

    async def _send(self, frame: bytes) -> None:
        # A peer that is gone is seen by the reader too, which ends the connection.
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self.socket.send(frame)


class TTRPCServer:
    """Unary ttrpc handlers served on a unix socket (``async with server.serve(path)``).

    Each ``tracers`` entry (an ok tracing plugin's instance) serves every request in a span."""

    def __init__(
        self,
        *,
        require_same_user: bool = True,
        shutdown_timeout: float = 10.0,
        tracers: Sequence[RequestTracer] = (),
    ) -> None:
        self._services: dict[str, dict[str, Handler]] = {}
        self._tracers = tuple(tracers)
        self._require_same_user = require_same_user
        self._shutdown_timeout = shutdown_timeout
        self._connections: set[_Connection] = set()
        self._listener: anyio.abc.SocketListener | None = None
        self._accepting: anyio.CancelScope | None = None
        self._closed = False

    def register(self, service: str, method: str, handler: Handler) -> None:
        """Serve ``/service/method`` with a raw handler; a path registered twice is an error."""
        methods = self._services.setdefault(service, {})
        if method in methods:
            raise ValueError(f"/{service}/{method} is already registered")
        methods[method] = handler

    def register_unary(
        self,
        service: str,
        method: str,
        request_type: type[M],
        handler: Callable[[M, TTRPCContext], Awaitable[Any]],
    ) -> None:
        """Serve a betterproto2 handler: the payload parsed as ``request_type``, the reply sent as bytes."""
        parse: Callable[[bytes], M] = request_type.parse  # type: ignore[attr-defined]

        async def adapter(payload: bytes, ctx: TTRPCContext) -> bytes:
            try:
                message = parse(payload)
            except Exception as exc:
                raise Internal(f"ttrpc: error unmarshalling payload: {exc}") from None
            return bytes(await handler(message, ctx))

        self.register(service, method, adapter)

    @property
    def methods(self) -> list[str]:
        """Every served path, ``/service/method``."""
        return sorted(f"/{s}/{m}" for s, methods in self._services.items() for m in methods)

    @property
    def connections(self) -> int:
        """Connections being served now."""
        return len(self._connections)

    @contextlib.asynccontextmanager
    async def serve(
        self, path: str | os.PathLike[str], *, mode: int = 0o600, uid: int = -1, gid: int = -1
    ) -> AsyncIterator[TTRPCServer]:
        """Listen on ``path`` with ``mode`` (and owner) until the block ends, then close gracefully."""
        address = Path(path)
        address.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(address.lstat().st_mode):
                address.unlink()
        # The socket is the security boundary: never briefly more open than ``mode``.
        old = os.umask(0o777 & ~mode)
        try:
            listener = await anyio.create_unix_listener(address)
        finally:
            os.umask(old)
        os.chmod(address, mode)
        if uid >= 0 or gid >= 0:
            os.chown(address, uid, gid)
        self._listener = listener
        self._accepting = anyio.CancelScope()
        self._closed = False
        log.info("ttrpc_listening", address=str(address), mode=oct(mode))
        error: Exception | None = None
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._accept, listener, tg)
                try:
                    yield self
                except Exception as exc:
                    # Raised as is below rather than wrapped in the task group's exception group.
                    error = exc
                finally:
                    with anyio.CancelScope(shield=True):
                        await self.shutdown()
            if error is not None:
                raise error
        finally:
            with contextlib.suppress(FileNotFoundError):
                address.unlink()

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting, give in-flight handlers ``grace`` seconds (default: shutdown_timeout), close all."""
        if self._closed:
            return
        self._closed = True
        if self._accepting is not None:
            self._accepting.cancel()
        if self._listener is not None:
            await self._listener.aclose()
        with anyio.move_on_after(self._shutdown_timeout if grace is None else grace):
            async with anyio.create_task_group() as tg:
                for conn in list(self._connections):
                    tg.start_soon(self._close_when_idle, conn)
        for conn in list(self._connections):
            conn.close()

    async def serve_stream(self, stream: anyio.abc.SocketStream) -> None:
        """Serve one already-connected unix stream (a socketpair's end, one logical connection of
        a multiplexed socket) until it ends; ``shutdown`` closes it as it closes accepted ones."""
        await self._serve_connection(stream)

    @staticmethod
    async def _close_when_idle(conn: _Connection) -> None:
        while conn.active:
            await conn.idle.wait()
        conn.close()

    async def _accept(self, listener: anyio.abc.SocketListener, tg: anyio.abc.TaskGroup) -> None:
        assert self._accepting is not None
        with self._accepting:
            while True:
                try:
                    stream = await listener.accept()
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    return
                except OSError as exc:
                    # Out of descriptors and the like: pause rather than spin, as ttrpc does.
                    log.warning("ttrpc_accept_failed", error=str(exc))
                    await anyio.sleep(0.1)
                    continue
                tg.start_soon(self._serve_connection, stream)

    async def _serve_connection(self, stream: anyio.abc.SocketStream) -> None:
        try:
            peer = peer_credentials(stream.extra(anyio.abc.SocketAttribute.raw_socket))
        except OSError as exc:
            log.warning("ttrpc_peer_unknown", error=str(exc))
            await stream.aclose()
            return
        if self._closed or (self._require_same_user and not same_user(peer)):
            if not self._closed:
                log.warning("ttrpc_peer_refused", pid=peer.pid, uid=peer.uid, gid=peer.gid)
            await stream.aclose()
            return
        conn = _Connection(self, FrameSocket(stream), peer)
        self._connections.add(conn)
        try:
            await conn.run()
        except Exception:
            # One connection's failure is logged and ends that connection, not the server.
            log.exception("ttrpc_connection_failed", pid=peer.pid)
        finally:
            self._connections.discard(conn)
