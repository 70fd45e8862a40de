"""Garbage collection: mark from roots along references, sweep what nothing holds.

The model is a graph of ``Node``s (kind, namespace, id). Each kind of object supplies how to find
its roots, its outgoing references and all its nodes, and how to remove one; the collector knows
no kind in particular.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from corral.plugins.core import GC_REF_CONTENT, GC_REF_SNAPSHOT
from corral.plugins.metadata import CollectionResult


@dataclass(frozen=True, order=True)
class Node:
    """One object in the reference graph: its kind, namespace and id."""

    kind: str
    namespace: str
    id: str


class ResourceKind(Protocol):
    """One kind of collectable object, as the collector sees it (all calls inside one transaction)."""

    name: str

    def roots(self, conn: sqlite3.Connection, now: datetime) -> Iterable[Node]: ...

    def references(self, conn: sqlite3.Connection, node: Node) -> Iterable[Node]: ...

    def nodes(self, conn: sqlite3.Connection) -> Iterable[Node]: ...

    def remove(self, conn: sqlite3.Connection, node: Node) -> None: ...


GC_REF_IMAGE = "containerd.io/gc.ref.image"
"""``containerd.io/gc.ref.image[.name|/name]`` holds the image named by its value."""


def label_references(namespace: str, labels: Mapping[str, str]) -> Iterator[Node]:
    """containerd's reference labels: ``gc.ref.content*``, ``gc.ref.image*`` and
    ``gc.ref.snapshot.<snapshotter>*``."""
    for key, value in labels.items():
        if key.startswith(GC_REF_CONTENT):
            yield Node("content", namespace, value)
        elif key.startswith(GC_REF_IMAGE):
            if key == GC_REF_IMAGE or key[len(GC_REF_IMAGE)] in "./":
                yield Node("images", namespace, value)
        elif key.startswith(GC_REF_SNAPSHOT):
            snapshotter = key[len(GC_REF_SNAPSHOT) :].split("/", 1)[0]
            yield Node(f"snapshots/{snapshotter}", namespace, value)


class Collector:
    """Mark and sweep over every kind's records, inside one metadata transaction."""

    def __init__(self, kinds: Iterable[ResourceKind]) -> None:
        self.kinds: dict[str, ResourceKind] = {}
        for kind in kinds:
            if kind.name in self.kinds:
                raise ValueError(f"two collectable kinds are named {kind.name}")
            self.kinds[kind.name] = kind

    def mark(self, conn: sqlite3.Connection, now: datetime | None = None) -> set[Node]:
        now = now or datetime.now(UTC)
        pending = [root for kind in self.kinds.values() for root in kind.roots(conn, now)]
        marked: set[Node] = set()
        while pending:
            node = pending.pop()
            if node in marked:
                continue
            marked.add(node)
            kind = self.kinds.get(node.kind)
            if kind is not None:
                pending.extend(ref for ref in kind.references(conn, node) if ref not in marked)
        return marked

    def collect(self, conn: sqlite3.Connection, now: datetime | None = None) -> CollectionResult:
        started = time.perf_counter()
        marked = self.mark(conn, now)
        result = CollectionResult(marked=len(marked))
        for name, kind in self.kinds.items():
            for node in kind.nodes(conn):
                if node not in marked:
                    kind.remove(conn, node)
                    result.removed.setdefault(name, []).append(f"{node.namespace}/{node.id}")
        result.seconds = time.perf_counter() - started
        return result
