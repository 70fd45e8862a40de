"""ttrpc's message framing as pure functions over bytes: no sockets, no event loop.

A frame is a 10-byte header (uint32 BE payload length, uint32 BE stream id, uint8 type,
uint8 flags) and the payload. Payloads above 4 MiB are refused; the decoder reports such a
frame once, skips its payload and carries on, so a peer can answer ResourceExhausted on that
stream and keep the connection.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from enum import IntEnum, IntFlag
from typing import NamedTuple

HEADER = struct.Struct(">IIBB")
HEADER_SIZE = HEADER.size
MAX_PAYLOAD = 4 << 20
"""The largest payload ttrpc accepts (messageLengthMax)."""


class MessageType(IntEnum):
    REQUEST = 0x1
    RESPONSE = 0x2
    DATA = 0x3


class Flags(IntFlag):
    """Per-type flags; unary requests and every response carry none."""

    NONE = 0x0
    REMOTE_CLOSED = 0x1
    REMOTE_OPEN = 0x2
    NO_DATA = 0x4


class Frame(NamedTuple):
    """One decoded frame. A tuple rather than a dataclass: one is built per message on the hot path."""

    stream_id: int
    type: int
    flags: int
    payload: bytes


class FrameTooLarge(Exception):
    """A frame whose payload is over the limit; ttrpc answers it with ResourceExhausted."""

    def __init__(self, stream_id: int, length: int, limit: int = MAX_PAYLOAD) -> None:
        self.stream_id = stream_id
        self.length = length
        self.limit = limit
        super().__init__(f"message length {length} exceed maximum message size of {limit}")


def encode_header(stream_id: int, type: int, flags: int, length: int) -> bytes:
    return HEADER.pack(length, stream_id, type, flags)


def encode_frame(
    stream_id: int, type: int, payload: bytes = b"", flags: int = 0, *, limit: int = MAX_PAYLOAD
) -> bytes:
    """Header and payload in one buffer, ready for one write; an oversized payload raises FrameTooLarge."""
    if len(payload) > limit:
        raise FrameTooLarge(stream_id, len(payload), limit)
    return HEADER.pack(len(payload), stream_id, type, flags) + payload


class FrameDecoder:
    """Incremental decoder: ``feed`` bytes as they arrive, then take complete frames.

    Partial headers and payloads wait in the buffer; one chunk may hold many frames.
    """

    __slots__ = ("_buffer", "_limit", "_pos", "_skip")

    def __init__(self, limit: int = MAX_PAYLOAD) -> None:
        self._buffer = bytearray()
        self._pos = 0
        self._limit = limit
        self._skip = 0

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame (a partial frame at the end of a stream)."""
        return len(self._buffer) - self._pos

    def feed(self, data: bytes) -> None:
        if self._skip:
            dropped = min(self._skip, len(data))
            self._skip -= dropped
            data = data[dropped:]
        # Consumed bytes are dropped here, once per chunk, rather than once per frame.
        if self._pos:
            del self._buffer[: self._pos]
            self._pos = 0
        self._buffer += data

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None until more bytes arrive.

        An oversized frame raises FrameTooLarge once; its payload is then discarded as it arrives
        and decoding resumes with the frame after it.
        """
        buffer, pos = self._buffer, self._pos
        if len(buffer) - pos < HEADER_SIZE:
            return None
        length, stream_id, type, flags = HEADER.unpack_from(buffer, pos)
        start = pos + HEADER_SIZE
        if length > self._limit:
            dropped = min(length, len(buffer) - start)
            self._pos = start + dropped
            self._skip = length - dropped
            raise FrameTooLarge(stream_id, length, self._limit)
        end = start + length
        if len(buffer) < end:
            return None
        self._pos = end
        return Frame(stream_id, type, flags, bytes(buffer[start:end]))

    def frames(self) -> Iterator[Frame]:
        """Every complete frame now buffered; FrameTooLarge propagates (iterate again afterwards)."""
        while (frame := self.next_frame()) is not None:
            yield frame
