"""Namespaced content, leases and garbage collection over the sqlite metadata store."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from corral.kernel import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unimplemented
from corral.plugins.content.memory import MemoryContentStore
from corral.plugins.core import GC_EXPIRE, bound_lease, namespace
from corral.plugins.metadata import (
    LeaseStore,
    NamespacedContent,
    NamespacedSnapshots,
    NamespaceStore,
    Resource,
)
from corral.plugins.metadata.sqlite import SqliteMetadata, open_metadata


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def run(tmp_path: Path, body: Callable[[SqliteMetadata], Awaitable[None]]) -> None:
    async def main() -> None:
        md = open_metadata(tmp_path / "meta.db", content=MemoryContentStore())
        try:
            await body(md)
        finally:
            md.close()

    anyio.run(main)


async def ingest(
    md: SqliteMetadata, data: bytes, ref: str = "r", labels: dict[str, str] | None = None
) -> str:
    w = await md.view(NamespacedContent).writer(ref)
    await w.write(data)
    info = await w.commit(len(data), digest_of(data), labels)
    return info.digest


def test_blob_written_in_one_namespace_is_invisible_in_another_until_written_there(tmp_path: Path) -> None:
    async def body(md: SqliteMetadata) -> None:
        with namespace("a"):
            d = await ingest(md, b"hello")
        with namespace("b"):
            with pytest.raises(NotFound):
                await md.view(NamespacedContent).info(d)
            assert await md.view(NamespacedContent).list() == []
            # Writing it again (the bytes are verified) makes it visible in b too.
            assert await ingest(md, b"hello") == d
            assert (await md.view(NamespacedContent).info(d)).size == 5
        with namespace("a"), pytest.raises(AlreadyExists):
            await ingest(md, b"hello")

    run(tmp_path, body)


def test_writes_create_namespaces_implicitly(tmp_path: Path) -> None:
    async def body(md: SqliteMetadata) -> None:
        with namespace("implicit"):
            await ingest(md, b"x")
        assert [ns.name for ns in await md.view(NamespaceStore).list()] == ["implicit"]

    run(tmp_path, body)


def test_namespace_holding_content_cannot_be_removed(tmp_path: Path) -> None:
    async def body(md: SqliteMetadata) -> None:
        with namespace("busy"):
            await ingest(md, b"x")
        with pytest.raises(
            FailedPrecondition, match='namespace "busy" must be empty, but it still has blobs'
        ):
            await md.view(NamespaceStore).delete("busy")

    run(tmp_path, body)


def test_labels_update_by_field_path(tmp_path: Path) -> None:
    async def body(md: SqliteMetadata) -> None:
        with namespace("ns"):
            d = await ingest(md, b"x", labels={"a": "1", "b": "2"})
            info = await md.view(NamespacedContent).update(d, {"b": "3", "c": "4"}, ["labels.b", "labels.a"])
            assert dict(info.labels) == {"b": "3"}
            info = await md.view(NamespacedContent).update(d, {"z": "9"}, ["labels"])
            assert dict(info.labels) == {"z": "9"}
            with pytest.raises(InvalidArgument):
                await md.view(NamespacedContent).update(d, {}, ["size"])
            with pytest.raises(InvalidArgument):
                await md.view(NamespacedContent).update(d, {"k": "v" * 5000}, [])
            assert dict((await md.view(NamespacedContent).info(d)).labels) == {"z": "9"}

    run(tmp_path, body)


def test_list_filters_on_labels_and_digest(tmp_path: Path) -> None:
    async def body(md: SqliteMetadata) -> None:
        with namespace("ns"):
            d1 = await ingest(md, b"1", "r1", {"kind": "layer"})
            await ingest(md, b"2", "r2", {"kind": "config"})
            assert [i.digest for i in await md.view(NamespacedContent).list(["labels.kind==layer"])] == [d1]
            assert len(await md.view(NamespacedContent).list([f"digest=={d1}", "labels.kind==config"])) == 2

    run(tmp_path, body)


def test_unreferenced_content_is_collected_and_referenced_content_survives(tmp_path: Path) -> None:
    async def body(md: SqliteMetadata) -> None:
        with namespace("ns"):
            child = await ingest(md, b"child", "c")
            await ingest(
                md, b"root", "p", {"containerd.io/gc.root": "x", "containerd.io/gc.ref.content.0": child}
            )
            loose = await ingest(md, b"loose", "l")
            result = await md.garbage_collect()
            assert result.removed["content"] == [f"ns/{loose}"]
            assert result.swept["blobs"] == 1
            assert [i.digest for i in await md.view(NamespacedContent).list()] == sorted(
                [child, digest_of(b"root")]
            )

    run(tmp_path, body)


def test_blob_held_only_by_a_lease_survives_until_the_lease_goes(tmp_path: Path) -> None:
    async def body(md: SqliteMetadata) -> None:
        with namespace("ns"):
            await md.view(LeaseStore).create("hold")
            with bound_lease("hold"):
                d = await ingest(md, b"leased")
            assert await md.view(LeaseStore).list_resources("hold") == [Resource(d, "content")]
            await md.garbage_collect()
            assert (await md.view(NamespacedContent).info(d)).size == 6
            await md.view(LeaseStore).delete("hold")
            await md.garbage_collect()
            with pytest.raises(NotFound):
                await md.view(NamespacedContent).info(d)

    run(tmp_path, body)


def test_expired_leases_are_collected(tmp_path: Path) -> None:
    async def body(md: SqliteMetadata) -> None:
        past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
        with namespace("ns"):
            await md.view(LeaseStore).create("old", {GC_EXPIRE: past})
            await md.view(LeaseStore).create(
                "new", {GC_EXPIRE: (datetime.now(UTC) + timedelta(hours=1)).isoformat()}
            )
            await md.garbage_collect()
            assert [lease.id for lease in await md.view(LeaseStore).list()] == ["new"]

    run(tmp_path, body)


def test_lease_errors(tmp_path: Path) -> None:
    async def body(md: SqliteMetadata) -> None:
        with namespace("ns"):
            lease = await md.view(LeaseStore).create()
            assert lease.id
            with pytest.raises(AlreadyExists):
                await md.view(LeaseStore).create(lease.id)
            with pytest.raises(NotFound):
                await md.view(LeaseStore).delete("missing")
            with pytest.raises(InvalidArgument):
                await md.view(LeaseStore).create("bad id!")
            with pytest.raises(InvalidArgument):
                await md.view(LeaseStore).create("x", {GC_EXPIRE: "tomorrow"})
            # As containerd: an unknown type is not implemented, a malformed digest is refused.
            with pytest.raises(Unimplemented, match="resource type mystery not supported yet"):
                await md.view(LeaseStore).add_resource(lease.id, Resource("x", "mystery"))
            for bad in ("sha256:../../etc/passwd", "sha256:xyz", "md5:" + "0" * 32, "SHA256:" + "A" * 64):
                with pytest.raises(InvalidArgument, match="invalid content resource id"):
                    await md.view(LeaseStore).add_resource(lease.id, Resource(bad, "content"))
            with pytest.raises(InvalidArgument, match="invalid snapshot resource type"):
                await md.view(LeaseStore).add_resource(lease.id, Resource("k", "snapshots"))
            assert await md.view(LeaseStore).list_resources(lease.id) == []
            with bound_lease("missing"), pytest.raises(NotFound):
                await ingest(md, b"y")
            assert [lease.id for lease in await md.view(LeaseStore).list([f"id=={lease.id}"])] == [lease.id]

    run(tmp_path, body)


def test_ingests_are_per_namespace(tmp_path: Path) -> None:
    async def body(md: SqliteMetadata) -> None:
        with namespace("a"):
            w = await md.view(NamespacedContent).writer("same-ref", total=10)
            await w.write(b"abc")
            await w.close()
            (status,) = await md.view(NamespacedContent).list_statuses()
            assert (status.ref, status.offset, status.total) == ("same-ref", 3, 10)
        with namespace("b"):
            assert await md.view(NamespacedContent).list_statuses() == []
            w2 = await md.view(NamespacedContent).writer("same-ref")
            assert w2.offset == 0
            await w2.close()

    run(tmp_path, body)


def test_lease_ids_as_containerds_clients_generate_them_are_accepted(tmp_path: Path) -> None:
    async def body(md: SqliteMetadata) -> None:
        with namespace("ns"):
            for lease_id in ("196387498--6tY", "1234_-x_", "a.b:c"):
                assert (await md.view(LeaseStore).create(lease_id)).id == lease_id

    run(tmp_path, body)


def test_garbage_collection_never_takes_a_snapshot_being_prepared_or_committed(tmp_path: Path) -> None:
    from corral.plugins.snapshots.native import NativeSnapshotter

    class Paused(NativeSnapshotter):
        """Holds each prepare and commit after the backend made the snapshot, before its record."""

        gate: anyio.Event

        async def prepare(self, key, parent="", labels=None):  # type: ignore[no-untyped-def]
            mounts = await super().prepare(key, parent, labels)
            await self.gate.wait()
            return mounts

        async def commit(self, name, key, labels=None):  # type: ignore[no-untyped-def]
            await super().commit(name, key, labels)
            await self.gate.wait()

    async def main() -> None:
        backend = Paused(tmp_path / "snaps")
        md = open_metadata(
            tmp_path / "meta.db", content=MemoryContentStore(), snapshotters={"native": backend}
        )
        snaps = md.view(NamespacedSnapshots).get("native")
        try:
            with namespace("ns"):
                for step in ("prepare", "commit"):
                    backend.gate = anyio.Event()
                    async with anyio.create_task_group() as tg:
                        if step == "prepare":
                            tg.start_soon(snaps.prepare, "active", "", {"containerd.io/gc.root": "x"})
                        else:
                            tg.start_soon(snaps.commit, "done", "active", {"containerd.io/gc.root": "x"})
                        await anyio.sleep(0.05)
                        await md.garbage_collect()
                        backend.gate.set()
                assert (await snaps.stat("done")).kind.name == "COMMITTED"
                assert [info.name async for info in backend.walk()] != []
                await snaps.prepare("child", "done")
        finally:
            md.close()

    anyio.run(main)


def test_shared_policy_gives_a_stored_blob_to_a_namespace_that_names_it(tmp_path: Path) -> None:
    async def main() -> None:
        md = open_metadata(tmp_path / "meta.db", content=MemoryContentStore(), policy="shared")
        content = md.view(NamespacedContent)
        data = b"shared bytes"
        with namespace("a"):
            d = await ingest(md, data)
        with namespace("b"):
            with pytest.raises(NotFound):
                await content.info(d)
            w = await content.writer("ref", len(data), d)
            # As containerd's writer: the status and digest are the stored blob's, nothing to resend.
            assert (w.offset, w.digest()) == (len(data), d)
            assert (await w.status()).offset == len(data)
            info = await w.commit(len(data), d)
            assert info.digest == d and (await content.info(d)).size == len(data)
        with namespace("c"):
            w = await content.writer("ref", 0, d)
            await w.write(b" and more")  # appending goes on after the stored bytes
            assert w.digest() == digest_of(data + b" and more")
            await w.close()
        md.close()

    anyio.run(main)


def test_isolated_policy_makes_a_namespace_write_the_bytes_itself(tmp_path: Path) -> None:
    async def main() -> None:
        md = open_metadata(tmp_path / "meta.db", content=MemoryContentStore(), policy="isolated")
        content = md.view(NamespacedContent)
        data = b"isolated bytes"
        with namespace("a"):
            d = await ingest(md, data)
        with namespace("b"):
            w = await content.writer("ref", len(data), d)
            assert w.offset == 0
            with pytest.raises(FailedPrecondition):
                await w.commit(len(data), d)
            w = await content.writer("ref", len(data), d)
            await w.write(data)
            assert (await w.commit(len(data), d)).digest == d
        md.close()

    anyio.run(main)


def test_a_wrong_digest_at_commit_keeps_the_bytes_for_the_next_writer(tmp_path: Path) -> None:
    async def main() -> None:
        md = open_metadata(tmp_path / "meta.db", content=MemoryContentStore())
        content = md.view(NamespacedContent)
        with namespace("ns"):
            w = await content.writer("ref")
            await w.write(b"abc")
            with pytest.raises(FailedPrecondition):
                await w.commit(3, digest_of(b"xyz"))
            w = await content.writer("ref")
            with pytest.raises(FailedPrecondition):
                await w.commit(4, digest_of(b"abc"))
            w = await content.writer("ref")
            assert w.offset == 3
            assert (await w.commit(3, digest_of(b"abc"))).size == 3
        md.close()

    anyio.run(main)


def test_labelling_a_namespace_that_does_not_exist_creates_it(tmp_path: Path) -> None:
    async def main() -> None:
        namespaces = open_metadata(tmp_path / "meta.db").view(NamespaceStore)
        updated = await namespaces.update("testing", {"k": "v"}, ["labels.k"])
        assert dict(updated.labels) == {"k": "v"}
        assert [(n.name, dict(n.labels)) for n in await namespaces.list()] == [("testing", {"k": "v"})]

    anyio.run(main)
