"""Namespaced metadata in one sqlite file: every change is a transaction."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread

from corral.kernel import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    update_labels,
    validate_labels,
    validate_namespace,
)

T = TypeVar("T")

# Each entry upgrades the schema from version i to i + 1; the index is PRAGMA user_version.
_SCHEMA: tuple[str, ...] = (
    """
    CREATE TABLE namespaces (
        name TEXT PRIMARY KEY,
        labels TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL
    );
    """,
    """
    CREATE TABLE content (
        namespace TEXT NOT NULL REFERENCES namespaces(name),
        digest TEXT NOT NULL,
        size INTEGER NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (namespace, digest)
    );
    CREATE INDEX content_by_digest ON content(digest);
    CREATE TABLE leases (
        namespace TEXT NOT NULL REFERENCES namespaces(name),
        id TEXT NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL,
        PRIMARY KEY (namespace, id)
    );
    CREATE TABLE lease_resources (
        namespace TEXT NOT NULL,
        lease TEXT NOT NULL,
        type TEXT NOT NULL,
        id TEXT NOT NULL,
        PRIMARY KEY (namespace, lease, type, id),
        FOREIGN KEY (namespace, lease) REFERENCES leases(namespace, id) ON DELETE CASCADE
    );
    """,
    """
    CREATE TABLE snapshots (
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
    CREATE INDEX snapshots_by_parent ON snapshots(namespace, snapshotter, parent);
    CREATE TABLE sequences (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    """,
)


def stamp(seconds: float) -> datetime:
    """A stored epoch time (REAL column) as an aware UTC datetime."""
    return datetime.fromtimestamp(seconds, UTC)


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)


class MetadataStore:
    """The metadata database. Calls run on one worker thread, one transaction each."""

    def __init__(self, path: Path, *, no_sync: bool = False) -> None:
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'OFF' if no_sync else 'FULL'}")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()
        self._limiter = anyio.CapacityLimiter(1)
        # Tables whose rows belong to a namespace; a namespace holding any cannot be removed.
        self._namespaced_tables: dict[str, str] = {
            "blobs": "content",
            "leases": "leases",
            "snapshots": "snapshots",
        }
        self._mutation_listeners: list[Callable[[bool], None]] = []

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        for i in range(version, len(_SCHEMA)):
            # executescript commits any open transaction first, so the script carries its own.
            self._db.executescript(f"BEGIN IMMEDIATE; {_SCHEMA[i]}; PRAGMA user_version={i + 1}; COMMIT;")

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one transaction on the store's thread."""

        def call() -> T:
            with self._transaction() as db:
                return fn(db)

        return await anyio.to_thread.run_sync(call, limiter=self._limiter)

    def close(self) -> None:
        self._db.close()

    def on_mutation(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(deleted)`` after each committed change; the GC scheduler counts them."""
        self._mutation_listeners.append(listener)

    def mutated(self, *, deleted: bool = False) -> None:
        for listener in self._mutation_listeners:
            listener(deleted)

    def register_namespaced_table(self, kind: str, table: str) -> None:
        """Declare that rows of ``table`` (with a ``namespace`` column) are objects of ``kind``."""
        self._namespaced_tables[kind] = table

    # -- namespaces -------------------------------------------------------------------------
    async def create_namespace(self, name: str, labels: Mapping[str, str]) -> Namespace:
        validate_namespace(name)
        validate_labels(labels)

        def create(db: sqlite3.Connection) -> Namespace:
            try:
                db.execute(
                    "INSERT INTO namespaces(name, labels, created_at) VALUES (?, ?, ?)",
                    (name, json.dumps(dict(labels), sort_keys=True), time.time()),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f'namespace "{name}"') from None
            return Namespace(name, dict(labels))

        return await self.run(create)

    def ensure_namespace(self, db: sqlite3.Connection, name: str) -> None:
        """Create ``name`` inside a caller's transaction: writes create namespaces implicitly."""
        validate_namespace(name)
        db.execute(
            "INSERT OR IGNORE INTO namespaces(name, labels, created_at) VALUES (?, '{}', ?)",
            (name, time.time()),
        )

    async def get_namespace(self, name: str) -> Namespace:
        def get(db: sqlite3.Connection) -> Namespace:
            row = db.execute("SELECT labels FROM namespaces WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NotFound(f'namespace "{name}"')
            return Namespace(name, json.loads(row[0]))

        return await self.run(get)

    async def list_namespaces(self) -> list[Namespace]:
        def list_(db: sqlite3.Connection) -> list[Namespace]:
            rows = db.execute("SELECT name, labels FROM namespaces ORDER BY name").fetchall()
            return [Namespace(n, json.loads(labels)) for n, labels in rows]

        return await self.run(list_)

    async def update_namespace(self, name: str, labels: Mapping[str, str], paths: Sequence[str]) -> Namespace:
        """Replace labels, or with ``paths`` (``labels``, ``labels.KEY``) only the named ones."""
        validate_labels(labels)

        def update(db: sqlite3.Connection) -> Namespace:
            row = db.execute("SELECT labels FROM namespaces WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NotFound(f'namespace "{name}"')
            current = update_labels(json.loads(row[0]), labels, paths, what=f'namespace "{name}"')
            db.execute(
                "UPDATE namespaces SET labels = ? WHERE name = ?", (json.dumps(current, sort_keys=True), name)
            )
            return Namespace(name, current)

        return await self.run(update)

    async def delete_namespace(self, name: str) -> None:
        def delete(db: sqlite3.Connection) -> None:
            if db.execute("SELECT 1 FROM namespaces WHERE name = ?", (name,)).fetchone() is None:
                raise NotFound(f'namespace "{name}"')
            held = [
                kind
                for kind, table in sorted(self._namespaced_tables.items())
                if db.execute(f"SELECT 1 FROM {table} WHERE namespace = ? LIMIT 1", (name,)).fetchone()
            ]
            if held:
                raise FailedPrecondition(
                    f'namespace "{name}" must be empty, but it still has {", ".join(held)}'
                )
            db.execute("DELETE FROM namespaces WHERE name = ?", (name,))

        await self.run(delete)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception: a failed call changes nothing."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
