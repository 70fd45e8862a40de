"""Tar framing for image archives: a push parser (bytes in, events out) over the shared codec.

The parser does no I/O, so the same code reads a file, a socket or an async stream, and a
member's data is handed out as it arrives rather than held. Headers are read and written by
``corral.plugins.core.tar`` (ustar, PAX and GNU long names); the parser requires the
end-of-archive marker, so a stream cut at a member boundary is refused as truncated rather than
taken for a shorter archive.
"""

from __future__ import annotations

import enum

from corral.kernel import InvalidArgument
from corral.plugins.core.tar import (
    BLOCK,
    Extensions,
    TarEntry,
    check_meta_size,
    decode_block,
    decode_member,
    is_meta,
)

TarHeader = TarEntry
"""One member, PAX and GNU long names folded in; ``size`` is 0 for header-only types."""


class Event(enum.Enum):
    HEADER = "header"
    DATA = "data"
    MEMBER_END = "member_end"
    ARCHIVE_END = "archive_end"


TarEvent = tuple[Event, TarEntry | bytes | None]

_ZERO = bytes(BLOCK)


class _State(enum.Enum):
    HEADER = 1
    META = 2
    DATA = 3
    PADDING = 4
    AFTER_ZERO = 5
    END = 6


class TarParser:
    """Feed bytes, get events: (HEADER, TarHeader), (DATA, bytes)…, (MEMBER_END, None), and
    (ARCHIVE_END, None) once at the end-of-archive marker; anything after the marker is ignored."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._state = _State.HEADER
        self._left = 0
        self._padding = 0
        self._meta_type = b""
        self._meta_size = 0
        self._extensions = Extensions()
        self.offset = 0
        """Bytes consumed so far; after the end, the archive's size including what followed the marker."""

    @property
    def ended(self) -> bool:
        return self._state is _State.END

    def feed(self, data: bytes) -> list[TarEvent]:
        """The events ``data`` completes; DATA chunks are slices of ``data`` itself."""
        self.offset += len(data)
        events: list[TarEvent] = []
        view = memoryview(data)
        pos = 0
        while True:
            state = self._state
            if state is _State.END:
                return events
            if state is _State.DATA:
                take = min(self._left, len(view) - pos)
                if take:
                    events.append((Event.DATA, bytes(view[pos : pos + take])))
                    pos += take
                    self._left -= take
                if self._left:
                    return events
                events.append((Event.MEMBER_END, None))
                self._state = _State.PADDING
                continue
            if state is _State.PADDING:
                take = min(self._padding, len(view) - pos)
                pos += take
                self._padding -= take
                if self._padding:
                    return events
                self._state = _State.HEADER
                continue
            need = self._meta_size + (-self._meta_size % BLOCK) if state is _State.META else BLOCK
            missing = need - len(self._buf)
            if missing > 0:
                chunk = view[pos : pos + missing]
                self._buf += chunk
                pos += len(chunk)
                if len(self._buf) < need:
                    return events
            block = bytes(self._buf)
            self._buf.clear()
            if state is _State.META:
                self._meta_done(block[: self._meta_size])
            elif state is _State.AFTER_ZERO:
                if block != _ZERO:
                    raise InvalidArgument("tar stream: a zero block followed by a header (corrupt archive)")
                self._state = _State.END
                events.append((Event.ARCHIVE_END, None))
            else:
                header = self._header(block)
                if header is not None:
                    events.append((Event.HEADER, header))
                    if self._state is _State.HEADER:
                        events.append((Event.MEMBER_END, None))

    def close(self) -> None:
        """The source has ended: InvalidArgument unless the end-of-archive marker was seen."""
        if self._state is _State.AFTER_ZERO and not self._buf:
            self._state = _State.END
            return
        if self._state is not _State.END:
            where = (
                "in the middle of a member"
                if self._state is not _State.HEADER or self._buf
                else "at a member"
            )
            raise InvalidArgument(
                f"tar stream is truncated: it ends {where}, before the end-of-archive marker"
            )

    def _meta_done(self, data: bytes) -> None:
        self._extensions.add(self._meta_type, data)
        self._state = _State.HEADER

    def _header(self, block: bytes) -> TarEntry | None:
        decoded = decode_block(block)
        if decoded is None:
            self._state = _State.AFTER_ZERO
            return None
        typeflag, size, fields = decoded
        if is_meta(typeflag):
            check_meta_size(size)
            self._meta_type, self._meta_size = typeflag, size
            if size:
                self._state = _State.META
            else:
                self._meta_done(b"")
            return None
        header = decode_member(typeflag, size, fields, self._extensions)
        if header.size:
            self._left = header.size
            self._padding = -header.size % BLOCK
            self._state = _State.DATA
        else:
            self._state = _State.HEADER
        return header
