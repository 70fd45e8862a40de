"""The tar header codec every plugin shares: ustar, PAX and GNU long names, read and written.

Pure functions over 512-byte blocks, no I/O: the differ's pull reader, the image archive's push
parser and every writer of layers and archives frame their streams around these. Reading is
Go's ``archive/tar`` as containerd sees it (checksums signed or unsigned, octal or base-256
numbers, PAX records folded into the member they precede, global headers describing nothing);
writing is deterministic (numeric owners, whole-second times, xattrs sorted, a PAX header only
when ustar cannot hold a value). Names stay ``bytes`` from the archive to the filesystem.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

from corral.kernel import InvalidArgument, Unimplemented

__all__ = [
    "BLOCK",
    "BLOCKDEV",
    "CHAR",
    "DIRECTORY",
    "END_OF_ARCHIVE",
    "FIFO",
    "HARDLINK",
    "HEADER_ONLY",
    "MAX_META_SIZE",
    "REGULAR",
    "SYMLINK",
    "XATTR_PREFIX",
    "Extensions",
    "TarEntry",
    "check_meta_size",
    "decode_block",
    "decode_member",
    "encode_header",
    "is_meta",
    "padding",
    "parse_number",
    "parse_pax_records",
    "parse_pax_time",
    "pax_record",
]

BLOCK = 512
END_OF_ARCHIVE = bytes(2 * BLOCK)
MAX_META_SIZE = 1 << 20
"""PAX records and GNU long names beyond this are refused rather than held in memory (as Go's tar)."""

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
_META = frozenset({_PAX, _PAX_SOLARIS, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK, _GNU_VOLUME})
HEADER_ONLY = frozenset({HARDLINK, SYMLINK, CHAR, BLOCKDEV, DIRECTORY, FIFO})
"""Types that carry no data whatever their size field says (Go, tarfile)."""

XATTR_PREFIX = b"SCHILY.xattr."
_NS = 1_000_000_000
_ZERO_BLOCK = bytes(BLOCK)
_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12x")
_SIGNED = struct.Struct("148b8x356b")
_POSIX_MAGIC = b"ustar\0"
_NAME_RECORDS = (b"path", b"linkpath", b"uname", b"gname")

Fields = tuple[bytes, ...]


@dataclass(slots=True)
class TarEntry:
    """One member, after PAX and GNU long-name records have been folded in.

    ``size`` is the length of the data that follows: 0 for the header-only types."""

    name: bytes
    type: bytes
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime_ns: int = 0
    atime_ns: int | None = None
    linkname: bytes = b""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[bytes, bytes] = field(default_factory=dict)

    @property
    def is_regular(self) -> bool:
        return self.type == REGULAR


# --- reading -------------------------------------------------------------------------------


def parse_number(value: bytes, what: str = "number") -> int:
    """A numeric header field: octal (NUL- or space-padded), or GNU base-256 (high bit set)."""
    try:
        return int(value.rstrip(b"\0 "), 8)
    except ValueError:
        return _parse_number_slowly(value, what)


def _parse_number_slowly(value: bytes, what: str) -> int:
    if value and value[0] & 0x80:
        # GNU base-256: big-endian two's complement, the top bit the marker and 0x40 the sign.
        number = int.from_bytes(bytes([value[0] & 0x7F]) + value[1:], "big")
        if value[0] & 0x40:
            number -= 1 << (len(value) * 8 - 1)
        return number
    digits = value.strip(b" \0").partition(b"\0")[0]
    if not digits:
        return 0
    try:
        return int(digits, 8)
    except ValueError:
        raise InvalidArgument(f"tar header: invalid {what} field {value!r}") from None


def parse_pax_time(value: bytes) -> int:
    """A PAX time (``seconds[.fraction]``, maybe negative) in nanoseconds."""
    text = value.strip()
    negative = text.startswith(b"-")
    whole, _, frac = text.lstrip(b"-").partition(b".")
    if not whole.isdigit() or (frac and not frac.isdigit()):
        raise InvalidArgument(f"tar header: invalid PAX time {value!r}")
    ns = int(whole) * _NS + int((frac[:9]).ljust(9, b"0") or b"0")
    return -ns if negative else ns


def parse_pax_records(data: bytes) -> dict[bytes, bytes]:
    """``LEN KEY=VALUE\\n`` records; a later record for the same key wins (POSIX). NUL padding
    after the last record is tolerated; a name with a NUL in it is not (Go)."""
    records: dict[bytes, bytes] = {}
    pos = 0
    end = len(data)
    while pos < end:
        if data[pos] == 0:
            break
        space = data.find(b" ", pos, pos + 21)
        if space < 0 or not data[pos:space].isdigit():
            raise InvalidArgument("tar header: malformed PAX record length")
        length = int(data[pos:space])
        if length <= space - pos + 1 or pos + length > end or data[pos + length - 1] != 0x0A:
            raise InvalidArgument("tar header: malformed PAX record")
        key, eq, value = data[space + 1 : pos + length - 1].partition(b"=")
        if not eq or not key:
            raise InvalidArgument("tar header: PAX record without a key")
        if key in _NAME_RECORDS and b"\0" in value:
            raise InvalidArgument(f"tar header: PAX {key.decode()} holds a NUL byte")
        records[key] = value
        pos += length
    return records


def _checksum_ok(block: bytes, stored: bytes) -> bool:
    try:
        expected = parse_number(stored, "checksum")
    except InvalidArgument:
        return False
    unsigned = sum(block) - sum(block[148:156]) + 256
    return expected == unsigned or expected == sum(_SIGNED.unpack(block)) + 256


def _cstring(value: bytes) -> bytes:
    return value.partition(b"\0")[0]


def decode_block(block: bytes) -> tuple[bytes, int, Fields] | None:
    """A header block's (typeflag, size, fields), its checksum verified; None for a zero block."""
    if block == _ZERO_BLOCK:
        return None
    fields = _HEADER.unpack(block)
    if not _checksum_ok(block, fields[6]):
        raise InvalidArgument("tar header: checksum mismatch (not a tar stream, or corrupt)")
    return fields[7], parse_number(fields[4], "size"), fields


def is_meta(typeflag: bytes) -> bool:
    """Whether a block describes the next member (PAX, GNU long names) rather than being one;
    its ``size`` bytes of data go to ``Extensions.add``."""
    return typeflag in _META


@dataclass(slots=True)
class Extensions:
    """What the meta blocks before a member say about it; emptied by the member."""

    pax: dict[bytes, bytes] | None = None
    longname: bytes | None = None
    longlink: bytes | None = None

    def add(self, typeflag: bytes, data: bytes) -> None:
        if typeflag in (_PAX, _PAX_SOLARIS):
            records = parse_pax_records(data)
            self.pax = records if self.pax is None else self.pax | records
        elif typeflag == _GNU_LONGNAME:
            self.longname = _cstring(data) or self.longname
        elif typeflag == _GNU_LONGLINK:
            self.longlink = _cstring(data) or self.longlink
        else:
            # A global PAX header (containerd ignores it) or a volume label: it is a member of
            # its own, describing nothing on disk, and what came before it applied to it.
            self.pax = self.longname = self.longlink = None


def check_meta_size(size: int) -> None:
    if not 0 <= size <= MAX_META_SIZE:
        raise InvalidArgument(f"tar header: {size}-byte metadata entry exceeds {MAX_META_SIZE}")


def decode_member(typeflag: bytes, size: int, fields: Fields, extensions: Extensions | None) -> TarEntry:
    """The member a (non-meta) header block describes, with the extensions before it folded in
    (and taken: ``extensions`` is empty afterwards)."""
    (name, mode, uid, gid, _size, mtime, _sum, _type, linkname, magic, _v, _u, _g, major, minor, prefix) = (
        fields
    )
    path = _cstring(name)
    if magic == _POSIX_MAGIC and prefix[0]:
        path = _cstring(prefix) + b"/" + path
    if typeflag in (_OLD_REGULAR, _CONTIGUOUS):
        # Pre-POSIX archives mark directories only by the trailing slash (as Go and tarfile read them).
        typeflag = DIRECTORY if typeflag == _OLD_REGULAR and path.endswith(b"/") else REGULAR
    entry = TarEntry(
        path,
        typeflag,
        parse_number(mode, "mode") & 0o7777,
        parse_number(uid, "uid"),
        parse_number(gid, "gid"),
        size,
        parse_number(mtime, "mtime") * _NS,
        None,
        _cstring(linkname),
    )
    if typeflag in (CHAR, BLOCKDEV):
        entry.devmajor = parse_number(major, "devmajor")
        entry.devminor = parse_number(minor, "devminor")
    pax = None
    if extensions is not None:
        if extensions.longname is not None:
            entry.name = extensions.longname
        if extensions.longlink is not None:
            entry.linkname = extensions.longlink
        pax = extensions.pax
        extensions.pax = extensions.longname = extensions.longlink = None
    if pax:
        _apply_pax(entry, pax)
    if typeflag == _GNU_SPARSE or (pax and any(k.startswith(b"GNU.sparse.") for k in pax)):
        raise Unimplemented(f"tar entry {entry.name!r}: sparse files are not supported")
    if entry.size < 0 or entry.uid < 0 or entry.gid < 0:
        raise InvalidArgument(f"tar entry {entry.name!r}: negative size or owner")
    if typeflag in HEADER_ONLY:
        entry.size = 0
    return entry


def _apply_pax(entry: TarEntry, pax: Mapping[bytes, bytes]) -> None:
    for key, value in pax.items():
        if key == b"path":
            entry.name = value
        elif key == b"linkpath":
            entry.linkname = value
        elif key == b"size":
            entry.size = _pax_int(key, value)
        elif key == b"uid":
            entry.uid = _pax_int(key, value)
        elif key == b"gid":
            entry.gid = _pax_int(key, value)
        elif key == b"mtime":
            entry.mtime_ns = parse_pax_time(value)
        elif key == b"atime":
            entry.atime_ns = parse_pax_time(value)
        elif key.startswith(XATTR_PREFIX):
            name = key[len(XATTR_PREFIX) :]
            if name:
                entry.xattrs[name] = value


def _pax_int(key: bytes, value: bytes) -> int:
    if not value.isdigit():
        raise InvalidArgument(f"tar header: invalid PAX {key.decode()} {value!r}")
    return int(value)


# --- writing -------------------------------------------------------------------------------

_USTAR_MAX_ID = 0o7777777
_USTAR_MAX_SIZE = 0o77777777777
_USTAR_MAX_TIME = 0o77777777777


def padding(size: int) -> bytes:
    """The zeros that follow ``size`` bytes of member data."""
    return bytes(-size % BLOCK)


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _split_ustar_name(name: bytes) -> tuple[bytes, bytes] | None:
    """(prefix, name) when ``name`` fits ustar's fields as ASCII, else None (PAX carries it)."""
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


def _ustar_block(
    name: bytes,
    prefix: bytes,
    typeflag: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    linkname: bytes,
    devmajor: int,
    devminor: int,
) -> bytes:
    head = b"".join(
        (
            name.ljust(100, b"\0")[:100],
            _octal(mode, 8),
            _octal(uid, 8),
            _octal(gid, 8),
            _octal(size, 12),
            _octal(mtime, 12),
            b"        ",
            typeflag,
            linkname.ljust(100, b"\0")[:100],
            b"ustar\x0000",
            bytes(64),
            _octal(devmajor, 8),
            _octal(devminor, 8),
            prefix.ljust(155, b"\0")[:155],
            bytes(12),
        )
    )
    return head[:148] + b"%06o\0 " % sum(head) + head[156:]


def encode_header(
    name: str | bytes,
    typeflag: bytes = REGULAR,
    *,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    size: int = 0,
    mtime: int = 0,
    linkname: str | bytes = b"",
    devmajor: int = 0,
    devminor: int = 0,
    xattrs: Mapping[bytes, bytes] | None = None,
) -> bytes:
    """The header block(s) of one member: ustar, preceded by a PAX header when ustar cannot hold it.

    Deterministic: numeric owners, whole-second mtimes, no user or group names, xattrs sorted.
    """
    raw = name.encode() if isinstance(name, str) else name
    link = linkname.encode() if isinstance(linkname, str) else linkname
    records: list[bytes] = []
    split = _split_ustar_name(raw)
    if split is None:
        records.append(pax_record(b"path", raw))
        split = (b"", raw[:100])
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
    if not 0 <= mtime <= _USTAR_MAX_TIME:
        records.append(pax_record(b"mtime", b"%d" % mtime))
    for key in sorted(xattrs or ()):
        assert xattrs is not None
        records.append(pax_record(XATTR_PREFIX + key, xattrs[key]))
    block = _ustar_block(
        split[1],
        split[0],
        typeflag,
        mode,
        uid,
        gid,
        size if size <= _USTAR_MAX_SIZE else 0,
        mtime if 0 <= mtime <= _USTAR_MAX_TIME else 0,
        link,
        devmajor,
        devminor,
    )
    if not records:
        return block
    data = b"".join(records)
    base = raw.rstrip(b"/").rpartition(b"/")
    pax_name = (base[0] + b"/" if base[0] else b"") + b"PaxHeaders.0/" + base[2]
    pax_name = pax_name[-100:] if not pax_name.isascii() else pax_name[:100]
    pax_head = _ustar_block(
        pax_name if pax_name.isascii() else b"PaxHeaders.0", b"", _PAX, 0o644, 0, 0, len(data), 0, b"", 0, 0
    )
    return pax_head + data + padding(len(data)) + block
