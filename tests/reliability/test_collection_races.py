"""What the kill -9 suite found outside a crash: a collection racing a commit lost an acknowledged blob.

The sweep read which digests have records, then listed the blobs; a commit that recorded its blob in
between, and left ``in_flight`` before the listing, had its blob deleted under its new record. The
same held for a namespace committing (by digest, unsent) a blob another namespace was dropping.
These tests stop the sweep inside its listing and commit meanwhile.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from corral.kernel import Aborted
from corral.plugins.content import Info
from corral.plugins.content.memory import MemoryContentStore
from corral.plugins.core import namespace
from corral.plugins.metadata import Metadata, NamespacedContent, NamespacedWriter
from corral.plugins.metadata.sqlite import open_metadata

ROOT = {"containerd.io/gc.root": "test"}


class PausingStore(MemoryContentStore):
    """A memory store whose listing (the sweep's) waits at its start until told to go on."""

    def __init__(self) -> None:
        super().__init__()
        self.listing = anyio.Event()
        self.go_on = anyio.Event()
        self.pause = False

    async def list(self) -> AsyncIterator[Info]:
        if self.pause:
            self.listing.set()
            await self.go_on.wait()
        async for info in super().list():
            yield info


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def _commit(content: NamespacedContent, ns: str, ref: str, data: bytes, expected: str = "") -> None:
    with namespace(ns):
        writer = await content.writer(ref, expected=expected)
        if data:
            await writer.write(data)
        await writer.commit(len(data), expected, ROOT)


def metadata_over(tmp_path: Path) -> tuple[PausingStore, Metadata, NamespacedContent]:
    store = PausingStore()
    md = open_metadata(tmp_path / "meta.db", content=store)
    return store, md, md.view(NamespacedContent)


async def _shared_writer(content: NamespacedContent, data: bytes) -> NamespacedWriter:
    """A writer in "b" for a blob "a" holds: under the shared policy, nothing to send."""
    await _commit(content, "a", "ref", data)
    with namespace("b"):
        return await content.writer("ref", expected=digest(data))


def test_a_blob_committed_while_a_sweep_lists_the_store_keeps_its_bytes(tmp_path: Path) -> None:
    store, md, content = metadata_over(tmp_path)
    data = b"committed during the sweep"

    async def main() -> None:
        store.pause = True
        async with anyio.create_task_group() as tg:
            tg.start_soon(md.garbage_collect)
            await store.listing.wait()
            tg.start_soon(_commit, content, "ns", "ref", data)
            await anyio.sleep(0.2)  # the commit gets as far as it can while the sweep lists
            store.go_on.set()
        with namespace("ns"):
            assert [i.digest for i in await content.list()] == [digest(data)]
            assert b"".join([c async for c in await content.read(digest(data))]) == data

    anyio.run(main)


def test_a_shared_writer_holds_its_blob_from_collection_until_it_is_closed(tmp_path: Path) -> None:
    """The kill -9 suite's second find: a namespace opened a writer by digest for a blob another
    namespace held, the other dropped it and a collection took it before the commit, which could
    only be refused. containerd records such a commit without the bytes; corral keeps the bytes."""
    store, md, content = metadata_over(tmp_path)
    data = b"held by a, named by b"

    async def main() -> None:
        writer = await _shared_writer(content, data)
        assert writer.offset == len(data)
        with namespace("a"):
            await content.delete(digest(data))
        await md.garbage_collect()
        await writer.commit(len(data), digest(data), ROOT)
        await writer.close()
        with namespace("b"):
            assert [i.digest for i in await content.list()] == [digest(data)]
            assert b"".join([c async for c in await content.read(digest(data))]) == data

        # Walked away from without a commit, the writer holds nothing once closed.
        with namespace("c"):
            other = await content.writer("ref", expected=digest(data))
        with namespace("b"):
            await content.delete(digest(data))
        await md.garbage_collect()
        assert [i async for i in store.list()] != []
        await other.close()
        await md.garbage_collect()
        assert [i async for i in store.list()] == []

    anyio.run(main)


def test_a_writer_opened_by_digest_during_a_sweep_that_takes_the_blob_asks_for_the_bytes(
    tmp_path: Path,
) -> None:
    store, md, content = metadata_over(tmp_path)
    data = b"dropped by a while b opens"
    opened: list[int] = []

    async def open_in_b() -> None:
        with namespace("b"):
            writer = await content.writer("ref", expected=digest(data))
        opened.append(writer.offset)
        await writer.write(data)
        await writer.commit(len(data), digest(data), ROOT)
        await writer.close()

    async def main() -> None:
        await _commit(content, "a", "ref", data)
        with namespace("a"):
            await content.delete(digest(data))
        store.pause = True
        async with anyio.create_task_group() as tg:
            tg.start_soon(md.garbage_collect)
            await store.listing.wait()
            tg.start_soon(open_in_b)
            await anyio.sleep(0.2)  # the open waits for the sweep, which takes the blob
            assert opened == []
            store.go_on.set()
        assert opened == [0]
        with namespace("b"):
            assert b"".join([c async for c in await content.read(digest(data))]) == data

    anyio.run(main)


def test_a_shared_commit_of_a_blob_removed_beneath_it_is_aborted_not_recorded_without_bytes(
    tmp_path: Path,
) -> None:
    store, _md, content = metadata_over(tmp_path)
    data = b"held by a, named by b"

    async def main() -> None:
        writer = await _shared_writer(content, data)
        await store.delete(digest(data))  # beneath the metadata store, as a failing disk might
        with pytest.raises(Aborted, match="write it again"):
            await writer.commit(len(data), digest(data), ROOT)
        with namespace("b"):
            assert [i.digest for i in await content.list()] == []

    anyio.run(main)


class PausingDelete(MemoryContentStore):
    """A memory store whose deletions (the sweep's) wait at their start until told to go on."""

    def __init__(self) -> None:
        super().__init__()
        self.deleting = anyio.Event()
        self.go_on = anyio.Event()

    async def delete(self, digest: str) -> None:
        self.deleting.set()
        await self.go_on.wait()
        await super().delete(digest)


def test_a_commit_of_bytes_a_sweep_is_deleting_waits_for_it_and_stores_them_again(tmp_path: Path) -> None:
    """The kill -9 suite's third find: a sweep chose a blob no record held and was deleting it when
    another namespace committed the same bytes; the commit found them stored, recorded them, and the
    sweep's deletion then took them from under the new record."""
    store = PausingDelete()
    md = open_metadata(tmp_path / "meta.db", content=store)
    content = md.view(NamespacedContent)
    data = b"dropped by a, written again by b"
    committed: list[str] = []

    async def commit_in_b() -> None:
        await _commit(content, "b", "ref", data)  # no digest named: b writes the bytes itself
        committed.append("b")

    async def main() -> None:
        await _commit(content, "a", "ref", data)
        with namespace("a"):
            await content.delete(digest(data))
        async with anyio.create_task_group() as tg:
            tg.start_soon(md.garbage_collect)
            await store.deleting.wait()
            tg.start_soon(commit_in_b)
            await anyio.sleep(0.2)
            assert committed == []  # waiting for the deletion it would otherwise lose its bytes to
            store.go_on.set()
        assert committed == ["b"]
        with namespace("b"):
            assert b"".join([c async for c in await content.read(digest(data))]) == data

    anyio.run(main)
