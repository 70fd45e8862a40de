"""Leases: named, labelled holds that keep content (and later snapshots) alive until removed."""

from __future__ import annotations

import builtins
import json
import secrets
import sqlite3
import string
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

from corral.kernel import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    adapt_mapping,
    namespace_required,
    parse_filters,
    validate_labels,
)
from corral.plugins.metadata._store import MetadataStore, stamp

EXPIRE_LABEL = "containerd.io/gc.expire"
LEASE_HEADER = "containerd-lease"

_current: ContextVar[str | None] = ContextVar("corral_lease", default=None)


@contextmanager
def bound_lease(lease_id: str | None) -> Iterator[str | None]:
    """Attach objects created in this block to ``lease_id`` (the ``containerd-lease`` header)."""
    token = _current.set(lease_id or None)
    try:
        yield lease_id
    finally:
        _current.reset(token)


def current_lease() -> str | None:
    return _current.get()


@dataclass(frozen=True)
class Lease:
    id: str
    created_at: datetime
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Resource:
    """What a lease holds: ``type`` is "content", "ingests" or "snapshots/<snapshotter>"."""

    id: str
    type: str


def generate_id() -> str:
    """Like containerd's: the time of day, then four random characters."""
    suffix = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(4))
    return f"{time.strftime('%H%M%S')}{time.time_ns() % 100:02d}-{suffix}"


def attach(db: sqlite3.Connection, namespace: str, kind: str, resource_id: str) -> None:
    """Inside a caller's transaction: record the new object under the request's lease, if any."""
    lease = _current.get()
    if not lease:
        return
    _require_lease(db, namespace, lease)
    db.execute(
        "INSERT OR IGNORE INTO lease_resources VALUES (?, ?, ?, ?)", (namespace, lease, kind, resource_id)
    )


def _require_lease(db: sqlite3.Connection, namespace: str, lease_id: str) -> None:
    if (
        db.execute("SELECT 1 FROM leases WHERE namespace = ? AND id = ?", (namespace, lease_id)).fetchone()
        is None
    ):
        raise NotFound(f'lease "{lease_id}"')


def _lease_fields(lease: Lease, path: Sequence[str]) -> str | None:
    return adapt_mapping({"id": lease.id, "labels": dict(lease.labels)})(path)


class LeaseManager:
    """Create, list and delete leases and their resources, per namespace."""

    def __init__(self, store: MetadataStore) -> None:
        self._store = store

    async def create(self, lease_id: str = "", labels: Mapping[str, str] | None = None) -> Lease:
        ns = namespace_required()
        lease_id = lease_id or generate_id()
        validate_lease_id(lease_id)
        labels = dict(labels or {})
        validate_labels(labels)
        if EXPIRE_LABEL in labels:
            parse_expiry(labels[EXPIRE_LABEL])
        now = time.time()

        def create(db: sqlite3.Connection) -> Lease:
            self._store.ensure_namespace(db, ns)
            try:
                db.execute(
                    "INSERT INTO leases(namespace, id, labels, created_at) VALUES (?, ?, ?, ?)",
                    (ns, lease_id, json.dumps(labels, sort_keys=True), now),
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
        match = parse_filters(list(filters))

        def list_(db: sqlite3.Connection) -> list[Lease]:
            rows = db.execute(
                "SELECT id, labels, created_at FROM leases WHERE namespace = ? ORDER BY created_at, id", (ns,)
            ).fetchall()
            return [Lease(i, stamp(c), json.loads(labels)) for i, labels, c in rows]

        return [lease for lease in await self._store.run(list_) if match.match(partial(_lease_fields, lease))]

    async def add_resource(self, lease_id: str, resource: Resource) -> None:
        ns = namespace_required()
        _check_resource(resource)

        def add(db: sqlite3.Connection) -> None:
            _require_lease(db, ns, lease_id)
            db.execute(
                "INSERT OR IGNORE INTO lease_resources VALUES (?, ?, ?, ?)",
                (ns, lease_id, resource.type, resource.id),
            )

        await self._store.run(add)
        self._store.mutated()

    async def delete_resource(self, lease_id: str, resource: Resource) -> None:
        ns = namespace_required()

        def delete(db: sqlite3.Connection) -> None:
            _require_lease(db, ns, lease_id)
            db.execute(
                "DELETE FROM lease_resources WHERE namespace = ? AND lease = ? AND type = ? AND id = ?",
                (ns, lease_id, resource.type, resource.id),
            )

        await self._store.run(delete)
        self._store.mutated(deleted=True)

    async def list_resources(self, lease_id: str) -> builtins.list[Resource]:
        ns = namespace_required()

        def list_(db: sqlite3.Connection) -> list[Resource]:
            _require_lease(db, ns, lease_id)
            rows = db.execute(
                "SELECT id, type FROM lease_resources WHERE namespace = ? AND lease = ? ORDER BY type, id",
                (ns, lease_id),
            ).fetchall()
            return [Resource(i, t) for i, t in rows]

        return await self._store.run(list_)


def _check_resource(resource: Resource) -> None:
    if not resource.id:
        raise InvalidArgument("resource id must not be empty")
    if resource.type not in ("content", "ingests") and not resource.type.startswith("snapshots/"):
        raise InvalidArgument(f'unsupported lease resource type "{resource.type}"')


def validate_lease_id(lease_id: str) -> None:
    """Looser than namespace names: containerd's clients make ids like ``196387498--6tY``
    (nanoseconds, a dash, URL-safe base64), so only empty, overlong or blank-containing ids fail."""
    if (
        not lease_id
        or len(lease_id) > 255
        or not lease_id.isprintable()
        or any(c.isspace() for c in lease_id)
    ):
        raise InvalidArgument(f'invalid lease id "{lease_id}"')


def parse_expiry(text: str) -> datetime:
    """``containerd.io/gc.expire`` holds an RFC 3339 time."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(f'invalid {EXPIRE_LABEL} label "{text}": not an RFC 3339 time') from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)
