"""The base for snapshotters that keep each snapshot in a directory: ``DirectoryBackend``.

A snapshotter built on it says only how a new snapshot's directory is filled from its parents
(``fill``), what to mount to see it (``mounts_for``) and, if not all of it, which part of the
directory is the snapshot's own (``own_tree``). Everything else — the whole ``Snapshotter``
protocol, bookkeeping, crash safety and ``cleanup`` — is the base's; ``native``, ``overlayfs`` and
``examples/corral-snapshotter-example`` are built on it.

Like containerd's snapshots/storage, ``metadata.db`` under the snapshotter root records each
snapshot's key, parent key, kind, labels, times and (once committed) usage, under a numeric id
that names the snapshot's directory ``<root>/snapshots/<id>`` and never changes: a commit keeps
it. A directory a crash left behind is never taken for a later snapshot's; ``cleanup`` removes it.
"""

from __future__ import annotations

import builtins
import json
import os
import secrets
import shutil
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
    Internal,
    InvalidArgument,
    NotFound,
    adapt_mapping,
    parse_filters,
)
from corral.plugins.core import Mount, update_labels
from corral.plugins.core.private import connect_private, fsync_dir
from corral.plugins.core.trees import remove_tree
from corral.plugins.snapshots import Info, Kind, Usage

# What snapshotter authors build on.
__all__ = [
    "DirectoryBackend",
    "MetaStore",
    "Snapshot",
    "Transaction",
    "copy_tree",
    "disk_usage",
    "fsync_dir",
    "remove_tree",
]

T = TypeVar("T")

log = structlog.get_logger("corral.snapshots")

DATABASE = "metadata.db"
SNAPSHOTS = "snapshots"
TEMPORARY_PREFIX = "new-"
"""A directory being filled: renamed to its id once recorded."""
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
        # containerd's snapshotters' words: their metastore's, after "failed to create snapshot".
        if row is None:
            raise NotFound(f'failed to create snapshot: missing parent "{parent}" bucket')
        if Kind(row[0]) is not Kind.COMMITTED:
            raise InvalidArgument(f'failed to create snapshot: parent "{parent}" is not committed snapshot')
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

    def skip_ids_through(self, highest: int) -> None:
        """Never give out an id up to ``highest``; called once, before the store is in use."""
        if highest <= 0:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            # sqlite_sequence holds AUTOINCREMENT's high-water mark, once a first row was inserted.
            self._db.execute(
                "INSERT INTO sqlite_sequence(name, seq) SELECT 'snapshots', 0"
                " WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'snapshots')"
            )
            self._db.execute(
                "UPDATE sqlite_sequence SET seq = ? WHERE name = 'snapshots' AND seq < ?", (highest, highest)
            )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

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


_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_REBASE = 2048
"""A directory this many bytes below its base becomes a base: no path handed over nears PATH_MAX."""


def disk_usage(path: Path) -> Usage:
    """What ``du`` would count under ``path``: st_blocks * 512 and one inode per distinct inode
    (hard links once), the directory itself included, as containerd's fs.DiskUsage does.

    Walked by directory descriptors, without recursion: a container's tree may be deeper, and its
    paths longer, than any path the host could name."""
    st = os.lstat(path)
    seen = {(st.st_dev, st.st_ino)}
    size = st.st_blocks * 512
    top = os.open(path, _DIRECTORY)
    holds = {top: 1}  # descriptor -> the pending directories (and the scan) that need it open
    pending = [(top, ".")]

    def release(fd: int) -> None:
        holds[fd] -= 1
        if not holds[fd]:
            del holds[fd]
            os.close(fd)

    try:
        while pending:
            base, relative = pending.pop()
            try:
                fd = os.open(relative, _DIRECTORY, dir_fd=base)
            except FileNotFoundError:
                release(base)
                continue  # removed while we walked an active snapshot
            holds[fd] = 1
            try:
                with os.scandir(fd) as entries:
                    for entry in entries:
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue
                        identity = (st.st_dev, st.st_ino)
                        if identity not in seen:
                            seen.add(identity)
                            size += st.st_blocks * 512
                        if entry.is_dir(follow_symlinks=False):
                            below = f"{relative}/{entry.name}"
                            holder, name = (fd, entry.name) if len(below) > _REBASE else (base, below)
                            holds[holder] += 1
                            pending.append((holder, name))
            finally:
                release(fd)
                release(base)
    finally:
        for fd in holds:
            os.close(fd)
    return Usage(size=size, inodes=len(seen))


async def copy_tree(source: Path, target: Path, *options: str) -> None:
    """``cp -a`` the contents of ``source`` onto the existing directory ``target``, which takes the
    mode, owner and times of ``source`` itself; ``options`` go to cp (``--reflink=auto``, ``--link``).

    cp rather than ``shutil.copytree``, which keeps none of hard links, fifos, device nodes, sockets,
    owners or trusted xattrs. Internal, with cp's message, when it fails.
    """
    # Relative to their common directory, so a path deep in the tree stays within PATH_MAX as long
    # as it can: the snapshot's own paths may already be close to it.
    base = os.path.commonpath([source, target])
    cp = shutil.which("cp") or "/bin/cp"
    argv = [cp, "-a", *options, "--", f"{os.path.relpath(source, base)}/.", os.path.relpath(target, base)]
    result = await anyio.run_process(argv, cwd=base, check=False)
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip() or f"exit status {result.returncode}"
        raise Internal(f"copying snapshot {source.name} (cp -a {' '.join(options)}): {message}")


class DirectoryBackend(ABC):
    """A ``Snapshotter`` that keeps each snapshot in a directory ``<root>/snapshots/<id>`` of its own.

    Subclass it and say how a snapshot's directory is made and seen:

    - ``fill(directory, parents, kind)``: lay out a new snapshot's (empty) directory on its parents;
    - ``mounts_for(directory, parents, kind)``: the mounts that show the snapshot;
    - ``own_tree(directory)``, optional: the part of the directory holding what the snapshot itself
      adds, which ``usage`` counts (all of it unless overridden).

    ``parents`` are the parents' directories, nearest first. Optional class attributes tune the rest:
    ``max_parents`` and ``remove_directories``; ``decorate`` may add labels of the backend's own.

    One process owns ``root``. A new directory is filled under a temporary name and renamed to its
    id in the transaction that records the snapshot, so a record never lacks its directory; what a
    crash leaves is a directory without a record, which ``cleanup`` removes and no later snapshot
    takes for its own.
    """

    max_parents: int | None = None
    """The longest parent chain the backend can mount (longer ones are InvalidArgument); None: any."""
    remove_directories: bool = True
    """Remove a snapshot's directory in ``remove``; otherwise the next ``cleanup`` does (overlayfs's default)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.snapshots = root / SNAPSHOTS
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.snapshots.mkdir(mode=0o700, exist_ok=True)
        self.store = MetaStore(root / DATABASE)
        """The bookkeeping: keys, parents, kinds, labels, times and usage, by id."""
        # A crash between a directory's rename and its record's commit leaves a directory named
        # by an id the database never kept: no later snapshot may be given that id.
        self.store.skip_ids_through(
            max((int(n) for n in os.listdir(self.snapshots) if n.isdigit()), default=0)
        )
        # Names of temporary directories being filled; cleanup leaves them alone.
        self._in_flight: set[str] = set()
        self._closed = False

    # -- what a subclass says -------------------------------------------------------------------

    @abstractmethod
    async def fill(self, directory: Path, parents: tuple[Path, ...], kind: Kind) -> None:
        """Lay out the new snapshot's ``directory`` (empty, mode 0700) on its ``parents``' directories.

        ``kind`` is ACTIVE (``prepare``, writable) or VIEW (``view``, mounted read-only). It runs
        before the snapshot is recorded: whatever it raises, nothing is left behind."""

    @abstractmethod
    def mounts_for(self, directory: Path, parents: tuple[Path, ...], kind: Kind) -> builtins.list[Mount]:
        """What to mount to see the snapshot in ``directory``, an active one writable, a view read-only."""

    def own_tree(self, directory: Path) -> Path:
        """The part of ``directory`` that holds what the snapshot itself adds: what ``usage`` counts."""
        return directory

    def decorate(self, info: Info, directory: Path) -> Info:
        """The Info a caller sees of the snapshot in ``directory``: a backend may add labels of its own."""
        return info

    # -- directories ----------------------------------------------------------------------------

    def directory(self, snapshot_id: int) -> Path:
        """The directory of the snapshot recorded under ``snapshot_id``."""
        return self.snapshots / str(snapshot_id)

    def _parents(self, snapshot: Snapshot) -> tuple[Path, ...]:
        return tuple(self.directory(i) for i in snapshot.parent_ids)

    def _mounts(self, snapshot: Snapshot) -> builtins.list[Mount]:
        return self.mounts_for(self.directory(snapshot.id), self._parents(snapshot), snapshot.kind)

    def _check_parents(self, parent_ids: tuple[int, ...]) -> None:
        if self.max_parents is not None and len(parent_ids) > self.max_parents:
            raise InvalidArgument(
                f"{type(self).__name__} mounts at most {self.max_parents} lower layers;"
                f" this parent chain has {len(parent_ids)}"
            )

    # -- the Snapshotter protocol ---------------------------------------------------------------

    async def stat(self, key: str) -> Info:
        snapshot_id, info, _ = await self.store.get_info(key)
        return self.decorate(info, self.directory(snapshot_id))

    async def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        def update(tx: Transaction) -> tuple[int, Info]:
            updated = tx.update_info(info, fieldpaths)
            return tx.get_info(updated.name)[0], updated

        snapshot_id, updated = await self.store.run(update)
        return self.decorate(updated, self.directory(snapshot_id))

    async def usage(self, key: str) -> Usage:
        snapshot_id, info, usage = await self.store.get_info(key)
        if info.kind is Kind.ACTIVE:
            return await anyio.to_thread.run_sync(disk_usage, self.own_tree(self.directory(snapshot_id)))
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
            usage = await anyio.to_thread.run_sync(disk_usage, self.own_tree(self.directory(snapshot_id)))
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
            yield self.decorate(info, self.directory(snapshot_id))

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
        """Close the metadata database; closing again is harmless."""
        if not self._closed:
            self._closed = True
            await self.store.aclose()

    # -- creating -------------------------------------------------------------------------------

    async def _create(self, kind: Kind, key: str, parent: str, labels: Mapping[str, str] | None) -> Snapshot:
        # Fail early on what the transaction would refuse anyway, before any copying.
        parent_ids = await self.store.read(lambda tx: tx.check_create(kind, key, parent))
        self._check_parents(parent_ids)
        temporary = self._reserve_temporary()
        try:
            try:
                await self.fill(temporary, tuple(self.directory(i) for i in parent_ids), kind)
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
                try:
                    fsync_dir(self.snapshots)  # the directory is durable before its record is
                except BaseException:
                    os.rename(target, temporary)  # the record rolls back, and so does the name
                    raise
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
