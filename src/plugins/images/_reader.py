"""Reading an image archive as a stream: each blob is handed out as its bytes arrive.

``ArchiveReader`` drives the push parser from a sync or async source and yields one ``Blob`` per
regular member, in tar order, so the caller can ingest it into a content store as it goes; what
the caller leaves unread is skipped. Every byte is hashed on the way past: a member named
``blobs/<alg>/<hex>`` must hash to that digest, and the digest of any other member is reported.
Small JSON members are kept so that, at the end, ``contents()`` can resolve what the archive holds.
"""

from __future__ import annotations

import hashlib
import inspect
import posixpath
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from typing import Protocol, runtime_checkable

import structlog

from corral.kernel import FailedPrecondition, InvalidArgument
from corral.plugins.core.tar import DIRECTORY, REGULAR, SYMLINK
from corral.plugins.images._digest import CANONICAL, parse_digest
from corral.plugins.images._documents import Descriptor
from corral.plugins.images._json import JSON_LIMIT
from corral.plugins.images._platforms import PlatformMatcher
from corral.plugins.images._resolve import ArchiveContents, Member, resolve_contents
from corral.plugins.images._tar import Event, TarEvent, TarHeader, TarParser

log = structlog.get_logger("corral.images")

READ_SIZE = 1 << 20
OCI_LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
DOCKER_MANIFEST_FILE = "manifest.json"
_INTERNAL = frozenset({OCI_LAYOUT_FILE, DOCKER_MANIFEST_FILE})
"""Read for their meaning, not handed out (containerd's importer does not store them either)."""
_HEAD = 10
KEPT_LIMIT = 256 << 20
"""JSON-looking members are kept for resolving up to this many bytes in all; past it they are not."""


@runtime_checkable
class Readable(Protocol):
    """A blocking byte source: ``read(n)`` returns up to ``n`` bytes, ``b""`` at the end."""

    def read(self, size: int = -1, /) -> bytes: ...


@runtime_checkable
class AsyncReadable(Protocol):
    async def read(self, size: int = -1, /) -> bytes: ...


def clean_member_name(raw: bytes) -> str:
    """A member's name as a relative path inside the archive; InvalidArgument for an absolute
    name, one that climbs with ``..``, or one that is not UTF-8."""
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument(f"archive member {raw!r}: name is not UTF-8") from None
    if name.startswith("/"):
        raise InvalidArgument(f"archive member {name!r}: absolute names are not allowed")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise InvalidArgument(f"archive member {name!r}: '..' would leave the archive")
    return "/".join(parts)


def _expected_digest(name: str) -> str | None:
    """The digest a member under ``blobs/`` must have; InvalidArgument when its name is not one."""
    parts = name.split("/")
    if parts[0] != "blobs":
        return None
    if len(parts) != 3:
        raise InvalidArgument(f"archive member {name!r}: blobs must be named blobs/<algorithm>/<encoded>")
    return str(parse_digest(f"{parts[1]}:{parts[2]}", f"archive member {name!r}"))


class _Pending:
    """A regular member whose bytes are passing through."""

    def __init__(
        self, name: str, size: int, expected: str | None, *, always_keep: bool, may_keep: bool
    ) -> None:
        self.name = name
        self.size = size
        self.expected = expected
        self.hasher = hashlib.new(parse_digest(expected).algorithm if expected else CANONICAL)
        self.seen = 0
        self.head = b""
        # JSON documents are kept for resolving; a member is one if it starts with { or [.
        self.keep = may_keep and size <= JSON_LIMIT
        self.kept: list[bytes] = []
        self.decided = always_keep or not self.keep

    def data(self, chunk: bytes) -> None:
        self.hasher.update(chunk)
        self.seen += len(chunk)
        if len(self.head) < _HEAD:
            self.head += chunk[: _HEAD - len(self.head)]
        if not self.decided:
            stripped = chunk.lstrip(b" \t\r\n")
            if stripped:
                self.decided = True
                self.keep = stripped[:1] in (b"{", b"[")
        if self.keep:
            self.kept.append(chunk)

    def finish(self) -> Member:
        digest = f"{self.hasher.name}:{self.hasher.hexdigest()}"
        if self.expected is not None and digest != self.expected:
            raise InvalidArgument(
                f"archive member {self.name!r}: its bytes have digest {digest}, not its name's"
            )
        return Member(
            name=self.name,
            digest=digest,
            size=self.seen,
            head=self.head,
            data=b"".join(self.kept) if self.keep else None,
        )


class _Collector:
    """The bookkeeping of one archive, without I/O: what each tar event means."""

    def __init__(self) -> None:
        self.members: dict[str, Member] = {}
        self.internal: dict[str, bytes] = {}
        self.symlinks: dict[str, str] = {}
        self.seen: dict[str, bytes] = {}
        self.current: _Pending | None = None
        self.current_yields = False
        self.ended = False
        self.kept_bytes = 0

    def begin(self, header: TarHeader) -> _Pending | None:
        """The member ``header`` starts; a _Pending when its bytes are to be followed."""
        name = clean_member_name(header.name)
        previous = self.seen.get(name)
        if previous is not None and not (previous == DIRECTORY and header.type == DIRECTORY):
            raise InvalidArgument(f"archive member {name!r} appears more than once")
        self.seen[name] = header.type
        self.current = None
        if header.type == DIRECTORY:
            return None
        if not name:
            raise InvalidArgument(f"archive member {header.name!r} has no name")
        if header.type == SYMLINK:
            target = header.linkname.decode("utf-8", "replace")
            joined = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
            if target.startswith("/") or joined == ".." or joined.startswith("../"):
                raise InvalidArgument(f"archive member {name!r}: symlink to {target!r} leaves the archive")
            self.symlinks[name] = joined
            return None
        if header.type != REGULAR:
            log.debug("archive_member_ignored", name=name, type=header.type.decode("latin-1"))
            return None
        internal = name in _INTERNAL
        if (internal or name == INDEX_FILE) and header.size > JSON_LIMIT:
            raise InvalidArgument(f"archive member {name!r} is {header.size} bytes, more than {JSON_LIMIT}")
        expected = _expected_digest(name)
        always = internal or name == INDEX_FILE
        keep = always or self.kept_bytes + header.size <= KEPT_LIMIT
        self.current = _Pending(name, header.size, expected, always_keep=always, may_keep=keep)
        self.current_yields = not internal
        return self.current

    def finish(self) -> Member | None:
        pending, self.current = self.current, None
        if pending is None:
            return None
        member = pending.finish()
        self.kept_bytes += len(member.data or b"")
        if pending.name in _INTERNAL:
            self.internal[pending.name] = member.data or b""
            return None
        self.members[member.name] = member
        return member

    def contents(
        self, platforms: PlatformMatcher | None, compressed_layers: Mapping[str, Descriptor] | None
    ) -> ArchiveContents:
        if not self.ended:
            raise FailedPrecondition("the archive has not been read to its end")
        return resolve_contents(self.members, self.internal, self.symlinks, platforms, compressed_layers)


class _Need:
    """Returned by ``_Stream.take`` when the parser needs more bytes."""


_NEED = _Need()


class _Stream:
    """The parser, its pending events and the collector, shared by the sync and async drivers."""

    def __init__(self) -> None:
        self.collector = _Collector()
        self.parser = TarParser()
        self.events: deque[TarEvent] = deque()
        self.blob: Blob | None = None

    def feed(self, chunk: bytes) -> None:
        self.events.extend(self.parser.feed(chunk))

    def eof(self) -> None:
        self.parser.close()
        self.collector.ended = True

    def next_blob(self) -> Blob | _Need | None:
        """The next member to hand out; None at the end of the archive, _NEED for more bytes."""
        collector = self.collector
        while self.events:
            kind, payload = self.events.popleft()
            if kind is Event.HEADER:
                assert isinstance(payload, TarHeader)
                pending = collector.begin(payload)
                if pending is not None and collector.current_yields:
                    self.blob = Blob(pending.name, pending.size, pending.expected, self)
                    return self.blob
            elif kind is Event.DATA:
                assert isinstance(payload, bytes)
                if collector.current is not None:
                    collector.current.data(payload)
            elif kind is Event.MEMBER_END:
                collector.finish()
        return None if self.parser.ended else _NEED

    def take(self) -> bytes | _Need | None:
        """The current blob's next chunk; None once it is complete (and verified)."""
        if not self.events:
            return _NEED
        kind, payload = self.events.popleft()
        current = self.collector.current
        assert current is not None and self.blob is not None
        if kind is Event.DATA:
            assert isinstance(payload, bytes)
            current.data(payload)
            return payload
        assert kind is Event.MEMBER_END, kind
        member = self.collector.finish()
        assert member is not None
        self.blob._member = member
        return None


class _SyncSource:
    def __init__(self, stream: _Stream, chunks: Iterator[bytes]) -> None:
        self.stream = stream
        self.chunks = chunks

    def pull(self) -> bool:
        chunk = next(self.chunks, None)
        if chunk is None:
            self.stream.eof()
            return False
        self.stream.feed(chunk)
        return True

    def next_chunk(self) -> bytes | None:
        while True:
            got = self.stream.take()
            if not isinstance(got, _Need):
                return got
            if not self.pull():
                raise InvalidArgument("tar stream is truncated in the middle of a member")


class _AsyncSource:
    def __init__(self, stream: _Stream, chunks: AsyncIterator[bytes]) -> None:
        self.stream = stream
        self.chunks = chunks

    async def pull(self) -> bool:
        chunk = await anext(self.chunks, None)
        if chunk is None:
            self.stream.eof()
            return False
        self.stream.feed(chunk)
        return True

    async def next_chunk(self) -> bytes | None:
        while True:
            got = self.stream.take()
            if not isinstance(got, _Need):
                return got
            if not await self.pull():
                raise InvalidArgument("tar stream is truncated in the middle of a member")


class Blob:
    """One member of the archive, handed out in tar order. Read its bytes once, with ``chunks()``
    from ``ArchiveReader.blobs`` or ``achunks()`` from ``ablobs``; ``digest`` is known after."""

    def __init__(self, name: str, size: int, expected: str | None, stream: _Stream) -> None:
        self.name = name
        """The member's path inside the archive (``blobs/sha256/…``, ``index.json``, ``<id>/layer.tar``)."""
        self.size = size
        self.expected_digest = expected
        """The digest its name promises (``blobs/<alg>/<hex>``); None for other names."""
        self._stream = stream
        self._sync: _SyncSource | None = None
        self._async: _AsyncSource | None = None
        self._started = False
        self._member: Member | None = None

    @property
    def digest(self) -> str:
        """The digest of its bytes, verified against its name; FailedPrecondition before they are read."""
        if self._member is None:
            raise FailedPrecondition(f"blob {self.name!r}: the digest is known once its bytes have been read")
        return self._member.digest

    @property
    def complete(self) -> bool:
        return self._member is not None

    def _claim(self) -> None:
        if self._started:
            raise FailedPrecondition(f"blob {self.name!r} has already been read")
        self._started = True

    def chunks(self) -> Iterator[bytes]:
        """Its bytes as they arrive; the digest is checked when they end, before the iteration stops."""
        if self._sync is None:
            raise FailedPrecondition("this blob comes from an async reader: use achunks()")
        self._claim()
        while (chunk := self._sync.next_chunk()) is not None:
            yield chunk

    async def achunks(self) -> AsyncIterator[bytes]:
        if self._async is None:
            raise FailedPrecondition("this blob comes from a sync reader: use chunks()")
        self._claim()
        while (chunk := await self._async.next_chunk()) is not None:
            yield chunk

    def read_all(self) -> bytes:
        """All of it, for small blobs (at most the JSON limit)."""
        if self.size > JSON_LIMIT:
            raise FailedPrecondition(f"blob {self.name!r} is {self.size} bytes: stream it with chunks()")
        return b"".join(self.chunks())

    async def aread_all(self) -> bytes:
        if self.size > JSON_LIMIT:
            raise FailedPrecondition(f"blob {self.name!r} is {self.size} bytes: stream it with achunks()")
        return b"".join([chunk async for chunk in self.achunks()])


class ArchiveReader:
    """Reads one archive: iterate ``blobs(source)`` (or ``ablobs``) to the end, then ``contents()``.

    ``source`` is a file-like object with ``read(n)`` or an iterable of byte chunks (async ones
    for ``ablobs``). Every regular member is a blob except ``oci-layout`` and ``manifest.json``,
    which are read for their meaning (containerd's importer does not store them either). What the
    caller leaves unread of a blob is read past, and verified, when the iteration moves on.
    Every malformation is InvalidArgument, raised where it is found.
    """

    def __init__(self, *, read_size: int = READ_SIZE) -> None:
        self._read_size = read_size
        self._stream = _Stream()
        self._used = False

    def _start(self) -> None:
        if self._used:
            raise FailedPrecondition("an ArchiveReader reads one archive")
        self._used = True

    def blobs(self, source: Readable | Iterable[bytes]) -> Iterator[Blob]:
        """Each blob of the archive in tar order."""
        self._start()
        driver = _SyncSource(self._stream, _sync_chunks(source, self._read_size))
        while True:
            found = self._stream.next_blob()
            if isinstance(found, _Need):
                if driver.pull():
                    continue
                break  # the parser has raised unless it saw the end-of-archive marker
            if found is None:
                break
            found._sync = driver
            yield found
            if not found.complete:
                found._started = True
                while driver.next_chunk() is not None:
                    pass
        for _ in driver.chunks:
            pass  # what follows the end marker (record padding) is read, not parsed
        if not self._stream.collector.ended:
            self._stream.eof()

    async def ablobs(self, source: AsyncReadable | AsyncIterable[bytes]) -> AsyncIterator[Blob]:
        """Each blob of the archive in tar order, from an async source."""
        self._start()
        driver = _AsyncSource(self._stream, _async_chunks(source, self._read_size))
        while True:
            found = self._stream.next_blob()
            if isinstance(found, _Need):
                if await driver.pull():
                    continue
                break
            if found is None:
                break
            found._async = driver
            yield found
            if not found.complete:
                found._started = True
                while await driver.next_chunk() is not None:
                    pass
        async for _ in driver.chunks:
            pass
        if not self._stream.collector.ended:
            self._stream.eof()

    def contents(
        self,
        *,
        platforms: PlatformMatcher | None = None,
        compressed_layers: Mapping[str, Descriptor] | None = None,
    ) -> ArchiveContents:
        """What the archive holds, once every blob has been read.

        ``platforms``: content for platforms it rejects may be missing (as in an archive exported
        for one platform); None requires everything an index names. ``compressed_layers``: for a
        ``docker save`` archive, a compressed blob already stored for a layer's diffID, to be named
        by the synthesised manifest instead (what containerd's importer finds by label).
        """
        return self._stream.collector.contents(platforms, compressed_layers)


def read_archive(
    source: Readable | Iterable[bytes], *, platforms: PlatformMatcher | None = None
) -> tuple[ArchiveContents, dict[str, bytes]]:
    """A whole archive read into memory: its contents and every blob's bytes by digest (the
    synthesised documents included). For small test archives; ``ArchiveReader`` streams."""
    reader = ArchiveReader()
    data: dict[str, bytes] = {}
    for blob in reader.blobs(source):
        payload = b"".join(blob.chunks())
        data[blob.digest] = payload
    contents = reader.contents(platforms=platforms)
    data.update(contents.synthesized)
    return contents, data


def _sync_chunks(source: Readable | Iterable[bytes], size: int) -> Iterator[bytes]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        raise InvalidArgument("pass a file or an iterable of chunks, not the bytes themselves")
    if isinstance(source, Readable):
        while chunk := source.read(size):
            yield bytes(chunk)
    else:
        for chunk in source:
            if chunk:
                yield bytes(chunk)


async def _async_chunks(source: AsyncReadable | AsyncIterable[bytes], size: int) -> AsyncIterator[bytes]:
    if isinstance(source, AsyncReadable) and inspect.iscoroutinefunction(source.read):
        while chunk := await source.read(size):
            yield bytes(chunk)
    elif isinstance(source, AsyncIterable):
        async for chunk in source:
            if chunk:
                yield bytes(chunk)
    else:
        raise InvalidArgument("an async source needs an async read(n) or async iteration")
