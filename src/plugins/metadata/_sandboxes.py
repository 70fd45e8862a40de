"""Sandboxes: what a sandbox controller runs a pod from (runtime, spec, sandboxer), per namespace.

As containerd's ``core/metadata/sandbox.go``: ids are identifiers, both times are set by the store,
the runtime name never changes on a full replace, and an update merges extensions (and a missing
spec or runtime options) over what is stored, as bolt's bucket overwrite does. A namespace that
never held a sandbox answers NotFound ``no sandbox buckets``. Sandboxes hold what their ``gc.ref``
labels name against collection and are never collected themselves; the store publishes no events
(containerd's controller service does).
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import partial
from typing import Any

from corral.kernel import AlreadyExists, InvalidArgument, NotFound
from corral.plugins.core import namespace_required, validate_identifier
from corral.plugins.core.tracing import span
from corral.plugins.metadata import AnyValue, Sandbox, SandboxRuntime, SandboxStore
from corral.plugins.metadata._containers import _extensions, _extensions_json
from corral.plugins.metadata._gc import Node, ResourceKind, label_references
from corral.plugins.metadata.database import Database, ObjectKind, filters_of, labels_json, stamp

NODE_KIND = "sandboxes"

SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS sandboxes (
        namespace TEXT NOT NULL REFERENCES namespaces(name),
        id TEXT NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}',
        runtime_name TEXT NOT NULL DEFAULT '',
        runtime_options_type TEXT,
        runtime_options BLOB,
        spec_type TEXT,
        spec BLOB,
        sandboxer TEXT NOT NULL DEFAULT '',
        extensions TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (namespace, id)
    );
    CREATE TABLE IF NOT EXISTS sandbox_namespaces (
        namespace TEXT PRIMARY KEY REFERENCES namespaces(name)
    );
    """,
)
"""``sandbox_namespaces``: the namespaces whose sandboxes bucket containerd would have made (on
their first create; it outlives the sandboxes), which decides how a missing sandbox is worded."""

_COLUMNS = (
    "id, labels, runtime_name, runtime_options_type, runtime_options, spec_type, spec, sandboxer,"
    " extensions, created_at, updated_at"
)
_FULL_UPDATE = ("labels", "extensions", "spec", "runtime")
_Row = tuple[Any, ...]


def _any(type_url: str | None, value: bytes | None) -> AnyValue | None:
    return None if type_url is None else AnyValue(type_url, bytes(value or b""))


def _sandbox(row: _Row) -> Sandbox:
    sid, labels, runtime, opt_type, opt, spec_type, spec, sandboxer, ext, created, updated = row
    return Sandbox(
        id=sid,
        runtime=SandboxRuntime(runtime, _any(opt_type, opt)),
        labels=json.loads(labels),
        spec=_any(spec_type, spec),
        sandboxer=sandboxer,
        extensions=_extensions(ext),
        created_at=stamp(created),
        updated_at=stamp(updated),
    )


def _values(s: Sandbox, created: float, updated: float) -> tuple[object, ...]:
    options, spec = s.runtime.options, s.spec
    return (
        s.id,
        labels_json({k: v for k, v in s.labels.items() if v}),
        s.runtime.name,
        None if options is None else options.type_url,
        None if options is None else options.value,
        None if spec is None else spec.type_url,
        None if spec is None else spec.value,
        s.sandboxer,
        _extensions_json(s.extensions),
        created,
        updated,
    )


def sandbox_fields(sandbox: Sandbox, path: Sequence[str]) -> str | None:
    """containerd's adaptSandbox: ``id`` and ``labels.KEY``."""
    if not path:
        return None
    if path[0] == "id":
        return sandbox.id
    if path[0] == "labels":
        return sandbox.labels.get(".".join(path[1:])) if sandbox.labels else None
    return None


def _validate(sandbox: Sandbox) -> None:
    try:
        validate_identifier(sandbox.id)
    except InvalidArgument as exc:
        raise InvalidArgument(f"failed to validate sandbox: invalid sandbox ID: {exc.detail}") from None


def _apply_paths(current: Sandbox, sandbox: Sandbox, paths: Sequence[str]) -> tuple[Sandbox, Sandbox]:
    """The updated sandbox as containerd answers it, and as its bolt bucket then holds it: the
    overwrite puts each given extension into the existing bucket (none goes away) and writes no
    empty spec or runtime options (the stored ones stay), while the answer is the record as asked."""
    labels, extensions = dict(current.labels), dict(current.extensions)
    kept_extensions = dict(current.extensions)
    runtime, spec = current.runtime, current.spec
    kept_runtime, kept_spec = current.runtime, current.spec
    for path in paths:
        if path.startswith("labels."):
            key = path[len("labels.") :]
            labels[key] = sandbox.labels.get(key, "")
        elif path.startswith("extensions."):
            key = path[len("extensions.") :]
            extensions[key] = kept_extensions[key] = sandbox.extensions.get(key, AnyValue(""))
        elif path == "labels":
            labels = dict(sandbox.labels)
        elif path == "extensions":
            extensions = dict(sandbox.extensions)
            kept_extensions.update(sandbox.extensions)
        elif path == "runtime":
            runtime = sandbox.runtime
            options = sandbox.runtime.options if sandbox.runtime.options is not None else kept_runtime.options
            kept_runtime = SandboxRuntime(sandbox.runtime.name, options)
        elif path == "spec":
            spec = sandbox.spec
            kept_spec = sandbox.spec if sandbox.spec is not None else kept_spec
        else:
            raise InvalidArgument(f'cannot update "{path}" field on sandbox "{sandbox.id}"')
    present = {k: v for k, v in labels.items() if v}
    reply = Sandbox(current.id, runtime, present, spec, current.sandboxer, extensions, current.created_at)
    stored = Sandbox(current.id, kept_runtime, present, kept_spec, current.sandboxer, kept_extensions)
    return reply, stored


def _rfc3339(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment is not None else ""


class SandboxRecords(SandboxStore):
    """The SandboxStore view."""

    def __init__(self, db: Database) -> None:
        self._store = db

    @staticmethod
    def _row(conn: sqlite3.Connection, ns: str, sandbox_id: str) -> _Row | None:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM sandboxes WHERE namespace = ? AND id = ?", (ns, sandbox_id)
        ).fetchone()
        return None if row is None else tuple(row)

    @staticmethod
    def _had_sandboxes(conn: sqlite3.Connection, ns: str) -> bool:
        return (
            conn.execute("SELECT 1 FROM sandbox_namespaces WHERE namespace = ?", (ns,)).fetchone() is not None
        )

    def _read(self, conn: sqlite3.Connection, ns: str, sandbox_id: str) -> Sandbox:
        if not self._had_sandboxes(conn, ns):
            raise NotFound("no sandbox buckets")
        row = self._row(conn, ns, sandbox_id)
        if row is None:
            raise NotFound(f'bucket "{sandbox_id}" not found')
        return _sandbox(row)

    async def get(self, sandbox_id: str) -> Sandbox:
        ns = namespace_required()
        return await self._store.read(lambda conn: self._read(conn, ns, sandbox_id))

    async def list(self, filters: Sequence[str] = ()) -> builtins.list[Sandbox]:
        ns = namespace_required()
        match = filters_of(filters)

        def list_(conn: sqlite3.Connection) -> builtins.list[Sandbox]:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM sandboxes WHERE namespace = ? ORDER BY id", (ns,))
            return [_sandbox(tuple(r)) for r in rows.fetchall()]

        found = await self._store.read(list_)
        return [s for s in found if match.match(partial(sandbox_fields, s))]

    async def create(self, sandbox: Sandbox) -> Sandbox:
        with span("metadata.sandbox.Create", {"sandbox.id": sandbox.id}) as current:
            ns = namespace_required()
            _validate(sandbox)
            now = time.time()

            def create(conn: sqlite3.Connection) -> Sandbox:
                self._store.ensure_namespace(conn, ns)
                conn.execute("INSERT OR IGNORE INTO sandbox_namespaces VALUES (?)", (ns,))
                try:
                    conn.execute(
                        f"INSERT INTO sandboxes(namespace, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (ns, *_values(sandbox, now, now)),
                    )
                except sqlite3.IntegrityError:
                    raise AlreadyExists(
                        f'write error: sandbox bucket "{sandbox.id}" already exists'
                    ) from None
                row = self._row(conn, ns, sandbox.id)
                assert row is not None
                return _sandbox(row)

            created = await self._store.run(create)
            self._store.mutated()
            current.set_attributes({"sandbox.CreatedAt": _rfc3339(created.created_at)})
            return created

    async def update(self, sandbox: Sandbox, paths: Sequence[str] = ()) -> Sandbox:
        with span("metadata.sandbox.Update", {"sandbox.id": sandbox.id}) as current:
            ns = namespace_required()
            now = time.time()

            def update(conn: sqlite3.Connection) -> Sandbox:
                stored = self._read(conn, ns, sandbox.id)
                fieldpaths = list(paths)
                if not fieldpaths:
                    fieldpaths = list(_FULL_UPDATE)
                    if stored.runtime.name != sandbox.runtime.name:
                        raise InvalidArgument("sandbox.Runtime.Name field is immutable")
                reply, kept = _apply_paths(stored, sandbox, fieldpaths)
                created: float = conn.execute(
                    "SELECT created_at FROM sandboxes WHERE namespace = ? AND id = ?", (ns, sandbox.id)
                ).fetchone()[0]
                conn.execute("DELETE FROM sandboxes WHERE namespace = ? AND id = ?", (ns, sandbox.id))
                conn.execute(
                    f"INSERT INTO sandboxes(namespace, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (ns, *_values(kept, created, now)),
                )
                return dataclasses.replace(reply, created_at=stamp(created), updated_at=stamp(now))

            updated = await self._store.run(update)
            self._store.mutated()
            current.set_attributes(
                {
                    "sandbox.CreatedAt": _rfc3339(updated.created_at),
                    "sandbox.UpdatedAt": _rfc3339(updated.updated_at),
                }
            )
            return updated

    async def delete(self, sandbox_id: str) -> None:
        with span("metadata.sandbox.Delete", {"sandbox.id": sandbox_id}):
            ns = namespace_required()

            def delete(conn: sqlite3.Connection) -> None:
                if not self._had_sandboxes(conn, ns):
                    raise NotFound("no sandbox buckets")
                cur = conn.execute("DELETE FROM sandboxes WHERE namespace = ? AND id = ?", (ns, sandbox_id))
                if cur.rowcount == 0:
                    raise NotFound(f'failed to delete sandbox "{sandbox_id}"')

            await self._store.run(delete)
            self._store.mutated(deleted=True)


class SandboxGC:
    """Sandboxes as the collector sees them: roots for their label references, never removed."""

    name = NODE_KIND

    def roots(self, conn: sqlite3.Connection, now: datetime) -> Iterable[Node]:
        return [Node(self.name, ns, i) for ns, i in conn.execute("SELECT namespace, id FROM sandboxes")]

    def references(self, conn: sqlite3.Connection, node: Node) -> Iterable[Node]:
        row = conn.execute(
            "SELECT labels FROM sandboxes WHERE namespace = ? AND id = ?", (node.namespace, node.id)
        ).fetchone()
        return () if row is None else list(label_references(node.namespace, json.loads(row[0])))

    def nodes(self, conn: sqlite3.Connection) -> Iterable[Node]:
        return ()

    def remove(self, conn: sqlite3.Connection, node: Node) -> None:
        raise AssertionError("sandboxes are never collected")


class SandboxesKind(ObjectKind):
    """Sandboxes per namespace. As containerd, a namespace's sandboxes do not keep it from being
    deleted: they go with it."""

    name = "sandboxes"
    schema = SCHEMA

    def bind(self, db: Database) -> None:
        self.records = SandboxRecords(db)

    def views(self) -> Iterable[object]:
        return (self.records,)

    def drop_namespace(self, conn: sqlite3.Connection, namespace: str) -> None:
        conn.execute("DELETE FROM sandboxes WHERE namespace = ?", (namespace,))
        conn.execute("DELETE FROM sandbox_namespaces WHERE namespace = ?", (namespace,))

    def collectables(self) -> Iterable[ResourceKind]:
        return (SandboxGC(),)
