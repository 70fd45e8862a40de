"""A lean streaming tar reader and a deterministic tar writer: ustar, PAX and GNU long names.

CPython's tarfile builds a TarInfo (and many small strings) per member and manages about
10,000 members a second; container layers are mostly small files, so the per-member cost is
the apply's cost. Headers are 512-byte blocks parsed here with one ``struct`` call; names stay
``bytes`` from the archive to the filesystem. Everything the reader pulls from its source is
hashed, so the digest it reports is the layer's diffID.
"""

from __future__ import annotations

import hashlib
import os
import queue
import struct
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from corral.kernel import InvalidArgument, Unimplemented

BLOCK = 512
READ_SIZE = 1 << 20
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

XATTR_PREFIX = b"SCHILY.xattr."
_ZERO_BLOCK = bytes(BLOCK)
_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12x")
_SIGNED = struct.Struct("148b8x356b")
_POSIX_MAGIC = b"ustar\0"
_NS = 1_000_000_000


class Readable(Protocol):
    """A blocking byte source: ``read(n)`` returns up to ``n`` bytes, ``b""`` at the end."""

    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(slots=True)
class TarEntry:
    """One member, after PAX and GNU long-name records have been folded in."""

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


def parse_number(value: bytes, what: str = "number") -> int:
    """A numeric header field: NUL/space-terminated octal, or GNU base-256 (high bit set)."""
    try:
        return int(value.rstrip(b"\0 "), 8)
    except ValueError:
        return _parse_number_slowly(value, what)


def _parse_number_slowly(value: bytes, what: str) -> int:
    if value and value[0] & 0x80:
        if value[0] == 0xFF:
            return int.from_bytes(value, "big", signed=True)
        return int.from_bytes(bytes([value[0] & 0x7F]) + value[1:], "big")
    digits = value.partition(b"\0")[0]
    try:
        return int(digits, 8) if digits.strip() else 0
    except ValueError:
        raise InvalidArgument(f"tar header: invalid {what} field {digits!r}") from None


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
    """``LEN KEY=VALUE\\n`` records; a later record for the same key wins (POSIX)."""
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
        records[key] = value
        pos += length
    return records


def _checksum_ok(block: bytes, stored: bytes) -> bool:
    expected = parse_number(stored, "checksum")
    unsigned = sum(block) - sum(block[148:156]) + 256
    return expected == unsigned or expected == sum(_SIGNED.unpack(block)) + 256


def _cstring(value: bytes) -> bytes:
    return value.partition(b"\0")[0]


class TarReader:
    """Entries of a tar stream, one at a time; data is written straight to file descriptors.

    After ``next()`` returns an entry its data may be consumed with ``copy_to``; whatever is
    left is skipped by the following ``next()``. ``finish()`` reads to the end of the source
    (trailing data counts towards the digest, as containerd's) and returns (digest, size).
    """

    def __init__(self, source: Readable, *, digest: bool = True) -> None:
        """``digest=False`` when the source hashes what it hands out itself (``ReadAhead``)."""
        self._source = source
        self._buf = b""
        self._pos = 0
        self._hash = hashlib.sha256() if digest else None
        self._pulled = 0
        self._left = 0
        self._data = 0
        self._ended = False

    def _pull(self) -> bytes:
        chunk = self._source.read(READ_SIZE)
        if chunk:
            if self._hash is not None:
                self._hash.update(chunk)
            self._pulled += len(chunk)
        return chunk

    def _need(self, n: int) -> None:
        have = len(self._buf) - self._pos
        if have >= n:
            return
        parts = [self._buf[self._pos :]]
        while have < n:
            chunk = self._pull()
            if not chunk:
                raise InvalidArgument("tar stream ends in the middle of an entry")
            parts.append(chunk)
            have += len(chunk)
        self._buf = b"".join(parts)
        self._pos = 0

    def _skip(self, n: int) -> None:
        have = len(self._buf) - self._pos
        if have >= n:
            self._pos += n
            return
        n -= have
        self._buf, self._pos = b"", 0
        while n:
            chunk = self._pull()
            if not chunk:
                raise InvalidArgument("tar stream ends in the middle of an entry")
            if len(chunk) > n:
                self._buf, self._pos = chunk, n
                return
            n -= len(chunk)

    def _take(self, size: int) -> bytes:
        """The data of a metadata entry (PAX, long name), padding consumed."""
        if size > MAX_META_SIZE:
            raise InvalidArgument(f"tar header: {size}-byte metadata entry exceeds {MAX_META_SIZE}")
        padded = size + (-size % BLOCK)
        self._need(padded)
        data = self._buf[self._pos : self._pos + size]
        self._pos += padded
        return data

    def next(self) -> TarEntry | None:
        """The next member, or None at the end-of-archive marker (or the source's end)."""
        if self._ended:
            return None
        if self._left:
            self._skip(self._left)
            self._left = self._data = 0
        pax: dict[bytes, bytes] | None = None
        longname: bytes | None = None
        longlink: bytes | None = None
        typeflag = b""
        while True:
            if len(self._buf) - self._pos < BLOCK:
                if len(self._buf) == self._pos:
                    chunk = self._pull()
                    if not chunk:
                        # A stream without the end marker: tolerated, as Go's and GNU tar do.
                        self._ended = True
                        return None
                    self._buf, self._pos = chunk, 0
                self._need(BLOCK)
            pos = self._pos
            block = self._buf[pos : pos + BLOCK]
            self._pos = pos + BLOCK
            if block == _ZERO_BLOCK:
                self._ended = True
                return None
            (
                name,
                mode,
                uid,
                gid,
                size_field,
                mtime,
                checksum,
                typeflag,
                linkname,
                magic,
                _version,
                _uname,
                _gname,
                devmajor,
                devminor,
                prefix,
            ) = _HEADER.unpack(block)
            if not _checksum_ok(block, checksum):
                raise InvalidArgument("tar header: checksum mismatch (not a tar stream, or corrupt)")
            size = parse_number(size_field, "size")
            if typeflag in (_PAX, _PAX_SOLARIS):
                pax = (pax or {}) | parse_pax_records(self._take(size))
                continue
            if typeflag == _GNU_LONGNAME:
                longname = _cstring(self._take(size))
                continue
            if typeflag == _GNU_LONGLINK:
                longlink = _cstring(self._take(size))
                continue
            if typeflag in (_PAX_GLOBAL, _GNU_VOLUME):
                # containerd ignores PAX global headers; a volume label names nothing on disk.
                self._skip(size + (-size % BLOCK))
                pax = longname = longlink = None
                continue
            break

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
            entry.devmajor = parse_number(devmajor, "devmajor")
            entry.devminor = parse_number(devminor, "devminor")
        if longname is not None:
            entry.name = longname
        if longlink is not None:
            entry.linkname = longlink
        if pax:
            _apply_pax(entry, pax)
        if typeflag == _GNU_SPARSE or (pax and any(k.startswith(b"GNU.sparse.") for k in pax)):
            raise Unimplemented(f"tar entry {entry.name!r}: sparse files are not supported")
        if entry.size < 0 or entry.uid < 0 or entry.gid < 0:
            raise InvalidArgument(f"tar entry {entry.name!r}: negative size or owner")
        if typeflag == REGULAR:
            self._data = entry.size
            self._left = entry.size + (-entry.size % BLOCK)
        else:
            # Header-only types carry no data whatever their size field says (Go, tarfile).
            entry.size = self._data = self._left = 0
        return entry

    def copy_to(self, fd: int) -> None:
        """Write the current regular file's data to ``fd`` (once; its padding is skipped later)."""
        self._write(fd, self._data)
        self._left -= self._data
        self._data = 0

    def _write(self, fd: int, n: int) -> None:
        buf, pos = self._buf, self._pos
        have = len(buf) - pos
        if have >= n:
            _write_all(fd, memoryview(buf)[pos : pos + n] if n > 65536 else buf[pos : pos + n])
            self._pos = pos + n
            return
        if have:
            _write_all(fd, memoryview(buf)[pos:])
            n -= have
        self._buf, self._pos = b"", 0
        while n:
            chunk = self._pull()
            if not chunk:
                raise InvalidArgument("tar stream ends in the middle of a file")
            if len(chunk) > n:
                _write_all(fd, memoryview(chunk)[:n])
                self._buf, self._pos = chunk, n
                return
            _write_all(fd, chunk)
            n -= len(chunk)

    def finish(self) -> tuple[str, int]:
        """Read the rest of the source; the sha256 digest and size of everything read."""
        while self._pull():
            pass
        self._buf, self._pos, self._left = b"", 0, 0
        return ("sha256:" + self._hash.hexdigest() if self._hash is not None else ""), self._pulled


class Stopped(Exception):
    """The caller gave up (a client's deadline, a disconnect): the work ends at the next chunk."""


def check_stop(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise Stopped("stopped: the caller went away")


class ReadAhead:
    """Pulls and hashes ``source`` on a thread of its own, a few chunks ahead of the reader.

    Decompression and sha256 release the GIL, so they overlap with the file system calls of the
    thread applying the layer. The thread is joined by ``close`` (also on errors). Once ``stop``
    is set neither thread takes another chunk: what is queued is dropped, not applied.
    """

    def __init__(self, source: Readable, *, depth: int = 4, stop: threading.Event | None = None) -> None:
        self._source = source
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(depth)
        self._stop = threading.Event()
        self._cancel = stop
        self._hash = hashlib.sha256()
        self._size = 0
        self._done = False
        self._thread = threading.Thread(target=self._run, name="layer-read-ahead", daemon=True)
        self._thread.start()

    def _stopping(self) -> bool:
        return self._stop.is_set() or (self._cancel is not None and self._cancel.is_set())

    def _run(self) -> None:
        try:
            while not self._stopping():
                chunk = self._source.read(READ_SIZE)
                if chunk:
                    self._hash.update(chunk)
                    self._size += len(chunk)
                self._put(chunk)
                if not chunk:
                    return
        except BaseException as err:  # handed to the reading thread, which raises it
            self._put(err)

    def _put(self, item: bytes | BaseException) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def read(self, size: int = -1, /) -> bytes:
        check_stop(self._cancel)
        if self._done:
            return b""
        while True:
            try:
                item = self._queue.get(timeout=0.05)
                break
            except queue.Empty:
                check_stop(self._cancel)
        if isinstance(item, BaseException):
            self._done = True
            raise item
        if not item:
            self._done = True
        return item

    def result(self) -> tuple[str, int]:
        """Digest and size of everything read; call once ``read`` has returned b""."""
        return "sha256:" + self._hash.hexdigest(), self._size

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _write_all(fd: int, data: bytes | memoryview) -> None:
    written = os.write(fd, data)
    if written == len(data):
        return
    view = memoryview(data)[written:]
    while view:
        view = view[os.write(fd, view) :]


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


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _split_ustar_name(name: bytes) -> tuple[bytes, bytes] | None:
    """(prefix, name) when ``name`` fits ustar's fields as ASCII, else None (PAX carries it)."""
    if not name.isascii():
        return None
    if len(name) <= 100:
        return b"", name
    if len(name) > 256:
        return None
    cut = name.rfind(b"/", 0, 156)
    while cut > 0:
        if len(name) - cut - 1 <= 100 and cut <= 155:
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
    name: bytes,
    typeflag: bytes,
    *,
    mode: int = 0,
    uid: int = 0,
    gid: int = 0,
    size: int = 0,
    mtime: int = 0,
    linkname: bytes = b"",
    devmajor: int = 0,
    devminor: int = 0,
    xattrs: Mapping[bytes, bytes] | None = None,
) -> bytes:
    """The header block(s) of one member: ustar, preceded by a PAX header when ustar cannot hold it.

    Deterministic: numeric owners, whole-second mtimes, no names, xattrs sorted.
    """
    records: list[bytes] = []
    split = _split_ustar_name(name)
    if split is None:
        records.append(pax_record(b"path", name))
        split = (b"", name[:100])
    if len(linkname) > 100 or not linkname.isascii():
        records.append(pax_record(b"linkpath", linkname))
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
        linkname,
        devmajor,
        devminor,
    )
    if not records:
        return block
    data = b"".join(records)
    base = name.rstrip(b"/").rpartition(b"/")
    pax_name = (base[0] + b"/" if base[0] else b"") + b"PaxHeaders.0/" + base[2]
    pax_name = pax_name[-100:] if not pax_name.isascii() else pax_name[:100]
    pax_head = _ustar_block(
        pax_name if pax_name.isascii() else b"PaxHeaders.0",
        b"",
        _PAX,
        0o644,
        0,
        0,
        len(data),
        0,
        b"",
        0,
        0,
    )
    return pax_head + data + bytes(-len(data) % BLOCK) + block


END_OF_ARCHIVE = bytes(2 * BLOCK)


class TarWriter:
    """Members out to ``sink`` in chunks of about ``FLUSH_SIZE``; the sha256 and size of the
    whole stream is the diffID."""

    FLUSH_SIZE = 1 << 20

    def __init__(self, sink: Callable[[bytes], object]) -> None:
        self._sink = sink
        self._hash = hashlib.sha256()
        self._pending = bytearray()
        self.size = 0

    def write(self, data: bytes) -> None:
        self._pending += data
        if len(self._pending) >= self.FLUSH_SIZE:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            data = bytes(self._pending)
            self._pending.clear()
            self._hash.update(data)
            self.size += len(data)
            self._sink(data)

    def add(self, header: bytes, data: bytes = b"") -> None:
        self.write(header + data + bytes(-len(data) % BLOCK))

    def add_file(self, header: bytes, fd: int, size: int) -> None:
        """A regular file's header and ``size`` bytes read from ``fd``."""
        self.write(header)
        left = size
        while left:
            chunk = os.read(fd, min(left, READ_SIZE))
            if not chunk:
                raise InvalidArgument(f"file shrank while it was archived ({left} bytes short)")
            self.write(chunk)
            left -= len(chunk)
        if size % BLOCK:
            self.write(bytes(-size % BLOCK))

    def close(self) -> tuple[str, int]:
        """End the archive, hand everything to the sink; (digest, size) of the stream."""
        self.write(END_OF_ARCHIVE)
        self._flush()
        return "sha256:" + self._hash.hexdigest(), self.size
