"""One ingest of the local content store: its files, its digest, and the writer that holds it.

An ingest lives in ``ingest/<sha256(ref)>/`` as ``data`` (the bytes so far) and ``ingest.json`` (ref,
total, expected, started_at; replaced atomically). Its ``updated_at`` is the mtime of ``data``, which
each write sets to the wall-clock time after it (the file system's own clock is coarser and can
trail the write by a tick). The blocking functions here run in worker threads.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from corral.kernel import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from corral.plugins.content import Info, IngestStatus
from corral.plugins.core.digests import HEX_LENGTHS, digest_error
from corral.plugins.core.private import fsync_dir
from corral.plugins.core.trees import remove_tree

if TYPE_CHECKING:
    from hashlib import _Hash

ALGORITHMS = HEX_LENGTHS
"""Accepted digest algorithms and the length of their hex encoding."""
CANONICAL = "sha256"
DATA = "data"
RECORD = "ingest.json"
BLOB_MODE = 0o400
"""Blobs are never written again, and only the daemon reads them."""
_REHASH_CHUNK = 1 << 20


def parse_digest(digest: str) -> tuple[str, str]:
    """``(algorithm, hex)`` of a well-formed digest; InvalidArgument naming it otherwise."""
    if digest_error(digest) is not None:
        raise InvalidArgument(f'"{digest}" failed validation')
    algorithm, _, encoded = digest.partition(":")
    return algorithm, encoded


def ingest_key(ref: str) -> str:
    """The ingest's directory name: refs are arbitrary text, so they are hashed."""
    return hashlib.sha256(ref.encode()).hexdigest()


def from_ns(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)


def blob_info(digest: str, st: os.stat_result) -> Info:
    # A blob's mtime is when its last byte was written; the backend keeps no other timestamps
    # (the metadata plugin records its own created/updated times).
    at = from_ns(st.st_mtime_ns)
    return Info(digest=digest, size=st.st_size, created_at=at, updated_at=at)


@dataclass(frozen=True)
class IngestRecord:
    """What ``ingest.json`` holds."""

    ref: str
    total: int
    expected: str
    started_at: datetime

    def dumps(self) -> bytes:
        doc = {
            "ref": self.ref,
            "total": self.total,
            "expected": self.expected,
            "started_at": self.started_at.isoformat(),
        }
        return json.dumps(doc).encode()

    @classmethod
    def loads(cls, raw: bytes) -> IngestRecord:
        """ValueError for anything but a well-formed record."""
        try:
            doc: Any = json.loads(raw)
            record = cls(
                ref=doc["ref"],
                total=doc["total"],
                expected=doc["expected"],
                started_at=datetime.fromisoformat(doc["started_at"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed ingest record: {exc}") from exc
        if not isinstance(record.ref, str) or not isinstance(record.total, int):
            raise ValueError("malformed ingest record")
        if not isinstance(record.expected, str):
            raise ValueError("malformed ingest record")
        if record.expected:
            try:
                parse_digest(record.expected)
            except InvalidArgument as exc:
                raise ValueError(f"malformed ingest record: {exc}") from None
        return record


def load_record(directory: Path) -> IngestRecord | None:
    """The ingest's record, or None when it is missing or unreadable (an interrupted start)."""
    try:
        return IngestRecord.loads((directory / RECORD).read_bytes())
    except (OSError, ValueError):
        return None


def save_record(directory: Path, record: IngestRecord) -> None:
    # Replaced atomically, so a crash leaves the old or the new record, never a torn one. Not
    # fsynced: until commit an ingest is resumable, not durable (commit fsyncs what matters).
    tmp = directory / f"{RECORD}.tmp"
    tmp.write_bytes(record.dumps())
    os.replace(tmp, directory / RECORD)


def read_status(directory: Path) -> IngestStatus | None:
    """The status of the ingest in ``directory``, or None when it is not a resumable ingest."""
    record = load_record(directory)
    if record is None:
        return None
    try:
        st = os.stat(directory / DATA)
    except FileNotFoundError:
        return None
    return IngestStatus(
        ref=record.ref,
        offset=st.st_size,
        total=record.total,
        expected=record.expected,
        started_at=record.started_at,
        updated_at=updated_at(record, st),
    )


def updated_at(record: IngestRecord, data: os.stat_result) -> datetime:
    # The filesystem's clock is coarse and may trail datetime.now() by a tick.
    return max(from_ns(data.st_mtime_ns), record.started_at)


def is_stale(directory: Path, cutoff: datetime | None) -> bool:
    """Whether the ingest may be removed: broken (no record or no data), or idle since before ``cutoff``.

    A record without data is what a crash between commit's rename and its clean-up leaves; data
    without a record is an interrupted start. Callers hold the ref's lock, so neither is in progress.
    """
    if not directory.is_dir():
        return False
    try:
        st = os.stat(directory / DATA)
    except FileNotFoundError:
        return True
    if load_record(directory) is None:
        return True
    return cutoff is not None and from_ns(st.st_mtime_ns) < cutoff


def remove_ingest(directory: Path) -> bool:
    """Remove the ingest's directory; False when there was none."""
    if not directory.exists():
        return False
    remove_tree(directory)
    return True


def hash_file(fd: int, algorithm: str) -> tuple[_Hash, int]:
    """Hash the whole file: the running hash of a resumed ingest, which cannot be persisted."""
    hasher = hashlib.new(algorithm)
    offset = 0
    while chunk := os.pread(fd, _REHASH_CHUNK, offset):
        hasher.update(chunk)
        offset += len(chunk)
    return hasher, offset


class LocalWriter:
    """The writer of one ingest. It holds the ref's lock until ``close`` or ``commit``.

    Blocking work runs in a worker thread and updates this object's state itself, so a cancelled
    caller never loses track of bytes that reached the file. Calls on one writer are serialised.
    """

    def __init__(
        self,
        ref: str,
        directory: Path,
        blobs: Path,
        *,
        publish_lock: anyio.Lock,
        on_release: Callable[[], None],
    ) -> None:
        self._ref = ref
        self._dir = directory
        self._blobs = blobs
        self._publish_lock = publish_lock
        self._on_release = on_release
        self._lock = anyio.Lock()
        self._fd: int | None = None
        self._closed = False
        self._aborted = False
        self._record = IngestRecord(ref=ref, total=0, expected="", started_at=datetime.now(UTC))
        self._algorithm = CANONICAL
        self._hasher: _Hash = hashlib.new(CANONICAL)
        self._offset = 0
        self._updated_at = self._record.started_at

    @property
    def ref(self) -> str:
        return self._ref

    @property
    def offset(self) -> int:
        return self._offset

    def digest(self) -> str:
        return f"{self._algorithm}:{self._hasher.hexdigest()}"

    async def status(self) -> IngestStatus:
        return IngestStatus(
            ref=self._ref,
            offset=self._offset,
            total=self._record.total,
            expected=self._record.expected,
            started_at=self._record.started_at,
            updated_at=self._updated_at,
        )

    async def open(self, total: int, expected: str) -> None:
        """Create the ingest, or resume it at the size of its data file."""
        await anyio.to_thread.run_sync(self._open_blocking, total, expected)

    def _open_blocking(self, total: int, expected: str) -> None:
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The data file comes first: a record without data means a commit got interrupted.
        data = self._dir / DATA
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            fd = os.open(data, flags, 0o600)
        except PermissionError:  # sealed (BLOB_MODE) by a commit that crashed before its rename
            os.chmod(data, 0o600)
            fd = os.open(data, flags, 0o600)
        self._fd = fd
        old = load_record(self._dir)
        if old is not None and total and old.total and total != old.total:
            # As containerd's: a ref reopened for another total starts again from nothing
            # (containerd keeps the old bytes past those written again, so a shorter blob can
            # never commit there; here the data goes with its record).
            os.ftruncate(fd, 0)
            old = None
        record = old or self._record
        record = IngestRecord(
            ref=self._ref,
            total=total or record.total,
            expected=expected or record.expected,
            started_at=record.started_at,
        )
        if record != old:
            save_record(self._dir, record)
        self._record = record
        self._algorithm = parse_digest(record.expected)[0] if record.expected else CANONICAL
        self._hasher, self._offset = hash_file(fd, self._algorithm)
        self._updated_at = updated_at(record, os.fstat(fd))

    async def write(self, data: bytes) -> int:
        async with self._lock:
            self._check_open()
            if data:
                await anyio.to_thread.run_sync(self._append_blocking, data)
            return self._offset

    def _append_blocking(self, data: bytes) -> None:
        # Write, then hash what was written: after a short or failed write the running digest
        # still matches the file. hashlib releases the GIL for large buffers.
        assert self._fd is not None
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            self._hasher.update(view[:n])
            self._offset += n
            view = view[n:]
        self._touch()

    def _touch(self) -> None:
        assert self._fd is not None
        now = time.time_ns()
        os.utime(self._fd, ns=(now, now))
        self._updated_at = max(from_ns(now), self._record.started_at)

    async def truncate(self, size: int) -> None:
        if size != 0:
            raise InvalidArgument(f"truncate to {size}: only 0 is supported")
        async with self._lock:
            self._check_open()
            await anyio.to_thread.run_sync(self._truncate_blocking)

    def _truncate_blocking(self) -> None:
        assert self._fd is not None
        os.ftruncate(self._fd, 0)
        self._hasher = hashlib.new(self._algorithm)
        self._offset = 0
        self._touch()

    async def commit(self, size: int, expected: str) -> Info:
        async with self._lock:
            self._check_open()
            try:
                return await self._commit(size, expected)
            finally:
                self.release()

    async def _commit(self, size: int, expected: str) -> Info:
        algorithm = parse_digest(expected)[0] if expected else self._algorithm
        if size and size != self._offset:
            raise FailedPrecondition(f"unexpected commit size {self._offset}, expected {size}")
        if algorithm == self._algorithm:
            actual = self.digest()
        else:
            actual = await anyio.to_thread.run_sync(self._digest_as, algorithm)
        if expected and actual != expected:
            raise FailedPrecondition(f"unexpected commit digest {actual}, expected {expected}")
        target = self._blobs / algorithm / actual.partition(":")[2]
        # Past verification the commit runs to its end: a cancelled caller must not leave a
        # renamed blob with its ingest still on disk, nor the other way round.
        with anyio.CancelScope(shield=True):
            if not await anyio.to_thread.run_sync(target.exists):
                await anyio.to_thread.run_sync(self._seal_blocking)
                async with self._publish_lock:
                    published = await anyio.to_thread.run_sync(self._publish_blocking, target)
                if published:
                    st = await anyio.to_thread.run_sync(self._settle_blocking, target)
                    return blob_info(actual, st)
            await anyio.to_thread.run_sync(remove_ingest, self._dir)
        raise AlreadyExists(f"content {actual}")

    def _digest_as(self, algorithm: str) -> str:
        assert self._fd is not None
        hasher, _ = hash_file(self._fd, algorithm)
        return f"{algorithm}:{hasher.hexdigest()}"

    def _seal_blocking(self) -> None:
        assert self._fd is not None
        os.fchmod(self._fd, BLOB_MODE)
        os.fsync(self._fd)

    def _publish_blocking(self, target: Path) -> bool:
        """Rename the data into ``blobs/``; False if the blob exists.

        Runs under the store's publish lock, so the existence check and the rename are one step.
        """
        if target.exists():
            return False
        if not target.parent.is_dir():
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fsync_dir(target.parent.parent)
        try:
            os.rename(self._dir / DATA, target)
        except OSError:
            if self._fd is not None:
                os.fchmod(self._fd, 0o600)
            raise
        return True

    def _settle_blocking(self, target: Path) -> os.stat_result:
        """Make the rename durable, then drop what is left of the ingest."""
        fsync_dir(target.parent)
        remove_ingest(self._dir)
        return os.stat(target)

    async def close(self) -> None:
        async with self._lock:
            self.release()

    def release(self) -> None:
        """Close the data file and release the ref without waiting: ``close`` for cleanup paths."""
        if self._closed:
            return
        self._closed = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._on_release()

    async def abandon(self) -> None:
        """The ingest is being aborted from under this writer: close it (after a call in flight)
        and release the ref; the writer's next call is NotFound."""
        async with self._lock:
            self._aborted = True
            self.release()

    def _check_open(self) -> None:
        if self._aborted:
            raise NotFound(f"ingest ref {self._ref!r} was aborted")
        if self._closed:
            raise FailedPrecondition(f"writer for ref {self._ref} is closed")
