"""io.containerd.content.v1.content — blobs in files under the plugin root, written through ingests.

Layout: ``blobs/<alg>/<hex>`` holds committed blobs (read-only, only ever complete: they arrive by
rename after an fsync); ``ingest/<sha256(ref)>/`` holds one ingest each (see ``_ingest``), so an
ingest survives a restart and can be resumed. One daemon owns the root: the per-ref locks are in
process.
"""

from __future__ import annotations

import builtins
import functools
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import anyio.to_thread
import structlog

from corral.kernel import (
    AlreadyExists,
    InitContext,
    InvalidArgument,
    NotFound,
    OutOfRange,
    Registration,
    Unavailable,
)
from corral.plugins import types
from corral.plugins.content import READ_CHUNK, Info, IngestStatus
from corral.plugins.content._ingest import (
    ALGORITHMS,
    CANONICAL,
    LocalWriter,
    blob_info,
    ingest_key,
    is_stale,
    parse_digest,
    read_status,
    remove_ingest,
)
from corral.plugins.core.private import fsync_dir

EXPIRY_INTERVAL = timedelta(hours=1)

log = structlog.get_logger("corral.content")


@dataclass(frozen=True)
class LocalContentConfig:
    """The ``io.containerd.content.v1.content`` section."""

    ingest_expiry: timedelta = timedelta(hours=24)
    """An ingest not written to for this long is removed; 0 keeps ingests until they are aborted."""


class LocalContentStore:
    """A ``ContentStore`` over a directory. See the module docstring for the layout."""

    def __init__(self, root: Path, *, ingest_expiry: timedelta = timedelta(hours=24)) -> None:
        self.root = root
        self.ingest_expiry = ingest_expiry
        self._blobs = root / "blobs"
        self._blobs_text = str(self._blobs)  # read() joins names as text: a Path costs more than a pread
        self._ingests = root / "ingest"
        (self._blobs / CANONICAL).mkdir(mode=0o700, parents=True, exist_ok=True)
        self._ingests.mkdir(mode=0o700, exist_ok=True)
        fsync_dir(self._blobs)
        fsync_dir(root)
        # Ingest key -> its open writer, or None while abort or expiry removes the ingest.
        self._holders: dict[str, LocalWriter | None] = {}
        # Ingest key -> set when the removal holding it (None above) lets go.
        self._removals: dict[str, anyio.Event] = {}
        self._publish_lock = anyio.Lock()

    # -- blobs -------------------------------------------------------------------------------

    def _blob_path(self, digest: str) -> Path:
        algorithm, encoded = parse_digest(digest)
        return self._blobs / algorithm / encoded

    async def info(self, digest: str) -> Info:
        path = self._blob_path(digest)
        try:
            st = await anyio.to_thread.run_sync(os.stat, path)
        except FileNotFoundError:
            raise NotFound(f"content digest {digest}") from None
        return blob_info(digest, st)

    async def list(self) -> AsyncIterator[Info]:
        for info in await anyio.to_thread.run_sync(self._scan_blobs):
            yield info

    def _scan_blobs(self) -> builtins.list[Info]:
        found = []
        for algorithm, length in ALGORITHMS.items():
            try:
                entries = os.scandir(self._blobs / algorithm)
            except FileNotFoundError:
                continue
            with entries:
                for entry in entries:
                    digest = f"{algorithm}:{entry.name}"
                    if len(entry.name) != length or not entry.is_file(follow_symlinks=False):
                        continue
                    try:
                        found.append(blob_info(digest, entry.stat(follow_symlinks=False)))
                    except FileNotFoundError:
                        continue  # deleted while listing
        return sorted(found, key=lambda info: info.digest)

    async def delete(self, digest: str) -> None:
        path = self._blob_path(digest)
        try:
            await anyio.to_thread.run_sync(os.unlink, path)
        except FileNotFoundError:
            raise NotFound(f"content digest {digest}") from None

    async def read(self, digest: str, offset: int = 0, size: int = 0) -> AsyncIterator[bytes]:
        """As containerd's content service: past the end is OutOfRange, at the end is empty.

        ``offset + size`` beyond the end is cut to the end; negative values are InvalidArgument.
        """
        if offset < 0 or size < 0:
            raise InvalidArgument(f"read of {digest}: negative offset {offset} or size {size}")
        algorithm, encoded = parse_digest(digest)
        path = f"{self._blobs_text}/{algorithm}/{encoded}"
        # Clients such as ctr read a blob as thousands of 32 KiB reads, so per-read costs, not the
        # bytes, set the rate: the descriptor is opened on the loop (a lookup of a name in a
        # directory sqlite's records just named) and the bytes are read on it when the page cache
        # holds them (RWF_NOWAIT); only a read that would wait for the disk goes to a thread.
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"content digest {digest}") from None
        try:
            length = os.fstat(fd).st_size
            if offset > length:
                raise OutOfRange(f"read past object length {length} bytes")
            end = length if size == 0 else min(length, offset + size)
            while offset < end:
                want = min(READ_CHUNK, end - offset)
                chunk = _read_cached(fd, want, offset)
                if chunk is None:
                    with anyio.CancelScope(shield=True):  # the descriptor is closed only after
                        chunk = await anyio.to_thread.run_sync(os.pread, fd, want, offset)
                if not chunk:
                    break  # shorter than it was: nothing more to give
                yield chunk
                offset += len(chunk)
        finally:
            os.close(fd)

    # -- ingests -----------------------------------------------------------------------------

    def _ingest_dir(self, ref: str) -> Path:
        return self._ingests / ingest_key(ref)

    @contextmanager
    def _hold(self, ref: str) -> Iterator[None]:
        """Hold the ref's lock for the block; Unavailable while someone else holds it."""
        key = self._claim(ref, None)
        try:
            yield
        finally:
            self._release(key)

    def _release(self, key: str) -> None:
        self._holders.pop(key, None)
        removal = self._removals.pop(key, None)
        if removal is not None:
            removal.set()

    def _claim(self, ref: str, writer: LocalWriter | None) -> str:
        key = ingest_key(ref)
        if key in self._holders:
            raise Unavailable(f"ref {ref} locked")
        self._claim_key(key, writer)
        return key

    def _claim_key(self, key: str, writer: LocalWriter | None) -> None:
        self._holders[key] = writer
        if writer is None:
            self._removals[key] = anyio.Event()

    async def writer(self, ref: str, total: int = 0, expected: str = "") -> LocalWriter:
        """Open or resume ``ref``. Unavailable while another writer holds it.

        When ``expected`` is already a blob: AlreadyExists, and the ingest is removed unless a
        writer holds it (that writer's owner finds out at its own commit).
        """
        _check_ref(ref)
        if total < 0:
            raise InvalidArgument(f"ref {ref}: negative total {total}")
        if expected:
            exists = await anyio.to_thread.run_sync(self._blob_path(expected).exists)
            if exists:
                if ingest_key(ref) not in self._holders:
                    with self._hold(ref):
                        await anyio.to_thread.run_sync(remove_ingest, self._ingest_dir(ref))
                raise AlreadyExists(f"content {expected}")
        key = ingest_key(ref)
        writer = LocalWriter(
            ref,
            self._ingest_dir(ref),
            self._blobs,
            publish_lock=self._publish_lock,
            on_release=functools.partial(self._release, key),
        )
        self._claim(ref, writer)
        try:
            await writer.open(total, expected)
        except BaseException:
            writer.release()
            raise
        return writer

    async def status(self, ref: str) -> IngestStatus:
        status = await anyio.to_thread.run_sync(read_status, self._ingest_dir(ref))
        if status is None or status.ref != ref:
            raise NotFound(f'ingest ref "{ref}"')
        return status

    async def list_statuses(self) -> builtins.list[IngestStatus]:
        return await anyio.to_thread.run_sync(self._scan_ingests)

    def _scan_ingests(self) -> builtins.list[IngestStatus]:
        statuses = []
        for entry in os.scandir(self._ingests):
            status = read_status(Path(entry.path))
            if status is not None:
                statuses.append(status)
        return sorted(statuses, key=lambda status: status.ref)

    async def abort(self, ref: str) -> None:
        """Remove the ingest, as containerd does even while a writer holds it: that writer is
        closed first and its next call is NotFound (a client that closes its writer and aborts at
        once must not find the ref still locked by a stream the daemon has not seen end yet).

        While the expiry sweep (or another abort) is deciding about the same ingest, wait for its
        verdict instead: a client's abort is never refused for the store's own housekeeping."""
        key = ingest_key(ref)
        while True:
            if (removal := self._removals.get(key)) is not None:
                await removal.wait()
            elif (holder := self._holders.get(key)) is not None:
                await holder.abandon()
            else:
                break
        with self._hold(ref):
            if not await anyio.to_thread.run_sync(remove_ingest, self._ingest_dir(ref)):
                raise NotFound(f'ingest ref "{ref}"')

    # -- expiry ------------------------------------------------------------------------------

    async def expire_ingests(self, now: datetime | None = None) -> int:
        """Remove ingests idle for longer than ``ingest_expiry``, and leftovers of interrupted
        starts and commits; ingests held by a writer are left alone. Returns how many went."""
        cutoff = None
        if self.ingest_expiry > timedelta(0):
            cutoff = (now or datetime.now(UTC)) - self.ingest_expiry
        removed = 0
        for key in await anyio.to_thread.run_sync(os.listdir, self._ingests):
            if key in self._holders:
                continue
            self._claim_key(key, None)
            try:
                directory = self._ingests / key
                if await anyio.to_thread.run_sync(_remove_if_stale, directory, cutoff):
                    removed += 1
                    log.info("ingest_expired", ingest=key)
            finally:
                self._release(key)
        return removed

    async def run_expiry(self) -> None:
        """Expire ingests now, then about hourly (more often when the expiry is shorter)."""
        interval = min(EXPIRY_INTERVAL, self.ingest_expiry)
        while True:
            try:
                await self.expire_ingests()
            except OSError as exc:
                log.warning("ingest_expiry_failed", error=str(exc))
            if interval <= timedelta(0):
                return
            await anyio.sleep(max(interval.total_seconds(), 1.0))

    async def aclose(self) -> None:
        """Close writers still open at shutdown (after their call in flight); ingests stay resumable."""
        for writer in builtins.list(self._holders.values()):
            if writer is not None:
                await writer.close()


def _check_ref(ref: str) -> None:
    if not ref:
        raise InvalidArgument("ref must not be empty")


def _remove_if_stale(directory: Path, cutoff: datetime | None) -> bool:
    return is_stale(directory, cutoff) and remove_ingest(directory)


async def init(ic: InitContext) -> LocalContentStore:
    config: LocalContentConfig = ic.config
    store = LocalContentStore(ic.root, ingest_expiry=config.ingest_expiry)
    ic.meta.exports["root"] = str(ic.root)
    ic.start_soon(store.run_expiry, name="ingest-expiry")
    return store


registration = Registration(
    type=types.CONTENT,
    id="content",
    init=init,
    config=LocalContentConfig,
    description="content-addressed blobs in files, written through resumable ingests",
)


_NOWAIT = getattr(os, "RWF_NOWAIT", 0)


def _read_cached(fd: int, size: int, offset: int) -> bytes | None:
    """``size`` bytes at ``offset`` if the page cache has them all, without waiting; else None."""
    if not _NOWAIT:
        return None
    buf = bytearray(size)
    try:
        n = os.preadv(fd, [buf], offset, _NOWAIT)
    except (BlockingIOError, OSError):  # EAGAIN: not cached; EOPNOTSUPP: no RWF_NOWAIT here
        return None
    if n < size:
        # Part cached (or the end came early): the rest may need the disk, so let a thread read
        # the whole range again rather than stitch pieces.
        return None
    return bytes(buf) if n else b""
