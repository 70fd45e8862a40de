"""Tar framing for image archives and layers: a push parser (bytes in, events out) and headers out.

The parser does no I/O, so the same code reads a file, a socket or an async stream, and a
member's data is handed out as it arrives rather than held. It reads ustar, PAX and GNU long
names; it requires the end-of-archive marker, so a stream cut at a member boundary is refused
as truncated rather than taken for a shorter archive. Headers written here are deterministic:
ustar, numeric owners, fixed times, and a PAX record only when ustar cannot hold a value.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

from corral.kernel import InvalidArgument, Unimplemented

BLOCK = 512
MAX_META_SIZE = 1 << 20
"""PAX records and GNU long names beyond this are refused rather than held in memory."""

REGULAR = b"0"
HARDLINK = b"1"
SYMLINK = b"2"
CHAR = b"3"
BLOCKDEV = b"4"
DIRECTORY = b"5"
FIFO = b"6"
_CONTIGUOUS = b"7"
_OLD_REGULAR = b"\0"
_PAX = b"x"
_PAX_SOLARIS = b"X"
_PAX_GLOBAL = b"g"
_GNU_LONGNAME = b"L"
_GNU_LONGLINK = b"K"
_GNU_SPARSE = b"S"
_GNU_VOLUME = b"V"
_HEADER_ONLY = frozenset({HARDLINK, SYMLINK, CHAR, BLOCKDEV, DIRECTORY, FIFO})

_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12x")
_ZERO = bytes(BLOCK)
_POSIX_MAGIC = b"ustar\0"


@dataclass(slots=True)
class TarHeader:
    """One member, PAX and GNU long names folded in; ``size`` is 0 for header-only types."""

    name: bytes
    type: bytes
    size: int
    mode: int = 0
    linkname: bytes = b""
    pax: dict[bytes, bytes] = field(default_factory=dict)

    @property
    def is_regular(self) -> bool:
        return self.type == REGULAR


class Event(enum.Enum):
    HEADER = "header"
    DATA = "data"
    MEMBER_END = "member_end"
    ARCHIVE_END = "archive_end"


TarEvent = tuple[Event, TarHeader | bytes | None]


def _number(value: bytes, what: str) -> int:
    if value and value[0] & 0x80:
        # GNU base-256: big-endian two's complement with the top bit as the marker.
        number = int.from_bytes(bytes([value[0] & 0x7F]) + value[1:], "big")
        if value[0] & 0x40:
            number -= 1 << (len(value) * 8 - 1)
        return number
    text = value.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise InvalidArgument(f"tar header: {what} field {value!r} is not a number") from None


def _checksum_ok(block: bytes, stored: bytes) -> bool:
    text = stored.split(b"\0", 1)[0].strip(b" ")
    try:
        expected = int(text, 8)
    except ValueError:
        return False
    blanked = block[:148] + b" " * 8 + block[156:]
    unsigned = sum(blanked)
    signed = sum(b - 256 if b > 127 else b for b in blanked)
    return expected in (unsigned, signed)


def _cstring(value: bytes) -> bytes:
    return value.split(b"\0", 1)[0]


def parse_pax(data: bytes) -> dict[bytes, bytes]:
    """``LEN KEY=VALUE\\n`` records; InvalidArgument for a malformed one."""
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            raise InvalidArgument("tar PAX header: record without a length")
        try:
            length = int(data[pos:space])
        except ValueError:
            raise InvalidArgument("tar PAX header: record length is not a number") from None
        end = pos + length
        if length <= space - pos + 1 or end > len(data) or data[end - 1 : end] != b"\n":
            raise InvalidArgument("tar PAX header: record length does not fit the record")
        key, eq, value = data[space + 1 : end - 1].partition(b"=")
        if not eq or not key:
            raise InvalidArgument("tar PAX header: record without key=value")
        records[key] = value
        pos = end
    return records


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
        self._pax: dict[bytes, bytes] = {}
        self._longname: bytes | None = None
        self._longlink: bytes | None = None
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
        kind = self._meta_type
        if kind in (_PAX, _PAX_SOLARIS):
            self._pax |= parse_pax(data)
        elif kind == _GNU_LONGNAME:
            self._longname = _cstring(data)
        elif kind == _GNU_LONGLINK:
            self._longlink = _cstring(data)
        # Global PAX headers and volume labels describe no member.
        self._state = _State.HEADER

    def _header(self, block: bytes) -> TarHeader | None:
        if block == _ZERO:
            self._state = _State.AFTER_ZERO
            return None
        (
            name,
            mode,
            _uid,
            _gid,
            size_field,
            _mtime,
            checksum,
            typeflag,
            linkname,
            magic,
            _version,
            _uname,
            _gname,
            _devmajor,
            _devminor,
            prefix,
        ) = _HEADER.unpack(block)
        if not _checksum_ok(block, checksum):
            raise InvalidArgument("tar header: checksum mismatch (not a tar stream, or corrupt)")
        size = _number(size_field, "size")
        if typeflag in (_PAX, _PAX_SOLARIS, _GNU_LONGNAME, _GNU_LONGLINK, _PAX_GLOBAL, _GNU_VOLUME):
            if not 0 <= size <= MAX_META_SIZE:
                raise InvalidArgument(f"tar header: {size}-byte metadata entry exceeds {MAX_META_SIZE}")
            self._meta_type, self._meta_size = typeflag, size
            self._state = _State.META if size else _State.HEADER
            return None
        if typeflag == _GNU_SPARSE:
            raise Unimplemented("tar member: sparse files are not supported")
        path = _cstring(name)
        if magic == _POSIX_MAGIC and prefix[0]:
            path = _cstring(prefix) + b"/" + path
        if typeflag in (_OLD_REGULAR, _CONTIGUOUS):
            typeflag = DIRECTORY if typeflag == _OLD_REGULAR and path.endswith(b"/") else REGULAR
        header = TarHeader(path, typeflag, size, _number(mode, "mode") & 0o7777, _cstring(linkname))
        pax, self._pax = self._pax, {}
        if self._longname is not None:
            header.name, self._longname = self._longname, None
        if self._longlink is not None:
            header.linkname, self._longlink = self._longlink, None
        if pax:
            header.pax = pax
            if b"path" in pax:
                header.name = pax[b"path"]
            if b"linkpath" in pax:
                header.linkname = pax[b"linkpath"]
            if b"size" in pax:
                try:
                    header.size = int(pax[b"size"])
                except ValueError:
                    raise InvalidArgument("tar PAX header: size is not a number") from None
            if any(key.startswith(b"GNU.sparse.") for key in pax):
                raise Unimplemented(f"tar member {header.name!r}: sparse files are not supported")
        if header.size < 0:
            raise InvalidArgument(f"tar member {header.name!r}: negative size")
        if typeflag in _HEADER_ONLY:
            header.size = 0
        if header.size:
            self._left = header.size
            self._padding = -header.size % BLOCK
            self._state = _State.DATA
        else:
            self._state = _State.HEADER
        return header


# --- writing -------------------------------------------------------------------------------

END_OF_ARCHIVE = bytes(2 * BLOCK)
_USTAR_MAX_ID = 0o7777777
_USTAR_MAX_SIZE = 0o77777777777


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _split_ustar(name: bytes) -> tuple[bytes, bytes] | None:
    """(prefix, name) when ``name`` fits ustar's two fields as ASCII, else None."""
    if not name.isascii():
        return None
    if len(name) <= 100:
        return b"", name
    cut = name.rfind(b"/", 0, 156)
    while cut > 0:
        if len(name) - cut - 1 <= 100:
            return name[:cut], name[cut + 1 :]
        cut = name.rfind(b"/", 0, cut)
    return None


def pax_record(key: bytes, value: bytes) -> bytes:
    """One ``LEN KEY=VALUE\\n`` record; LEN counts its own digits."""
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(b"%d" % length) + len(body) != length:
        length = len(b"%d" % length) + len(body)
    return b"%d" % length + body


def _ustar(
    name: bytes,
    prefix: bytes,
    typeflag: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    link: bytes,
) -> bytes:
    head = b"".join(
        (
            name.ljust(100, b"\0"),
            _octal(mode, 8),
            _octal(uid, 8),
            _octal(gid, 8),
            _octal(size, 12),
            _octal(mtime, 12),
            b"        ",
            typeflag,
            link.ljust(100, b"\0")[:100],
            b"ustar\x0000",
            bytes(64),
            _octal(0, 8),
            _octal(0, 8),
            prefix.ljust(155, b"\0"),
            bytes(12),
        )
    )
    return head[:148] + b"%06o\0 " % sum(head) + head[156:]


def encode_header(
    name: str | bytes,
    typeflag: bytes = REGULAR,
    *,
    size: int = 0,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: int = 0,
    linkname: str | bytes = b"",
    xattrs: dict[bytes, bytes] | None = None,
) -> bytes:
    """The header block(s) of one member: ustar, after a PAX header only when ustar cannot hold it."""
    raw = name.encode() if isinstance(name, str) else name
    link = linkname.encode() if isinstance(linkname, str) else linkname
    records: list[bytes] = []
    split = _split_ustar(raw)
    if split is None:
        records.append(pax_record(b"path", raw))
        split = (b"", raw[:100].decode("ascii", "replace").encode("ascii", "replace"))
    if len(link) > 100 or not link.isascii():
        records.append(pax_record(b"linkpath", link))
    if uid > _USTAR_MAX_ID:
        records.append(pax_record(b"uid", b"%d" % uid))
        uid = 0
    if gid > _USTAR_MAX_ID:
        records.append(pax_record(b"gid", b"%d" % gid))
        gid = 0
    if size > _USTAR_MAX_SIZE:
        records.append(pax_record(b"size", b"%d" % size))
    for key in sorted(xattrs or {}):
        records.append(pax_record(b"SCHILY.xattr." + key, (xattrs or {})[key]))
    block = _ustar(
        split[1], split[0], typeflag, mode, uid, gid, size if size <= _USTAR_MAX_SIZE else 0, mtime, link
    )
    if not records:
        return block
    data = b"".join(records)
    parent, _, base = raw.rstrip(b"/").rpartition(b"/")
    pax_name = (parent + b"/" if parent else b"") + b"PaxHeaders.0/" + base
    if len(pax_name) > 100 or not pax_name.isascii():
        pax_name = b"PaxHeaders.0"
    head = _ustar(pax_name, b"", _PAX, 0o644, 0, 0, len(data), mtime, b"")
    return head + data + bytes(-len(data) % BLOCK) + block


def padding(size: int) -> bytes:
    """The zeros that follow ``size`` bytes of member data."""
    return bytes(-size % BLOCK)
