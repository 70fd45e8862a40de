"""Content as a namespace sees it: records over the shared blob store, with labels and leases.

A blob ingested in one namespace is invisible in another until that namespace writes it too;
the bytes are stored once ("shared" policy) and verified on every write.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from functools import partial

from corral.kernel import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    adapt_mapping,
    namespace_required,
    parse_filters,
    update_labels,
    validate_labels,
)
from corral.plugins.content import ContentStore, Info, IngestStatus, Writer
from corral.plugins.metadata._leases import attach
from corral.plugins.metadata._store import MetadataStore, stamp


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


class NamespacedContent:
    """The content store a client sees: ContentStore semantics plus labels, per namespace."""

    def __init__(self, store: MetadataStore, backend: ContentStore) -> None:
        self._store = store
        self.backend = backend
        self.in_flight: Counter[str] = Counter()

    async def _row(self, namespace: str, digest: str) -> Info:
        def get(db: sqlite3.Connection) -> Info:
            row = db.execute(
                "SELECT digest, size, labels, created_at, updated_at FROM content WHERE namespace = ? AND digest = ?",
                (namespace, digest),
            ).fetchone()
            if row is None:
                raise NotFound(f"content digest {digest}")
            return _info(row)

        return await self._store.run(get)

    async def info(self, digest: str) -> Info:
        return await self._row(namespace_required(), digest)

    async def update(self, digest: str, labels: Mapping[str, str], paths: Sequence[str]) -> Info:
        """Replace labels, or with ``paths`` (``labels``, ``labels.KEY``) only those named."""
        ns = namespace_required()
        validate_labels(labels)

        def update(db: sqlite3.Connection) -> Info:
            row = db.execute(
                "SELECT digest, size, labels, created_at, updated_at FROM content WHERE namespace = ? AND digest = ?",
                (ns, digest),
            ).fetchone()
            if row is None:
                raise NotFound(f"content digest {digest}")
            current = update_labels(json.loads(row[2]), labels, paths, what=f'content info "{digest}"')
            now = time.time()
            db.execute(
                "UPDATE content SET labels = ?, updated_at = ? WHERE namespace = ? AND digest = ?",
                (json.dumps(current, sort_keys=True), now, ns, digest),
            )
            return Info(digest, row[1], stamp(row[3]), stamp(now), current)

        info = await self._store.run(update)
        self._store.mutated()
        return info

    async def list(self, filters: Sequence[str] = ()) -> list[Info]:
        ns = namespace_required()
        match = parse_filters(list(filters))

        def list_(db: sqlite3.Connection) -> list[Info]:
            rows = db.execute(
                "SELECT digest, size, labels, created_at, updated_at FROM content WHERE namespace = ? ORDER BY digest",
                (ns,),
            ).fetchall()
            return [_info(r) for r in rows]

        return [info for info in await self._store.run(list_) if match.match(partial(_content_fields, info))]

    async def delete(self, digest: str) -> None:
        """Remove the namespace's record; the bytes go when garbage collection finds no holder."""
        ns = namespace_required()

        def delete(db: sqlite3.Connection) -> None:
            cur = db.execute("DELETE FROM content WHERE namespace = ? AND digest = ?", (ns, digest))
            if cur.rowcount == 0:
                raise NotFound(f"content digest {digest}")

        await self._store.run(delete)
        self._store.mutated(deleted=True)

    async def read(self, digest: str, offset: int = 0, size: int = 0) -> AsyncIterator[bytes]:
        await self.info(digest)
        return self.backend.read(digest, offset, size)

    async def writer(self, ref: str, total: int = 0, expected: str = "") -> NamespacedWriter:
        ns = namespace_required()
        if not ref:
            raise InvalidArgument("ref must not be empty")
        if expected:
            try:
                await self._row(ns, expected)
            except NotFound:
                pass
            else:
                raise AlreadyExists(f"content {expected}")
        # The backend never sees ``expected``: a blob present for another namespace is written
        # again (and verified) before this namespace may see it.
        inner = await self.backend.writer(_ingest_key(ns, ref), total)
        return NamespacedWriter(self, inner, ns, ref, expected)

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
        await self.backend.abort(_ingest_key(namespace_required(), ref))

    async def commit_record(self, namespace: str, info: Info, labels: Mapping[str, str]) -> Info:
        """Make a committed blob visible to ``namespace``; AlreadyExists if it already was."""
        validate_labels(labels)
        now = time.time()

        def commit(db: sqlite3.Connection) -> Info:
            self._store.ensure_namespace(db, namespace)
            try:
                db.execute(
                    "INSERT INTO content(namespace, digest, size, labels, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (namespace, info.digest, info.size, json.dumps(dict(labels), sort_keys=True), now, now),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"content {info.digest}") from None
            attach(db, namespace, "content", info.digest)
            return Info(info.digest, info.size, stamp(now), stamp(now), dict(labels))

        committed = await self._store.run(commit)
        self._store.mutated()
        return committed


def _rename(st: IngestStatus, ref: str) -> IngestStatus:
    return IngestStatus(ref, st.offset, st.total, st.expected, st.started_at, st.updated_at)


class NamespacedWriter:
    """A backend writer whose commit also records the blob in the namespace (and its lease)."""

    def __init__(
        self, content: NamespacedContent, inner: Writer, namespace: str, ref: str, expected: str
    ) -> None:
        self._content = content
        self._inner = inner
        self._namespace = namespace
        self.ref = ref
        self.expected = expected

    @property
    def offset(self) -> int:
        return self._inner.offset

    def digest(self) -> str:
        return self._inner.digest()

    async def status(self) -> IngestStatus:
        return _rename(await self._inner.status(), self.ref)

    async def write(self, data: bytes) -> int:
        return await self._inner.write(data)

    async def truncate(self, size: int) -> None:
        await self._inner.truncate(size)

    async def commit(self, size: int, expected: str, labels: Mapping[str, str] | None = None) -> Info:
        validate_labels(labels or {})
        expected = expected or self.expected
        digest = self._inner.digest()
        if expected and expected.partition(":")[0] == digest.partition(":")[0] and expected != digest:
            # Bytes that cannot become the promised blob are of no use to a resumed ingest:
            # a wrong digest leaves nothing behind.
            await self._inner.close()
            await self._content.backend.abort(_ingest_key(self._namespace, self.ref))
            raise FailedPrecondition(f"unexpected commit digest {digest}, expected {expected}")
        in_flight = self._content.in_flight
        # The blob exists before its record does; garbage collection must not take it meanwhile.
        in_flight[digest] += 1
        try:
            try:
                info = await self._inner.commit(size, expected)
            except AlreadyExists:
                # Shared policy: the bytes were written and verified, the blob is already stored.
                info = await self._content.backend.info(expected or digest)
            return await self._content.commit_record(self._namespace, info, labels or {})
        finally:
            in_flight[digest] -= 1
            if not in_flight[digest]:
                del in_flight[digest]

    async def close(self) -> None:
        await self._inner.close()
