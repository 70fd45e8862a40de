"""What the on-disk snapshotters share: their bookkeeping in sqlite, and a directory per snapshot.

Like containerd's snapshots/storage, ``metadata.db`` under the snapshotter root records each
snapshot's key, parent key, kind, labels, times and (once committed) usage, under a numeric id
that names the snapshot's directory ``<root>/snapshots/<id>`` and never changes: a commit keeps
it. Ids are never reused (AUTOINCREMENT), so a directory a crash left behind can never be taken
for a later snapshot's; ``cleanup`` removes such directories.

``DirectoryBackend`` is the half of a snapshotter that is bookkeeping (stat, update, walk, usage,
commit, remove, cleanup); ``native`` and ``overlayfs`` add how a directory is filled and mounted.
"""

from __future__ import annotations

import builtins
import json
import os
import secrets
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread
import structlog

from corral.kernel import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    adapt_mapping,
    parse_filters,
)
from corral.plugins.core import Mount, update_labels
from corral.plugins.core.private import connect_private
from corral.plugins.core.trees import remove_tree
from corral.plugins.snapshots import Info, Kind, Usage

# What snapshotter authors may build on; DirectoryBackend's hooks are still settling.
__all__ = [
    "DirectoryBackend",
    "MetaStore",
    "Snapshot",
    "Transaction",
    "disk_usage",
    "fsync_dir",
    "remove_tree",
]

T = TypeVar("T")

log = structlog.get_logger("corral.snapshots")

DATABASE = "metadata.db"
SNAPSHOTS = "snapshots"
TEMPORARY_PREFIX = "new-"
KIND_NAMES = {Kind.VIEW: "view", Kind.ACTIVE: "active", Kind.COMMITTED: "committed"}
"""How ``kind`` reads in walk filters, as containerd's snapshot adaptor spells it."""

# Each entry upgrades the schema from version i to i + 1; the index is PRAGMA user_version.
_SCHEMA: tuple[str, ...] = (
    """
    CREATE TABLE snapshots (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL UNIQUE,
        parent TEXT NOT NULL DEFAULT '',
        kind INTEGER NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}',
        created INTEGER NOT NULL,
        updated INTEGER NOT NULL,
        size INTEGER NOT NULL DEFAULT 0,
        inodes INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX snapshots_by_parent ON snapshots(parent);
    """,
)
_COLUMNS = "id, key, parent, kind, labels, created, updated, size, inodes"
_Row = tuple[int, str, str, int, str, int, int, int, int]


@dataclass(frozen=True)
class Snapshot:
    """What a backend builds mounts from: the snapshot's id, its kind, its parents' ids nearest first."""

    id: int
    kind: Kind
    parent_ids: tuple[int, ...] = ()


class Transaction:
    """The bookkeeping operations, inside one sqlite transaction on the store's thread."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def _row(self, key: str) -> _Row:
        row: _Row | None = self._db.execute(
            f"SELECT {_COLUMNS} FROM snapshots WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            raise NotFound(f"snapshot {key} does not exist")
        return row

    def _chain(self, key: str) -> tuple[int, ...]:
        """Ids of ``key`` and its ancestors, nearest first."""
        rows = self._db.execute(
            """
            WITH RECURSIVE chain(id, parent, depth) AS (
                SELECT id, parent, 0 FROM snapshots WHERE key = ?
                UNION ALL
                SELECT s.id, s.parent, chain.depth + 1 FROM snapshots s JOIN chain ON s.key = chain.parent
            )
            SELECT id FROM chain ORDER BY depth
            """,
            (key,),
        ).fetchall()
        return tuple(i for (i,) in rows)

    def check_create(
        self, kind: Kind, key: str, parent: str, *, parent_ids: tuple[int, ...] | None = None
    ) -> tuple[int, ...]:
        """Whether ``key`` can be created on ``parent``: the parents' ids, nearest first, if so.

        ``parent_ids`` from an earlier check in this process are reused when the parent is still
        there: a committed snapshot never changes, so its chain cannot have either."""
        if kind not in (Kind.ACTIVE, Kind.VIEW):
            raise InvalidArgument(
                f"snapshot type {kind.name} invalid; only snapshots of type active or view can be created"
            )
        if not key:
            raise InvalidArgument("snapshot key must not be empty")
        if self._db.execute("SELECT 1 FROM snapshots WHERE key = ?", (key,)).fetchone() is not None:
            raise AlreadyExists(f"snapshot {key}")
        if not parent:
            return ()
        row = self._db.execute("SELECT kind FROM snapshots WHERE key = ?", (parent,)).fetchone()
        if row is None:
            raise NotFound(f"parent snapshot {parent} does not exist")
        if Kind(row[0]) is not Kind.COMMITTED:
            raise InvalidArgument(f"parent {parent} is not a committed snapshot")
        return parent_ids if parent_ids else self._chain(parent)

    def create_snapshot(
        self,
        kind: Kind,
        key: str,
        parent: str = "",
        labels: Mapping[str, str] | None = None,
        *,
        parent_ids: tuple[int, ...] | None = None,
    ) -> Snapshot:
        parent_ids = self.check_create(kind, key, parent, parent_ids=parent_ids)
        now = time.time_ns()
        cursor = self._db.execute(
            "INSERT INTO snapshots(key, parent, kind, labels, created, updated) VALUES (?, ?, ?, ?, ?, ?)",
            (key, parent, kind.value, _dump_labels(labels or {}), now, now),
        )
        assert cursor.lastrowid is not None
        return Snapshot(cursor.lastrowid, kind, parent_ids)

    def get_snapshot(self, key: str) -> Snapshot:
        """An active snapshot or a view; FailedPrecondition for a committed one, which has no mounts."""
        row = self._row(key)
        kind = Kind(row[3])
        if kind is Kind.COMMITTED:
            raise FailedPrecondition(
                f"snapshot {key} is committed: only active snapshots and views have mounts"
            )
        return Snapshot(row[0], kind, self._chain(row[2]) if row[2] else ())

    def get_info(self, key: str) -> tuple[int, Info, Usage]:
        row = self._row(key)
        return row[0], _info(row), Usage(size=row[7], inodes=row[8])

    def update_info(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        """containerd's rules: ``labels`` replaces all labels, ``labels.KEY`` sets or (empty) removes
        one, no paths replaces all labels; any other path is InvalidArgument."""
        row = self._row(info.name)
        labels = update_labels(json.loads(row[4]), info.labels, fieldpaths, what=f'snapshot "{info.name}"')
        self._db.execute(
            "UPDATE snapshots SET labels = ?, updated = ? WHERE id = ?",
            (_dump_labels(labels), time.time_ns(), row[0]),
        )
        return _info(self._row(info.name))

    def commit_active(
        self, key: str, name: str, usage: Usage, labels: Mapping[str, str] | None = None
    ) -> int:
        """Rename the active ``key`` to the committed ``name``, keeping its id; returns the id.

        As in containerd the committed snapshot's labels are the commit's, not inherited, and its
        times start anew.
        """
        if self._db.execute("SELECT 1 FROM snapshots WHERE key = ?", (name,)).fetchone() is not None:
            raise AlreadyExists(f"snapshot {name}")
        row = self._row(key)
        if Kind(row[3]) is not Kind.ACTIVE:
            raise FailedPrecondition(f"snapshot {key} is not active")
        now = time.time_ns()
        self._db.execute(
            "UPDATE snapshots SET key = ?, kind = ?, labels = ?, created = ?, updated = ?, size = ?, inodes = ?"
            " WHERE id = ?",
            (
                name,
                Kind.COMMITTED.value,
                _dump_labels(labels or {}),
                now,
                now,
                usage.size,
                usage.inodes,
                row[0],
            ),
        )
        return row[0]

    def remove(self, key: str) -> tuple[int, Kind]:
        """Forget ``key``; FailedPrecondition while any snapshot has it as its parent."""
        row = self._row(key)
        child = self._db.execute("SELECT key FROM snapshots WHERE parent = ? LIMIT 1", (key,)).fetchone()
        if child is not None:
            raise FailedPrecondition(f"cannot remove snapshot {key} with child {child[0]}")
        self._db.execute("DELETE FROM snapshots WHERE id = ?", (row[0],))
        return row[0], Kind(row[3])

    def walk(self, filters: Sequence[str] = ()) -> builtins.list[tuple[int, Info]]:
        """Every snapshot matching any of ``filters`` (fields: name, parent, kind, labels.KEY), by key."""
        match = parse_filters(list(filters))
        rows: list[_Row] = self._db.execute(f"SELECT {_COLUMNS} FROM snapshots ORDER BY key").fetchall()
        found = []
        for row in rows:
            info = _info(row)
            fields = {
                "name": info.name,
                "parent": info.parent,
                "kind": KIND_NAMES[info.kind],
                "labels": info.labels,
            }
            if match.match(adapt_mapping(fields)):
                found.append((row[0], info))
        return found

    def ids_in_use(self) -> dict[int, str]:
        """Every snapshot's id, with its key."""
        return dict(self._db.execute("SELECT id, key FROM snapshots").fetchall())


class MetaStore:
    """``metadata.db``: calls run on one worker thread, one transaction each."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = connect_private(path)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._migrate()
        self._limiter = anyio.CapacityLimiter(1)

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        for i in range(version, len(_SCHEMA)):
            # executescript commits any open transaction first, so the script carries its own.
            self._db.executescript(f"BEGIN IMMEDIATE; {_SCHEMA[i]}; PRAGMA user_version={i + 1}; COMMIT;")

    async def run(self, fn: Callable[[Transaction], T]) -> T:
        """Run ``fn`` in one transaction on the store's thread: committed if it returns, rolled back
        if it raises. Waiting callers queue; a cancelled caller's transaction still runs to its end."""

        def call() -> T:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(Transaction(self._db))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return result

        return await anyio.to_thread.run_sync(call, limiter=self._limiter)

    async def read(self, fn: Callable[[Transaction], T]) -> T:
        """Run ``fn``, which only reads, in one consistent snapshot: no write lock, nothing synced."""

        def call() -> T:
            self._db.execute("BEGIN DEFERRED")
            try:
                return fn(Transaction(self._db))
            finally:
                self._db.execute("COMMIT")

        return await anyio.to_thread.run_sync(call, limiter=self._limiter)

    async def create_snapshot(
        self, kind: Kind, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> Snapshot:
        return await self.run(lambda tx: tx.create_snapshot(kind, key, parent, labels))

    async def get_snapshot(self, key: str) -> Snapshot:
        return await self.read(lambda tx: tx.get_snapshot(key))

    async def get_info(self, key: str) -> tuple[int, Info, Usage]:
        return await self.read(lambda tx: tx.get_info(key))

    async def update_info(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        return await self.run(lambda tx: tx.update_info(info, fieldpaths))

    async def commit_active(
        self, key: str, name: str, usage: Usage, labels: Mapping[str, str] | None = None
    ) -> int:
        return await self.run(lambda tx: tx.commit_active(key, name, usage, labels))

    async def remove(self, key: str) -> tuple[int, Kind]:
        return await self.run(lambda tx: tx.remove(key))

    async def walk(self, filters: Sequence[str] = ()) -> builtins.list[tuple[int, Info]]:
        return await self.read(lambda tx: tx.walk(filters))

    async def ids_in_use(self) -> dict[int, str]:
        return await self.run(lambda tx: tx.ids_in_use())

    async def aclose(self) -> None:
        """Close the database once the calls already queued have run."""
        await anyio.to_thread.run_sync(self._db.close, limiter=self._limiter)


def _dump_labels(labels: Mapping[str, str]) -> str:
    return json.dumps(dict(labels), sort_keys=True)


def _time(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)


def _info(row: _Row) -> Info:
    _, key, parent, kind, labels, created, updated, _, _ = row
    return Info(
        name=key,
        kind=Kind(kind),
        parent=parent,
        labels=json.loads(labels),
        created_at=_time(created),
        updated_at=_time(updated),
    )


# -- directories ----------------------------------------------------------------------------------


def disk_usage(path: Path) -> Usage:
    """What ``du`` would count under ``path``: st_blocks * 512 and one inode per distinct inode
    (hard links once), the directory itself included, as containerd's fs.DiskUsage does."""
    st = os.lstat(path)
    seen = {(st.st_dev, st.st_ino)}
    size = st.st_blocks * 512
    pending = [os.fspath(path)]
    while pending:
        try:
            entries = os.scandir(pending.pop())
        except FileNotFoundError:
            continue  # removed while we walked an active snapshot
        with entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                identity = (st.st_dev, st.st_ino)
                if identity not in seen:
                    seen.add(identity)
                    size += st.st_blocks * 512
    return Usage(size=size, inodes=len(seen))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirectoryBackend(ABC):
    """A snapshotter that keeps each snapshot in ``<root>/snapshots/<id>``; subclasses say how a
    new directory is filled, which directory is the snapshot's own (for usage) and how it mounts.

    One process owns the root. A new snapshot's directory is filled under a temporary name and
    renamed into place in the transaction that records it, so a record never lacks its directory;
    a crash may leave a directory without a record, which ``cleanup`` removes.
    """

    remove_directories: bool = True
    """Remove a snapshot's directory in ``remove``; otherwise ``cleanup`` does (overlayfs's default)."""
    max_parents: int | None = None
    """The longest parent chain the backend can mount (longer ones are InvalidArgument); None: any."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.snapshots = root / SNAPSHOTS
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.snapshots.mkdir(mode=0o700, exist_ok=True)
        self.store = MetaStore(root / DATABASE)
        # Names of temporary directories being filled; cleanup leaves them alone.
        self._in_flight: set[str] = set()

    def directory(self, snapshot_id: int) -> Path:
        return self.snapshots / str(snapshot_id)

    # -- what subclasses provide ---------------------------------------------------------------

    @abstractmethod
    async def _fill(self, directory: Path, parent_ids: tuple[int, ...]) -> None:
        """Lay out a new snapshot's (temporary) directory on its parents, nearest first."""

    @abstractmethod
    def _mounts(self, snapshot: Snapshot) -> builtins.list[Mount]: ...

    @abstractmethod
    def _own_directory(self, snapshot_id: int) -> Path:
        """The directory holding what the snapshot itself adds: what usage counts."""

    def _check_parents(self, parent_ids: tuple[int, ...]) -> None:
        if self.max_parents is not None and len(parent_ids) > self.max_parents:
            raise InvalidArgument(
                f"{type(self).__name__} mounts at most {self.max_parents} lower layers;"
                f" this parent chain has {len(parent_ids)}"
            )

    def _decorate(self, snapshot_id: int, info: Info) -> Info:
        """The Info a caller sees; a backend may add labels of its own."""
        return info

    # -- the Snapshotter protocol ------------------------------------------------------------

    async def stat(self, key: str) -> Info:
        snapshot_id, info, _ = await self.store.get_info(key)
        return self._decorate(snapshot_id, info)

    async def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        def update(tx: Transaction) -> tuple[int, Info]:
            updated = tx.update_info(info, fieldpaths)
            return tx.get_info(updated.name)[0], updated

        snapshot_id, updated = await self.store.run(update)
        return self._decorate(snapshot_id, updated)

    async def usage(self, key: str) -> Usage:
        snapshot_id, info, usage = await self.store.get_info(key)
        if info.kind is Kind.ACTIVE:
            return await anyio.to_thread.run_sync(disk_usage, self._own_directory(snapshot_id))
        return usage

    async def mounts(self, key: str) -> builtins.list[Mount]:
        return self._mounts(await self.store.get_snapshot(key))

    async def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> builtins.list[Mount]:
        return self._mounts(await self._create(Kind.ACTIVE, key, parent, labels))

    async def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> builtins.list[Mount]:
        return self._mounts(await self._create(Kind.VIEW, key, parent, labels))

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        snapshot_id, info, usage = await self.store.get_info(key)
        if info.kind is Kind.ACTIVE:
            usage = await anyio.to_thread.run_sync(disk_usage, self._own_directory(snapshot_id))
        await self.store.commit_active(key, name, usage, labels)

    async def remove(self, key: str) -> None:
        snapshot_id, _ = await self.store.remove(key)
        if self.remove_directories:
            try:
                with anyio.CancelScope(shield=True):  # the record is gone: the directory goes too
                    await anyio.to_thread.run_sync(remove_tree, self.directory(snapshot_id))
            except OSError as exc:
                # The snapshot is gone; what is left of its directory is a leftover for cleanup.
                log.warning("snapshot_directory_remove_failed", key=key, error=str(exc))

    async def walk(self, filters: Sequence[str] = ()) -> AsyncIterator[Info]:
        for snapshot_id, info in await self.store.walk(filters):
            yield self._decorate(snapshot_id, info)

    async def cleanup(self) -> None:
        """Remove every directory under ``snapshots/`` that no snapshot owns and no call is filling."""

        def leftovers(tx: Transaction) -> builtins.list[str]:
            # Listed inside a transaction: a directory is renamed to its id in the transaction
            # that records the id, so what is listed here without a record is truly orphaned.
            owned = {str(i) for i in tx.ids_in_use()}
            return sorted(
                n for n in os.listdir(self.snapshots) if n not in owned and n not in self._in_flight
            )

        failed: builtins.list[str] = []
        for name in await self.store.read(leftovers):
            try:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(remove_tree, self.snapshots / name)
            except OSError as exc:
                # One directory that cannot go must not keep the others: it is tried again next time.
                log.warning(
                    "snapshot_leftover_remove_failed", root=str(self.root), directory=name, error=str(exc)
                )
                failed.append(f"{name}: {exc}")
                continue
            log.info("snapshot_leftover_removed", root=str(self.root), directory=name)
        if failed:
            raise FailedPrecondition(
                f"could not remove {len(failed)} leftover directories: {'; '.join(failed)}"
            )

    async def aclose(self) -> None:
        await self.store.aclose()

    # -- creating ------------------------------------------------------------------------------

    async def _create(self, kind: Kind, key: str, parent: str, labels: Mapping[str, str] | None) -> Snapshot:
        # Fail early on what the transaction would refuse anyway, before any copying.
        parent_ids = await self.store.read(lambda tx: tx.check_create(kind, key, parent))
        self._check_parents(parent_ids)
        temporary = self._reserve_temporary()
        try:
            try:
                await self._fill(temporary, parent_ids)
            except Exception:
                # A parent removed while it was copied fails the fill: report that, not the copy.
                await self.store.run(lambda tx: tx.check_create(kind, key, parent))
                raise

            def publish(tx: Transaction) -> Snapshot:
                snapshot = tx.create_snapshot(kind, key, parent, labels, parent_ids=parent_ids)
                self._check_parents(snapshot.parent_ids)
                target = self.directory(snapshot.id)
                if target.exists():
                    # A crash after this rename and before the commit rolled the id back, and left
                    # its directory: no record owns it, and this transaction now holds the id.
                    remove_tree(target)
                os.rename(temporary, target)
                fsync_dir(self.snapshots)  # the directory is durable before its record is
                return snapshot

            return await self.store.run(publish)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(remove_tree, temporary)
            raise
        finally:
            self._in_flight.discard(temporary.name)

    def _reserve_temporary(self) -> Path:
        # The name is reserved before the directory exists, so cleanup (listing on the store's
        # thread) never sees the directory without its reservation.
        name = TEMPORARY_PREFIX + secrets.token_hex(8)
        self._in_flight.add(name)
        path = self.snapshots / name
        try:
            path.mkdir(mode=0o700)
        except BaseException:
            self._in_flight.discard(name)
            raise
        return path
