"""Snapshots as a namespace sees them: keys per namespace over one backend snapshotter.

Each namespace's key maps to a backend key ``<namespace>/<sequence>/<key>``, so namespaces never
collide in the backend. The record is written after the backend succeeds; a crash in between
leaves a backend snapshot no record names, which garbage collection removes.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from functools import partial

import anyio
import structlog

from corral.kernel import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    adapt_mapping,
    parse_filters,
)
from corral.plugins.core import GC_ROOT, Mount, namespace_required, update_labels, validate_labels
from corral.plugins.core.tracing import span
from corral.plugins.events.types import SnapshotCommit, SnapshotPrepare, SnapshotRemove
from corral.plugins.metadata._gc import Node, ResourceKind, label_references
from corral.plugins.metadata.database import (
    Database,
    ObjectKind,
    attach_to_lease,
    detach_from_lease,
    labels_json,
    stamp,
)
from corral.plugins.snapshots import Info, Kind, Snapshotter, Usage

log = structlog.get_logger("corral.metadata")

SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS snapshots (
        namespace TEXT NOT NULL REFERENCES namespaces(name),
        snapshotter TEXT NOT NULL,
        key TEXT NOT NULL,
        backend_key TEXT NOT NULL,
        parent TEXT NOT NULL DEFAULT '',
        kind INTEGER NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (namespace, snapshotter, key)
    );
    CREATE INDEX IF NOT EXISTS snapshots_by_parent ON snapshots(namespace, snapshotter, parent);
    CREATE TABLE IF NOT EXISTS sequences (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    """,
    # Commits under way: the backend commits before the record changes, so a crash in between
    # would leave an active record whose backend snapshot is gone. Finished or undone at start.
    """
    CREATE TABLE IF NOT EXISTS snapshot_commits (
        namespace TEXT NOT NULL,
        snapshotter TEXT NOT NULL,
        key TEXT NOT NULL,
        name TEXT NOT NULL,
        backend_name TEXT NOT NULL,
        labels TEXT NOT NULL,
        PRIMARY KEY (namespace, snapshotter, key)
    );
    """,
)

# Labels under this prefix are passed on to the backend (as containerd does); others stay here.
BACKEND_LABEL_PREFIX = "containerd.io/snapshot/"
SNAPSHOT_REF_LABEL = "containerd.io/snapshot.ref"
"""The remote-snapshotter handshake: set on an unpack's Prepare to the layer's chain ID (also passed
on). A backend that answers AlreadyExists has that layer committed already (lazily, remotely)."""


def backend_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """The labels a backend sees: containerd's FilterInheritedLabels."""
    return {k: v for k, v in labels.items() if k == SNAPSHOT_REF_LABEL or k.startswith(BACKEND_LABEL_PREFIX)}


_COLUMNS = "key, backend_key, parent, kind, labels, created_at, updated_at"
_DRAWS = 16


class _BackendKeyTaken(Exception):
    """The backend already has a snapshot under a freshly drawn key: one left by a crash."""


def _info(row: tuple[str, str, str, int, str, float, float]) -> Info:
    key, _, parent, kind, labels, created, updated = row
    return Info(key, Kind(kind), parent, json.loads(labels), stamp(created), stamp(updated))


def _fields(info: Info, path: Sequence[str]) -> str | None:
    kind = {Kind.VIEW: "view", Kind.ACTIVE: "active", Kind.COMMITTED: "committed"}.get(info.kind, "unknown")
    return adapt_mapping(
        {"name": info.name, "parent": info.parent, "kind": kind, "labels": dict(info.labels)}
    )(path)


class NamespacedSnapshotter:
    """One backend snapshotter as clients see it, with namespaces, labels, leases and GC."""

    def __init__(self, db: Database, name: str, backend: Snapshotter) -> None:
        self._store = db
        self.name = name
        self.backend = backend
        self.kind = f"snapshots/{name}"
        # Backend keys that exist (or are being made) before their record does: never swept.
        self.in_flight: set[str] = set()
        self._recovered = False
        self._recovering = anyio.Lock()

    async def _recover(self) -> None:
        """Before the first call: finish the commits a crash interrupted after the backend had
        committed, forget those it interrupted before; either outcome is one the client allowed."""
        if self._recovered:
            return
        async with self._recovering:
            if self._recovered:
                return

            def pending(db: sqlite3.Connection) -> builtins.list[tuple[str, str, str, str, str]]:
                rows = db.execute(
                    "SELECT namespace, key, name, backend_name, labels FROM snapshot_commits WHERE snapshotter = ?",
                    (self.name,),
                )
                return [(r[0], r[1], r[2], r[3], r[4]) for r in rows.fetchall()]

            for ns, key, name, backend_name, labels in await self._store.read(pending):
                try:
                    await self.backend.stat(backend_name)
                    committed = True
                except NotFound:
                    committed = False
                await self._store.run(partial(self._settle, ns, key, name, backend_name, labels, committed))
                log.info(
                    "snapshot_commit_recovered", snapshotter=self.name, key=key, name=name, finished=committed
                )
            self._recovered = True

    def _settle(
        self,
        ns: str,
        key: str,
        name: str,
        backend_name: str,
        labels: str,
        committed: bool,
        db: sqlite3.Connection,
    ) -> None:
        if committed:
            now = time.time()
            db.execute(
                "UPDATE snapshots SET key = ?, backend_key = ?, kind = ?, labels = ?, created_at = ?,"
                " updated_at = ? WHERE namespace = ? AND snapshotter = ? AND key = ?",
                (name, backend_name, Kind.COMMITTED.value, labels, now, now, ns, self.name, key),
            )
        self._forget_commit(db, ns, key)

    def _forget_commit(self, db: sqlite3.Connection, ns: str, key: str) -> None:
        db.execute(
            "DELETE FROM snapshot_commits WHERE namespace = ? AND snapshotter = ? AND key = ?",
            (ns, self.name, key),
        )

    def _row(
        self, db: sqlite3.Connection, ns: str, key: str
    ) -> tuple[str, str, str, int, str, float, float] | None:
        row = db.execute(
            f"SELECT {_COLUMNS} FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?",
            (ns, self.name, key),
        ).fetchone()
        return None if row is None else (row[0], row[1], row[2], row[3], row[4], row[5], row[6])

    async def _backend_key(self, ns: str, key: str) -> str:
        await self._recover()

        def get(db: sqlite3.Connection) -> str:
            row = self._row(db, ns, key)
            if row is None:
                raise NotFound(f"snapshot {key} does not exist")
            return row[1]

        return await self._store.read(get)

    def _sequence(self, ns: str) -> str:
        """As containerd's: each namespace's snapshotter numbers its backend keys on its own."""
        return f"snapshots/{ns}/{self.name}"

    def _new_backend_key(self, ns: str, key: str) -> tuple[str, int]:
        seq = self._store.next_sequence(self._sequence(ns))
        return f"{ns}/{seq}/{key}", seq

    async def stat(self, key: str) -> Info:
        ns = namespace_required()
        await self._recover()

        def get(db: sqlite3.Connection) -> Info:
            row = self._row(db, ns, key)
            if row is None:
                raise NotFound(f"snapshot {key} does not exist")
            return _info(row)

        return await self._store.read(get)

    async def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        ns = namespace_required()
        await self._recover()
        validate_labels(info.labels)

        def update(db: sqlite3.Connection) -> Info:
            row = self._row(db, ns, info.name)
            if row is None:
                raise NotFound(f"snapshot {info.name} does not exist")
            labels = update_labels(
                json.loads(row[4]), info.labels, fieldpaths, what=f'snapshot "{info.name}"'
            )
            now = time.time()
            db.execute(
                "UPDATE snapshots SET labels = ?, updated_at = ? WHERE namespace = ? AND snapshotter = ? AND key = ?",
                (labels_json(labels), now, ns, self.name, info.name),
            )
            return Info(info.name, Kind(row[3]), row[2], labels, stamp(row[5]), stamp(now))

        updated = await self._store.run(update)
        self._store.mutated()
        return updated

    async def usage(self, key: str) -> Usage:
        return await self.backend.usage(await self._backend_key(namespace_required(), key))

    async def mounts(self, key: str) -> builtins.list[Mount]:
        return await self.backend.mounts(await self._backend_key(namespace_required(), key))

    async def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> builtins.list[Mount]:
        with span("metadata.snapshots.Prepare", self._span(key=key, parent=parent)):
            return await self._create(Kind.ACTIVE, key, parent, labels or {})

    async def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> builtins.list[Mount]:
        with span("metadata.snapshots.View", self._span(key=key, parent=parent)):
            return await self._create(Kind.VIEW, key, parent, labels or {})

    def _span(self, **names: str) -> dict[str, str]:
        """A snapshot span's attributes: ``snapshotter``, and ``snapshot.key`` and the like."""
        return {"snapshotter": self.name, **{f"snapshot.{k}": v for k, v in names.items()}}

    async def _create(
        self, kind: Kind, key: str, parent: str, labels: Mapping[str, str]
    ) -> builtins.list[Mount]:
        ns = namespace_required()
        if not key:
            raise InvalidArgument("snapshot key must not be empty")
        await self._recover()
        validate_labels(labels)

        target = labels.get(SNAPSHOT_REF_LABEL, "")

        def check(db: sqlite3.Connection) -> str:
            if target and self._row(db, ns, target) is not None:
                raise AlreadyExists(f'target snapshot "{target}"')
            if self._row(db, ns, key) is not None:
                raise AlreadyExists(f'snapshot "{key}"')
            parent_backend = ""
            if parent:
                row = self._row(db, ns, parent)
                if row is None:
                    raise NotFound(f"parent snapshot {parent} does not exist")
                # As containerd's: whether the parent is committed is the backend's to say (in
                # its words, of its own key), and a key drawn for a refused snapshot stays used.
                parent_backend = row[1]
            return parent_backend

        try:
            parent_backend = await self._store.read(check)
        except AlreadyExists:
            if target:  # as containerd: the request's lease holds the target it was told exists
                await self._store.run(lambda db: self._hold_existing(db, ns, target))
            raise
        # A backend key drawn before a crash may name a snapshot the collector has not swept yet.
        for _ in range(_DRAWS):
            backend_key, seq = self._new_backend_key(ns, key)
            with self._making(backend_key):
                try:
                    return await self._create_and_record(
                        kind, ns, key, parent, labels, backend_key, seq, parent_backend
                    )
                except _BackendKeyTaken:
                    continue
        raise AlreadyExists(f"snapshot {key}: no free backend key after {_DRAWS} draws")

    @contextlib.contextmanager
    def _making(self, backend_key: str) -> Iterator[None]:
        self.in_flight.add(backend_key)
        try:
            yield
        finally:
            self.in_flight.discard(backend_key)

    async def _create_and_record(
        self,
        kind: Kind,
        ns: str,
        key: str,
        parent: str,
        labels: Mapping[str, str],
        backend_key: str,
        seq: int,
        parent_backend: str,
    ) -> builtins.list[Mount]:
        create = self.backend.prepare if kind is Kind.ACTIVE else self.backend.view
        try:
            mounts = await create(backend_key, parent_backend, backend_labels(labels))
        except AlreadyExists:
            target = labels.get(SNAPSHOT_REF_LABEL, "")
            found = await self._backend_target(target, parent_backend) if target else None
            if found is None:
                raise _BackendKeyTaken from None
            await self._record_target(ns, target, parent, labels, found)
            raise AlreadyExists(f'target snapshot "{target}" from snapshotter') from None
        now = time.time()

        def record(db: sqlite3.Connection) -> None:
            self._store.ensure_namespace(db, ns)
            self._store.record_sequence(db, self._sequence(ns), seq)
            try:
                db.execute(
                    f"INSERT INTO snapshots(namespace, snapshotter, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (ns, self.name, key, backend_key, parent, kind.value,
                     labels_json(labels), now, now),
                )  # fmt: skip
            except sqlite3.IntegrityError:
                raise AlreadyExists(f'snapshot "{key}"') from None
            attach_to_lease(db, ns, self.kind, key)

        try:
            await self._store.run(record)
        except Exception:
            await self.backend.remove(backend_key)
            raise
        self._store.mutated()
        if kind is Kind.ACTIVE:
            await self._store.publish(SnapshotPrepare(key=key, parent=parent, snapshotter=self.name), ns)
        return mounts

    async def _backend_has(self, backend_key: str) -> bool | None:
        """Whether the backend has ``backend_key``; None when it cannot be asked."""
        try:
            await self.backend.stat(backend_key)
        except NotFound:
            return False
        except Exception:
            return None
        return True

    def _hold_existing(self, db: sqlite3.Connection, ns: str, key: str) -> None:
        if self._row(db, ns, key) is not None:
            attach_to_lease(db, ns, self.kind, key)

    async def _backend_target(self, target: str, parent_backend: str) -> Info | None:
        """The committed backend snapshot a remote snapshotter made for ``target`` on this parent."""
        wanted = f'labels."{SNAPSHOT_REF_LABEL}"=={target},parent=="{parent_backend}"'
        async for info in self.backend.walk([wanted]):
            # a backend whose walk ignores filters must not hand over another layer
            if (
                info.kind is Kind.COMMITTED
                and info.labels.get(SNAPSHOT_REF_LABEL) == target
                and info.parent == parent_backend
            ):
                return info
        return None

    async def _record_target(
        self, ns: str, target: str, parent: str, labels: Mapping[str, str], found: Info
    ) -> None:
        """Record the remote's committed snapshot as ``target`` in this namespace, with the request's
        labels over the remote's, and its times (containerd's createSnapshot)."""
        merged = {**found.labels, **labels}
        created = found.created_at.timestamp() if found.created_at else time.time()
        updated = found.updated_at.timestamp() if found.updated_at else created

        def record(db: sqlite3.Connection) -> None:
            self._store.ensure_namespace(db, ns)
            if self._row(db, ns, target) is None:
                db.execute(
                    f"INSERT INTO snapshots(namespace, snapshotter, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (ns, self.name, target, found.name, parent, Kind.COMMITTED.value,
                     labels_json(merged), created, updated),
                )  # fmt: skip
            attach_to_lease(db, ns, self.kind, target)

        await self._store.run(record)
        self._store.mutated()

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        """As containerd's: the committed snapshot carries only the labels given here, and its
        created and updated times are both the commit's."""
        with span("metadata.snapshots.Commit", self._span(name=name, key=key)):
            await self._commit(name, key, labels)

    async def _commit(self, name: str, key: str, labels: Mapping[str, str] | None) -> None:
        ns = namespace_required()
        if not name:
            raise InvalidArgument("snapshot name must not be empty")
        if not key:
            raise InvalidArgument("snapshot key must not be empty")
        labels = dict(labels or {})
        validate_labels(labels)
        await self._recover()

        def check(db: sqlite3.Connection) -> tuple[str, str, str, int, str, float, float]:
            # In containerd's order: a name taken is AlreadyExists even when the key is missing.
            if self._row(db, ns, name) is not None:
                raise AlreadyExists(f'snapshot "{name}"')
            row = self._row(db, ns, key)
            if row is None:
                raise NotFound(f"snapshot {key} does not exist")
            if Kind(row[3]) is not Kind.ACTIVE:
                # containerd's snapshotters say it of their own key for the snapshot.
                raise FailedPrecondition(f'failed to commit snapshot: snapshot "{row[1]}" is not active')
            return row

        row = await self._store.read(check)
        for _ in range(_DRAWS):
            backend_name, seq = self._new_backend_key(ns, name)
            with self._making(backend_name):
                try:
                    await self._commit_and_record(ns, name, key, labels, row, backend_name, seq)
                    return
                except _BackendKeyTaken:
                    continue
        raise AlreadyExists(f"snapshot {name}: no free backend key after {_DRAWS} draws")

    async def _commit_and_record(
        self,
        ns: str,
        name: str,
        key: str,
        labels: dict[str, str],
        row: tuple[str, str, str, int, str, float, float],
        backend_name: str,
        seq: int,
    ) -> None:
        def intend(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR REPLACE INTO snapshot_commits VALUES (?, ?, ?, ?, ?, ?)",
                (ns, self.name, key, name, backend_name, labels_json(labels)),
            )
            self._store.record_sequence(db, self._sequence(ns), seq)

        await self._store.run(intend)
        try:
            await self.backend.commit(backend_name, row[1], backend_labels(labels))
        except (Unavailable, DeadlineExceeded) as exc:
            # A backend in another process (a proxy) may have committed before the reply was
            # lost: ask it; while it cannot say, the intent stays for recovery to settle.
            with anyio.CancelScope(shield=True):
                committed = await self._backend_has(backend_name)
                if committed is None:
                    self._recovered = False
                    raise
                if not committed:
                    await self._store.run(lambda db: self._forget_commit(db, ns, key))
                    raise
            log.info("snapshot_commit_confirmed", snapshotter=self.name, key=key, name=name, error=str(exc))
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await self._store.run(lambda db: self._forget_commit(db, ns, key))
            if isinstance(exc, AlreadyExists):
                raise _BackendKeyTaken from None
            raise
        now = time.time()

        def record(db: sqlite3.Connection) -> None:
            self._store.record_sequence(db, self._sequence(ns), seq)
            db.execute(
                "UPDATE snapshots SET key = ?, backend_key = ?, kind = ?, labels = ?, created_at = ?, updated_at = ? "
                "WHERE namespace = ? AND snapshotter = ? AND key = ?",
                (name, backend_name, Kind.COMMITTED.value, labels_json(labels), now, now, ns, self.name, key),
            )
            detach_from_lease(db, ns, self.kind, key)
            attach_to_lease(db, ns, self.kind, name)
            self._forget_commit(db, ns, key)

        await self._store.run(record)
        self._store.mutated()
        await self._store.publish(SnapshotCommit(key=key, name=name, snapshotter=self.name), ns)

    async def remove(self, key: str) -> None:
        with span("metadata.snapshots.Remove", self._span(key=key)):
            await self._remove(key)

    async def _remove(self, key: str) -> None:
        ns = namespace_required()
        await self._recover()

        def remove(db: sqlite3.Connection) -> str:
            row = self._row(db, ns, key)
            if row is None:
                raise NotFound(f"snapshot {key} does not exist")
            child = db.execute(
                "SELECT 1 FROM snapshots WHERE namespace = ? AND snapshotter = ? AND parent = ? LIMIT 1",
                (ns, self.name, key),
            ).fetchone()
            if child is not None:
                raise FailedPrecondition("cannot remove snapshot with child")
            db.execute(
                "DELETE FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?",
                (ns, self.name, key),
            )
            # a remote snapshot found through the handshake may be another namespace's too
            shared = db.execute(
                "SELECT 1 FROM snapshots WHERE snapshotter = ? AND backend_key = ? LIMIT 1",
                (self.name, row[1]),
            ).fetchone()
            return "" if shared else row[1]

        backend_key = await self._store.run(remove)
        with contextlib.suppress(NotFound):
            if backend_key:
                await self.backend.remove(backend_key)
        self._store.mutated(deleted=True)
        await self._store.publish(SnapshotRemove(key=key, snapshotter=self.name), ns)

    async def walk(self, filters: Sequence[str] = ()) -> AsyncIterator[Info]:
        ns = namespace_required()
        await self._recover()
        match = parse_filters(list(filters))

        def list_(db: sqlite3.Connection) -> builtins.list[Info]:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM snapshots WHERE namespace = ? AND snapshotter = ? ORDER BY key",
                (ns, self.name),
            ).fetchall()
            return [_info(r) for r in rows]

        for info in await self._store.read(list_):
            if match.match(partial(_fields, info)):
                yield info

    async def cleanup(self) -> None:
        await self._recover()
        await self.backend.cleanup()

    async def sweep(self) -> tuple[int, builtins.list[str]]:
        """Remove backend snapshots that no record names, children first.

        Returns how many went and what could not be removed (with the reason): one snapshot that
        cannot be removed never stops the others, and is tried again by the next collection.
        """

        await self._recover()

        def held(db: sqlite3.Connection) -> set[str]:
            rows = db.execute("SELECT backend_key FROM snapshots WHERE snapshotter = ?", (self.name,))
            return {k for (k,) in rows}

        # Walk first, then note what is in flight, then read the records: a snapshot the walk saw
        # is either recorded by the time of the read or still in flight when it was noted.
        walked = [info async for info in self.backend.walk()]
        in_flight = set(self.in_flight)
        keep = await self._store.read(held)
        orphans = [info for info in walked if info.name not in keep and info.name not in in_flight]
        removed, failed = 0, []
        # Children before parents: keep removing leaves until nothing more goes.
        while orphans:
            parents = {o.parent for o in orphans}
            leaves = [o for o in orphans if o.name not in parents]
            if not leaves:
                break
            for leaf in leaves:
                try:
                    await self.backend.remove(leaf.name)
                    removed += 1
                except (NotFound, FailedPrecondition):
                    pass
                except Exception as exc:
                    log.warning(
                        "gc_snapshot_remove_failed", snapshotter=self.name, key=leaf.name, error=str(exc)
                    )
                    failed.append(f"{leaf.name}: {exc}")
            orphans = [o for o in orphans if o not in leaves]
        # Backends that remove records first (overlayfs without sync_remove) free the disk here.
        try:
            await self.backend.cleanup()
        except Exception as exc:
            log.warning("gc_snapshot_cleanup_failed", snapshotter=self.name, error=str(exc))
            failed.append(f"cleanup: {exc}")
        return removed, failed


class SnapshotGC:
    """Snapshots of one snapshotter as the garbage collector sees them."""

    def __init__(self, snapshotter: str) -> None:
        self.snapshotter = snapshotter
        self.name = f"snapshots/{snapshotter}"

    def roots(self, conn: sqlite3.Connection, now: datetime) -> Iterable[Node]:
        rows = conn.execute(
            "SELECT namespace, key, labels FROM snapshots WHERE snapshotter = ?", (self.snapshotter,)
        )
        return [
            Node(self.name, ns, key) for ns, key, labels in rows.fetchall() if GC_ROOT in json.loads(labels)
        ]

    def references(self, conn: sqlite3.Connection, node: Node) -> Iterable[Node]:
        row = conn.execute(
            "SELECT parent, labels FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?",
            (node.namespace, self.snapshotter, node.id),
        ).fetchone()
        if row is None:
            return ()
        refs = list(label_references(node.namespace, json.loads(row[1])))
        if row[0]:
            refs.append(Node(self.name, node.namespace, row[0]))
        return refs

    def nodes(self, conn: sqlite3.Connection) -> Iterable[Node]:
        rows = conn.execute("SELECT namespace, key FROM snapshots WHERE snapshotter = ?", (self.snapshotter,))
        return [Node(self.name, ns, key) for ns, key in rows.fetchall()]

    def remove(self, conn: sqlite3.Connection, node: Node) -> None:
        conn.execute(
            "DELETE FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?",
            (node.namespace, self.snapshotter, node.id),
        )


class SnapshotRecords:
    """The NamespacedSnapshots view: every snapshotter by name."""

    def __init__(self, snapshotters: Mapping[str, NamespacedSnapshotter]) -> None:
        self._snapshotters = dict(snapshotters)

    @property
    def names(self) -> builtins.list[str]:
        return sorted(self._snapshotters)

    def get(self, name: str) -> NamespacedSnapshotter:
        try:
            return self._snapshotters[name]
        except KeyError:
            raise InvalidArgument(f"snapshotter not loaded: {name}") from None


class SnapshotsKind(ObjectKind):
    """Namespaced snapshots over every backend snapshotter; backend snapshots no record names are swept."""

    name = "snapshots"
    schema = SCHEMA

    def __init__(self, backends: Mapping[str, Snapshotter]) -> None:
        self.backends = dict(sorted(backends.items()))

    def bind(self, db: Database) -> None:
        self._db = db
        self.snapshotters = {name: NamespacedSnapshotter(db, name, b) for name, b in self.backends.items()}
        self.records = SnapshotRecords(self.snapshotters)

    def views(self) -> Iterable[object]:
        return (self.records,)

    def holdings(self, conn: sqlite3.Connection, namespace: str) -> builtins.list[str]:
        rows = conn.execute(
            "SELECT DISTINCT snapshotter FROM snapshots WHERE namespace = ? ORDER BY snapshotter",
            (namespace,),
        )
        return [f'snapshots on "{name}" snapshotter' for (name,) in rows.fetchall()]

    def drop_namespace(self, conn: sqlite3.Connection, namespace: str) -> None:
        self._db.forget_sequences(conn, f"snapshots/{namespace}/")

    def accepts_lease_resource(self, resource_type: str) -> bool:
        return resource_type.startswith("snapshots/")

    def collectables(self) -> Iterable[ResourceKind]:
        return [SnapshotGC(name) for name in self.backends]

    async def sweep(self) -> Mapping[str, int | builtins.list[str]]:
        out: dict[str, int | builtins.list[str]] = {}
        for name, snapshotter in self.snapshotters.items():
            try:
                removed, failed = await snapshotter.sweep()
            except Exception as exc:
                # as containerd: one snapshotter that cannot be swept (a proxy whose process is
                # down) is logged and tried again next time; the collection goes on
                log.warning("gc_snapshotter_sweep_failed", snapshotter=name, error=str(exc))
                removed, failed = 0, [f"sweep: {exc}"]
            out[f"snapshots/{name}"] = removed
            out[f"failed:snapshots/{name}"] = failed
        return out
