"""The differ's tar streams: a lean pull reader writing data straight to files, a read-ahead
thread, and a writer in chunks, framed around the shared codec (``corral.plugins.core.tar``).

CPython's tarfile builds a TarInfo (and many small strings) per member and manages about
10,000 members a second; container layers are mostly small files, so the per-member cost is
the apply's cost. Names stay ``bytes`` from the archive to the filesystem. Everything the
reader pulls from its source is hashed, so the digest it reports is the layer's diffID.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable
from typing import Protocol

from corral.kernel import InvalidArgument
from corral.plugins.core.tar import (
    BLOCK,
    END_OF_ARCHIVE,
    Extensions,
    TarEntry,
    check_meta_size,
    decode_block,
    decode_member,
    is_meta,
    padding,
)

READ_SIZE = 1 << 20


class Readable(Protocol):
    """A blocking byte source: ``read(n)`` returns up to ``n`` bytes, ``b""`` at the end."""

    def read(self, size: int = -1, /) -> bytes: ...


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
        self._extensions = Extensions()

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
        check_meta_size(size)
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
        extensions = self._extensions
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
            decoded = decode_block(block)
            if decoded is None:
                self._ended = True
                return None
            typeflag, size, fields = decoded
            if is_meta(typeflag):
                extensions.add(typeflag, self._take(size))
                continue
            break
        entry = decode_member(typeflag, size, fields, extensions)
        self._data = entry.size if entry.is_regular else 0
        self._left = entry.size + (-entry.size % BLOCK)
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
        self.write(header + data + padding(len(data)))

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
            self.write(padding(size))

    def close(self) -> tuple[str, int]:
        """End the archive, hand everything to the sink; (digest, size) of the stream."""
        self.write(END_OF_ARCHIVE)
        self._flush()
        return "sha256:" + self._hash.hexdigest(), self.size
