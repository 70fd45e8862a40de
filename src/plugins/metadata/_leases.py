"""Leases: named, labelled holds that keep content and snapshots alive until removed or expired."""

from __future__ import annotations

import builtins
import json
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from functools import partial

from corral.kernel import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    Unimplemented,
    adapt_mapping,
)
from corral.plugins.core import (
    GC_EXPIRE,
    digest_error,
    generate_lease_id,
    namespace_required,
    parse_expiry,
    validate_labels,
    validate_lease_id,
)
from corral.plugins.metadata import Lease, Resource
from corral.plugins.metadata._gc import Node, ResourceKind
from corral.plugins.metadata.database import (
    Database,
    ObjectKind,
    filters_of,
    labels_json,
    require_lease,
    stamp,
)

SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS leases (
        namespace TEXT NOT NULL REFERENCES namespaces(name),
        id TEXT NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL,
        PRIMARY KEY (namespace, id)
    );
    CREATE TABLE IF NOT EXISTS lease_resources (
        namespace TEXT NOT NULL,
        lease TEXT NOT NULL,
        type TEXT NOT NULL,
        id TEXT NOT NULL,
        PRIMARY KEY (namespace, lease, type, id),
        FOREIGN KEY (namespace, lease) REFERENCES leases(namespace, id) ON DELETE CASCADE
    );
    """,
)


def _lease_fields(lease: Lease, path: Sequence[str]) -> str | None:
    return adapt_mapping({"id": lease.id, "labels": dict(lease.labels)})(path)


class LeaseManager:
    """The LeaseStore view: create, list and delete leases and their resources, per namespace."""

    def __init__(self, db: Database) -> None:
        self._store = db

    async def create(self, lease_id: str = "", labels: Mapping[str, str] | None = None) -> Lease:
        ns = namespace_required()
        lease_id = lease_id or generate_lease_id()
        validate_lease_id(lease_id)
        labels = dict(labels or {})
        validate_labels(labels)
        if GC_EXPIRE in labels:
            parse_expiry(labels[GC_EXPIRE])
        now = time.time()

        def create(db: sqlite3.Connection) -> Lease:
            self._store.ensure_namespace(db, ns)
            try:
                db.execute(
                    "INSERT INTO leases(namespace, id, labels, created_at) VALUES (?, ?, ?, ?)",
                    (ns, lease_id, labels_json(labels), now),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f'lease "{lease_id}"') from None
            return Lease(lease_id, stamp(now), labels)

        lease = await self._store.run(create)
        self._store.mutated()
        return lease

    async def delete(self, lease_id: str) -> None:
        ns = namespace_required()

        def delete(db: sqlite3.Connection) -> None:
            cur = db.execute("DELETE FROM leases WHERE namespace = ? AND id = ?", (ns, lease_id))
            if cur.rowcount == 0:
                raise NotFound(f'lease "{lease_id}"')

        await self._store.run(delete)
        self._store.mutated(deleted=True)

    async def list(self, filters: Sequence[str] = ()) -> list[Lease]:
        ns = namespace_required()
        match = filters_of(filters)

        def list_(db: sqlite3.Connection) -> list[Lease]:
            rows = db.execute(
                "SELECT id, labels, created_at FROM leases WHERE namespace = ? ORDER BY created_at, id", (ns,)
            ).fetchall()
            return [Lease(i, stamp(c), json.loads(labels)) for i, labels, c in rows]

        return [
            lease for lease in await self._store.read(list_) if match.match(partial(_lease_fields, lease))
        ]

    async def add_resource(self, lease_id: str, resource: Resource) -> None:
        ns = namespace_required()
        _check_resource(resource, self._store)

        def add(db: sqlite3.Connection) -> None:
            require_lease(db, ns, lease_id)
            db.execute(
                "INSERT OR IGNORE INTO lease_resources VALUES (?, ?, ?, ?)",
                (ns, lease_id, resource.type, resource.id),
            )

        await self._store.run(add)
        self._store.mutated()

    async def delete_resource(self, lease_id: str, resource: Resource) -> None:
        ns = namespace_required()
        _check_resource(resource, self._store)

        def delete(db: sqlite3.Connection) -> None:
            require_lease(db, ns, lease_id)
            db.execute(
                "DELETE FROM lease_resources WHERE namespace = ? AND lease = ? AND type = ? AND id = ?",
                (ns, lease_id, resource.type, resource.id),
            )

        await self._store.run(delete)
        self._store.mutated(deleted=True)

    async def list_resources(self, lease_id: str) -> builtins.list[Resource]:
        ns = namespace_required()

        def list_(db: sqlite3.Connection) -> list[Resource]:
            require_lease(db, ns, lease_id)
            rows = db.execute(
                "SELECT id, type FROM lease_resources WHERE namespace = ? AND lease = ? ORDER BY type, id",
                (ns, lease_id),
            ).fetchall()
            return [Resource(i, t) for i, t in rows]

        return await self._store.read(list_)


def _check_resource(resource: Resource, db: Database) -> Resource:
    """containerd's rules for what a lease may hold; a content resource's id must be a digest."""
    if not resource.id:
        raise InvalidArgument("resource id must not be empty")
    kind = resource.type.split("/")
    if kind[0] in ("content", "ingests", "images") and len(kind) != 1:
        raise InvalidArgument(f"invalid resource type {resource.type}")
    if kind[0] == "snapshots" and (len(kind) != 2 or not kind[1]):
        raise InvalidArgument(f"invalid snapshot resource type {resource.type}")
    if kind[0] == "content":
        problem = digest_error(resource.id)
        if problem is not None:
            raise InvalidArgument(f"invalid content resource id {resource.id}: {problem}")
    if not db.accepts_lease_resource(resource.type):
        raise Unimplemented(f"resource type {resource.type} not supported yet")
    return resource


class LeaseGC:
    """Leases are roots until they expire; an expired lease is collected with what only it held."""

    name = "lease"

    def _expired(self, labels: dict[str, str], now: datetime) -> bool:
        text = labels.get(GC_EXPIRE)
        if not text:
            return False
        try:
            return parse_expiry(text) <= now
        except InvalidArgument:
            return False

    def roots(self, conn: sqlite3.Connection, now: datetime) -> Iterable[Node]:
        for ns, lease_id, labels in conn.execute("SELECT namespace, id, labels FROM leases"):
            if not self._expired(json.loads(labels), now):
                yield Node("lease", ns, lease_id)

    def references(self, conn: sqlite3.Connection, node: Node) -> Iterable[Node]:
        rows = conn.execute(
            "SELECT type, id FROM lease_resources WHERE namespace = ? AND lease = ?",
            (node.namespace, node.id),
        ).fetchall()
        return [Node(kind, node.namespace, rid) for kind, rid in rows]

    def nodes(self, conn: sqlite3.Connection) -> Iterable[Node]:
        return [Node("lease", ns, i) for ns, i in conn.execute("SELECT namespace, id FROM leases")]

    def remove(self, conn: sqlite3.Connection, node: Node) -> None:
        conn.execute("DELETE FROM leases WHERE namespace = ? AND id = ?", (node.namespace, node.id))


class LeasesKind(ObjectKind):
    name = "leases"
    schema = SCHEMA

    def bind(self, db: Database) -> None:
        self._view = LeaseManager(db)

    def views(self) -> Iterable[object]:
        return (self._view,)

    def drop_namespace(self, conn: sqlite3.Connection, namespace: str) -> None:
        # As containerd: leases do not keep a namespace alive; they go with it.
        conn.execute("DELETE FROM lease_resources WHERE namespace = ?", (namespace,))
        conn.execute("DELETE FROM leases WHERE namespace = ?", (namespace,))

    def collectables(self) -> Iterable[ResourceKind]:
        return (LeaseGC(),)
