"""Every reliance on grpclib's and h2's internals, in one place, for the versions in ``PINNED``.

- h2 formats each received frame for a trace log line it then discards, and hyperframe hexes the
  whole payload (16 KiB per DATA frame) to keep 20 characters of it: a quarter of the event loop's
  time during a large ingest. ``_raw_data_repr`` is replaced by one that hexes only what is shown.
- grpclib answers an unknown path without a ``content-type`` header, which grpc-go reads as a
  transport error, losing the Unimplemented status that clients (``ctr containers ls``) fall back
  on; the server's private ``_mapping`` is replaced by one that answers as grpc-go does.
- grpclib writes every frame it makes to the transport at once: a unary call or one 32 KiB
  ``Content.Read`` (as ``ctr content get`` makes thousands of) costs three to five ``send`` calls
  (headers, data, trailers, window updates). ``_CorkedTransport`` gathers what the event loop
  writes from its first write to the end of the next turn and sends it in one call: grpc-go
  clients send a PING with each request, and its ACK (written as the request is received) then
  leaves with the answer of the handler that request started, one wake-up of the client instead
  of two (``_protocol_factory`` and ``H2Protocol.connection_made`` are the hooks).
- A lazily started gRPC plugin (``corral.api.grpc.lazy``) learns its message types only once its
  module is imported, after grpclib made the call's ``Stream``: ``retype`` sets the stream's
  private ``_recv_type`` and ``_send_type``.

- betterproto2's service base drives a streaming handler's async generator with a bare
  ``async for``: when sending a response fails (the client went away), the generator is left
  suspended at its ``yield`` and its ``finally`` (which releases an ingest's ref lock, a lease,
  a subscription) runs only when the garbage collector finds it, seconds or minutes later; a
  retried ``ctr content ingest`` waits on the lock all that time. ``_closing_server_stream``
  closes the generator as the call ends, whatever ended it.

``tests/unit/test_grpclib_compat.py`` fails when the installed versions differ from ``PINNED``,
so an upgrade is a conscious step: check both points against the new code, then move the pins.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Coroutine, Mapping
from typing import Any

import hyperframe.frame
from betterproto2.grpclib.grpclib_server import ServiceBase
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.protocol import H2Protocol
from grpclib.server import Server, Stream

from corral.api.grpc.codec import RequestCodec
from corral.api.types.google import protobuf

PINNED = {"grpclib": "0.4.9", "h2": "4.4.1", "hyperframe": "6.1.0", "betterproto2": "0.10.0"}

StreamHandler = Callable[[Stream[Any, Any]], Coroutine[Any, Any, None]]


def _short_data_repr(data: bytes | None) -> str:
    if not data:
        return "None"
    shown = binascii.hexlify(data[:11]).decode("ascii")
    return "<hex:" + (shown[:20] + "..." if len(shown) > 20 else shown) + ">"


def patch_frame_repr() -> bool:
    """Install the cheap payload repr; False if hyperframe no longer has the hook."""
    if not hasattr(hyperframe.frame, "_raw_data_repr"):
        return False
    hyperframe.frame._raw_data_repr = _short_data_repr
    return True


def _unimplemented(message: str) -> Handler:
    async def reply(stream: Stream[Any, Any]) -> None:
        raise GRPCError(Status.UNIMPLEMENTED, message)

    return Handler(reply, Cardinality.UNARY_UNARY, protobuf.Empty, protobuf.Empty)


def retype(stream: Any, request_type: Any, reply_type: Any) -> None:
    """Set the message types of a server stream (seen through any wrappers that keep it as ``_stream``)."""
    while not isinstance(stream, Stream):
        stream = stream._stream
    stream._recv_type = request_type
    stream._send_type = reply_type


class _Mapping(dict[str, Handler]):
    """Known paths map to their handlers; unknown ones to grpc-go's Unimplemented answers."""

    def __init__(self, handlers: Mapping[str, Handler]) -> None:
        super().__init__(handlers)
        self._services = {p.lstrip("/").rpartition("/")[0] for p in handlers}

    def get(self, key: str, default: Any = None) -> Handler:
        found = super().get(key)
        if found is not None:
            return found
        service, _, method = key.lstrip("/").rpartition("/")
        if service not in self._services:
            return _unimplemented(f"unknown service {service}")
        return _unimplemented(f"unknown method {method} for service {service}")


class _CorkedTransport:
    """A transport whose writes within one event-loop turn and the next leave in one ``send``.

    The first write schedules, with ``call_soon``, a callback that schedules the flush; what
    follows in that turn and the next (where the handlers started by what was received run) is
    appended. Everything else (closing, flow control, extra info) is the real transport's;
    closing flushes first, so nothing written is dropped. At most two turns' frames are held,
    and grpclib's writers are bounded by HTTP/2 flow control, so the buffer is too.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self._flush_next_turn)
        self._pending.append(data)

    def _flush_next_turn(self) -> None:
        self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _CorkedProtocol(H2Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        corked: Any = _CorkedTransport(transport, asyncio.get_running_loop())
        super().connection_made(corked)


class MappedServer(Server):
    """A grpclib server over a ready path → handler mapping, with grpc-go's unknown-path answers
    and one ``send`` per event-loop turn."""

    def __init__(self, mapping: Mapping[str, Handler]) -> None:
        super().__init__([], codec=RequestCodec())
        self._mapping = _Mapping(mapping)

    def _protocol_factory(self) -> H2Protocol:
        protocol = super()._protocol_factory()
        protocol.__class__ = _CorkedProtocol
        return protocol


async def _closing_server_stream(self: Any, handler: Callable[..., Any], stream: Any, request: Any) -> None:
    responses = handler(request)
    if not isinstance(responses, AsyncIterable):
        responses.close()  # a coroutine: the handler returned without yielding
        return
    if not isinstance(responses, AsyncGenerator):
        async for message in responses:
            await stream.send_message(message)
        return
    async with contextlib.aclosing(responses):
        async for message in responses:
            await stream.send_message(message)


def patch_server_streams() -> bool:
    """Install ``_closing_server_stream`` on betterproto2's service base; False without the hook."""
    if not hasattr(ServiceBase, "_call_rpc_handler_server_stream"):
        return False
    setattr(ServiceBase, "_call_rpc_handler_server_stream", _closing_server_stream)  # noqa: B010
    return True


patch_frame_repr()
patch_server_streams()
