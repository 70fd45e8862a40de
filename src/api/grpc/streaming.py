"""io.containerd.grpc.v1.streaming — containerd.services.streaming.v1.Streaming (Stream).

The client's first message names the stream (``StreamInit``); it is registered with the stream
manager and acknowledged with an ``Empty``, and from then on whoever took the stream from the
manager (a transfer) sends and receives on it. The call ends when that side closes the stream
or the client goes away.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from corral.api.grpc import GRPCServices
from corral.api.types.containerd.services.streaming import v1 as pb
from corral.api.types.google import protobuf
from corral.kernel import InitContext, InvalidArgument, Registration
from corral.plugins import types
from corral.plugins.metadata import AnyValue
from corral.plugins.streaming import StreamManager

EMPTY_TYPE_URL = "google.protobuf.Empty"
STREAM_INIT_TYPE_URL = "containerd.services.streaming.v1.StreamInit"
FLUSH_SECONDS = 10.0


def bare_type_url(type_url: str) -> str:
    """``type.googleapis.com/x.Y`` and ``x.Y`` name the same message."""
    return type_url.rpartition("/")[2]


class GRPCStream:
    """One Streaming call as a ``Stream``: sends are queued for the call to yield."""

    def __init__(self, incoming: AsyncIterator[protobuf.Any]) -> None:
        self._incoming = incoming
        send: MemoryObjectSendStream[protobuf.Any]
        receive: MemoryObjectReceiveStream[protobuf.Any]
        send, receive = anyio.create_memory_object_stream[protobuf.Any](math.inf)
        self._send, self.outgoing = send, receive
        self._ended = False
        self.flushed = anyio.Event()
        """Set once the call has handed every message sent to the transport, or ended."""

    async def send(self, message: AnyValue) -> None:
        try:
            self._send.send_nowait(protobuf.Any(type_url=message.type_url, value=message.value))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise EOFError("the stream is closed") from None

    async def recv(self) -> AnyValue | None:
        if self._ended:
            return None
        try:
            message = await anext(self._incoming)
        except StopAsyncIteration:
            self._ended = True
            return None
        return AnyValue(bare_type_url(message.type_url), message.value)

    async def close(self) -> None:
        """End the stream once what was sent has gone out (a client reading an export must have
        all of it before the Transfer call that wrote it returns)."""
        self._send.close()
        with anyio.move_on_after(FLUSH_SECONDS):
            await self.flushed.wait()


class StreamingGRPC(pb.StreamingBase):
    def __init__(self, manager: StreamManager) -> None:
        self._manager = manager

    async def stream(self, messages: AsyncIterator[protobuf.Any]) -> AsyncIterator[protobuf.Any]:
        first = await anext(messages, None)
        if first is None:
            return
        if bare_type_url(first.type_url) != STREAM_INIT_TYPE_URL:
            raise InvalidArgument(
                f"the first message of a stream must be a StreamInit, not {first.type_url!r}"
            )
        init = pb.StreamInit.parse(first.value)
        stream = GRPCStream(messages)
        handle = await self._manager.register(init.id, stream)
        try:
            yield protobuf.Any(type_url=EMPTY_TYPE_URL, value=b"")
            async with stream.outgoing:
                async for message in stream.outgoing:
                    yield message
        finally:
            stream.flushed.set()
            with anyio.CancelScope(shield=True):
                await handle.close()


async def init(ic: InitContext) -> GRPCServices:
    return GRPCServices((StreamingGRPC(ic.get_by_id(types.STREAMING, "manager", StreamManager)),))


registration = Registration(type=types.GRPC, id="streaming", init=init, requires=(types.STREAMING,))
