"""A new kind of metadata object is one module: its tables, view, holdings, lease type and GC nodes.

The ``widgets`` kind below is everything a kind author writes; nothing in corral changes for it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

import anyio
import pytest

from corral.kernel import FailedPrecondition, PluginUnavailable, Unimplemented
from corral.plugins.content.memory import MemoryContentStore
from corral.plugins.core import GC_ROOT, bound_lease, namespace, namespace_required
from corral.plugins.metadata import LeaseStore, NamespacedContent, NamespaceStore, Resource
from corral.plugins.metadata.database import Database, Node, ObjectKind, attach_to_lease, labels_json
from corral.plugins.metadata.sqlite import SqliteMetadata, build_kinds

# -- the whole kind ----------------------------------------------------------------------------


@runtime_checkable
class WidgetStore(Protocol):
    async def add(self, name: str, labels: dict[str, str]) -> None: ...

    async def names(self) -> list[str]: ...


class Widgets:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, name: str, labels: dict[str, str]) -> None:
        ns = namespace_required()

        def add(conn: sqlite3.Connection) -> None:
            self._db.ensure_namespace(conn, ns)
            conn.execute(
                "INSERT INTO widgets VALUES (?, ?, ?, ?)", (ns, name, labels_json(labels), time.time())
            )
            # Held by the request's lease, like content and snapshots are.
            attach_to_lease(conn, ns, "widgets", name)

        await self._db.run(add)
        self._db.mutated()

    async def names(self) -> list[str]:
        ns = namespace_required()

        def names(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute("SELECT name FROM widgets WHERE namespace = ? ORDER BY name", (ns,))
            return [name for (name,) in rows]

        return await self._db.run(names)


class WidgetGC:
    name = "widgets"

    def roots(self, conn: sqlite3.Connection, now: datetime) -> Iterable[Node]:
        for ns, name, labels in conn.execute("SELECT namespace, name, labels FROM widgets"):
            if GC_ROOT in json.loads(labels):
                yield Node("widgets", ns, name)

    def references(self, conn: sqlite3.Connection, node: Node) -> Iterable[Node]:
        return ()

    def nodes(self, conn: sqlite3.Connection) -> Iterable[Node]:
        return [Node("widgets", ns, n) for ns, n in conn.execute("SELECT namespace, name FROM widgets")]

    def remove(self, conn: sqlite3.Connection, node: Node) -> None:
        conn.execute("DELETE FROM widgets WHERE namespace = ? AND name = ?", (node.namespace, node.id))


class WidgetsKind(ObjectKind):
    name = "widgets"
    schema = (
        "CREATE TABLE widgets (namespace TEXT NOT NULL REFERENCES namespaces(name), name TEXT NOT NULL,"
        " labels TEXT NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (namespace, name))",
    )

    def bind(self, db: Database) -> None:
        self.view = Widgets(db)

    def views(self) -> Iterable[object]:
        return (self.view,)

    def holdings(self, conn: sqlite3.Connection, namespace: str) -> list[str]:
        found = conn.execute("SELECT 1 FROM widgets WHERE namespace = ? LIMIT 1", (namespace,)).fetchone()
        return ["widgets"] if found else []

    def accepts_lease_resource(self, resource_type: str) -> bool:
        return resource_type == "widgets"

    def collectables(self) -> Iterable[WidgetGC]:
        return (WidgetGC(),)


class WidgetsKindV2(WidgetsKind):
    schema = (*WidgetsKind.schema, "ALTER TABLE widgets ADD COLUMN colour TEXT NOT NULL DEFAULT 'blue'")


# -- what it gets ------------------------------------------------------------------------------


def store(path: Path, kind: ObjectKind | None = None) -> SqliteMetadata:
    kinds = build_kinds(MemoryContentStore(), {})
    return SqliteMetadata(path / "meta.db", [*kinds, kind or WidgetsKind()])


def test_the_kinds_view_is_found_by_its_contract(tmp_path: Path) -> None:
    async def main() -> None:
        md = store(tmp_path)
        widgets = md.view(WidgetStore)
        with namespace("ns"):
            await widgets.add("w1", {})
            assert await widgets.names() == ["w1"]
        assert isinstance(md.view(NamespacedContent), NamespacedContent)
        with pytest.raises(PluginUnavailable):
            SqliteMetadata(tmp_path / "other.db", []).view(WidgetStore)

    anyio.run(main)


def test_a_namespace_holding_widgets_cannot_be_removed(tmp_path: Path) -> None:
    async def main() -> None:
        md = store(tmp_path)
        with namespace("ns"):
            await md.view(WidgetStore).add("w1", {})
        with pytest.raises(
            FailedPrecondition, match='namespace "ns" must be empty, but it still has widgets'
        ):
            await md.view(NamespaceStore).delete("ns")

    anyio.run(main)


def test_leases_hold_widgets_and_the_collector_sweeps_the_rest(tmp_path: Path) -> None:
    async def main() -> None:
        md = store(tmp_path)
        widgets, leases = md.view(WidgetStore), md.view(LeaseStore)
        with namespace("ns"):
            await leases.create("l1")
            with bound_lease("l1"):
                await widgets.add("leased", {})
            await widgets.add("rooted", {GC_ROOT: "yes"})
            await widgets.add("loose", {})
            await leases.add_resource("l1", Resource("rooted", "widgets"))
            with pytest.raises(Unimplemented, match="resource type gadgets not supported yet"):
                await leases.add_resource("l1", Resource("x", "gadgets"))
            result = await md.garbage_collect()
            assert result.removed["widgets"] == ["ns/loose"]
            assert await widgets.names() == ["leased", "rooted"]

    anyio.run(main)


def test_a_kinds_schema_is_versioned_on_its_own(tmp_path: Path) -> None:
    async def main() -> None:
        md = store(tmp_path)
        with namespace("ns"):
            await md.view(WidgetStore).add("w1", {})
        md.close()
        upgraded = store(tmp_path, WidgetsKindV2())
        with namespace("ns"):
            assert await upgraded.view(WidgetStore).names() == ["w1"]
        rows = await upgraded.db.run(lambda c: c.execute("SELECT kind, version FROM kind_schema").fetchall())
        assert dict(rows) == {
            "images": 1,
            "content": 1,
            "containers": 1,
            "snapshots": 2,
            "leases": 1,
            "sandboxes": 1,
            "widgets": 2,
        }
        colours = await upgraded.db.run(lambda c: c.execute("SELECT colour FROM widgets").fetchall())
        assert colours == [("blue",)]

    anyio.run(main)


def test_two_kinds_with_one_name_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unique"):
        SqliteMetadata(tmp_path / "meta.db", [WidgetsKind(), WidgetsKind()])
