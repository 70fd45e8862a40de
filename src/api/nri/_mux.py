"""NRI's connection multiplexing: several logical byte streams over one socket.

As containerd/nri's ``pkg/net/multiplex``: a frame is an 8-byte header (uint32 BE connection id,
uint32 BE payload length) and the payload; the bytes of one logical connection are the payloads
of its frames in order. NRI runs two ttrpc connections on a plugin's socket: id 1 carries the
calls the runtime makes to the plugin, id 2 the calls the plugin makes to the runtime.

The framing is pure; ``Mux`` pumps each logical connection through a socketpair, so an ordinary
ttrpc client or server serves the other end unchanged.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Iterator, Sequence

import anyio
import anyio.abc

HEADER = struct.Struct(">II")
PLUGIN_SERVICE_CONN = 1
"""The logical connection on which the plugin serves and the runtime calls."""
RUNTIME_SERVICE_CONN = 2
"""The logical connection on which the runtime serves and the plugin calls."""
MAX_PAYLOAD = 10 + (4 << 20)
"""The largest frame payload: one ttrpc message header and the largest ttrpc message."""
WRITE_CHUNK = 4096
"""Frames are cut at this size: a Go peer reads each frame into a 4 KiB bufio buffer or larger,
so no frame it receives can be bigger than the buffer it reads into."""


class MuxError(Exception):
    """A trunk that broke the framing (an oversized frame, the reserved id 0)."""


def encode_frames(conn_id: int, data: bytes, chunk: int = WRITE_CHUNK) -> bytes:
    """``data`` for logical connection ``conn_id`` as frames of at most ``chunk`` bytes each."""
    if conn_id <= 0:
        raise MuxError(f"ConnID {conn_id} is reserved")
    out = bytearray()
    for start in range(0, len(data), chunk):
        piece = data[start : start + chunk]
        out += HEADER.pack(conn_id, len(piece))
        out += piece
    return bytes(out)


class MuxDecoder:
    """Incremental decoder: ``feed`` trunk bytes, then take (connection id, payload) pairs."""

    def __init__(self, limit: int = MAX_PAYLOAD) -> None:
        self._buffer = bytearray()
        self._limit = limit

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def frames(self) -> Iterator[tuple[int, bytes]]:
        while len(self._buffer) >= HEADER.size:
            conn_id, length = HEADER.unpack_from(self._buffer)
            if length > self._limit:
                raise MuxError(f"frame of {length} bytes for connection {conn_id} is over {self._limit}")
            end = HEADER.size + length
            if len(self._buffer) < end:
                return
            payload = bytes(self._buffer[HEADER.size : end])
            del self._buffer[:end]
            yield conn_id, payload


class Mux:
    """One trunk socket split into logical connections, each handed out as a connected stream."""

    def __init__(self, trunk: socket.socket, conn_ids: Sequence[int]) -> None:
        trunk.setblocking(False)
        self._trunk = trunk
        self._outer: dict[int, socket.socket] = {}
        self._inner: dict[int, socket.socket] = {}
        for conn_id in conn_ids:
            outer, inner = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            outer.setblocking(False)
            self._outer[conn_id], self._inner[conn_id] = outer, inner
        self._write_lock = anyio.Lock()
        self.closed = anyio.Event()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[dict[int, anyio.abc.SocketStream]]:
        """Pump the trunk until the block ends or the trunk closes; yields a stream per connection."""
        streams: dict[int, anyio.abc.SocketStream] = {}
        for conn_id, inner in self._inner.items():
            streams[conn_id] = await anyio.abc.UNIXSocketStream.from_socket(inner)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._demultiplex, tg.cancel_scope)
                for conn_id, outer in self._outer.items():
                    tg.start_soon(self._multiplex, conn_id, outer, tg.cancel_scope)
                try:
                    yield streams
                finally:
                    tg.cancel_scope.cancel()
        finally:
            self.closed.set()
            for stream in streams.values():
                with anyio.CancelScope(shield=True):
                    await stream.aclose()
            for sock in (*self._outer.values(), self._trunk):
                sock.close()

    async def _demultiplex(self, scope: anyio.CancelScope) -> None:
        decoder = MuxDecoder()
        try:
            while True:
                await anyio.wait_readable(self._trunk)
                try:
                    data = self._trunk.recv(1 << 16)
                except BlockingIOError:
                    continue
                if not data:
                    return
                decoder.feed(data)
                for conn_id, payload in decoder.frames():
                    outer = self._outer.get(conn_id)
                    if outer is not None:
                        await _send_all(outer, payload)
        except (OSError, MuxError):
            return
        finally:
            # The trunk is gone: every logical connection ends with it.
            scope.cancel()

    async def _multiplex(self, conn_id: int, outer: socket.socket, scope: anyio.CancelScope) -> None:
        try:
            while True:
                await anyio.wait_readable(outer)
                try:
                    data = outer.recv(1 << 16)
                except BlockingIOError:
                    continue
                if not data:
                    return
                async with self._write_lock:
                    await _send_all(self._trunk, encode_frames(conn_id, data))
        except OSError:
            return
        finally:
            scope.cancel()


async def _send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view) :]
        except BlockingIOError:
            await anyio.wait_writable(sock)
