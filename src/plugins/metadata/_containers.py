"""Containers: what a task is made from (runtime, spec, snapshot, image name), per namespace.

As containerd's ``core/metadata/containers.go``: ids are identifiers, a runtime name and a spec are
required, a snapshot key needs its snapshotter, the snapshotter and runtime name never change. A
container is a garbage-collection root holding its snapshot (and what its ``gc.ref`` labels name);
as in containerd, it does not hold its image. Each change publishes containerd's event.
"""

from __future__ import annotations

import base64
import builtins
import json
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import Any

from corral.kernel import AlreadyExists, InvalidArgument, NotFound
from corral.plugins.core import namespace_required, validate_identifier, validate_labels
from corral.plugins.core.tracing import span
from corral.plugins.events.types import (
    ContainerCreate,
    ContainerCreateRuntime,
    ContainerDelete,
    ContainerUpdate,
)
from corral.plugins.metadata import AnyValue, Container, ContainerRuntime, ContainerStore
from corral.plugins.metadata._gc import Node, ResourceKind, label_references
from corral.plugins.metadata.database import Database, ObjectKind, filters_of, labels_json, stamp

NODE_KIND = "containers"

SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS containers (
        namespace TEXT NOT NULL REFERENCES namespaces(name),
        id TEXT NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}',
        image TEXT NOT NULL DEFAULT '',
        runtime_name TEXT NOT NULL,
        runtime_options_type TEXT,
        runtime_options BLOB,
        spec_type TEXT,
        spec BLOB,
        snapshotter TEXT NOT NULL DEFAULT '',
        snapshot_key TEXT NOT NULL DEFAULT '',
        extensions TEXT NOT NULL DEFAULT '{}',
        sandbox TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (namespace, id)
    );
    """,
)

_COLUMNS = (
    "id, labels, image, runtime_name, runtime_options_type, runtime_options, spec_type, spec,"
    " snapshotter, snapshot_key, extensions, sandbox, created_at, updated_at"
)
_Row = tuple[Any, ...]
_UPDATABLE = ("labels", "spec", "extensions", "image", "snapshotkey")
"""What a full replace (no field paths) may change, as containerd's."""


def _any(type_url: str | None, value: bytes | None) -> AnyValue | None:
    return None if type_url is None else AnyValue(type_url, bytes(value or b""))


def _extensions_json(extensions: Mapping[str, AnyValue]) -> str:
    return json.dumps(
        {k: [v.type_url, base64.b64encode(v.value).decode()] for k, v in extensions.items()}, sort_keys=True
    )


def _extensions(text: str) -> dict[str, AnyValue]:
    return {k: AnyValue(t, base64.b64decode(v)) for k, (t, v) in json.loads(text).items()}


def _container(row: _Row) -> Container:
    (cid, labels, image, runtime, opt_type, opt, spec_type, spec, snapshotter, key, ext, sandbox, c, u) = row
    return Container(
        id=cid,
        runtime=ContainerRuntime(runtime, _any(opt_type, opt)),
        labels=json.loads(labels),
        image=image,
        spec=_any(spec_type, spec),
        snapshotter=snapshotter,
        snapshot_key=key,
        extensions=_extensions(ext),
        sandbox=sandbox,
        created_at=stamp(c),
        updated_at=stamp(u),
    )


def _values(c: Container, created: float, updated: float) -> tuple[object, ...]:
    options, spec = c.runtime.options, c.spec
    return (
        c.id,
        labels_json({k: v for k, v in c.labels.items() if v}),
        c.image,
        c.runtime.name,
        None if options is None else options.type_url,
        None if options is None else options.value,
        None if spec is None else spec.type_url,
        None if spec is None else spec.value,
        c.snapshotter,
        c.snapshot_key,
        _extensions_json(c.extensions),
        c.sandbox,
        created,
        updated,
    )


def container_fields(container: Container, path: Sequence[str]) -> str | None:
    """containerd's adaptContainer: ``id``, ``runtime.name``, ``image``, ``labels.KEY``."""
    if not path:
        return None
    head, rest = path[0], path[1:]
    if head == "id":
        return container.id or None
    if head == "runtime":
        return (container.runtime.name or None) if tuple(rest) == ("name",) else None
    if head == "image":
        return container.image or None
    if head == "labels":
        return container.labels.get(".".join(rest)) if container.labels else None
    return None


def validate_container(container: Container) -> None:
    """containerd's validateContainer."""
    try:
        validate_identifier(container.id)
    except InvalidArgument as exc:
        raise InvalidArgument(f"container.ID: {exc.detail}") from None
    if any(not k for k in container.extensions):
        raise InvalidArgument("container.Extension keys must not be zero-length")
    try:
        validate_labels(container.labels)
    except InvalidArgument as exc:
        raise InvalidArgument(f"containers.Labels: {exc.detail}") from None
    if not container.runtime.name:
        raise InvalidArgument("container.Runtime.Name must be set")
    if container.spec is None:
        raise InvalidArgument("container.Spec must be set")
    if container.snapshot_key and not container.snapshotter:
        raise InvalidArgument("container.Snapshotter must be set if container.SnapshotKey is set")


def _validated(container: Container, prefix: str) -> None:
    try:
        validate_container(container)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{prefix}: {exc.detail}") from None


def _apply_paths(current: Container, container: Container, paths: Sequence[str]) -> Container:
    """containerd's field mask for containers: ``labels[.KEY]``, ``extensions[.KEY]``, ``spec``,
    ``image``, ``snapshotkey``; anything else is refused."""
    labels, extensions = dict(current.labels), dict(current.extensions)
    spec, image, snapshot_key = current.spec, current.image, current.snapshot_key
    for path in paths:
        if path.startswith("labels."):
            key = path[len("labels.") :]
            labels[key] = container.labels.get(key, "")
        elif path.startswith("extensions."):
            key = path[len("extensions.") :]
            # As containerd: a key the request lacks is kept, with an empty value.
            extensions[key] = container.extensions.get(key, AnyValue(""))
        elif path == "labels":
            labels = dict(container.labels)
        elif path == "spec":
            spec = container.spec
        elif path == "extensions":
            extensions = dict(container.extensions)
        elif path == "image":
            image = container.image
        elif path == "snapshotkey":
            snapshot_key = container.snapshot_key
        else:
            raise InvalidArgument(f'cannot update "{path}" field on "{current.id}"')
    return Container(
        id=current.id,
        runtime=current.runtime,
        labels=labels,
        image=image,
        spec=spec,
        snapshotter=current.snapshotter,
        snapshot_key=snapshot_key,
        extensions=extensions,
        sandbox=current.sandbox,
    )


def _stored(container: Container, created: float, updated: float) -> Container:
    return Container(
        id=container.id,
        runtime=container.runtime,
        labels={k: v for k, v in container.labels.items() if v},
        image=container.image,
        spec=container.spec,
        snapshotter=container.snapshotter,
        snapshot_key=container.snapshot_key,
        extensions=dict(container.extensions),
        sandbox=container.sandbox,
        created_at=stamp(created),
        updated_at=stamp(updated),
    )


class ContainerRecords(ContainerStore):
    """The ContainerStore view."""

    def __init__(self, db: Database) -> None:
        self._store = db

    @staticmethod
    def _row(conn: sqlite3.Connection, ns: str, container_id: str) -> _Row | None:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM containers WHERE namespace = ? AND id = ?", (ns, container_id)
        ).fetchone()
        return None if row is None else tuple(row)

    @staticmethod
    def _missing(conn: sqlite3.Connection, ns: str, container_id: str, doing: str) -> NotFound:
        """containerd words it by whether the namespace has containers at all."""
        if conn.execute("SELECT 1 FROM containers WHERE namespace = ? LIMIT 1", (ns,)).fetchone() is None:
            return NotFound(f'cannot {doing} container "{container_id}" in namespace "{ns}"')
        return NotFound(f'container "{container_id}"' if doing == "update" else f"container {container_id}")

    async def get(self, container_id: str) -> Container:
        ns = namespace_required()

        def get(conn: sqlite3.Connection) -> Container:
            row = self._row(conn, ns, container_id)
            if row is None:
                raise NotFound(f'container "{container_id}" in namespace "{ns}"')
            return _container(row)

        return await self._store.read(get)

    async def list(self, filters: Sequence[str] = ()) -> builtins.list[Container]:
        ns = namespace_required()
        match = filters_of(filters)

        def list_(conn: sqlite3.Connection) -> builtins.list[Container]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM containers WHERE namespace = ? ORDER BY id", (ns,)
            ).fetchall()
            return [_container(tuple(r)) for r in rows]

        found = await self._store.read(list_)
        return [c for c in found if match.match(partial(container_fields, c))]

    # containerd's core/metadata spans: metadata.containers.Create|Update|Delete with container.id.
    async def create(self, container: Container) -> Container:
        with span("metadata.containers.Create", {"container.id": container.id}) as current:
            created = await self._create(container)
            current.set_attributes({"container.createdAt": _rfc3339(created.created_at)})
            return created

    async def update(self, container: Container, paths: Sequence[str] = ()) -> Container:
        with span("metadata.containers.Update", {"container.id": container.id}) as current:
            updated = await self._update(container, paths)
            current.set_attributes(
                {
                    "container.createdAt": _rfc3339(updated.created_at),
                    "container.updatedAt": _rfc3339(updated.updated_at),
                }
            )
            return updated

    async def delete(self, container_id: str) -> None:
        with span("metadata.containers.Delete", {"container.id": container_id}):
            await self._delete(container_id)

    async def _create(self, container: Container) -> Container:
        ns = namespace_required()
        _validated(container, "create container failed validation")
        now = time.time()

        def create(conn: sqlite3.Connection) -> Container:
            self._store.ensure_namespace(conn, ns)
            try:
                conn.execute(
                    f"INSERT INTO containers(namespace, {_COLUMNS})"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (ns, *_values(container, now, now)),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f'container "{container.id}"') from None
            return _stored(container, now, now)

        created = await self._store.run(create)
        self._store.mutated()
        runtime = ContainerCreateRuntime(created.runtime.name, created.runtime.options)
        await self._store.publish(ContainerCreate(id=created.id, image=created.image, runtime=runtime), ns)
        return created

    async def _update(self, container: Container, paths: Sequence[str]) -> Container:
        if not container.id:
            raise InvalidArgument("must specify a container id")
        ns = namespace_required()
        now = time.time()

        def update(conn: sqlite3.Connection) -> Container:
            row = self._row(conn, ns, container.id)
            if row is None:
                raise self._missing(conn, ns, container.id, "update")
            current = _container(row)
            fieldpaths = list(paths)
            if not fieldpaths:
                fieldpaths = list(_UPDATABLE)
                # Immutable fields must match on a full replace, so they may become mutable later.
                if current.snapshotter != container.snapshotter:
                    raise InvalidArgument("container.Snapshotter field is immutable")
                if current.runtime.name != container.runtime.name:
                    raise InvalidArgument("container.Runtime.Name field is immutable")
            updated = _apply_paths(current, container, fieldpaths)
            _validated(updated, "update failed validation")
            created: float = row[12]
            conn.execute(
                "UPDATE containers SET labels = ?, image = ?, spec_type = ?, spec = ?, snapshot_key = ?,"
                " extensions = ?, updated_at = ? WHERE namespace = ? AND id = ?",
                (
                    labels_json({k: v for k, v in updated.labels.items() if v}),
                    updated.image,
                    None if updated.spec is None else updated.spec.type_url,
                    None if updated.spec is None else updated.spec.value,
                    updated.snapshot_key,
                    _extensions_json(updated.extensions),
                    now,
                    ns,
                    container.id,
                ),
            )
            return _stored(updated, created, now)

        updated = await self._store.run(update)
        self._store.mutated()
        event = ContainerUpdate(
            id=updated.id, image=updated.image, labels=dict(updated.labels), snapshot_key=updated.snapshot_key
        )
        await self._store.publish(event, ns)
        return updated

    async def _delete(self, container_id: str) -> None:
        ns = namespace_required()

        def delete(conn: sqlite3.Connection) -> None:
            cur = conn.execute("DELETE FROM containers WHERE namespace = ? AND id = ?", (ns, container_id))
            if cur.rowcount == 0:
                raise self._missing(conn, ns, container_id, "delete")

        await self._store.run(delete)
        self._store.mutated(deleted=True)
        await self._store.publish(ContainerDelete(id=container_id), ns)


def _rfc3339(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment is not None else ""


class ContainerGC:
    """Containers as the garbage collector sees them: always roots, holding their snapshot."""

    name = NODE_KIND

    def roots(self, conn: sqlite3.Connection, now: datetime) -> Iterable[Node]:
        return self.nodes(conn)

    def references(self, conn: sqlite3.Connection, node: Node) -> Iterable[Node]:
        row = conn.execute(
            "SELECT snapshotter, snapshot_key, labels FROM containers WHERE namespace = ? AND id = ?",
            (node.namespace, node.id),
        ).fetchone()
        if row is None:
            return ()
        refs = list(label_references(node.namespace, json.loads(row[2])))
        if row[0]:
            refs.append(Node(f"snapshots/{row[0]}", node.namespace, row[1]))
        return refs

    def nodes(self, conn: sqlite3.Connection) -> Iterable[Node]:
        return [Node(self.name, ns, i) for ns, i in conn.execute("SELECT namespace, id FROM containers")]

    def remove(self, conn: sqlite3.Connection, node: Node) -> None:
        conn.execute("DELETE FROM containers WHERE namespace = ? AND id = ?", (node.namespace, node.id))


class ContainersKind(ObjectKind):
    """Containers per namespace; each holds its snapshot against collection."""

    name = "containers"
    schema = SCHEMA

    def bind(self, db: Database) -> None:
        self.records = ContainerRecords(db)

    def views(self) -> Iterable[object]:
        return (self.records,)

    def holdings(self, conn: sqlite3.Connection, namespace: str) -> builtins.list[str]:
        found = conn.execute("SELECT 1 FROM containers WHERE namespace = ? LIMIT 1", (namespace,)).fetchone()
        return ["containers"] if found else []

    def collectables(self) -> Iterable[ResourceKind]:
        return (ContainerGC(),)
