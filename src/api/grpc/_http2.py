"""corrald's gRPC server transport: HTTP/2 framing written for what a gRPC server does, nothing else.

A general HTTP/2 library keeps a state machine per stream and per connection, builds an object for
every frame and an event for every change, and checks each against the whole of RFC 9113; grpclib
adds its own stream, dispatch and metadata layers above it. For a 32 KiB ``Content.Read`` (``ctr
content get`` makes one per 32 KiB of a blob) that machinery cost more than reading the bytes.
Here a connection is one ``asyncio.Protocol`` that cuts frames out of its buffer and acts on them
in place: a request's HEADERS start its handler, its DATA frames fill its stream's buffer, a
response is its headers, its DATA frames and its trailers joined into one write.

What is implemented is what gRPC over HTTP/2 uses, as grpc-go's server does it:

- the connection preface, SETTINGS (the client's initial window, frame size), PING (answered),
  WINDOW_UPDATE, RST_STREAM (the handler is cancelled), GOAWAY (no new streams; the connection
  closes when its streams are done); PRIORITY and unknown frame types are ignored;
- HEADERS with CONTINUATION, padding and priority fields; HPACK through ``hpack`` with a cache of
  decoded header blocks (``_CachingDecoder``); responses are written as never-indexed literals,
  which need no dynamic table, so their bytes are made once per distinct header list;
- gRPC's request checks (``:method POST``, ``content-type application/grpc``, ``te: trailers``,
  ``grpc-timeout``), answered as grpclib answered them; grpc-go's message size limits (16 MiB, as
  containerd sets them), answered with ResourceExhausted in grpc-go's words;
- flow control both ways: a stream's received bytes are acknowledged as they arrive unless a
  whole message already waits unread there (so a handler that stops reading holds its client back
  and memory stays bounded by the window), and the connection's at once; responses wait for the
  client's windows;
- a deadline (``grpc-timeout``) cancels the handler and answers DeadlineExceeded; a stream the
  client resets, or a connection that is lost, cancels the handlers on it;
- everything a connection writes from one event-loop turn to the end of the next leaves in one
  ``send``: a grpc-go client sends a PING with each request, and its ACK then leaves with the
  answer of the handler the request started.

Handlers are grpclib's: ``Handler(func, cardinality, request_type, reply_type)`` from the generated
service bases, ``func(stream)`` calling ``recv_message``/``send_message`` and raising ``GRPCError``.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import itertools
import re
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

import hpack
import hpack.table
import structlog
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError

log = structlog.get_logger("corral.grpc")

PINNED = {"hpack": "4.2.0"}
"""``_CachingDecoder`` relies on hpack's table internals (``HeaderTable.add``, ``maxsize``)."""

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

(
    _DATA,
    _HEADERS,
    _PRIORITY,
    _RST_STREAM,
    _SETTINGS,
    _PUSH_PROMISE,
    _PING,
    _GOAWAY,
    _WINDOW_UPDATE,
    _CONTINUATION,
) = range(10)
_END_STREAM = 0x1
_ACK = 0x1
_END_HEADERS = 0x4
_PADDED = 0x8
_PRIORITY_FLAG = 0x20

_NO_ERROR, _PROTOCOL_ERROR, _FLOW_CONTROL_ERROR, _FRAME_SIZE_ERROR = 0x0, 0x1, 0x3, 0x6
_REFUSED_STREAM, _COMPRESSION_ERROR = 0x7, 0x9

_SETTINGS_INITIAL_WINDOW_SIZE, _SETTINGS_MAX_FRAME_SIZE = 0x4, 0x5

_HEAD = struct.Struct(">HBBBL")  # length (24 bits as 16 + 8), type, flags, stream id
_U32 = struct.Struct(">L")

DEFAULT_WINDOW = 65_535
STREAM_WINDOW = 4 << 20
"""The receive window each request stream gets (SETTINGS_INITIAL_WINDOW_SIZE)."""
CONNECTION_WINDOW = 16 << 20
"""The connection's receive window (raised from 64 KiB by a WINDOW_UPDATE after the SETTINGS)."""
ACK_THRESHOLD = 1 << 20
"""Received bytes are acknowledged in WINDOW_UPDATEs of at least this much (or on a message's end)."""
MAX_RECEIVE_MESSAGE = 16 << 20
MAX_SEND_MESSAGE = 16 << 20
"""containerd's limits (``defaults.DefaultMaxRecvMsgSize``, ``DefaultMaxSendMsgSize``)."""
MAX_HEADER_BLOCK = 1 << 20
"""A request whose header block grows past this is refused (grpc-go: 16 MiB list, far above use)."""
MAX_FRAME = 16_384
"""The largest frame the client may send us (we advertise no other)."""

CONTENT_TYPE = "application/grpc+proto"
_GRPC_CONTENT_TYPES = frozenset(("application/grpc", "application/grpc+proto"))
_NOT_METADATA = frozenset(("te", "content-type", "user-agent"))
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_TIMEOUT = re.compile(r"^(\d{1,8})([HMSmun])$")
_UNQUOTED = "".join(chr(i) for i in range(0x20, 0x7F) if chr(i) != "%")


def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _HEAD.pack(n >> 8, n & 0xFF, kind, flags, stream_id) + payload


@functools.lru_cache(maxsize=512)
def header_block(headers: tuple[tuple[str, str], ...]) -> bytes:
    """The HPACK bytes of a header list as never-indexed literals (or static-table indices):
    they neither read nor change the peer's dynamic table, so the same bytes serve every
    connection and every call. Not Huffman-coded: a few bytes more on a local socket, and a
    Python client (hpack) decodes plain literals in half the time."""
    return bytes(hpack.Encoder().encode([(n, v, True) for n, v in headers], huffman=False))


_RESPONSE_HEADERS = header_block(((":status", "200"), ("content-type", CONTENT_TYPE)))
_OK_TRAILERS = header_block((("grpc-status", "0"),))


def encode_grpc_message(message: str) -> str:
    """gRPC's percent-encoding of ``grpc-message`` (as grpclib and grpc-go write it)."""
    return quote(message, safe=_UNQUOTED, encoding="utf-8")


def parse_timeout(value: str) -> float:
    match = _TIMEOUT.match(value)
    if match is None:
        raise ValueError(f"invalid grpc-timeout {value!r}")
    return int(match.group(1)) * _TIMEOUT_UNITS[match.group(2)]


def decode_metadata(headers: list[tuple[str, str]]) -> dict[str, Any]:
    """A request's custom metadata: every header but pseudo-headers, ``grpc-*`` and the reserved
    three; ``-bin`` values base64-decoded; the first value of a repeated key wins."""
    metadata: dict[str, Any] = {}
    for key, value in headers:
        if key.startswith((":", "grpc-")) or key in _NOT_METADATA or key in metadata:
            continue
        if key.endswith("-bin"):
            raw = value.encode("ascii")
            metadata[key] = base64.b64decode(raw + b"=" * (-len(raw) % 4))
        else:
            metadata[key] = value
    return metadata


class _CountingTable(hpack.table.HeaderTable):
    """An HPACK table that counts its changes (entries added, size changed) and its additions."""

    changes = 0
    additions = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.changes += 1
        self.additions += 1
        super().add(name, value)

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
        self.changes += 1
        hpack.table.HeaderTable.maxsize.fset(self, newmax)  # type: ignore[attr-defined]


CACHED_BLOCKS = 128
"""Header blocks each connection's decoder remembers at most."""

SHARED_BLOCKS = 512
"""Header blocks decoded along a connection's first, table-changing requests, remembered for all."""

_shared_blocks: dict[tuple[int, bytes], tuple[Any, tuple[tuple[bytes, bytes], ...], int]] = {}
_states = itertools.count(1)


class _CachingDecoder(hpack.Decoder):
    """A decoder that returns the headers it decoded from the same bytes with the same table.

    Within a connection, a block is cached only if decoding it left the dynamic table as it was,
    and a hit is taken only while the table has not changed since: the same bytes decode to the
    same headers exactly as the real decoder would (``_CountingTable`` counts every change).

    Across connections: each starts with the same empty table, and a client's first requests
    (``ctr`` opens a connection per process; ``ctr version`` makes two calls) are the same bytes
    each time, each adding entries to the table. While a connection's table is one reached from
    the empty table by blocks seen before (its *state*, a number), a block seen in that state
    gives the headers it gave and the entries it added, which are added again: the table then
    holds what the real decoder would have left, and the connection is in the next state. A
    block that resizes the table (or adds more than the table keeps) ends the sharing for its
    connection."""

    def __init__(self) -> None:
        super().__init__()
        self.header_table.__class__ = _CountingTable
        self._cache: dict[bytes, list[tuple[str, str]]] = {}
        self._cached_at = 0
        self._state: int | None = 0
        """The shared state this connection's table is in; None once it left the shared path."""
        self._state_at = 0

    def decode(self, data: bytes, raw: bool = False) -> Any:
        table: Any = self.header_table
        if self._state is not None and table.changes == self._state_at and not raw:
            return self._decode_shared(data, table, self._state)
        if table.changes == self._cached_at:
            hit = self._cache.get(data)
            if hit is not None:
                return hit
        else:
            self._cache.clear()
            self._cached_at = table.changes
        before = table.changes
        headers: Any = super().decode(data, raw)
        if table.changes == before and len(self._cache) < CACHED_BLOCKS:
            self._cache[data] = headers
        return headers

    def _decode_shared(self, data: bytes, table: Any, state: int) -> Any:
        hit = _shared_blocks.get((state, data))
        if hit is not None:
            headers, added, following = hit
            for name, value in added:
                table.add(name, value)
        else:
            changes, additions = table.changes, table.additions
            headers = super().decode(data, False)
            count = table.additions - additions
            resized = table.changes - changes != count
            if resized or count > len(table.dynamic_entries) or len(_shared_blocks) >= SHARED_BLOCKS:
                self._state = None
                return headers
            added = tuple(reversed([table.dynamic_entries[i] for i in range(count)]))
            following = next(_states) if count else state
            _shared_blocks[(state, data)] = (headers, added, following)
        self._state, self._state_at = following, table.changes
        return headers


class ServerStream:
    """One call: what a grpclib handler sees (``metadata``, ``recv_message``, ``send_message``,
    async iteration over the requests) over one HTTP/2 stream."""

    def __init__(
        self, conn: _Connection, stream_id: int, handler: Handler, metadata: dict[str, Any], codec: Any
    ) -> None:
        self._conn = conn
        self.id = stream_id
        self.metadata = metadata
        self._recv_type = handler.request_type
        self._send_type = handler.reply_type
        self._codec = codec
        cardinality = handler.cardinality
        self._client_streaming = cardinality in (Cardinality.STREAM_UNARY, Cardinality.STREAM_STREAM)
        self._server_streaming = cardinality in (Cardinality.UNARY_STREAM, Cardinality.STREAM_STREAM)
        self._buffer = bytearray()
        self._remote_ended = False
        self._waiter: asyncio.Future[None] | None = None
        self._unacked = 0
        self.send_window = conn.peer_initial_window
        self._window_waiter: asyncio.Future[None] | None = None
        self.headers_sent = False
        self.messages_sent = 0
        self.closed = False
        self.task: asyncio.Task[None] | None = None
        self.deadline_hit = False

    # Receiving ---------------------------------------------------------------------------------

    def _feed(self, data: bytes | memoryview, end: bool) -> None:
        if data:
            self._buffer += data
        if end:
            self._remote_ended = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _has_message(self) -> bool:
        buffer = self._buffer
        return len(buffer) >= 5 and len(buffer) - 5 >= _U32.unpack_from(buffer, 1)[0]

    async def recv_message(self) -> Any:
        """The next request message, or None once the client has ended its side."""
        buffer = self._buffer
        while True:
            if len(buffer) >= 5:
                length = _U32.unpack_from(buffer, 1)[0]
                if length > MAX_RECEIVE_MESSAGE:
                    raise GRPCError(
                        Status.RESOURCE_EXHAUSTED,
                        f"grpc: received message larger than max ({length} vs. {MAX_RECEIVE_MESSAGE})",
                    )
                if len(buffer) - 5 >= length:
                    compressed = buffer[0]
                    payload = bytes(buffer[5 : 5 + length])
                    del buffer[: 5 + length]
                    self._conn.consumed(self)
                    if compressed:
                        raise GRPCError(
                            Status.INTERNAL, "grpc: compressed flag set with identity or empty encoding"
                        )
                    return self._codec.decode(payload, self._recv_type)
            if self._remote_ended:
                if buffer:
                    raise GRPCError(Status.INTERNAL, "grpc: the client ended the stream within a message")
                if not self._client_streaming:
                    raise GRPCError(Status.INTERNAL, "grpc: the client sent no request message")
                return None
            self._waiter = self._conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[Any]:
        while (message := await self.recv_message()) is not None:
            yield message

    # Sending -----------------------------------------------------------------------------------

    async def send_message(self, message: Any) -> None:
        if self.closed:
            raise ConnectionResetError("the stream is closed")
        if self.messages_sent and not self._server_streaming:
            raise RuntimeError("a unary call answers with one message")
        payload = self._codec.encode(message, self._send_type)
        if len(payload) > MAX_SEND_MESSAGE:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"grpc: trying to send message larger than max ({len(payload)} vs. {MAX_SEND_MESSAGE})",
            )
        data = b"\x00" + _U32.pack(len(payload)) + payload
        await self._conn.send_data(self, data)
        self.messages_sent += 1

    def _window_changed(self) -> None:
        waiter = self._window_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait_window(self) -> None:
        self._window_waiter = self._conn.loop.create_future()
        try:
            await self._window_waiter
        finally:
            self._window_waiter = None

    def _abandon(self) -> None:
        """The stream is gone (reset by the client, the connection lost): wake anything waiting."""
        self.closed = True
        for waiter in (self._waiter, self._window_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)


StreamFunc = Callable[[ServerStream], Any]


class _Connection(asyncio.Protocol):
    def __init__(self, server: GRPCServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._in = b""
        self._preface = True
        self._out: list[bytes] = []
        self._streams: dict[int, ServerStream] = {}
        self._last_id = 0
        self._decoder = _CachingDecoder()
        self._header_block: bytearray | None = None
        self._header_stream = 0
        self._header_flags = 0
        self.peer_initial_window = DEFAULT_WINDOW
        self._peer_max_frame = 16_384
        self.send_window = DEFAULT_WINDOW
        self._window_waiters: list[ServerStream] = []
        self._unacked = 0
        self._goaway = False
        self._closed = False
        self._paused: asyncio.Future[None] | None = None

    # Connection events -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connections.add(self)
        settings = struct.pack(">HL", _SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW)
        self._write(_frame(_SETTINGS, 0, 0, settings))
        self._write(_frame(_WINDOW_UPDATE, 0, 0, _U32.pack(CONNECTION_WINDOW - DEFAULT_WINDOW)))

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.server.connections.discard(self)
        for stream in list(self._streams.values()):
            self._cancel(stream)
        self._streams.clear()
        if self._paused is not None and not self._paused.done():
            self._paused.set_result(None)

    def pause_writing(self) -> None:
        if self._paused is None or self._paused.done():
            self._paused = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._paused is not None and not self._paused.done():
            self._paused.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._in:
            data = self._in + data
            self._in = b""
        if self._preface:
            if len(data) < len(PREFACE):
                if PREFACE.startswith(data):
                    self._in = data
                else:
                    self._fail(_PROTOCOL_ERROR)
                return
            if not data.startswith(PREFACE):
                self._fail(_PROTOCOL_ERROR)
                return
            self._preface = False
            data = data[len(PREFACE) :]
        pos, end = 0, len(data)
        view = memoryview(data)  # over immutable bytes: frames' payloads are views, not copies
        while end - pos >= 9 and not self._closed:
            high, low, kind, flags, stream_id = _HEAD.unpack_from(data, pos)
            length = high << 8 | low
            if length > MAX_FRAME:
                self._fail(_FRAME_SIZE_ERROR)
                return
            if end - pos - 9 < length:
                break
            payload = view[pos + 9 : pos + 9 + length]
            pos += 9 + length
            self._frame_received(kind, flags, stream_id & 0x7FFFFFFF, payload)
        if pos < end:
            self._in = data[pos:]

    # Frames ------------------------------------------------------------------------------------

    def _frame_received(self, kind: int, flags: int, stream_id: int, payload: memoryview) -> None:
        if self._header_block is not None and kind != _CONTINUATION:
            self._fail(_PROTOCOL_ERROR)
        elif kind == _DATA:
            self._on_data(flags, stream_id, payload)
        elif kind == _HEADERS:
            self._on_headers(flags, stream_id, payload)
        elif kind == _CONTINUATION:
            self._on_continuation(flags, stream_id, payload)
        elif kind == _PING:
            if len(payload) != 8:
                self._fail(_FRAME_SIZE_ERROR)
            elif not flags & _ACK:
                self._write(_frame(_PING, _ACK, 0, bytes(payload)))
        elif kind == _SETTINGS:
            self._on_settings(flags, payload)
        elif kind == _WINDOW_UPDATE:
            self._on_window_update(stream_id, payload)
        elif kind == _RST_STREAM:
            stream = self._streams.pop(stream_id, None)
            if stream is not None:
                self._cancel(stream)
        elif kind == _GOAWAY:
            self._goaway = True
            if not self._streams:
                self._close()
        elif kind == _PUSH_PROMISE:
            self._fail(_PROTOCOL_ERROR)
        # PRIORITY and unknown types: ignored, as RFC 9113 asks.

    def _on_settings(self, flags: int, payload: memoryview) -> None:
        if flags & _ACK:
            return
        if len(payload) % 6:
            self._fail(_FRAME_SIZE_ERROR)
            return
        for offset in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HL", payload, offset)
            if key == _SETTINGS_INITIAL_WINDOW_SIZE:
                if value > 0x7FFFFFFF:
                    self._fail(_FLOW_CONTROL_ERROR)
                    return
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self._streams.values():
                    stream.send_window += delta
                    stream._window_changed()
            elif key == _SETTINGS_MAX_FRAME_SIZE:
                if not 16_384 <= value <= 16_777_215:
                    self._fail(_PROTOCOL_ERROR)
                    return
                self._peer_max_frame = value
            # HEADER_TABLE_SIZE needs nothing: responses never use the dynamic table.
        self._write(_frame(_SETTINGS, _ACK, 0))

    def _on_window_update(self, stream_id: int, payload: memoryview) -> None:
        if len(payload) != 4:
            self._fail(_FRAME_SIZE_ERROR)
            return
        increment = _U32.unpack_from(payload)[0] & 0x7FFFFFFF
        if stream_id == 0:
            self.send_window += increment
            waiters, self._window_waiters = self._window_waiters, []
            for stream in waiters:
                stream._window_changed()
        else:
            found = self._streams.get(stream_id)
            if found is not None:
                found.send_window += increment
                found._window_changed()

    def _on_data(self, flags: int, stream_id: int, payload: memoryview) -> None:
        size = len(payload)
        if flags & _PADDED:
            if not payload or payload[0] >= size:
                self._fail(_PROTOCOL_ERROR)
                return
            payload = payload[1 : size - payload[0]]
        self._unacked += size  # the connection's window: given back at once, whatever the stream
        if self._unacked >= ACK_THRESHOLD:
            self._write(_frame(_WINDOW_UPDATE, 0, 0, _U32.pack(self._unacked)))
            self._unacked = 0
        stream = self._streams.get(stream_id)
        if stream is None:
            if stream_id == 0 or stream_id > self._last_id:
                self._fail(_PROTOCOL_ERROR)
            return  # a stream already closed: its data is dropped
        if stream._remote_ended:
            self._reset(stream, _PROTOCOL_ERROR)
            return
        stream._feed(payload, bool(flags & _END_STREAM))
        stream._unacked += size
        if not stream._remote_ended and stream._unacked >= ACK_THRESHOLD and not stream._has_message():
            self._ack_stream(stream)

    def consumed(self, stream: ServerStream) -> None:
        """A handler took a message out of its stream's buffer: give back what was held for it."""
        if stream._unacked and not stream._remote_ended and not stream._has_message():
            self._ack_stream(stream)

    def _ack_stream(self, stream: ServerStream) -> None:
        if stream._unacked and not self._closed:
            self._write(_frame(_WINDOW_UPDATE, 0, stream.id, _U32.pack(stream._unacked)))
            stream._unacked = 0

    def _on_headers(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if stream_id == 0 or not stream_id & 1:
            self._fail(_PROTOCOL_ERROR)
            return
        pad = 0
        start = 0
        if flags & _PADDED:
            if not payload:
                self._fail(_PROTOCOL_ERROR)
                return
            pad = payload[0]
            start = 1
        if flags & _PRIORITY_FLAG:
            start += 5
        if start + pad > len(payload):
            self._fail(_PROTOCOL_ERROR)
            return
        self._header_block = bytearray(payload[start : len(payload) - pad])
        self._header_stream = stream_id
        self._header_flags = flags
        if flags & _END_HEADERS:
            self._headers_done()

    def _on_continuation(self, flags: int, stream_id: int, payload: memoryview) -> None:
        block = self._header_block
        if block is None or stream_id != self._header_stream:
            self._fail(_PROTOCOL_ERROR)
            return
        block += payload
        if len(block) > MAX_HEADER_BLOCK:
            self._fail(_PROTOCOL_ERROR)
            return
        if flags & _END_HEADERS:
            self._headers_done()

    def _headers_done(self) -> None:
        block, stream_id, flags = self._header_block, self._header_stream, self._header_flags
        self._header_block = None
        assert block is not None
        try:
            headers: list[tuple[str, str]] = self._decoder.decode(bytes(block))
        except Exception:  # hpack's errors: the connection's table is lost with them
            self._fail(_COMPRESSION_ERROR)
            return
        end = bool(flags & _END_STREAM)
        existing = self._streams.get(stream_id)
        if existing is not None:  # trailers from the client: they end its side
            existing._feed(b"", True)
            return
        if stream_id <= self._last_id:
            if not end:
                self._write(_frame(_RST_STREAM, 0, stream_id, _U32.pack(_PROTOCOL_ERROR)))
            return
        self._last_id = stream_id
        if self._goaway or self.server.closing:
            self._write(_frame(_RST_STREAM, 0, stream_id, _U32.pack(_REFUSED_STREAM)))
            return
        self._request(stream_id, headers, end)

    # Requests ----------------------------------------------------------------------------------

    def _request(self, stream_id: int, headers: list[tuple[str, str]], end: bool) -> None:
        fields: dict[str, str] = {}
        for key, value in headers:
            fields.setdefault(key, value)
        if fields.get(":method") != "POST":
            self._abort(stream_id, end, "405")
            return
        content_type = fields.get("content-type")
        if content_type is None:
            self._abort(stream_id, end, "415", "Missing content-type header")
            return
        if content_type not in _GRPC_CONTENT_TYPES:
            self._abort(stream_id, end, "415", "Unacceptable content-type header")
            return
        if fields.get("te") != "trailers":
            self._abort(stream_id, end, "400", 'Required "te: trailers" header is missing')
            return
        path = fields.get(":path", "")
        timeout: float | None = None
        if "grpc-timeout" in fields:
            try:
                timeout = min(parse_timeout(v) for k, v in headers if k == "grpc-timeout")
            except ValueError:
                self._abort(stream_id, end, "200", "Invalid grpc-timeout header")
                return
        handler = self.server.lookup(path)
        stream = ServerStream(self, stream_id, handler, decode_metadata(headers), self.server.codec)
        if end:
            stream._remote_ended = True
        self._streams[stream_id] = stream
        stream.task = self.loop.create_task(self._serve(stream, handler.func, timeout))
        self.server.tasks.add(stream.task)
        stream.task.add_done_callback(self.server.tasks.discard)

    async def _serve(self, stream: ServerStream, func: StreamFunc, limit: float | None) -> None:
        timer = None
        if limit is not None:
            timer = self.loop.call_later(limit, self._deadline, stream)
        status, message = Status.OK, None
        try:
            await func(stream)
        except GRPCError as exc:
            status, message = exc.status, exc.message
        except asyncio.CancelledError:
            if not stream.deadline_hit or stream.closed:
                raise
            status, message = Status.DEADLINE_EXCEEDED, None
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()  # the one cancel was the deadline's
        except Exception:
            log.exception("grpc_handler_failed", stream=stream.id)
            status, message = Status.UNKNOWN, "Internal Server Error"
        finally:
            if timer is not None:
                timer.cancel()
        if status is Status.OK and not stream.messages_sent and not stream._server_streaming:
            log.error("grpc_unary_without_answer", stream=stream.id)
            status, message = Status.UNKNOWN, "Internal Server Error"
        if not stream.closed:
            self._finish(stream, status, message)

    def _deadline(self, stream: ServerStream) -> None:
        if stream.task is not None and not stream.task.done() and not stream.closed:
            stream.deadline_hit = True
            stream.task.cancel()

    def _finish(self, stream: ServerStream, status: Status, message: str | None) -> None:
        """The trailers (or a trailers-only answer); after an error, a reset if the client is still sending."""
        stream.closed = True
        self._streams.pop(stream.id, None)
        if self._closed:
            return
        if status is Status.OK:
            block = _OK_TRAILERS if stream.headers_sent else _trailers_only(0, None)
        elif stream.headers_sent:
            block = _error_trailers(status.value, message)
        else:
            block = _trailers_only(status.value, message)
        self._write_headers(stream.id, block, end=True)
        if status is not Status.OK and not stream._remote_ended:
            # As grpclib's server: a client still sending learns at once that nothing more is
            # read (grpc-go resets after any status, which clients that end their side after
            # the answer, grpclib's among them, take for an error).
            self._write(_frame(_RST_STREAM, 0, stream.id, _U32.pack(_NO_ERROR)))
        if self._goaway and not self._streams:
            self._close()

    def _abort(self, stream_id: int, end: bool, http_status: str, message: str | None = None) -> None:
        """grpclib's answers to a request it will not dispatch."""
        headers = [(":status", http_status)]
        if message is not None:
            headers.append(("grpc-status", str(Status.UNKNOWN.value)))
            headers.append(("grpc-message", message))
        self._write_headers(stream_id, header_block(tuple(headers)), end=True)
        if not end:
            self._write(_frame(_RST_STREAM, 0, stream_id, _U32.pack(_NO_ERROR)))

    def _cancel(self, stream: ServerStream) -> None:
        stream._abandon()
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()

    def _reset(self, stream: ServerStream, code: int) -> None:
        self._streams.pop(stream.id, None)
        self._write(_frame(_RST_STREAM, 0, stream.id, _U32.pack(code)))
        self._cancel(stream)

    # Writing -----------------------------------------------------------------------------------

    def _write_headers(self, stream_id: int, block: bytes, *, end: bool) -> None:
        flags = _END_STREAM if end else 0
        limit = self._peer_max_frame
        if len(block) <= limit:
            self._write(_frame(_HEADERS, flags | _END_HEADERS, stream_id, block))
            return
        self._write(_frame(_HEADERS, flags, stream_id, block[:limit]))
        for start in range(limit, len(block), limit):
            last = start + limit >= len(block)
            self._write(
                _frame(_CONTINUATION, _END_HEADERS if last else 0, stream_id, block[start : start + limit])
            )

    async def send_data(self, stream: ServerStream, data: bytes) -> None:
        """A message's bytes as DATA frames, within the client's windows (the headers first)."""
        if not stream.headers_sent:
            stream.headers_sent = True
            self._write(_frame(_HEADERS, _END_HEADERS, stream.id, _RESPONSE_HEADERS))
        view = memoryview(data)
        pos, total = 0, len(data)
        while pos < total:
            if self._paused is not None and not self._paused.done():
                await self._paused
            if stream.closed or self._closed:
                raise ConnectionResetError("the client went away")
            allowed = min(stream.send_window, self.send_window, total - pos)
            if allowed <= 0:
                if self.send_window <= 0:
                    self._window_waiters.append(stream)
                await stream._wait_window()
                continue
            max_frame = self._peer_max_frame
            chunks = []
            stop = pos + allowed
            while pos < stop:
                n = min(max_frame, stop - pos)
                chunks.append(_frame(_DATA, 0, stream.id, view[pos : pos + n].tobytes()))
                pos += n
            stream.send_window -= allowed
            self.send_window -= allowed
            self._write(b"".join(chunks))

    def _write(self, data: bytes) -> None:
        if not self._out:
            self.loop.call_soon(self._flush_next_turn)
        self._out.append(data)

    def _flush_next_turn(self) -> None:
        self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        out, self._out = self._out, []
        transport = self.transport
        if out and transport is not None and not transport.is_closing():
            transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _fail(self, code: int) -> None:
        """A connection error: GOAWAY with the code, then close."""
        if self._closed:
            return
        self._write(_frame(_GOAWAY, 0, 0, struct.pack(">LL", self._last_id, code)))
        self._close()

    def _close(self) -> None:
        self._closed = True
        self._flush()
        if self.transport is not None:
            self.transport.close()
        for stream in list(self._streams.values()):
            self._cancel(stream)
        self._streams.clear()

    def shutdown(self) -> None:
        """The server is closing: GOAWAY, every call cancelled, the connection closed."""
        if not self._closed:
            self._write(_frame(_GOAWAY, 0, 0, struct.pack(">LL", self._last_id, _NO_ERROR)))
            self._close()


def _trailers_only(code: int, message: str | None) -> bytes:
    headers = [(":status", "200"), ("content-type", CONTENT_TYPE), ("grpc-status", str(code))]
    if message is not None:
        headers.append(("grpc-message", encode_grpc_message(message)))
    return header_block(tuple(headers))


def _error_trailers(code: int, message: str | None) -> bytes:
    headers = [("grpc-status", str(code))]
    if message is not None:
        headers.append(("grpc-message", encode_grpc_message(message)))
    return header_block(tuple(headers))


class GRPCServer:
    """A gRPC server on a unix socket; ``lookup`` gives the handler of a path (unknown ones too)."""

    def __init__(self, lookup: Callable[[str], Handler], codec: Any) -> None:
        self.lookup = lookup
        self.codec = codec
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.closing = False
        self._server: asyncio.AbstractServer | None = None

    async def start(self, *, path: str, backlog: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _Connection(self), path=path, backlog=backlog)

    def close(self) -> None:
        """Stop listening; GOAWAY every connection and cancel every call."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.shutdown()

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()
        tasks = [t for t in self.tasks if not t.done()]
        if tasks:
            await asyncio.wait(tasks)
