"""Garbage collection: mark from roots along references, sweep what nothing holds.

The model is a graph of ``Node``s (kind, namespace, id). Each kind of object registers how to
find its roots, its outgoing references and all its nodes, and how to remove one; images,
containers and snapshots add kinds without touching the collector.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from corral.kernel import InvalidArgument
from corral.plugins.metadata._leases import EXPIRE_LABEL, parse_expiry

ROOT_LABEL = "containerd.io/gc.root"
CONTENT_REF_PREFIX = "containerd.io/gc.ref.content"
SNAPSHOT_REF_PREFIX = "containerd.io/gc.ref.snapshot."


@dataclass(frozen=True, order=True)
class Node:
    kind: str
    namespace: str
    id: str


class ResourceKind(Protocol):
    """One kind of collectable object, as the collector sees it (all calls inside one transaction)."""

    name: str

    def roots(self, db: sqlite3.Connection, now: datetime) -> Iterable[Node]: ...

    def references(self, db: sqlite3.Connection, node: Node) -> Iterable[Node]: ...

    def nodes(self, db: sqlite3.Connection) -> Iterable[Node]: ...

    def remove(self, db: sqlite3.Connection, node: Node) -> None: ...


def label_references(namespace: str, labels: dict[str, str]) -> Iterator[Node]:
    """containerd's reference labels: ``gc.ref.content*`` and ``gc.ref.snapshot.<snapshotter>*``."""
    for key, value in labels.items():
        if key.startswith(CONTENT_REF_PREFIX):
            yield Node("content", namespace, value)
        elif key.startswith(SNAPSHOT_REF_PREFIX):
            snapshotter = key[len(SNAPSHOT_REF_PREFIX) :].split("/", 1)[0]
            yield Node(f"snapshots/{snapshotter}", namespace, value)


class ContentKind:
    name = "content"

    def roots(self, db: sqlite3.Connection, now: datetime) -> Iterable[Node]:
        for ns, digest, labels in db.execute("SELECT namespace, digest, labels FROM content"):
            if ROOT_LABEL in json.loads(labels):
                yield Node("content", ns, digest)

    def references(self, db: sqlite3.Connection, node: Node) -> Iterable[Node]:
        row = db.execute(
            "SELECT labels FROM content WHERE namespace = ? AND digest = ?", (node.namespace, node.id)
        )
        found = row.fetchone()
        return label_references(node.namespace, json.loads(found[0])) if found else ()

    def nodes(self, db: sqlite3.Connection) -> Iterable[Node]:
        return [Node("content", ns, d) for ns, d in db.execute("SELECT namespace, digest FROM content")]

    def remove(self, db: sqlite3.Connection, node: Node) -> None:
        db.execute("DELETE FROM content WHERE namespace = ? AND digest = ?", (node.namespace, node.id))


class LeaseKind:
    """Leases are roots until they expire; an expired lease is collected with what only it held."""

    name = "lease"

    def _expired(self, labels: dict[str, str], now: datetime) -> bool:
        text = labels.get(EXPIRE_LABEL)
        if not text:
            return False
        try:
            return parse_expiry(text) <= now
        except InvalidArgument:
            return False

    def roots(self, db: sqlite3.Connection, now: datetime) -> Iterable[Node]:
        for ns, lease_id, labels in db.execute("SELECT namespace, id, labels FROM leases"):
            if not self._expired(json.loads(labels), now):
                yield Node("lease", ns, lease_id)

    def references(self, db: sqlite3.Connection, node: Node) -> Iterable[Node]:
        rows = db.execute(
            "SELECT type, id FROM lease_resources WHERE namespace = ? AND lease = ?",
            (node.namespace, node.id),
        ).fetchall()
        return [Node(kind, node.namespace, rid) for kind, rid in rows]

    def nodes(self, db: sqlite3.Connection) -> Iterable[Node]:
        return [Node("lease", ns, i) for ns, i in db.execute("SELECT namespace, id FROM leases")]

    def remove(self, db: sqlite3.Connection, node: Node) -> None:
        db.execute("DELETE FROM leases WHERE namespace = ? AND id = ?", (node.namespace, node.id))


@dataclass
class CollectionResult:
    """What one collection removed, by kind, and how long the metadata pause lasted."""

    removed: dict[str, list[Node]] = field(default_factory=dict)
    swept: dict[str, int] = field(default_factory=dict)
    """Backend objects (blobs, snapshots) removed because no record held them any more."""
    marked: int = 0
    seconds: float = 0.0


class Collector:
    """Mark and sweep over every registered kind, inside one metadata transaction."""

    def __init__(self) -> None:
        self.kinds: dict[str, ResourceKind] = {}
        for kind in (ContentKind(), LeaseKind()):
            self.register(kind)

    def register(self, kind: ResourceKind) -> None:
        self.kinds[kind.name] = kind

    def mark(self, db: sqlite3.Connection, now: datetime | None = None) -> set[Node]:
        now = now or datetime.now(UTC)
        pending = [root for kind in self.kinds.values() for root in kind.roots(db, now)]
        marked: set[Node] = set()
        while pending:
            node = pending.pop()
            if node in marked:
                continue
            marked.add(node)
            kind = self.kinds.get(node.kind)
            if kind is not None:
                pending.extend(ref for ref in kind.references(db, node) if ref not in marked)
        return marked

    def collect(self, db: sqlite3.Connection, now: datetime | None = None) -> CollectionResult:
        started = time.perf_counter()
        marked = self.mark(db, now)
        result = CollectionResult(marked=len(marked))
        for name, kind in self.kinds.items():
            for node in kind.nodes(db):
                if node not in marked:
                    kind.remove(db, node)
                    result.removed.setdefault(name, []).append(node)
        result.seconds = time.perf_counter() - started
        return result
