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
- h2 formats every received frame with ``repr`` for a trace line its no-op logger drops (6 µs a
  frame, four or five frames a call): ``h2.connection``'s ``repr`` is shadowed by one that
  formats nothing (``patch_received_frame_repr``; that trace line is the module's only ``repr``).
- HPACK coding is the largest single cost of a small call in h2: each request's header block is
  decoded field by field (with a ``log.debug`` call per integer) and each response's headers and
  trailers encoded again, though they repeat call after call. ``_CachingDecoder`` keeps the
  decoded list of each block it has seen, valid while the dynamic table has not changed since
  (``_CountingTable`` counts every change; a block that changes the table is never cached), so
  the same bytes decode to the same headers exactly as the real decoder would.
  ``_CachingEncoder`` writes each header list grpclib sends (``:status 200`` with the content
  type, ``grpc-status: 0``, …) once, as literals that are never indexed (or static-table
  indices), and sends those bytes again: they neither read nor change the dynamic table, so the
  peer's table stays in step with the real encoder's whatever else is sent; a pending table-size
  update, or a header list outside the cache's bound, goes through the real encoder.
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

import h2.connection
import hpack
import hpack.table
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


def _no_repr(_obj: object) -> str:
    return ""


def patch_received_frame_repr() -> bool:
    """Shadow ``repr`` in ``h2.connection`` (its received-frame trace line); False without the hook."""
    if not hasattr(h2.connection.H2Connection, "_receive_frame"):
        return False
    h2.connection.repr = _no_repr  # type: ignore[attr-defined]
    return True


class _CountingTable(hpack.table.HeaderTable):
    """An HPACK table that counts its changes (entries added, size changed)."""

    changes = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.changes += 1
        super().add(name, value)

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
        self.changes += 1
        hpack.table.HeaderTable.maxsize.fset(self, newmax)  # type: ignore[attr-defined]


CACHED_BLOCKS = 128
"""Header blocks (or header lists) each connection's coder remembers at most."""


class _CachingDecoder(hpack.Decoder):
    """A decoder that returns the headers it decoded from the same bytes with the same table."""

    _cache: dict[tuple[bytes, bool, int], list[Any]]
    _cached_at: int

    def decode(self, data: bytes, raw: bool = False) -> Any:
        table: Any = self.header_table
        key = (bytes(data), raw, self.max_header_list_size)
        if table.changes == self._cached_at:
            hit = self._cache.get(key)
            if hit is not None:
                return list(hit)
        else:
            self._cache.clear()
            self._cached_at = table.changes
        before = table.changes
        headers = super().decode(data, raw)
        if table.changes == before and len(self._cache) < CACHED_BLOCKS:
            self._cache[key] = list(headers)
        return headers


class _CachingEncoder(hpack.Encoder):
    """An encoder that sends a header list it has sent before as the same table-free bytes."""

    _cache: dict[tuple[Any, ...], bytes]

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        if self.header_table.resized or not isinstance(headers, list):
            return super().encode(headers, huffman)
        try:
            key = tuple(headers)
            hit = self._cache.get(key)
        except TypeError:  # unhashable
            return super().encode(headers, huffman)
        if hit is not None:
            return hit
        if len(self._cache) >= CACHED_BLOCKS or any(len(h) != 2 for h in headers):
            return super().encode(headers, huffman)
        # A fresh encoder's table stays empty: every field is a static index or a never-indexed
        # literal, bytes that mean the same whatever the peer's dynamic table holds.
        block = hpack.Encoder().encode([(n, v, True) for n, v in headers], huffman)
        self._cache[key] = block
        return block


def install_header_caches(connection: Any) -> None:
    """Give an ``H2Connection`` the caching HPACK coders (before any header block is coded)."""
    decoder, encoder = connection.decoder, connection.encoder
    decoder.header_table.__class__ = _CountingTable
    decoder.__class__ = _CachingDecoder
    decoder._cache = {}
    decoder._cached_at = decoder.header_table.changes
    encoder.__class__ = _CachingEncoder
    encoder._cache = {}


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
        install_header_caches(self.connection._connection)


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
patch_received_frame_repr()
patch_server_streams()
