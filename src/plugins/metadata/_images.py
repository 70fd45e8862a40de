"""Images: named targets (an index or a manifest) with labels, per namespace; garbage-collection roots.

As containerd's ``core/metadata/images.go``: only the target's media type, digest, size and
annotations are kept; creation and update times are the store's (or the request's source date
epoch); an image keeps its target blob and whatever its ``containerd.io/gc.ref.*`` labels name alive,
until a ``containerd.io/gc.expire`` label's time has passed. Each change publishes its event.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from functools import partial

from corral.kernel import AlreadyExists, InvalidArgument, NotFound
from corral.plugins.core import (
    GC_EXPIRE,
    Descriptor,
    digest_error,
    namespace_required,
    parse_expiry,
    validate_labels,
)
from corral.plugins.events.types import ImageCreate, ImageDelete, ImageUpdate
from corral.plugins.metadata import Image, ImageStore
from corral.plugins.metadata._gc import Node, ResourceKind, label_references
from corral.plugins.metadata.database import (
    Database,
    ObjectKind,
    attach_to_lease,
    detach_from_lease,
    filters_of,
    labels_json,
    stamp,
)

LEASE_RESOURCE = "images"
"""The lease resource type (and garbage-collection node kind) of images, as containerd names it."""

SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS images (
        namespace TEXT NOT NULL REFERENCES namespaces(name),
        name TEXT NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}',
        media_type TEXT NOT NULL,
        digest TEXT NOT NULL,
        size INTEGER NOT NULL,
        annotations TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (namespace, name)
    );
    CREATE INDEX IF NOT EXISTS images_by_digest ON images(namespace, digest);
    """,
)

_COLUMNS = "name, labels, media_type, digest, size, annotations, created_at, updated_at"
_Row = tuple[str, str, str, str, int, str, float, float]


def quoted(text: str) -> str:
    """As Go's ``%q`` quotes a string in containerd's messages."""
    return json.dumps(text, ensure_ascii=False)


def _image(row: _Row) -> Image:
    name, labels, media_type, digest, size, annotations, created, updated = row
    target = Descriptor(media_type, digest, size, json.loads(annotations))
    return Image(name, target, json.loads(labels), stamp(created), stamp(updated))


def _present(labels: Mapping[str, str]) -> dict[str, str]:
    """containerd stores no empty label value: setting one to "" removes it."""
    return {k: v for k, v in labels.items() if v}


def _from_map(values: Mapping[str, str], path: Sequence[str]) -> str | None:
    # containerd's checkMap: the rest of the path is one dotted key.
    return values.get(".".join(path)) if values else None


def image_fields(image: Image, path: Sequence[str]) -> str | None:
    """containerd's adaptImage: ``name``, ``target.digest``, ``target.mediatype``, ``labels.KEY``,
    ``annotations.KEY``; an empty value reads as absent."""
    if not path:
        return None
    head, rest = path[0], path[1:]
    value: str | None = None
    if head == "name":
        value = image.name
    elif head == "target" and rest:
        value = {"digest": image.target.digest, "mediatype": image.target.media_type}.get(rest[0])
    elif head == "labels":
        return _from_map(image.labels, rest)
    elif head == "annotations":
        return _from_map(image.target.annotations, rest)
    return value or None


def validate_image(image: Image) -> None:
    """containerd's validateImage: a name, labels of legal size, and a target with a valid digest,
    a positive size and a media type (the only fields stored)."""
    if not image.name:
        raise InvalidArgument("image name must not be empty")
    try:
        validate_labels(image.labels)
    except InvalidArgument as exc:
        raise InvalidArgument(f"image.Labels: {exc.detail}") from None
    target = image.target
    problem = digest_error(target.digest)
    if problem is not None:
        raise InvalidArgument(f"target.Digest {quoted(target.digest)} invalid: {problem}")
    if target.size <= 0:
        raise InvalidArgument("target.Size must be greater than zero")
    if not target.media_type:
        raise InvalidArgument("target.MediaType must be set")


def _stored(image: Image, created: float, updated: float) -> Image:
    target = Descriptor(
        image.target.media_type, image.target.digest, image.target.size, _present(image.target.annotations)
    )
    return Image(image.name, target, _present(image.labels), stamp(created), stamp(updated))


def _apply_paths(current: Image, image: Image, paths: Sequence[str]) -> Image:
    """containerd's field mask for images: ``labels[.KEY]``, ``annotations[.KEY]`` (of the
    target) and ``target`` as a whole; no paths replaces the image."""
    if not paths:
        return Image(current.name, image.target, image.labels)
    labels = dict(current.labels)
    target = current.target
    annotations = dict(target.annotations)
    for path in paths:
        if path.startswith("labels."):
            key = path[len("labels.") :]
            labels[key] = image.labels.get(key, "")
        elif path.startswith("annotations."):
            key = path[len("annotations.") :]
            annotations[key] = image.target.annotations.get(key, "")
        elif path == "labels":
            labels = dict(image.labels)
        elif path == "target":
            target = image.target
            annotations = dict(target.annotations)
        elif path == "annotations":
            annotations = dict(image.target.annotations)
        else:
            raise InvalidArgument(f"cannot update {quoted(path)} field on image {quoted(current.name)}")
    return Image(current.name, Descriptor(target.media_type, target.digest, target.size, annotations), labels)


def _attach_if_expiring(conn: sqlite3.Connection, ns: str, image: Image) -> None:
    # As containerd's addImageLease: only an image that can expire needs its lease's hold.
    if GC_EXPIRE in image.labels:
        attach_to_lease(conn, ns, LEASE_RESOURCE, image.name)


class ImageRecords(ImageStore):
    """The ImageStore view."""

    def __init__(self, db: Database) -> None:
        self._store = db

    @staticmethod
    def _row(conn: sqlite3.Connection, ns: str, name: str) -> _Row | None:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM images WHERE namespace = ? AND name = ?", (ns, name)
        ).fetchone()
        return None if row is None else (row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7])

    async def get(self, name: str) -> Image:
        ns = namespace_required()

        def get(conn: sqlite3.Connection) -> Image:
            row = self._row(conn, ns, name)
            if row is None:
                raise NotFound(f"image {quoted(name)}")
            return _image(row)

        return await self._store.read(get)

    async def list(self, filters: Sequence[str] = ()) -> builtins.list[Image]:
        ns = namespace_required()
        match = filters_of(filters)

        def list_(conn: sqlite3.Connection) -> builtins.list[Image]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM images WHERE namespace = ? ORDER BY name", (ns,)
            ).fetchall()
            return [_image(r) for r in rows]

        return [image for image in await self._store.read(list_) if match.match(partial(image_fields, image))]

    async def create(self, image: Image, *, epoch: datetime | None = None) -> Image:
        ns = namespace_required()
        now = epoch.timestamp() if epoch is not None else time.time()

        def create(conn: sqlite3.Connection) -> Image:
            validate_image(image)
            self._store.ensure_namespace(conn, ns)
            _attach_if_expiring(conn, ns, image)
            stored = _stored(image, now, now)
            try:
                conn.execute(
                    f"INSERT INTO images(namespace, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (ns, *_values(stored, now, now)),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"image {quoted(image.name)}") from None
            return stored

        created = await self._store.run(create)
        self._store.mutated()
        await self._store.publish(ImageCreate(name=created.name, labels=dict(created.labels)), ns)
        return created

    async def update(
        self, image: Image, paths: Sequence[str] = (), *, epoch: datetime | None = None
    ) -> Image:
        ns = namespace_required()
        if not image.name:
            raise InvalidArgument("image name is required for update")
        now = epoch.timestamp() if epoch is not None else time.time()

        def update(conn: sqlite3.Connection) -> Image:
            row = self._row(conn, ns, image.name)
            if row is None:
                raise NotFound(f"image {quoted(image.name)}")
            current = _image(row)
            updated = _apply_paths(current, image, paths)
            validate_image(updated)
            _attach_if_expiring(conn, ns, updated)
            stored = _stored(updated, row[6], now)
            conn.execute(
                "UPDATE images SET labels = ?, media_type = ?, digest = ?, size = ?, annotations = ?,"
                " updated_at = ? WHERE namespace = ? AND name = ?",
                (*_values(stored, row[6], now)[1:6], now, ns, image.name),
            )
            return stored

        updated = await self._store.run(update)
        self._store.mutated()
        await self._store.publish(ImageUpdate(name=updated.name, labels=dict(updated.labels)), ns)
        return updated

    async def delete(self, name: str, *, target: Descriptor | None = None) -> None:
        ns = namespace_required()

        def delete(conn: sqlite3.Connection) -> None:
            detach_from_lease(conn, ns, LEASE_RESOURCE, name)
            row = self._row(conn, ns, name)
            if row is None:
                raise NotFound(f"image {quoted(name)}")
            if target is not None and target.digest and row[3] != target.digest:
                raise NotFound(f"image {quoted(name)} has target {row[3]}, not {target.digest}")
            conn.execute("DELETE FROM images WHERE namespace = ? AND name = ?", (ns, name))

        await self._store.run(delete)
        self._store.mutated(deleted=True)
        await self._store.publish(ImageDelete(name=name), ns)


def _values(
    image: Image, created: float, updated: float
) -> tuple[str, str, str, str, int, str, float, float]:
    t = image.target
    return (
        image.name,
        labels_json(image.labels),
        t.media_type,
        t.digest,
        t.size,
        labels_json(t.annotations),
        created,
        updated,
    )


def _expired(labels: Mapping[str, str], now: datetime) -> bool:
    """containerd's isExpiredImage: an unparsable expiry never expires."""
    text = labels.get(GC_EXPIRE)
    if not text:
        return False
    try:
        return parse_expiry(text) < now
    except InvalidArgument:
        return False


class ImageGC:
    """Images as the garbage collector sees them: roots until they expire; each holds its target."""

    name = LEASE_RESOURCE

    def roots(self, conn: sqlite3.Connection, now: datetime) -> Iterable[Node]:
        rows = conn.execute("SELECT namespace, name, labels FROM images").fetchall()
        return [Node(self.name, ns, n) for ns, n, labels in rows if not _expired(json.loads(labels), now)]

    def references(self, conn: sqlite3.Connection, node: Node) -> Iterable[Node]:
        row = conn.execute(
            "SELECT digest, labels FROM images WHERE namespace = ? AND name = ?", (node.namespace, node.id)
        ).fetchone()
        if row is None:
            return ()
        return [
            Node("content", node.namespace, row[0]),
            *label_references(node.namespace, json.loads(row[1])),
        ]

    def nodes(self, conn: sqlite3.Connection) -> Iterable[Node]:
        return [Node(self.name, ns, n) for ns, n in conn.execute("SELECT namespace, name FROM images")]

    def remove(self, conn: sqlite3.Connection, node: Node) -> None:
        conn.execute("DELETE FROM images WHERE namespace = ? AND name = ?", (node.namespace, node.id))


class ImagesKind(ObjectKind):
    """Images per namespace; they hold content (and, through labels, snapshots) against collection."""

    name = "images"
    schema = SCHEMA

    def bind(self, db: Database) -> None:
        self._db = db
        self.records = ImageRecords(db)

    async def collected(self, removed: Mapping[str, Sequence[str]]) -> None:
        # As containerd: an expired image that a collection removes is deleted like any other.
        for entry in removed.get(LEASE_RESOURCE, ()):
            ns, _, name = entry.partition("/")
            await self._db.publish(ImageDelete(name=name), ns)

    def views(self) -> Iterable[object]:
        return (self.records,)

    def holdings(self, conn: sqlite3.Connection, namespace: str) -> builtins.list[str]:
        found = conn.execute("SELECT 1 FROM images WHERE namespace = ? LIMIT 1", (namespace,)).fetchone()
        return ["images"] if found else []

    def accepts_lease_resource(self, resource_type: str) -> bool:
        return resource_type == LEASE_RESOURCE

    def collectables(self) -> Iterable[ResourceKind]:
        return (ImageGC(),)
