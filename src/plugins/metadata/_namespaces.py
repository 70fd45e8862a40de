"""Namespaces in the metadata database, publishing containerd's namespace events."""

from __future__ import annotations

import builtins
import json
import sqlite3
import time
from collections.abc import Mapping, Sequence

from corral.kernel import AlreadyExists, FailedPrecondition, NotFound
from corral.plugins.core import update_labels, validate_identifier, validate_labels
from corral.plugins.events.types import NamespaceCreate, NamespaceDelete, NamespaceUpdate
from corral.plugins.metadata import Namespace
from corral.plugins.metadata.database import Database, labels_json


class Namespaces:
    """The NamespaceStore view; events go out under the namespace concerned, not the caller's."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, name: str, labels: Mapping[str, str]) -> Namespace:
        validate_identifier(name)  # containerd's words, without the request namespace's prefix
        validate_labels(labels)

        def create(conn: sqlite3.Connection) -> Namespace:
            try:
                conn.execute(
                    "INSERT INTO namespaces(name, labels, created_at) VALUES (?, ?, ?)",
                    (name, labels_json(labels), time.time()),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f'namespace "{name}"') from None
            return Namespace(name, dict(labels))

        created = await self._db.run(create)
        await self._db.publish(NamespaceCreate(name=name, labels=dict(labels)), name)
        return created

    async def get(self, name: str) -> Namespace:
        def get(conn: sqlite3.Connection) -> Namespace:
            row = conn.execute("SELECT labels FROM namespaces WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NotFound(f'namespace "{name}"')
            return Namespace(name, json.loads(row[0]))

        return await self._db.read(get)

    async def list(self) -> builtins.list[Namespace]:
        def list_(conn: sqlite3.Connection) -> builtins.list[Namespace]:
            rows = conn.execute("SELECT name, labels FROM namespaces ORDER BY name").fetchall()
            return [Namespace(n, json.loads(labels)) for n, labels in rows]

        return await self._db.read(list_)

    async def update(self, name: str, labels: Mapping[str, str], paths: Sequence[str]) -> Namespace:
        validate_identifier(name)  # containerd's words, without the request namespace's prefix
        validate_labels(labels)

        def update(conn: sqlite3.Connection) -> Namespace:
            row = conn.execute("SELECT labels FROM namespaces WHERE name = ?", (name,)).fetchone()
            # containerd labels a namespace that does not exist by creating it.
            current = update_labels(
                json.loads(row[0]) if row else {}, labels, paths, what=f'namespace "{name}"'
            )
            if row is None:
                conn.execute(
                    "INSERT INTO namespaces(name, labels, created_at) VALUES (?, ?, ?)",
                    (name, labels_json(current), time.time()),
                )
            else:
                conn.execute("UPDATE namespaces SET labels = ? WHERE name = ?", (labels_json(current), name))
            return Namespace(name, current)

        updated = await self._db.run(update)
        # As containerd, also for a namespace the update created: /namespaces/update, carrying the
        # labels of the request rather than the result.
        await self._db.publish(NamespaceUpdate(name=name, labels=dict(labels)), name)
        return updated

    async def delete(self, name: str) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM namespaces WHERE name = ?", (name,)).fetchone() is None:
                raise NotFound(f'namespace "{name}"')
            held = self._db.holdings(conn, name)
            if held:
                raise FailedPrecondition(
                    f'namespace "{name}" must be empty, but it still has {", ".join(held)}'
                )
            self._db.drop_namespace(conn, name)

        await self._db.run(delete)
        await self._db.publish(NamespaceDelete(name=name), name)
