"""The sqlite metadata database, and the kinds of object it keeps.

Each kind of object (content records, leases, snapshots, images, containers, …) is one
``ObjectKind``: it brings its tables (migrations versioned per kind), the views it offers, what a
namespace still holds of it, the lease resource types it accepts, its garbage-collection nodes and
the sweep of backend objects no record names. The database knows only namespaces and transactions;
adding a kind means writing one module and listing it where the store is built.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread

from corral.kernel import Filter, InvalidArgument, NotFound, parse_filters
from corral.plugins.core import current_lease, validate_namespace
from corral.plugins.core.private import connect_private
from corral.plugins.metadata._gc import Node, ResourceKind, label_references

if TYPE_CHECKING:
    from corral.plugins.events.types import Event, Publisher

__all__ = [
    "Database",
    "Node",
    "ObjectKind",
    "ResourceKind",
    "attach_to_lease",
    "detach_from_lease",
    "label_references",
    "labels_json",
    "require_lease",
    "stamp",
]

T = TypeVar("T")

_LEGACY_VERSION = 3
"""Databases made before kinds had their own versions: one list of scripts, at most 3 of them."""
_CORE_VERSION = 10

_CORE_SCHEMA = """
CREATE TABLE IF NOT EXISTS namespaces (
    name TEXT PRIMARY KEY,
    labels TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL
);
CREATE TABLE kind_schema (kind TEXT PRIMARY KEY, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sequences (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

# What the legacy scripts had created, by kind: (kind, legacy version that created it).
_LEGACY_KINDS = (("content", 2), ("leases", 2), ("snapshots", 3))


def filters_of(filters: Sequence[str]) -> Filter:
    """A list's filters, parsed. containerd's image, container, lease and sandbox stores wrap a
    parse error once more (``…: invalid argument: invalid argument``)."""
    try:
        return parse_filters(list(filters))
    except InvalidArgument as exc:
        raise InvalidArgument(str(exc)) from None


def stamp(seconds: float) -> datetime:
    """A stored epoch time (REAL column) as an aware UTC datetime."""
    return datetime.fromtimestamp(seconds, UTC)


def labels_json(labels: Mapping[str, str]) -> str:
    """Labels as stored: JSON with sorted keys, so equal label sets are equal text."""
    return json.dumps(dict(labels), sort_keys=True)


class ObjectKind:
    """One kind of object the metadata database keeps. Subclasses override what applies to them."""

    name: str = ""
    """Unique; the key of the kind's schema version."""
    schema: Sequence[str] = ()
    """SQL scripts; script i upgrades the kind's tables from version i to i + 1."""

    def bind(self, db: Database) -> None:
        """Called once the database and every kind's tables exist."""

    def views(self) -> Iterable[object]:
        """The objects this kind offers through ``Metadata.view`` (each implements a contract)."""
        return ()

    def holdings(self, conn: sqlite3.Connection, namespace: str) -> list[str]:
        """What ``namespace`` still has of this kind, as containerd words it ("blobs", …); [] if none."""
        return []

    def drop_namespace(self, conn: sqlite3.Connection, namespace: str) -> None:
        """Remove what is left of this kind in a namespace being deleted (holdings() was empty)."""

    def accepts_lease_resource(self, resource_type: str) -> bool:
        return False

    def collectables(self) -> Iterable[ResourceKind]:
        """Garbage-collection node kinds, marked and swept inside one transaction."""
        return ()

    async def collected(self, removed: Mapping[str, Sequence[str]]) -> None:
        """After a collection's transaction: the records it removed (``namespace/id`` by node
        kind), for a kind that publishes events for them, as containerd's collector does."""

    async def sweep(self) -> Mapping[str, int | list[str]]:
        """After a collection: remove backend objects no record names. Returns counts by name,
        and under ``failed:<name>`` what could not be removed (kept for the next collection)."""
        return {}


class Database:
    """The metadata file. Calls run on one worker thread, one transaction each."""

    def __init__(
        self,
        path: Path,
        kinds: Sequence[ObjectKind],
        *,
        no_sync: bool = False,
        publisher: Publisher | None = None,
    ) -> None:
        names = [k.name for k in kinds]
        if len(set(names)) != len(names) or "" in names:
            raise ValueError(f"metadata kinds need unique, non-empty names: {names}")
        self.path = path
        self.kinds = tuple(kinds)
        self.publisher = publisher
        self._conn = connect_private(path)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(f"PRAGMA synchronous={'OFF' if no_sync else 'FULL'}")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._migrate()
        self._reader = connect_private(path)
        self._reader.execute("PRAGMA foreign_keys=ON")
        self._limiter = anyio.CapacityLimiter(1)
        self._mutation_listeners: list[Callable[[bool], None]] = []
        self._sequences: dict[str, int] = {}
        for kind in self.kinds:
            kind.bind(self)

    def _migrate(self) -> None:
        conn = self._conn
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version < _CORE_VERSION:
            # executescript commits any open transaction first, so each script carries its own.
            legacy = "".join(
                f"INSERT INTO kind_schema VALUES ('{k}', 1);" for k, v in _LEGACY_KINDS if version >= v
            )
            conn.executescript(
                f"BEGIN IMMEDIATE; {_CORE_SCHEMA}; {legacy} PRAGMA user_version={_CORE_VERSION}; COMMIT;"
            )
        current = dict(conn.execute("SELECT kind, version FROM kind_schema").fetchall())
        steps = [
            f"{kind.schema[i]}; INSERT INTO kind_schema VALUES ('{kind.name}', {i + 1})"
            f" ON CONFLICT(kind) DO UPDATE SET version = {i + 1};"
            for kind in self.kinds
            for i in range(current.get(kind.name, 0), len(kind.schema))
        ]
        if steps:
            # Every kind's steps in one transaction: one commit (one sync) for a new file, not one each.
            conn.executescript(f"BEGIN IMMEDIATE; {' '.join(steps)} COMMIT;")

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one transaction on the database's thread; any exception rolls it back."""

        def call() -> T:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return await anyio.to_thread.run_sync(call, limiter=self._limiter)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn``, which only reads, in one consistent snapshot of the database.

        Reads run on the event loop over their own connection: WAL lets them proceed while the
        worker thread writes, and sqlite answers a keyed lookup in microseconds, far less than
        the two thread hops a worker would cost (most RPCs are one such read)."""
        conn = self._reader
        conn.execute("BEGIN DEFERRED")
        try:
            return fn(conn)
        finally:
            conn.execute("COMMIT")

    def read_one(self, sql: str, parameters: tuple[object, ...]) -> tuple[Any, ...] | None:
        """The first row of one read-only statement: outside a transaction (the reader is in
        autocommit mode) a single statement reads one snapshot of its own, so this is ``read``
        for one lookup without the two statements that open and close a transaction."""
        row: tuple[Any, ...] | None = self._reader.execute(sql, parameters).fetchone()
        return row

    def next_sequence(self, name: str) -> int:
        """A number never handed out before for ``name``; the caller records it with
        ``record_sequence`` in the transaction that makes it durable. A number handed out before a
        crash may come again after it, so callers treat a clash with it as a reason to draw again."""
        current = self._sequences.get(name)
        if current is None:
            row = self._conn.execute("SELECT value FROM sequences WHERE name = ?", (name,)).fetchone()
            current = row[0] if row else 0
        self._sequences[name] = current + 1
        return current + 1

    def forget_sequences(self, conn: sqlite3.Connection, prefix: str) -> None:
        """Inside a caller's transaction: the sequences named ``prefix…`` start again from 1 (as a
        namespace's do in containerd once it is deleted)."""
        conn.execute("DELETE FROM sequences WHERE substr(name, 1, ?) = ?", (len(prefix), prefix))
        for name in [n for n in self._sequences if n.startswith(prefix)]:
            del self._sequences[name]  # read again from the table, whatever the transaction did

    @staticmethod
    def record_sequence(conn: sqlite3.Connection, name: str, value: int) -> None:
        conn.execute(
            "INSERT INTO sequences(name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = max(value, ?)",
            (name, value, value),
        )

    def close(self) -> None:
        self._reader.close()
        self._conn.close()

    # -- changes ---------------------------------------------------------------------------
    def on_mutation(self, listener: Callable[[bool], None]) -> None:
        self._mutation_listeners.append(listener)

    def mutated(self, *, deleted: bool = False) -> None:
        """Tell the GC scheduler a transaction changed something (``deleted``: removed something)."""
        for listener in self._mutation_listeners:
            listener(deleted)

    async def publish(self, event: Event, namespace: str) -> None:
        """Publish a committed change's event (containerd's topic and payload) on the exchange."""
        if self.publisher is not None:
            await self.publisher.publish(event, namespace=namespace)

    # -- what every kind needs ---------------------------------------------------------------
    @staticmethod
    def ensure_namespace(conn: sqlite3.Connection, name: str) -> None:
        """Inside a caller's transaction: writes create their namespace implicitly."""
        validate_namespace(name)
        conn.execute(
            "INSERT OR IGNORE INTO namespaces(name, labels, created_at) VALUES (?, '{}', ?)",
            (name, time.time()),
        )

    def accepts_lease_resource(self, resource_type: str) -> bool:
        return any(kind.accepts_lease_resource(resource_type) for kind in self.kinds)

    def holdings(self, conn: sqlite3.Connection, namespace: str) -> list[str]:
        return [held for kind in self.kinds for held in kind.holdings(conn, namespace)]

    def drop_namespace(self, conn: sqlite3.Connection, namespace: str) -> None:
        for kind in self.kinds:
            kind.drop_namespace(conn, namespace)
        conn.execute("DELETE FROM namespaces WHERE name = ?", (namespace,))


def attach_to_lease(conn: sqlite3.Connection, namespace: str, kind: str, resource_id: str) -> None:
    """Inside a caller's transaction: record the new object under the request's lease, if any."""
    lease = current_lease()
    if not lease:
        return
    require_lease(conn, namespace, lease)
    conn.execute(
        "INSERT OR IGNORE INTO lease_resources VALUES (?, ?, ?, ?)", (namespace, lease, kind, resource_id)
    )


def detach_from_lease(conn: sqlite3.Connection, namespace: str, kind: str, resource_id: str) -> None:
    """Inside a caller's transaction: the request's lease no longer holds the object (it was renamed)."""
    lease = current_lease()
    if lease:
        conn.execute(
            "DELETE FROM lease_resources WHERE namespace = ? AND lease = ? AND type = ? AND id = ?",
            (namespace, lease, kind, resource_id),
        )


def require_lease(conn: sqlite3.Connection, namespace: str, lease_id: str) -> None:
    if (
        conn.execute("SELECT 1 FROM leases WHERE namespace = ? AND id = ?", (namespace, lease_id)).fetchone()
        is None
    ):
        raise NotFound(f'lease "{lease_id}"')
