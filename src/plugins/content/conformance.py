"""What every ``ContentStore`` must do, built-in, third-party or fake: checks with plain asserts.

Each check is ``async def check_x(make_store)``, where ``make_store()`` is an async context manager
yielding a fresh, empty store. Run them all with ``check_content_store(make_store)``, or one by one
from ``CHECKS`` (e.g. as parametrised tests, so each failure is reported on its own). The checks need
no test framework, only anyio.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TypeVar

import anyio
import anyio.lowlevel

from corral.kernel import (
    AlreadyExists,
    CorralError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    Unavailable,
)
from corral.plugins.content import READ_CHUNK, ContentStore, Info, Writer

StoreFactory = Callable[[], AbstractAsyncContextManager[ContentStore]]
Check = Callable[[StoreFactory], Awaitable[None]]
E = TypeVar("E", bound=CorralError)

EMPTY_DIGEST = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
MALFORMED_DIGESTS = (
    "",
    "abc",
    "sha256:",
    "sha256:xyz",
    "sha256:" + "0" * 63,
    "sha256:" + "0" * 65,
    "sha256:" + "A" * 64,
    "md5:" + "0" * 32,
    ":" + "0" * 64,
)


# -- helpers -------------------------------------------------------------------------------------


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes that differ per seed and per position."""
    block = hashlib.sha512(seed.to_bytes(8, "big")).digest() * 64  # 4 KiB
    return (block * (size // len(block) + 1))[:size]


async def expect(kind: type[E], awaitable: Awaitable[object]) -> E:
    """Await ``awaitable`` and return the error of ``kind`` it raised; fail if it raised nothing."""
    try:
        await awaitable
    except kind as exc:
        return exc
    raise AssertionError(f"expected {kind.__name__}, nothing was raised")


async def drain(chunks: AsyncIterator[bytes]) -> list[bytes]:
    try:
        return [chunk async for chunk in chunks]
    finally:
        await close_iterator(chunks)


async def close_iterator(iterator: AsyncIterator[object]) -> None:
    """Close an async generator now rather than when it is garbage-collected."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


async def read_all(store: ContentStore, digest: str, offset: int = 0, size: int = 0) -> bytes:
    return b"".join(await drain(store.read(digest, offset, size)))


async def list_all(store: ContentStore) -> list[Info]:
    infos = store.list()
    try:
        return [info async for info in infos]
    finally:
        await close_iterator(infos)


async def ingest(store: ContentStore, ref: str, data: bytes, chunk: int = 64 * 1024) -> Info:
    """Write ``data`` through ``ref`` in ``chunk``-sized writes and commit it, verified."""
    writer = await store.writer(ref, total=len(data), expected=digest_of(data))
    try:
        for start in range(0, len(data), chunk):
            await writer.write(data[start : start + chunk])
        return await writer.commit(len(data), digest_of(data))
    finally:
        await writer.close()


async def partial_ingest(store: ContentStore, ref: str, data: bytes) -> None:
    writer = await store.writer(ref)
    try:
        await writer.write(data)
    finally:
        await writer.close()


# -- checks --------------------------------------------------------------------------------------


async def check_ingest_commit_info_read_round_trip(make_store: StoreFactory) -> None:
    data = payload(300_000)
    async with make_store() as store:
        writer = await store.writer("round-trip", total=len(data))
        assert isinstance(writer, Writer)
        assert writer.ref == "round-trip"
        assert writer.offset == 0
        assert writer.digest() == EMPTY_DIGEST
        assert await writer.write(data[:100_000]) == 100_000
        assert await writer.write(data[100_000:]) == len(data)
        assert writer.offset == len(data)
        assert writer.digest() == digest_of(data)
        status = await writer.status()
        assert (status.ref, status.offset, status.total) == ("round-trip", len(data), len(data))
        info = await writer.commit(len(data), digest_of(data))
        assert (info.digest, info.size) == (digest_of(data), len(data))
        await writer.close()  # after commit, close is harmless
        stored = await store.info(digest_of(data))
        assert (stored.digest, stored.size) == (info.digest, info.size)
        assert await read_all(store, info.digest) == data
        assert [i.digest for i in await list_all(store)] == [info.digest]
        await expect(NotFound, store.status("round-trip"))
        assert await store.list_statuses() == []


async def check_the_empty_blob_can_be_committed(make_store: StoreFactory) -> None:
    async with make_store() as store:
        writer = await store.writer("empty")
        info = await writer.commit(0, EMPTY_DIGEST)
        assert (info.digest, info.size) == (EMPTY_DIGEST, 0)
        assert (await store.info(EMPTY_DIGEST)).size == 0
        assert await read_all(store, EMPTY_DIGEST) == b""


async def check_commit_without_size_or_digest_takes_what_was_written(make_store: StoreFactory) -> None:
    data = payload(5000, seed=1)
    async with make_store() as store:
        writer = await store.writer("unchecked")
        await writer.write(data)
        info = await writer.commit(0, "")
        assert (info.digest, info.size) == (digest_of(data), len(data))


async def check_status_reports_progress_total_and_expected(make_store: StoreFactory) -> None:
    data = payload(10_000, seed=2)
    async with make_store() as store:
        writer = await store.writer("progress", total=len(data), expected=digest_of(data))
        await writer.write(data[:4000])
        for status in (await writer.status(), await store.status("progress")):
            assert status.ref == "progress"
            assert status.offset == 4000
            assert status.total == len(data)
            assert status.expected == digest_of(data)
            assert status.started_at <= status.updated_at
        assert [s.ref for s in await store.list_statuses()] == ["progress"]
        await writer.close()
        assert (await store.status("progress")).offset == 4000


async def check_an_ingest_resumes_where_it_stopped(make_store: StoreFactory) -> None:
    data = payload(200_000, seed=3)
    async with make_store() as store:
        first = await store.writer("resume", total=len(data))
        await first.write(data[:70_000])
        started = (await first.status()).started_at
        await first.close()
        assert (await store.status("resume")).offset == 70_000
        second = await store.writer("resume")
        assert second.offset == 70_000
        assert second.digest() == digest_of(data[:70_000])
        status = await second.status()
        assert (status.started_at, status.total) == (started, len(data))
        await second.write(data[70_000:])
        info = await second.commit(len(data), digest_of(data))
        assert info.digest == digest_of(data)
        assert await read_all(store, info.digest) == data


async def check_one_writer_per_ref(make_store: StoreFactory) -> None:
    async with make_store() as store:
        first = await store.writer("locked")
        error = await expect(Unavailable, store.writer("locked"))
        assert "locked" in str(error)
        other = await store.writer("another-ref")  # other refs are independent
        await other.close()
        await first.write(b"abc")
        await first.close()
        again = await store.writer("locked")
        assert again.offset == 3
        await again.close()


async def check_commit_ends_the_writer_whatever_the_outcome(make_store: StoreFactory) -> None:
    async with make_store() as store:
        writer = await store.writer("ends")
        await writer.write(b"hello")
        await expect(FailedPrecondition, writer.commit(6, ""))
        await expect(FailedPrecondition, writer.write(b"more"))
        reopened = await store.writer("ends")  # the lock went with the failed commit
        assert reopened.offset == 5
        await reopened.commit(5, digest_of(b"hello"))
        await expect(FailedPrecondition, reopened.write(b"more"))
        fresh = await store.writer("ends")  # the committed ingest is gone: a new one starts
        assert fresh.offset == 0
        await fresh.close()


async def check_a_closed_writer_refuses_work(make_store: StoreFactory) -> None:
    async with make_store() as store:
        writer = await store.writer("closed")
        await writer.close()
        await writer.close()  # idempotent
        await expect(FailedPrecondition, writer.write(b"x"))
        await expect(FailedPrecondition, writer.commit(0, ""))


async def check_expected_blob_that_exists_aborts_the_ingest(make_store: StoreFactory) -> None:
    data = payload(1000, seed=4)
    async with make_store() as store:
        await ingest(store, "original", data)
        await partial_ingest(store, "duplicate", data[:10])
        error = await expect(AlreadyExists, store.writer("duplicate", expected=digest_of(data)))
        assert digest_of(data) in str(error)
        await expect(NotFound, store.status("duplicate"))
        await expect(AlreadyExists, store.writer("never-started", expected=digest_of(data)))
        await expect(NotFound, store.status("never-started"))


async def check_committing_an_existing_blob_removes_the_ingest(make_store: StoreFactory) -> None:
    data = payload(1000, seed=5)
    async with make_store() as store:
        await ingest(store, "first", data)
        writer = await store.writer("second")
        await writer.write(data)
        error = await expect(AlreadyExists, writer.commit(len(data), digest_of(data)))
        assert digest_of(data) in str(error)
        await expect(NotFound, store.status("second"))
        assert await read_all(store, digest_of(data)) == data
        assert len(await list_all(store)) == 1


async def check_size_mismatch_leaves_the_ingest_resumable(make_store: StoreFactory) -> None:
    data = payload(3000, seed=6)
    async with make_store() as store:
        writer = await store.writer("short")
        await writer.write(data[:2000])
        error = await expect(FailedPrecondition, writer.commit(len(data), digest_of(data)))
        assert "unexpected commit size 2000, expected 3000" in str(error)
        await expect(NotFound, store.info(digest_of(data)))
        assert (await store.status("short")).offset == 2000
        resumed = await store.writer("short")
        await resumed.write(data[2000:])
        assert (await resumed.commit(len(data), digest_of(data))).digest == digest_of(data)


async def check_digest_mismatch_leaves_the_ingest_resumable(make_store: StoreFactory) -> None:
    data = payload(3000, seed=7)
    wrong = digest_of(b"something else")
    async with make_store() as store:
        writer = await store.writer("corrupt")
        await writer.write(data)
        error = await expect(FailedPrecondition, writer.commit(len(data), wrong))
        assert f"unexpected commit digest {digest_of(data)}, expected {wrong}" in str(error)
        await expect(NotFound, store.info(wrong))
        await expect(NotFound, store.info(digest_of(data)))
        assert (await store.status("corrupt")).offset == len(data)
        resumed = await store.writer("corrupt")
        assert (await resumed.commit(len(data), digest_of(data))).size == len(data)


async def check_truncate_to_zero_restarts_the_ingest(make_store: StoreFactory) -> None:
    wrong, right = payload(5000, seed=8), payload(4000, seed=9)
    async with make_store() as store:
        writer = await store.writer("restart")
        await writer.write(wrong)
        await expect(InvalidArgument, writer.truncate(10))
        await writer.truncate(0)
        assert writer.offset == 0
        assert writer.digest() == EMPTY_DIGEST
        assert (await store.status("restart")).offset == 0
        await writer.write(right)
        assert (await writer.commit(len(right), digest_of(right))).digest == digest_of(right)
        assert await read_all(store, digest_of(right)) == right


async def check_abort_removes_an_ingest(make_store: StoreFactory) -> None:
    async with make_store() as store:
        await partial_ingest(store, "doomed", b"partial")
        await store.abort("doomed")
        await expect(NotFound, store.status("doomed"))
        assert await store.list_statuses() == []
        await expect(NotFound, store.abort("doomed"))
        writer = await store.writer("doomed")
        assert writer.offset == 0
        await writer.close()


async def check_abort_refuses_a_ref_held_by_a_writer(make_store: StoreFactory) -> None:
    async with make_store() as store:
        writer = await store.writer("held")
        await writer.write(b"data")
        await expect(Unavailable, store.abort("held"))
        assert (await store.status("held")).offset == 4
        await writer.close()
        await store.abort("held")
        await expect(NotFound, store.status("held"))


async def check_list_enumerates_committed_blobs(make_store: StoreFactory) -> None:
    blobs = [payload(size, seed=10 + size) for size in (1, 1000, 70_000)]
    async with make_store() as store:
        assert await list_all(store) == []
        for n, data in enumerate(blobs):
            await ingest(store, f"blob-{n}", data)
        await partial_ingest(store, "not-a-blob", b"pending")
        listed = {info.digest: info.size for info in await list_all(store)}
        assert listed == {digest_of(data): len(data) for data in blobs}
        assert [s.ref for s in await store.list_statuses()] == ["not-a-blob"]


async def check_delete_removes_a_blob(make_store: StoreFactory) -> None:
    data = payload(2000, seed=11)
    async with make_store() as store:
        info = await ingest(store, "deleted", data)
        await store.delete(info.digest)
        await expect(NotFound, store.info(info.digest))
        await expect(NotFound, read_all(store, info.digest))
        assert await list_all(store) == []
        await expect(NotFound, store.delete(info.digest))
        await ingest(store, "again", data)  # and it can be written again
        assert await read_all(store, info.digest) == data


async def check_read_returns_bounded_chunks_from_offset_and_size(make_store: StoreFactory) -> None:
    data = payload(READ_CHUNK * 2 + READ_CHUNK // 2, seed=12)
    async with make_store() as store:
        digest = (await ingest(store, "big", data, chunk=READ_CHUNK)).digest
        chunks = await drain(store.read(digest))
        assert all(0 < len(chunk) <= READ_CHUNK for chunk in chunks)
        assert b"".join(chunks) == data
        for offset, size in ((0, 10), (5, 0), (READ_CHUNK - 3, 7), (READ_CHUNK + 1, READ_CHUNK + 5)):
            expected = data[offset : offset + size] if size else data[offset:]
            assert await read_all(store, digest, offset, size) == expected, (offset, size)
        assert await read_all(store, digest, len(data) - 4, 100) == data[-4:]  # cut at the end
        assert await read_all(store, digest, len(data)) == b""  # at the end: nothing
        await expect(OutOfRange, read_all(store, digest, len(data) + 1))
        await expect(InvalidArgument, read_all(store, digest, -1))
        await expect(InvalidArgument, read_all(store, digest, 0, -1))


async def check_a_reader_may_stop_early(make_store: StoreFactory) -> None:
    data = payload(READ_CHUNK * 3, seed=13)
    async with make_store() as store:
        digest = (await ingest(store, "early", data, chunk=READ_CHUNK)).digest
        chunks = store.read(digest)
        try:
            first = await anext(chunks)
        finally:
            await close_iterator(chunks)
        assert first == data[: len(first)]
        assert await read_all(store, digest) == data


async def check_malformed_digests_are_invalid_arguments(make_store: StoreFactory) -> None:
    async with make_store() as store:
        for bad in MALFORMED_DIGESTS:
            calls: list[Awaitable[object]] = [store.info(bad), store.delete(bad), read_all(store, bad)]
            if bad:  # an empty expected digest means "none given"
                calls.append(store.writer("ref", expected=bad))
            for call in calls:
                error = await expect(InvalidArgument, call)
                assert f'"{bad}"' in str(error), str(error)
        writer = await store.writer("bad-commit")
        await writer.write(b"x")
        await expect(InvalidArgument, writer.commit(1, "sha256:nope"))


async def check_missing_things_are_not_found(make_store: StoreFactory) -> None:
    absent = digest_of(b"absent")
    async with make_store() as store:
        error = await expect(NotFound, store.info(absent))
        assert absent in str(error)
        await expect(NotFound, store.delete(absent))
        await expect(NotFound, read_all(store, absent))
        await expect(NotFound, store.status("no-such-ref"))
        await expect(NotFound, store.abort("no-such-ref"))


async def check_concurrent_writers_on_different_refs_land_intact(make_store: StoreFactory) -> None:
    blobs = {f"layer-{n}": payload(150_000 + n * 1000, seed=100 + n) for n in range(8)}
    async with make_store() as store:

        async def push(ref: str, data: bytes) -> None:
            writer = await store.writer(ref, total=len(data))
            for start in range(0, len(data), 16 * 1024):
                await writer.write(data[start : start + 16 * 1024])
                await anyio.lowlevel.checkpoint()  # interleave with the other writers
            await writer.commit(len(data), digest_of(data))

        async with anyio.create_task_group() as tg:
            for ref, data in blobs.items():
                tg.start_soon(push, ref, data)
        for data in blobs.values():
            assert await read_all(store, digest_of(data)) == data
        assert await store.list_statuses() == []


async def check_a_waiting_writer_gets_the_ref_once_it_is_closed(make_store: StoreFactory) -> None:
    data = payload(50_000, seed=14)
    async with make_store() as store:
        first = await store.writer("handover")
        attempts = 0

        async def second_writer() -> None:
            nonlocal attempts
            while True:  # as containerd's client does: retry while Unavailable
                attempts += 1
                try:
                    writer = await store.writer("handover")
                    break
                except Unavailable:
                    await anyio.sleep(0.001)
            assert writer.offset == 20_000
            await writer.write(data[20_000:])
            await writer.commit(len(data), digest_of(data))

        async with anyio.create_task_group() as tg:
            tg.start_soon(second_writer)
            await first.write(data[:20_000])
            await anyio.sleep(0.02)
            await first.close()
        assert attempts > 1
        assert await read_all(store, digest_of(data)) == data


async def check_implements_the_protocols(make_store: StoreFactory) -> None:
    async with make_store() as store:
        assert isinstance(store, ContentStore)
        writer = await store.writer("protocol")
        assert isinstance(writer, Writer)
        await writer.close()


CHECKS: tuple[Check, ...] = (
    check_implements_the_protocols,
    check_ingest_commit_info_read_round_trip,
    check_the_empty_blob_can_be_committed,
    check_commit_without_size_or_digest_takes_what_was_written,
    check_status_reports_progress_total_and_expected,
    check_an_ingest_resumes_where_it_stopped,
    check_one_writer_per_ref,
    check_commit_ends_the_writer_whatever_the_outcome,
    check_a_closed_writer_refuses_work,
    check_expected_blob_that_exists_aborts_the_ingest,
    check_committing_an_existing_blob_removes_the_ingest,
    check_size_mismatch_leaves_the_ingest_resumable,
    check_digest_mismatch_leaves_the_ingest_resumable,
    check_truncate_to_zero_restarts_the_ingest,
    check_abort_removes_an_ingest,
    check_abort_refuses_a_ref_held_by_a_writer,
    check_list_enumerates_committed_blobs,
    check_delete_removes_a_blob,
    check_read_returns_bounded_chunks_from_offset_and_size,
    check_a_reader_may_stop_early,
    check_malformed_digests_are_invalid_arguments,
    check_missing_things_are_not_found,
    check_concurrent_writers_on_different_refs_land_intact,
    check_a_waiting_writer_gets_the_ref_once_it_is_closed,
)
"""Every check, in a stable order."""


async def check_content_store(make_store: StoreFactory) -> None:
    """Run every check; the first failure propagates."""
    for check in CHECKS:
        await check(make_store)
