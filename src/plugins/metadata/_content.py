"""Content as a namespace sees it: records over the shared blob store, with labels and leases.

A blob ingested in one namespace is invisible in another until that namespace writes it too. With
the "shared" policy (the default, as containerd's) a namespace that names a blob's digest when it
opens a writer, and agrees on its size, gets the stored bytes without sending them again; with
"isolated" it must write them, and they are verified, before it may see the blob.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Literal

import anyio
import structlog

from corral.kernel import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    adapt_mapping,
    parse_filters,
)
from corral.plugins.content import ContentStore, Info, IngestStatus, Writer
from corral.plugins.core import GC_ROOT, namespace_required, update_labels, validate_digest, validate_labels
from corral.plugins.core.tracing import span
from corral.plugins.events.types import ContentCreate, ContentDelete
from corral.plugins.metadata._gc import Node, ResourceKind, label_references
from corral.plugins.metadata.database import (
    Database,
    ObjectKind,
    attach_to_lease,
    labels_json,
    stamp,
)

SharingPolicy = Literal["shared", "isolated"]

log = structlog.get_logger("corral.metadata")

SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS content (
        namespace TEXT NOT NULL REFERENCES namespaces(name),
        digest TEXT NOT NULL,
        size INTEGER NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (namespace, digest)
    );
    CREATE INDEX IF NOT EXISTS content_by_digest ON content(digest);
    """,
)


def _info(row: tuple[str, int, str, float, float]) -> Info:
    digest, size, labels, created, updated = row
    return Info(digest, size, stamp(created), stamp(updated), json.loads(labels))


def _content_fields(info: Info, path: Sequence[str]) -> str | None:
    return adapt_mapping({"digest": info.digest, "size": str(info.size), "labels": dict(info.labels)})(path)


def _ingest_key(namespace: str, ref: str) -> str:
    # Ingests of different namespaces never share a lock or a file.
    return f"{namespace}/1/{ref}"


def _own_ref(namespace: str, key: str) -> str | None:
    prefix = f"{namespace}/1/"
    return key[len(prefix) :] if key.startswith(prefix) else None


class ContentRecords:
    """The NamespacedContent view: ContentStore semantics plus labels, per namespace."""

    def __init__(self, db: Database, backend: ContentStore, policy: SharingPolicy) -> None:
        self._store = db
        self.backend = backend
        self.policy = policy
        self.in_flight: Counter[str] = Counter()
        # Blobs a sweep has decided to delete and is deleting: a commit of the same bytes waits
        # for the deletion, then publishes its own (instead of finding them stored, then gone).
        self.deleting: dict[str, anyio.Event] = {}
        # Held by a sweep from reading the records to its last deletion, and by each commit while
        # it records a blob: a sweep never reads the records before a commit's and deletes after.
        self.sweeping = anyio.Lock()

    async def _row(self, namespace: str, digest: str) -> Info:
        validate_digest(digest)

        def get(conn: sqlite3.Connection) -> Info:
            row = conn.execute(
                "SELECT digest, size, labels, created_at, updated_at FROM content WHERE namespace = ? AND digest = ?",
                (namespace, digest),
            ).fetchone()
            if row is None:
                raise NotFound(f"content digest {digest}")
            return _info(row)

        return await self._store.read(get)

    async def info(self, digest: str) -> Info:
        return await self._row(namespace_required(), digest)

    async def update(self, digest: str, labels: Mapping[str, str], paths: Sequence[str]) -> Info:
        """Replace labels, or with ``paths`` (``labels``, ``labels.KEY``) only those named."""
        ns = namespace_required()
        validate_digest(digest)
        validate_labels(labels)

        def update(conn: sqlite3.Connection) -> Info:
            row = conn.execute(
                "SELECT digest, size, labels, created_at, updated_at FROM content WHERE namespace = ? AND digest = ?",
                (ns, digest),
            ).fetchone()
            if row is None:
                raise NotFound(f"content digest {digest}")
            current = update_labels(json.loads(row[2]), labels, paths, what=f'content info "{digest}"')
            now = time.time()
            conn.execute(
                "UPDATE content SET labels = ?, updated_at = ? WHERE namespace = ? AND digest = ?",
                (labels_json(current), now, ns, digest),
            )
            return Info(digest, row[1], stamp(row[3]), stamp(now), current)

        info = await self._store.run(update)
        self._store.mutated()
        return info

    async def list(self, filters: Sequence[str] = ()) -> builtins.list[Info]:
        ns = namespace_required()
        match = parse_filters(list(filters))

        def list_(conn: sqlite3.Connection) -> builtins.list[Info]:
            rows = conn.execute(
                "SELECT digest, size, labels, created_at, updated_at FROM content WHERE namespace = ? ORDER BY digest",
                (ns,),
            ).fetchall()
            return [_info(r) for r in rows]

        return [info for info in await self._store.read(list_) if match.match(partial(_content_fields, info))]

    async def delete(self, digest: str) -> None:
        """Remove the namespace's record; the bytes go when garbage collection finds no holder."""
        ns = namespace_required()
        validate_digest(digest)

        def delete(conn: sqlite3.Connection) -> None:
            cur = conn.execute("DELETE FROM content WHERE namespace = ? AND digest = ?", (ns, digest))
            if cur.rowcount == 0:
                raise NotFound(f"content digest {digest}")

        await self._store.run(delete)
        self._store.mutated(deleted=True)
        await self._store.publish(ContentDelete(digest=digest), ns)

    async def read(self, digest: str, offset: int = 0, size: int = 0) -> AsyncIterator[bytes]:
        # As info() answers, without building the Info (labels, times) a read does not need:
        # ``ctr content get`` makes one Read call per 32 KiB.
        namespace = namespace_required()
        validate_digest(digest)
        found = self._store.read_one(
            "SELECT 1 FROM content WHERE namespace = ? AND digest = ?", (namespace, digest)
        )
        if found is None:
            raise NotFound(f"content digest {digest}")
        return self.backend.read(digest, offset, size)

    async def writer(self, ref: str, total: int = 0, expected: str = "") -> NamespacedWriter:
        with span("metadata.content.Writer", {"content.ref": ref, "content.total": total}):
            return await self._writer(ref, total, expected)

    async def _writer(self, ref: str, total: int, expected: str) -> NamespacedWriter:
        ns = namespace_required()
        if not ref:
            raise InvalidArgument("ref must not be empty")
        if expected:
            validate_digest(expected)
            try:
                await self._row(ns, expected)
            except NotFound:
                pass
            else:
                raise AlreadyExists(f"content {expected}")
            if self.policy == "shared":
                # Checked and held under the sweep's lock: a collection running now has either
                # taken the blob already (and the writer writes it) or will leave it standing
                # for as long as the writer stands on it.
                async with self.sweeping:
                    stored = await self._stored(expected)
                    if stored is not None and total in (0, stored.size):
                        self.hold(stored.digest)
                        return NamespacedWriter(self, None, ns, ref, expected, shared=stored)
        # The backend never sees ``expected``: a blob present for another namespace is written
        # again (and verified) before this namespace may see it.
        inner = await self.backend.writer(_ingest_key(ns, ref), total)
        return NamespacedWriter(self, inner, ns, ref, expected)

    def hold(self, digest: str) -> None:
        """Keep the blob from garbage collection until as many ``release`` calls."""
        self.in_flight[digest] += 1

    def release(self, digest: str) -> None:
        self.in_flight[digest] -= 1
        if not self.in_flight[digest]:
            del self.in_flight[digest]

    async def _stored(self, digest: str) -> Info | None:
        try:
            return await self.backend.info(digest)
        except NotFound:
            return None

    async def status(self, ref: str) -> IngestStatus:
        ns = namespace_required()
        st = await self.backend.status(_ingest_key(ns, ref))
        return _rename(st, ref)

    async def list_statuses(self, filters: Sequence[str] = ()) -> builtins.list[IngestStatus]:
        ns = namespace_required()
        match = parse_filters([f for f in filters if f])
        out = []
        for st in await self.backend.list_statuses():
            ref = _own_ref(ns, st.ref)
            if ref is not None and match.match(adapt_mapping({"ref": ref, "expected": st.expected})):
                out.append(_rename(st, ref))
        return sorted(out, key=lambda s: s.ref)

    async def abort(self, ref: str) -> None:
        try:
            await self.backend.abort(_ingest_key(namespace_required(), ref))
        except NotFound:
            raise NotFound(f"reference {ref}") from None  # containerd's metadata store's words

    async def commit_record(self, namespace: str, info: Info, labels: Mapping[str, str]) -> Info:
        """Make a committed blob visible to ``namespace``; AlreadyExists if it already was."""
        validate_labels(labels)
        now = time.time()

        def commit(conn: sqlite3.Connection) -> Info:
            self._store.ensure_namespace(conn, namespace)
            try:
                conn.execute(
                    "INSERT INTO content(namespace, digest, size, labels, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (namespace, info.digest, info.size, labels_json(labels), now, now),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"content {info.digest}") from None
            attach_to_lease(conn, namespace, "content", info.digest)
            return Info(info.digest, info.size, stamp(now), stamp(now), dict(labels))

        committed = await self._store.run(commit)
        self._store.mutated()
        await self._store.publish(ContentCreate(digest=committed.digest, size=committed.size), namespace)
        return committed


def _rename(st: IngestStatus, ref: str) -> IngestStatus:
    return IngestStatus(ref, st.offset, st.total, st.expected, st.started_at, st.updated_at)


class NamespacedWriter:
    """A backend writer whose commit also records the blob in the namespace (and its lease).

    With ``shared`` (the stored blob, under the "shared" policy) there is no backend writer yet:
    the writer stands at the blob's end with its digest, and its commit only records it. A write
    or a truncate first copies the stored bytes into a real ingest, as containerd's writer does.
    """

    def __init__(
        self,
        content: ContentRecords,
        inner: Writer | None,
        namespace: str,
        ref: str,
        expected: str,
        *,
        shared: Info | None = None,
    ) -> None:
        self._content = content
        self._inner = inner
        self._namespace = namespace
        self.ref = ref
        self.expected = expected
        self._shared = shared
        self._released = False  # a shared writer holds its blob from collection until closed
        self._started = datetime.now(UTC)

    @property
    def offset(self) -> int:
        if self._inner is None:
            assert self._shared is not None
            return self._shared.size
        return self._inner.offset

    def digest(self) -> str:
        if self._inner is None:
            assert self._shared is not None
            return self._shared.digest
        return self._inner.digest()

    async def status(self) -> IngestStatus:
        if self._inner is None:
            assert self._shared is not None
            size = self._shared.size
            return IngestStatus(self.ref, size, size, self.expected, self._started, self._started)
        return _rename(await self._inner.status(), self.ref)

    async def _materialise(self, *, copy: bool) -> Writer:
        if self._inner is not None:
            return self._inner
        assert self._shared is not None
        backend = self._content.backend
        inner = await backend.writer(_ingest_key(self._namespace, self.ref), self._shared.size)
        try:
            if inner.offset:
                await inner.truncate(0)
            if copy:
                async for chunk in backend.read(self._shared.digest):
                    await inner.write(chunk)
        except BaseException:
            await inner.close()
            raise
        self._inner = inner
        return inner

    async def write(self, data: bytes) -> int:
        return await (await self._materialise(copy=True)).write(data)

    async def truncate(self, size: int) -> None:
        await (await self._materialise(copy=False)).truncate(size)

    async def commit(self, size: int, expected: str, labels: Mapping[str, str] | None = None) -> Info:
        attributes = {"content.ref": self.ref, "content.size": size, "content.expected": expected}
        with span("metadata.content.Commit", attributes) as current:
            info = await self._commit(size, expected, labels)
            current.set_attributes({"content.digest": info.digest})
            return info

    async def _commit(self, size: int, expected: str, labels: Mapping[str, str] | None) -> Info:
        validate_labels(labels or {})
        expected = expected or self.expected
        if expected:
            validate_digest(expected)
        if self._inner is None:
            assert self._shared is not None
            # containerd's namespaced writer's words (its content store's are the backends').
            if size and size != self._shared.size:
                raise FailedPrecondition(
                    f'"{self.ref}" failed size validation: {self._shared.size} != {size}'
                )
            if expected and expected != self._shared.digest:
                raise FailedPrecondition(f'"{self.ref}" unexpected digest')
            async with self._content.sweeping:
                # The blob was there when the writer opened; a collection may have taken it since.
                if await self._content._stored(self._shared.digest) is None:
                    raise Aborted(
                        f"content {self._shared.digest} was removed before its commit; write it again"
                    )
                return await self._content.commit_record(self._namespace, self._shared, labels or {})
        # A mismatch leaves the ingest as it was, as containerd's: reopened by the same ref, its
        # bytes are still there and a commit with the right size and digest succeeds.
        if size and size != self._inner.offset:
            offset = self._inner.offset
            await self._inner.close()  # as containerd's: the ref is free again, its bytes kept
            raise FailedPrecondition(f'"{self.ref}" failed size validation: {offset} != {size}')
        digest = self._inner.digest()
        # The blob exists before its record does; garbage collection must not take it meanwhile.
        self._content.hold(digest)
        try:
            if (deleting := self._content.deleting.get(digest)) is not None:
                await deleting.wait()  # a sweep that chose it before the hold finishes first
            try:
                info = await self._inner.commit(size, expected)
            except AlreadyExists:
                # The bytes were written and verified, and the blob is already stored.
                info = await self._content.backend.info(expected or digest)
            return await self._record(info, labels)
        finally:
            self._content.release(digest)

    async def _record(self, info: Info, labels: Mapping[str, str] | None) -> Info:
        async with self._content.sweeping:
            return await self._content.commit_record(self._namespace, info, labels or {})

    async def close(self) -> None:
        if self._shared is not None and not self._released:
            self._released = True
            self._content.release(self._shared.digest)
        if self._inner is not None:
            await self._inner.close()


class ContentGC:
    """Content records as the garbage collector sees them."""

    name = "content"

    def roots(self, conn: sqlite3.Connection, now: datetime) -> Iterable[Node]:
        for ns, digest, labels in conn.execute("SELECT namespace, digest, labels FROM content"):
            if GC_ROOT in json.loads(labels):
                yield Node("content", ns, digest)

    def references(self, conn: sqlite3.Connection, node: Node) -> Iterable[Node]:
        row = conn.execute(
            "SELECT labels FROM content WHERE namespace = ? AND digest = ?", (node.namespace, node.id)
        )
        found = row.fetchone()
        return label_references(node.namespace, json.loads(found[0])) if found else ()

    def nodes(self, conn: sqlite3.Connection) -> Iterable[Node]:
        return [Node("content", ns, d) for ns, d in conn.execute("SELECT namespace, digest FROM content")]

    def remove(self, conn: sqlite3.Connection, node: Node) -> None:
        conn.execute("DELETE FROM content WHERE namespace = ? AND digest = ?", (node.namespace, node.id))


class ContentKind(ObjectKind):
    """Namespaced records over one content store backend; blobs no record holds are swept."""

    name = "content"
    schema = SCHEMA

    def __init__(self, backend: ContentStore, policy: SharingPolicy = "shared") -> None:
        self.backend = backend
        self.policy = policy

    def bind(self, db: Database) -> None:
        self._db = db
        self.records = ContentRecords(db, self.backend, self.policy)

    def views(self) -> Iterable[object]:
        return (self.records,)

    def holdings(self, conn: sqlite3.Connection, namespace: str) -> builtins.list[str]:
        found = conn.execute("SELECT 1 FROM content WHERE namespace = ? LIMIT 1", (namespace,)).fetchone()
        return ["blobs"] if found else []

    def accepts_lease_resource(self, resource_type: str) -> bool:
        return resource_type in ("content", "ingests")

    def collectables(self) -> Iterable[ResourceKind]:
        return (ContentGC(),)

    async def sweep(self) -> Mapping[str, int | builtins.list[str]]:
        def held(conn: sqlite3.Connection) -> set[str]:
            return {d for (d,) in conn.execute("SELECT DISTINCT digest FROM content")}

        async with self.records.sweeping:
            return await self._sweep(await self._db.read(held))

    async def _sweep(self, keep: set[str]) -> Mapping[str, int | builtins.list[str]]:
        swept, failed = 0, []
        async for info in self.backend.list():
            if info.digest in keep or info.digest in self.records.in_flight:
                continue
            done = self.records.deleting[info.digest] = anyio.Event()
            try:
                await self.backend.delete(info.digest)
            except NotFound:
                continue
            except OSError as exc:
                log.warning("gc_blob_remove_failed", digest=info.digest, error=str(exc))
                failed.append(f"{info.digest}: {exc}")
                continue
            finally:
                del self.records.deleting[info.digest]
                done.set()
            swept += 1
        return {"blobs": swept, "failed:blobs": failed}
