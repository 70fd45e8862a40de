"""Checks of the ContentStore calls, in one process: ingests, commits, reads, errors, concurrency, size.

Containerd's content suite is covered (writers with and without size and digest, status as an
ingest grows, resume after every fraction, commit error states, small blobs) and more: every error
kind, a blob of hundreds of MiB streamed through without the store holding it in memory, the
empty blob end to end.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import anyio
import anyio.lowlevel

from corral.kernel import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    Unavailable,
)
from corral.plugins.content import READ_CHUNK, ContentStore, Writer
from corral.plugins.content.conformance._blobs import (
    EMPTY_DIGEST,
    MALFORMED_DIGESTS,
    close_iterator,
    digest_of,
    drain,
    expect,
    ingest,
    list_all,
    partial_ingest,
    payload,
    read_all,
)
from corral.plugins.content.conformance._subject import Subject

CLOCK_SLACK = timedelta(milliseconds=1)
"""Times are compared at microseconds; a float conversion may round one."""
HUGE = 256 << 20
"""Bytes of the huge blob."""
HUGE_CHUNK = 1 << 20
HELD_AT_MOST = 64 << 20
"""How much more anonymous memory a durable store may hold while the huge blob passes through."""


async def check_ingest_commit_info_read_round_trip(subject: Subject) -> None:
    data = payload(300_000)
    async with subject.open() as store:
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


async def check_the_empty_blob_end_to_end(subject: Subject) -> None:
    async with subject.open() as store:
        writer = await store.writer("empty", total=0, expected=EMPTY_DIGEST)
        assert writer.offset == 0 and writer.digest() == EMPTY_DIGEST
        info = await writer.commit(0, EMPTY_DIGEST)
        assert (info.digest, info.size) == (EMPTY_DIGEST, 0)
        assert (await store.info(EMPTY_DIGEST)).size == 0
        assert [(i.digest, i.size) for i in await list_all(store)] == [(EMPTY_DIGEST, 0)]
        assert await drain(store.read(EMPTY_DIGEST)) in ([], [b""]), "the empty blob read as data"
        assert await read_all(store, EMPTY_DIGEST, 0, 10) == b""
        await expect(OutOfRange, read_all(store, EMPTY_DIGEST, 1))
        await expect(AlreadyExists, store.writer("again", expected=EMPTY_DIGEST))
        await store.delete(EMPTY_DIGEST)
        await expect(NotFound, store.info(EMPTY_DIGEST))
        unchecked = await store.writer("unchecked")  # no size, no digest: still the empty blob
        assert (await unchecked.commit(0, "")).digest == EMPTY_DIGEST


async def check_commit_without_size_or_digest_takes_what_was_written(subject: Subject) -> None:
    data = payload(5000, seed=1)
    async with subject.open() as store:
        writer = await store.writer("unchecked")
        await writer.write(data)
        info = await writer.commit(0, "")
        assert (info.digest, info.size) == (digest_of(data), len(data))


async def check_status_reports_progress_total_and_expected(subject: Subject) -> None:
    data = payload(10_000, seed=2)
    async with subject.open() as store:
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


async def check_an_ingest_resumes_where_it_stopped(subject: Subject) -> None:
    data = payload(200_000, seed=3)
    async with subject.open() as store:
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


async def check_a_ref_reopened_for_another_total_starts_again(subject: Subject) -> None:
    """containerd's local store: a writer for a ref whose ingest was opened with another total
    (both given) starts a new ingest there; without a total, or with the same, it resumes."""
    old = payload(2000, seed=8)
    data = payload(3000, seed=9)
    async with subject.open() as store:
        first = await store.writer("retotal", total=len(old))
        await first.write(old)
        await first.close()
        again = await store.writer("retotal", total=len(data))
        assert again.offset == 0, "an ingest reopened for another total was resumed"
        assert (await again.status()).total == len(data)
        await again.write(data)
        assert (await again.commit(len(data), digest_of(data))).digest == digest_of(data)
        assert await read_all(store, digest_of(data)) == data


async def check_one_writer_per_ref(subject: Subject) -> None:
    async with subject.open() as store:
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


async def check_commit_ends_the_writer_whatever_the_outcome(subject: Subject) -> None:
    async with subject.open() as store:
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


async def check_a_closed_writer_refuses_work(subject: Subject) -> None:
    async with subject.open() as store:
        writer = await store.writer("closed")
        await writer.close()
        await writer.close()  # idempotent
        await expect(FailedPrecondition, writer.write(b"x"))
        await expect(FailedPrecondition, writer.commit(0, ""))


async def check_expected_blob_that_exists_aborts_the_ingest(subject: Subject) -> None:
    data = payload(1000, seed=4)
    async with subject.open() as store:
        await ingest(store, "original", data)
        await partial_ingest(store, "duplicate", data[:10])
        error = await expect(AlreadyExists, store.writer("duplicate", expected=digest_of(data)))
        assert digest_of(data) in str(error)
        await expect(NotFound, store.status("duplicate"))
        await expect(AlreadyExists, store.writer("never-started", expected=digest_of(data)))
        await expect(NotFound, store.status("never-started"))


async def check_committing_an_existing_blob_removes_the_ingest(subject: Subject) -> None:
    data = payload(1000, seed=5)
    async with subject.open() as store:
        await ingest(store, "first", data)
        writer = await store.writer("second")
        await writer.write(data)
        error = await expect(AlreadyExists, writer.commit(len(data), digest_of(data)))
        assert digest_of(data) in str(error)
        await expect(NotFound, store.status("second"))
        assert await read_all(store, digest_of(data)) == data
        assert len(await list_all(store)) == 1


async def check_size_mismatch_leaves_the_ingest_resumable(subject: Subject) -> None:
    data = payload(3000, seed=6)
    async with subject.open() as store:
        writer = await store.writer("short")
        await writer.write(data[:2000])
        error = await expect(FailedPrecondition, writer.commit(len(data), digest_of(data)))
        assert "unexpected commit size 2000, expected 3000" in str(error)
        await expect(NotFound, store.info(digest_of(data)))
        assert (await store.status("short")).offset == 2000
        resumed = await store.writer("short")
        assert resumed.digest() == digest_of(data[:2000]), "a failed commit did not keep the bytes"
        await resumed.write(data[2000:])
        assert (await resumed.commit(len(data), digest_of(data))).digest == digest_of(data)
        assert await read_all(store, digest_of(data)) == data


async def check_digest_mismatch_leaves_the_ingest_resumable(subject: Subject) -> None:
    data = payload(3000, seed=7)
    wrong = digest_of(b"something else")
    async with subject.open() as store:
        writer = await store.writer("corrupt")
        await writer.write(data)
        error = await expect(FailedPrecondition, writer.commit(len(data), wrong))
        assert f"unexpected commit digest {digest_of(data)}, expected {wrong}" in str(error)
        await expect(NotFound, store.info(wrong))
        await expect(NotFound, store.info(digest_of(data)))
        assert (await store.status("corrupt")).offset == len(data)
        resumed = await store.writer("corrupt")
        assert resumed.digest() == digest_of(data), "a failed commit did not keep the bytes"
        assert (await resumed.commit(len(data), digest_of(data))).size == len(data)
        assert await read_all(store, digest_of(data)) == data


async def check_truncate_to_zero_restarts_the_ingest(subject: Subject) -> None:
    wrong, right = payload(5000, seed=8), payload(4000, seed=9)
    async with subject.open() as store:
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


async def check_abort_removes_an_ingest(subject: Subject) -> None:
    async with subject.open() as store:
        await partial_ingest(store, "doomed", b"partial")
        await store.abort("doomed")
        await expect(NotFound, store.status("doomed"))
        assert await store.list_statuses() == []
        await expect(NotFound, store.abort("doomed"))
        writer = await store.writer("doomed")
        assert writer.offset == 0
        await writer.close()


async def check_abort_removes_an_ingest_from_under_its_writer(subject: Subject) -> None:
    """As containerd's stores: a writer does not keep its ingest from an abort. The writer's next
    call is NotFound, its close is harmless, and the ref is free for a new writer at once (a client
    that closes its writer and aborts must not race the end of its own stream)."""
    async with subject.open() as store:
        writer = await store.writer("held")
        await writer.write(b"data")
        await store.abort("held")
        await expect(NotFound, store.status("held"))
        await expect(NotFound, writer.write(b"more"))
        again = await store.writer("held")
        await writer.close()  # the aborted writer's close leaves the new writer's lock alone
        await expect(Unavailable, store.writer("held"))
        assert again.offset == 0
        await again.close()
        await store.abort("held")
        await expect(NotFound, store.abort("held"))


async def check_list_enumerates_committed_blobs(subject: Subject) -> None:
    blobs = [payload(size, seed=10 + size) for size in (1, 1000, 70_000)]
    async with subject.open() as store:
        assert await list_all(store) == []
        for n, data in enumerate(blobs):
            await ingest(store, f"blob-{n}", data)
        await partial_ingest(store, "not-a-blob", b"pending")
        listed = {info.digest: info.size for info in await list_all(store)}
        assert listed == {digest_of(data): len(data) for data in blobs}
        assert [s.ref for s in await store.list_statuses()] == ["not-a-blob"]


async def check_delete_removes_a_blob(subject: Subject) -> None:
    data = payload(2000, seed=11)
    async with subject.open() as store:
        info = await ingest(store, "deleted", data)
        await store.delete(info.digest)
        await expect(NotFound, store.info(info.digest))
        await expect(NotFound, read_all(store, info.digest))
        assert await list_all(store) == []
        await expect(NotFound, store.delete(info.digest))
        await ingest(store, "again", data)  # and it can be written again
        assert await read_all(store, info.digest) == data


async def check_read_returns_bounded_chunks_from_offset_and_size(subject: Subject) -> None:
    data = payload(READ_CHUNK * 2 + READ_CHUNK // 2, seed=12)
    async with subject.open() as store:
        digest = (await ingest(store, "big", data, chunk=READ_CHUNK)).digest
        chunks = await drain(store.read(digest))
        sizes = [len(chunk) for chunk in chunks]
        assert all(0 < n <= READ_CHUNK for n in sizes), (
            f"read in chunks of {sizes} bytes, not 1..{READ_CHUNK}"
        )
        assert b"".join(chunks) == data
        for offset, size in ((0, 10), (5, 0), (READ_CHUNK - 3, 7), (READ_CHUNK + 1, READ_CHUNK + 5)):
            expected = data[offset : offset + size] if size else data[offset:]
            assert await read_all(store, digest, offset, size) == expected, (offset, size)
        assert await read_all(store, digest, len(data) - 4, 100) == data[-4:]  # cut at the end
        assert await read_all(store, digest, len(data)) == b""  # at the end: nothing
        await expect(OutOfRange, read_all(store, digest, len(data) + 1))
        await expect(InvalidArgument, read_all(store, digest, -1))
        await expect(InvalidArgument, read_all(store, digest, 0, -1))


async def check_a_reader_may_stop_early(subject: Subject) -> None:
    data = payload(READ_CHUNK * 3, seed=13)
    async with subject.open() as store:
        digest = (await ingest(store, "early", data, chunk=READ_CHUNK)).digest
        chunks = store.read(digest)
        try:
            first = await anext(chunks)
        finally:
            await close_iterator(chunks)
        assert first == data[: len(first)]
        assert await read_all(store, digest) == data


async def check_malformed_digests_are_invalid_arguments(subject: Subject) -> None:
    async with subject.open() as store:
        for bad in MALFORMED_DIGESTS:
            # Made one at a time: a call that fails the check leaves no other one never awaited.
            calls: list[Callable[[str], Awaitable[object]]] = [
                store.info,
                store.delete,
                lambda digest: read_all(store, digest),
            ]
            if bad:  # an empty expected digest means "none given"
                calls.append(lambda digest: store.writer("ref", expected=digest))
            for call in calls:
                error = await expect(InvalidArgument, call(bad))
                assert f'"{bad}"' in str(error), str(error)
        writer = await store.writer("bad-commit")
        await writer.write(b"x")
        await expect(InvalidArgument, writer.commit(1, "sha256:nope"))


async def check_malformed_refs_and_sizes_are_invalid_arguments(subject: Subject) -> None:
    async with subject.open() as store:
        await expect(InvalidArgument, store.writer(""))
        await expect(InvalidArgument, store.writer("negative", total=-1))
        await expect(NotFound, store.status("negative"))  # a refused writer starts nothing
        assert await store.list_statuses() == []
        writer = await store.writer("sizes")
        await expect(InvalidArgument, writer.truncate(1))
        await writer.close()


async def check_missing_things_are_not_found(subject: Subject) -> None:
    absent = digest_of(b"absent")
    async with subject.open() as store:
        error = await expect(NotFound, store.info(absent))
        assert absent in str(error)
        await expect(NotFound, store.delete(absent))
        await expect(NotFound, read_all(store, absent))
        await expect(NotFound, store.status("no-such-ref"))
        await expect(NotFound, store.abort("no-such-ref"))


async def check_concurrent_writers_on_different_refs_land_intact(subject: Subject) -> None:
    blobs = {f"layer-{n}": payload(150_000 + n * 1000, seed=100 + n) for n in range(8)}
    async with subject.open() as store:

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


async def check_a_waiting_writer_gets_the_ref_once_it_is_closed(subject: Subject) -> None:
    data = payload(50_000, seed=14)
    async with subject.open() as store:
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
        assert attempts > 1, "a second writer got the ref while the first still held it"
        assert await read_all(store, digest_of(data)) == data


async def check_implements_the_protocols(subject: Subject) -> None:
    async with subject.open() as store:
        assert isinstance(store, ContentStore)
        writer = await store.writer("protocol")
        assert isinstance(writer, Writer)
        await writer.close()


async def check_writers_with_and_without_size_and_digest(subject: Subject) -> None:
    blobs = {f"c{n}": payload(256, seed=20 + n) for n in range(1, 5)}
    async with subject.open() as store:
        opened = datetime.now(UTC)
        writers = {
            "c1": await store.writer("c1"),
            "c2": await store.writer("c2", total=256),
            "c3": await store.writer("c3", expected=digest_of(blobs["c3"])),
            "c4": await store.writer("c4", total=256, expected=digest_of(blobs["c4"])),
        }
        for ref, writer in writers.items():
            data = blobs[ref]
            for start in range(0, len(data), 32):  # small writes, as io.CopyBuffer with a 32-byte buffer
                await writer.write(data[start : start + 32])
            info = await writer.commit(0, "")
            done = datetime.now(UTC)
            assert writer.digest() == digest_of(data), ref
            assert (info.digest, info.size) == (digest_of(data), 256), ref
            stored = await store.info(digest_of(data))
            assert (stored.digest, stored.size) == (info.digest, 256)
            assert opened - CLOCK_SLACK <= stored.created_at <= done + CLOCK_SLACK, (
                f"{ref} created at {stored.created_at}, not between {opened} and {done}"
            )
            assert stored.updated_at >= stored.created_at


async def check_status_follows_the_ingest(subject: Subject) -> None:
    data = payload(256, seed=30)
    async with subject.open() as store:
        before = datetime.now(UTC)
        writer = await store.writer("c1", total=256, expected=digest_of(data))
        after = datetime.now(UTC)
        status = await writer.status()
        assert (status.ref, status.offset, status.total, status.expected) == ("c1", 0, 256, digest_of(data))
        assert before - CLOCK_SLACK <= status.started_at <= after + CLOCK_SLACK, status
        assert writer.digest() == EMPTY_DIGEST
        started = status.started_at
        for end in (64, 192, 256):
            writing = datetime.now(UTC)
            await writer.write(data[writer.offset : end])
            written = datetime.now(UTC)
            for status in (await writer.status(), await store.status("c1")):
                assert (status.offset, status.total) == (end, 256), status
                assert status.started_at == started, "an ingest's start moved"
                assert writing - CLOCK_SLACK <= status.updated_at <= written + CLOCK_SLACK, (
                    f"updated at {status.updated_at}, not between {writing} and {written}"
                )
            assert writer.digest() == digest_of(data[:end])
        assert (await writer.commit(0, "")).digest == digest_of(data)
        await expect(NotFound, store.status("c1"))


async def check_an_ingest_resumes_after_every_fraction(subject: Subject) -> None:
    async with subject.open() as store:
        for size in (500, 5000, 50000):
            for fraction in (0.0, 0.1, 0.5, 0.9, 1.0):
                for how in ("continue", "truncate"):
                    data = payload(size, seed=size + int(fraction * 10))
                    limit = int(size * fraction)
                    ref = f"ref-{size}-{fraction}-{how}"
                    first = await store.writer(ref, total=size, expected=digest_of(data))
                    await first.write(data[:limit])
                    await first.close()
                    writer = await store.writer(ref, total=size, expected=digest_of(data))
                    status = await writer.status()
                    assert status.offset == limit, f"{ref}: resumed at {status.offset}, not {limit}"
                    assert writer.digest() == digest_of(data[:limit]), (
                        f"{ref}: the bytes kept are not those written"
                    )
                    if how == "truncate":
                        await writer.truncate(0)
                        await writer.write(data)
                    else:
                        await writer.write(data[limit:])
                    info = await writer.commit(size, digest_of(data))
                    assert (info.digest, info.size) == (digest_of(data), size), ref
                    assert await read_all(store, info.digest) == data, ref
                    await store.delete(info.digest)


async def check_commit_error_states(subject: Subject) -> None:
    """containerd's sequence of failed commits on one ref, each leaving it usable and the lock released."""
    c1, other = payload(256, seed=40), payload(256, seed=41)
    async with subject.open() as store:
        await ingest(store, "c1", c1)
        ref = "c1-commit-error-state"

        async def reopen() -> Writer:
            writer = await store.writer(ref)
            await expect(Unavailable, store.writer(ref))
            return writer

        writer = await reopen()
        await writer.write(c1)
        await expect(AlreadyExists, writer.commit(len(c1), digest_of(c1)))
        writer = await reopen()
        assert writer.offset == 0, "an ingest that found its blob already there was kept"
        await writer.write(c1)
        await expect(AlreadyExists, writer.commit(len(c1), ""))  # exists, known only by what was written
        writer = await reopen()
        await writer.write(c1 + b"more")
        await expect(FailedPrecondition, writer.commit(len(c1) + 4, digest_of(other)))
        writer = await reopen()
        await expect(FailedPrecondition, writer.commit(len(c1), ""))
        writer = await reopen()
        assert (await writer.commit(len(c1) + 4, "")).digest == digest_of(c1 + b"more")
        writer = await reopen()
        await writer.write(c1)
        await expect(AlreadyExists, writer.commit(len(c1), digest_of(c1)))
        writer = await reopen()
        await writer.close()
        writer = await store.writer(ref)  # closed: the ref is free again
        await writer.close()


def _anonymous_memory() -> int:
    """Bytes of this process's anonymous resident memory (heap), which a held blob would grow."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


async def check_a_huge_blob_is_streamed_through(subject: Subject) -> None:
    base = payload(HUGE_CHUNK, seed=50)

    def chunk(n: int) -> bytes:
        return n.to_bytes(8, "big") + base[8:]  # every chunk differs: no store can fold them

    hashed = hashlib.sha256()
    for n in range(HUGE // HUGE_CHUNK):
        hashed.update(chunk(n))
    digest = f"sha256:{hashed.hexdigest()}"
    async with subject.open() as store:
        before = _anonymous_memory()
        held = 0
        writer = await store.writer("huge", total=HUGE, expected=digest)
        for n in range(HUGE // HUGE_CHUNK):
            await writer.write(chunk(n))
            if n % 32 == 31:
                held = max(held, _anonymous_memory() - before)
        assert writer.offset == HUGE and (await store.status("huge")).offset == HUGE
        info = await writer.commit(HUGE, digest)
        assert (info.digest, info.size) == (digest, HUGE)
        assert (await store.info(digest)).size == HUGE
        read = hashlib.sha256()
        length = 0
        chunks = store.read(digest)
        try:
            async for part in chunks:
                assert 0 < len(part) <= READ_CHUNK, f"a read chunk of {len(part)} bytes"
                read.update(part)
                length += len(part)
                if length % (32 * HUGE_CHUNK) < len(part):
                    held = max(held, _anonymous_memory() - before)
        finally:
            await close_iterator(chunks)
        assert (length, f"sha256:{read.hexdigest()}") == (HUGE, digest), "the huge blob read back differs"
        last = chunk(HUGE // HUGE_CHUNK - 1)
        assert await read_all(store, digest, HUGE - 10, 100) == last[-10:]
        if subject.durable:
            assert held <= HELD_AT_MOST, (
                f"the store held {held >> 20} MiB more memory while a {HUGE >> 20} MiB blob passed through:"
                " it must stream blobs, not keep them in memory"
            )
        await store.delete(digest)
