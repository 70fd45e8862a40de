"""An in-memory content store: a fake for tests that passes the same conformance suite."""

from __future__ import annotations

import builtins
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from corral.kernel import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    Unavailable,
)
from corral.plugins.content import READ_CHUNK, Info, IngestStatus


def _now() -> datetime:
    return datetime.now(UTC)


def _check_digest(digest: str) -> None:
    alg, _, hexpart = digest.partition(":")
    if alg != "sha256" or len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        raise InvalidArgument(f'"{digest}" failed validation')


@dataclass
class _Ingest:
    ref: str
    total: int
    expected: str
    data: bytearray = field(default_factory=bytearray)
    started_at: datetime = field(default_factory=_now)
    updated_at: datetime = field(default_factory=_now)
    aborted: bool = False

    def status(self) -> IngestStatus:
        return IngestStatus(
            self.ref, len(self.data), self.total, self.expected, self.started_at, self.updated_at
        )


class MemoryWriter:
    def __init__(self, store: MemoryContentStore, ingest: _Ingest) -> None:
        self._store = store
        self._ingest = ingest
        self._closed = False

    @property
    def ref(self) -> str:
        return self._ingest.ref

    @property
    def offset(self) -> int:
        return len(self._ingest.data)

    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self._ingest.data).hexdigest()

    async def status(self) -> IngestStatus:
        return self._ingest.status()

    def _open(self) -> None:
        if self._ingest.aborted:
            raise NotFound(f"ingest {self.ref} was aborted")
        if self._closed:
            raise FailedPrecondition(f"writer for {self.ref} is closed")

    async def write(self, data: bytes) -> int:
        self._open()
        self._ingest.data += data
        self._ingest.updated_at = _now()
        return self.offset

    async def truncate(self, size: int) -> None:
        self._open()
        if size != 0:
            raise InvalidArgument("only truncation to 0 is supported")
        self._ingest.data.clear()

    async def commit(self, size: int, expected: str) -> Info:
        self._open()
        if expected:
            _check_digest(expected)
        # Whatever the outcome, a commit ends this writer; a failed one leaves the ingest resumable.
        await self.close()
        if size and size != self.offset:
            raise FailedPrecondition(f"unexpected commit size {self.offset}, expected {size}")
        digest = self.digest()
        if expected and expected != digest:
            raise FailedPrecondition(f"unexpected commit digest {digest}, expected {expected}")
        self._store._ingests.pop(self.ref, None)
        if digest in self._store._blobs:
            raise AlreadyExists(f"content {digest}")
        self._store._blobs[digest] = (bytes(self._ingest.data), _now())
        return await self._store.info(digest)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            if not self._ingest.aborted:  # an abort released the ref: it may be another's now
                self._store._locked.discard(self.ref)


class MemoryContentStore:
    """Blobs and ingests in dictionaries; one writer per ref, as the real stores."""

    def __init__(self) -> None:
        self._blobs: dict[str, tuple[bytes, datetime]] = {}
        self._ingests: dict[str, _Ingest] = {}
        self._locked: set[str] = set()

    async def info(self, digest: str) -> Info:
        _check_digest(digest)
        if digest not in self._blobs:
            raise NotFound(f"content digest {digest}")
        data, created = self._blobs[digest]
        return Info(digest, len(data), created, created)

    async def list(self) -> AsyncIterator[Info]:
        for digest in sorted(self._blobs):
            yield await self.info(digest)

    async def delete(self, digest: str) -> None:
        await self.info(digest)
        del self._blobs[digest]

    async def read(self, digest: str, offset: int = 0, size: int = 0) -> AsyncIterator[bytes]:
        await self.info(digest)
        if offset < 0 or size < 0:
            raise InvalidArgument("offset and size must not be negative")
        data = self._blobs[digest][0]
        if offset > len(data):
            raise OutOfRange(f"read past object length {len(data)} bytes")
        end = len(data) if size == 0 else min(len(data), offset + size)
        for start in range(offset, end, READ_CHUNK):
            yield data[start : min(end, start + READ_CHUNK)]

    async def writer(self, ref: str, total: int = 0, expected: str = "") -> MemoryWriter:
        if not ref:
            raise InvalidArgument("ref must not be empty")
        if total < 0:
            raise InvalidArgument(f"ref {ref}: negative total {total}")
        if expected:
            _check_digest(expected)
        if ref in self._locked:
            raise Unavailable(f"ref {ref} locked")
        if expected and expected in self._blobs:
            self._ingests.pop(ref, None)
            raise AlreadyExists(f"content {expected}")
        ingest = self._ingests.setdefault(ref, _Ingest(ref, total, expected))
        if total and ingest.total and total != ingest.total:  # another total: started again
            ingest = self._ingests[ref] = _Ingest(ref, total, expected)
        ingest.total = total or ingest.total
        ingest.expected = expected or ingest.expected
        self._locked.add(ref)
        return MemoryWriter(self, ingest)

    async def status(self, ref: str) -> IngestStatus:
        if ref not in self._ingests:
            raise NotFound(f"ingest {ref}")
        return self._ingests[ref].status()

    async def list_statuses(self) -> builtins.list[IngestStatus]:
        return [i.status() for _, i in sorted(self._ingests.items())]

    async def abort(self, ref: str) -> None:
        """As containerd's: also from under a writer, whose next call is NotFound."""
        ingest = self._ingests.pop(ref, None)
        if ingest is None:
            raise NotFound(f"ingest {ref}")
        ingest.aborted = True
        self._locked.discard(ref)
