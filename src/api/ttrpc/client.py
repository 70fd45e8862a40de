"""A ttrpc client on one unix-socket connection: every call multiplexed on it, matched by stream id.

A reply's status becomes the kernel's error kind, so callers catch NotFound, Unavailable, ...
exactly as they do for gRPC.
"""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import anyio.abc

from corral.api.edge import error_for
from corral.api.ttrpc import envelope
from corral.api.ttrpc._socket import FrameSocket
from corral.api.ttrpc.framing import MAX_PAYLOAD, FrameDecoder, FrameTooLarge, MessageType, encode_frame
from corral.api.ttrpc.protowire import DecodeError
from corral.kernel import DeadlineExceeded, Internal, ResourceExhausted, Unavailable

M = TypeVar("M")

CLOSED_MESSAGE = "ttrpc: closed"


def error_for_status(status: envelope.Status) -> Exception:
    """A non-OK status as the kernel's kind, its message kept as sent (the edge's one mapping)."""
    return error_for(status.code, status.message)


class _Pending:
    """One call waiting for its Response frame."""

    __slots__ = ("done", "error", "payload")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.payload: bytes | None = None
        self.error: Exception | None = None


class TTRPCClient:
    """Calls over one connection; use ``async with TTRPCClient.connect(path) as client``."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self._socket = FrameSocket(stream)
        self._pending: dict[int, _Pending] = {}
        self._next_stream_id = 1
        self._closed = False
        self._closed_event = anyio.Event()

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, path: str | os.PathLike[str], *, connect_timeout: float = 10.0
    ) -> AsyncIterator[TTRPCClient]:
        """Connect to ``path`` and read replies until the block ends; a failed connect is Unavailable."""
        try:
            with anyio.fail_after(connect_timeout):
                stream = await anyio.connect_unix(path)
        except (OSError, TimeoutError) as exc:
            raise Unavailable(f"ttrpc: connect {os.fspath(path)}: {exc}") from exc
        async with cls.over(stream) as client:
            yield client

    @classmethod
    @asynccontextmanager
    async def over(cls, stream: anyio.abc.SocketStream) -> AsyncIterator[TTRPCClient]:
        """Calls over an already-connected unix stream (a socketpair's end, one logical connection
        of a multiplexed socket), replies read until the block ends."""
        client = cls(stream)
        error: Exception | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(client._receive_loop)
            try:
                yield client
            except Exception as exc:
                # Raised as is below rather than wrapped in the task group's exception group.
                error = exc
            finally:
                await client.close()
                tg.cancel_scope.cancel()
        if error is not None:
            raise error

    @property
    def closed(self) -> bool:
        return self._closed

    async def wait_closed(self) -> None:
        """Return once the connection has ended (the peer hung up, or ``close`` was called)."""
        await self._closed_event.wait()

    async def call(
        self,
        service: str,
        method: str,
        payload: bytes = b"",
        *,
        timeout: float | None = None,  # noqa: ASYNC109 -- sent to the peer as the call's deadline
        metadata: Mapping[str, str] | None = None,
    ) -> bytes:
        """One unary call; the reply's payload, or its status raised as the kernel's error kind.

        ``timeout`` is sent as the request's deadline and also bounds the wait here.
        """
        if self._closed:
            raise Unavailable(CLOSED_MESSAGE)
        stream_id = self._next_stream_id
        self._next_stream_id += 2
        request = envelope.Request(
            service,
            method,
            payload,
            0 if timeout is None else max(1, math.ceil(timeout * 1e9)),
            tuple(metadata.items()) if metadata else (),
        )
        try:
            frame = encode_frame(stream_id, MessageType.REQUEST, envelope.encode_request(request))
        except FrameTooLarge as exc:
            raise ResourceExhausted(str(exc)) from None
        pending = _Pending()
        self._pending[stream_id] = pending
        try:
            if timeout is None:
                await self._exchange(frame, pending)
            else:
                with anyio.fail_after(timeout):
                    await self._exchange(frame, pending)
        except TimeoutError:
            raise DeadlineExceeded(f"ttrpc: /{service}/{method} after {timeout:g}s") from None
        finally:
            del self._pending[stream_id]
        if pending.error is not None:
            raise pending.error
        assert pending.payload is not None
        try:
            response = envelope.decode_response(pending.payload)
        except DecodeError as exc:
            raise Internal(f"ttrpc: error unmarshalling response: {exc}") from None
        status = response.status
        if status is not None and status.code != 0:
            raise error_for_status(status)
        return response.payload

    async def _exchange(self, frame: bytes, pending: _Pending) -> None:
        try:
            await self._socket.send(frame)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise Unavailable(CLOSED_MESSAGE) from None
        await pending.done.wait()

    async def call_message(
        self,
        service: str,
        method: str,
        request: Any,
        response_type: type[M],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 -- sent to the peer as the call's deadline
        metadata: Mapping[str, str] | None = None,
    ) -> M:
        """A unary call with betterproto2 messages: ``bytes(request)`` out, ``response_type.parse`` back."""
        payload = await self.call(service, method, bytes(request), timeout=timeout, metadata=metadata)
        parsed: M = response_type.parse(payload)  # type: ignore[attr-defined]
        return parsed

    async def close(self) -> None:
        """Close the connection; every call still waiting fails with Unavailable ("ttrpc: closed")."""
        if self._closed:
            return
        self._fail_pending()
        await self._socket.aclose()

    def _fail_pending(self) -> None:
        self._closed = True
        self._closed_event.set()
        for pending in self._pending.values():
            if not pending.done.is_set():
                pending.error = Unavailable(CLOSED_MESSAGE)
                pending.done.set()

    def _deliver(self, stream_id: int, payload: bytes | None, error: Exception | None = None) -> None:
        pending = self._pending.get(stream_id)
        # A reply for a call that timed out here has nobody waiting for it: dropped.
        if pending is None or pending.done.is_set():
            return
        pending.payload, pending.error = payload, error
        pending.done.set()

    async def _receive_loop(self) -> None:
        decoder = FrameDecoder(MAX_PAYLOAD)
        try:
            while True:
                data = await self._socket.receive()
                if not data:
                    return
                decoder.feed(data)
                while True:
                    try:
                        frame = decoder.next_frame()
                    except FrameTooLarge as exc:
                        self._deliver(exc.stream_id, None, ResourceExhausted(str(exc)))
                        continue
                    if frame is None:
                        break
                    # Data frames belong to streaming calls, which this client does not make.
                    if frame.type == MessageType.RESPONSE:
                        self._deliver(frame.stream_id, frame.payload)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        finally:
            self._fail_pending()
            await self._socket.aclose()
