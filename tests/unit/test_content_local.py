"""The local content store: the content conformance suite, plus what only a store on disk can promise."""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import os
import signal
import stat
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from corral.kernel import (
    DaemonConfig,
    FailedPrecondition,
    InvalidArgument,
    Kernel,
    NotFound,
    builtin_candidate,
    decode,
)
from corral.plugins.content import conformance as cf
from corral.plugins.content.local import LocalContentConfig, LocalContentStore, registration

pytestmark = pytest.mark.anyio
URI = "io.containerd.content.v1.content"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def ingest_dir(root: Path, ref: str) -> Path:
    return root / "ingest" / hashlib.sha256(ref.encode()).hexdigest()


def age(path: Path, by: timedelta) -> None:
    then = (datetime.now(UTC) - by).timestamp()
    os.utime(path, (then, then))


# -- the conformance suite ------------------------------------------------------------------------


@pytest.mark.parametrize("check", cf.CHECKS, ids=cf.check_name)
def test_local_store_conforms(check: cf.Check, tmp_path: Path) -> None:
    cf.run(check, registration, tmp_path)


def test_check_content_store_runs_every_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = (cf.BY_NAME["one_writer_per_ref"], cf.BY_NAME["an_ingest_survives_its_writer_being_killed"])
    monkeypatch.setattr(cf, "CHECKS", chosen)
    skipped = cf.check_content_store(LocalContentStore, tmp_path, durable=False)
    assert list(skipped) == ["an_ingest_survives_its_writer_being_killed"]
    assert "keeps nothing across a restart" in skipped["an_ingest_survives_its_writer_being_killed"]


# -- layout and durability ------------------------------------------------------------------------


async def test_blobs_are_owner_only_read_only_files_named_by_algorithm_and_hex(tmp_path: Path) -> None:
    store = LocalContentStore(tmp_path)
    data = cf.payload(10_000)
    info = await cf.ingest(store, "layer", data)
    path = tmp_path / "blobs" / "sha256" / info.digest.removeprefix("sha256:")
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o400
    assert os.listdir(tmp_path / "ingest") == []


async def test_an_ingest_is_a_directory_with_its_data_and_record(tmp_path: Path) -> None:
    store = LocalContentStore(tmp_path)
    expected = cf.digest_of(b"hello world")
    writer = await store.writer("docker.io/library/busybox:latest", total=11, expected=expected)
    await writer.write(b"hello")
    directory = ingest_dir(tmp_path, "docker.io/library/busybox:latest")
    assert (directory / "data").read_bytes() == b"hello"
    record = json.loads((directory / "ingest.json").read_text())
    assert (record["ref"], record["total"], record["expected"]) == (writer.ref, 11, expected)
    await writer.close()
    assert sorted(os.listdir(directory)) == ["data", "ingest.json"]


async def test_failed_commits_put_nothing_under_blobs(tmp_path: Path) -> None:
    store = LocalContentStore(tmp_path)
    writer = await store.writer("bad")
    await writer.write(b"not what was promised")
    with pytest.raises(FailedPrecondition):
        await writer.commit(0, cf.digest_of(b"promised"))
    assert os.listdir(tmp_path / "blobs" / "sha256") == []
    assert (ingest_dir(tmp_path, "bad") / "data").read_bytes() == b"not what was promised"


async def test_an_abort_while_the_expiry_sweep_looks_at_its_ingest_waits_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client's abort is not refused (Unavailable) for the store's own housekeeping."""
    from corral.plugins.content import local

    store = LocalContentStore(tmp_path)
    writer = await store.writer("swept")
    await writer.write(b"partial")
    await writer.close()
    looked = anyio.Event()
    real = local._remove_if_stale

    def slow_look(directory: Path, cutoff: datetime | None) -> bool:
        anyio.from_thread.run_sync(looked.set)
        time.sleep(0.2)
        return real(directory, cutoff)

    monkeypatch.setattr(local, "_remove_if_stale", slow_look)
    async with anyio.create_task_group() as tg:
        tg.start_soon(store.expire_ingests)
        await looked.wait()
        await store.abort("swept")  # the sweep keeps it (not stale); the abort then removes it
    with pytest.raises(NotFound):
        await store.status("swept")


async def test_a_dropped_store_leaves_an_ingest_a_new_store_resumes(tmp_path: Path) -> None:
    data = cf.payload(3 * 1024 * 1024 + 123, seed=1)
    half = len(data) // 2
    crashed = LocalContentStore(tmp_path)
    writer = await crashed.writer("pull", total=len(data), expected=cf.digest_of(data))
    await writer.write(data[:half])
    del writer, crashed  # no close, no commit: what a crash leaves
    gc.collect()

    store = LocalContentStore(tmp_path)
    status = await store.status("pull")
    assert (status.offset, status.total, status.expected) == (half, len(data), cf.digest_of(data))
    resumed = await store.writer("pull")
    assert resumed.digest() == cf.digest_of(data[:half])
    await resumed.write(data[half:])
    info = await resumed.commit(len(data), cf.digest_of(data))
    assert info.digest == cf.digest_of(data)
    assert await cf.read_all(store, info.digest) == data


async def test_an_ingest_survives_kill_9_of_the_writing_process(tmp_path: Path) -> None:
    data = cf.payload(2 * 1024 * 1024, seed=2)
    child = textwrap.dedent(
        f"""
        import os, sys, anyio
        from pathlib import Path
        from corral.plugins.content import conformance as cf
        from corral.plugins.content.local import LocalContentStore

        async def main():
            store = LocalContentStore(Path({str(tmp_path)!r}))
            writer = await store.writer("killed")
            await writer.write(cf.payload({len(data)}, seed=2)[: {len(data) // 2}])
            print("written", flush=True)
            await anyio.sleep(60)

        anyio.run(main)
        """
    )
    async with await anyio.open_process([sys.executable, "-c", child]) as proc:
        assert proc.stdout is not None
        output = b""
        with anyio.fail_after(30):
            while b"\n" not in output:
                output += await proc.stdout.receive()
        assert output == b"written\n"
        proc.kill()  # SIGKILL
        assert await proc.wait() == -signal.SIGKILL

    store = LocalContentStore(tmp_path)
    assert (await store.status("killed")).offset == len(data) // 2
    writer = await store.writer("killed")
    await writer.write(data[len(data) // 2 :])
    assert (await writer.commit(len(data), cf.digest_of(data))).digest == cf.digest_of(data)


async def test_an_ingest_sealed_by_an_interrupted_commit_resumes(tmp_path: Path) -> None:
    store = LocalContentStore(tmp_path)
    await cf.partial_ingest(store, "sealed", b"first half ")
    (ingest_dir(tmp_path, "sealed") / "data").chmod(0o444)  # commit sealed it, then the crash
    writer = await store.writer("sealed")
    await writer.write(b"second half")
    info = await writer.commit(0, cf.digest_of(b"first half second half"))
    assert await cf.read_all(store, info.digest) == b"first half second half"


async def test_a_torn_record_hides_the_ingest_until_its_ref_is_opened_again(tmp_path: Path) -> None:
    store = LocalContentStore(tmp_path)
    await cf.partial_ingest(store, "torn", b"0123456789")
    (ingest_dir(tmp_path, "torn") / "ingest.json").write_text('{"ref": "torn", "tot')
    with pytest.raises(NotFound):
        await store.status("torn")
    assert await store.list_statuses() == []
    writer = await store.writer("torn", total=10)
    assert writer.offset == 10
    assert (await store.status("torn")).total == 10
    await writer.close()


async def test_a_cancelled_write_keeps_offset_digest_and_file_in_step(tmp_path: Path) -> None:
    store = LocalContentStore(tmp_path)
    writer = await store.writer("cancelled")
    data = cf.payload(8 * 1024 * 1024, seed=3)
    with anyio.move_on_after(0.0001):
        await writer.write(data)
    on_disk = (ingest_dir(tmp_path, "cancelled") / "data").read_bytes()
    assert writer.offset == len(on_disk)
    assert writer.digest() == cf.digest_of(on_disk)
    await writer.close()


async def test_writes_run_off_the_event_loop(tmp_path: Path) -> None:
    store = LocalContentStore(tmp_path)
    writer = await store.writer("big")
    ticks = 0
    done = anyio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await anyio.lowlevel.checkpoint()
        before = ticks
        await writer.write(cf.payload(32 * 1024 * 1024, seed=4))
        during = ticks - before
        done.set()
    assert during > 1, "the event loop stood still while 32 MiB were hashed and written"
    await writer.close()


async def test_other_algorithms_are_stored_under_their_own_directory(tmp_path: Path) -> None:
    store = LocalContentStore(tmp_path)
    data = cf.payload(5000, seed=5)
    sha512 = cf.digest_of(data, "sha512")
    writer = await store.writer("sha512", expected=sha512)
    await writer.write(data)
    assert writer.digest() == sha512
    assert (await writer.commit(len(data), sha512)).digest == sha512
    assert (tmp_path / "blobs" / "sha512" / sha512.removeprefix("sha512:")).is_file()
    assert [info.digest for info in await cf.list_all(store)] == [sha512]
    assert await cf.read_all(store, sha512) == data
    # A commit may name another algorithm than the writer was opened with: the data is re-hashed.
    writer = await store.writer("sha384-late")
    await writer.write(data)
    sha384 = cf.digest_of(data, "sha384")
    assert (await writer.commit(0, sha384)).digest == sha384


async def test_a_ref_must_not_be_empty(tmp_path: Path) -> None:
    store = LocalContentStore(tmp_path)
    with pytest.raises(InvalidArgument):
        await store.writer("")


async def test_aclose_closes_open_writers_and_keeps_their_ingests(tmp_path: Path) -> None:
    store = LocalContentStore(tmp_path)
    writer = await store.writer("open-at-shutdown")
    await writer.write(b"kept")
    await store.aclose()
    with pytest.raises(FailedPrecondition):
        await writer.write(b"more")
    assert (await LocalContentStore(tmp_path).status("open-at-shutdown")).offset == 4


# -- expiry ---------------------------------------------------------------------------------------


async def test_expiry_removes_idle_ingests_but_not_fresh_or_held_ones(tmp_path: Path) -> None:
    store = LocalContentStore(tmp_path, ingest_expiry=timedelta(hours=24))
    for ref in ("idle", "fresh", "held"):
        await cf.partial_ingest(store, ref, b"partial")
    age(ingest_dir(tmp_path, "idle") / "data", timedelta(hours=25))
    age(ingest_dir(tmp_path, "held") / "data", timedelta(hours=25))
    held = await store.writer("held")

    assert await store.expire_ingests() == 1
    assert [s.ref for s in await store.list_statuses()] == ["fresh", "held"]
    with pytest.raises(NotFound):
        await store.status("idle")
    await held.close()
    assert await store.expire_ingests(now=datetime.now(UTC) + timedelta(hours=25)) == 2


async def test_leftovers_of_interrupted_starts_and_commits_are_cleared_even_without_expiry(
    tmp_path: Path,
) -> None:
    store = LocalContentStore(tmp_path, ingest_expiry=timedelta(0))
    await cf.partial_ingest(store, "kept-forever", b"x")
    age(ingest_dir(tmp_path, "kept-forever") / "data", timedelta(days=365))
    await cf.partial_ingest(store, "committed-then-crashed", b"y")
    (ingest_dir(tmp_path, "committed-then-crashed") / "data").unlink()  # renamed away, then crash
    await cf.partial_ingest(store, "started-then-crashed", b"")
    (ingest_dir(tmp_path, "started-then-crashed") / "ingest.json").unlink()

    assert await store.expire_ingests() == 2
    assert [s.ref for s in await store.list_statuses()] == ["kept-forever"]


def test_config_reads_go_durations() -> None:
    assert decode(LocalContentConfig, {"ingest_expiry": "1h30m"}) == LocalContentConfig(timedelta(minutes=90))
    assert LocalContentConfig().ingest_expiry == timedelta(hours=24)


# -- the plugin -----------------------------------------------------------------------------------


async def test_the_plugin_exports_its_root_and_expires_ingests_at_start_up(tmp_path: Path) -> None:
    config = DaemonConfig(root=str(tmp_path / "root"), state=str(tmp_path / "state"))
    config = dataclasses.replace(config, plugins={URI: {"ingest_expiry": "1h"}})
    plugin_root = tmp_path / "root" / URI
    await cf.partial_ingest(LocalContentStore(plugin_root), "stale", b"old")
    age(ingest_dir(plugin_root, "stale") / "data", timedelta(hours=2))

    kernel = Kernel(config, candidates=[builtin_candidate(registration)])
    async with kernel.running():
        record = kernel.get(URI)
        assert record is not None and record.ok, record
        assert record.meta.exports["root"] == str(plugin_root)
        store = record.instance
        assert isinstance(store, LocalContentStore)
        assert store.ingest_expiry == timedelta(hours=1)
        for _ in range(500):  # the expiry task runs beside start-up, not before it
            if not ingest_dir(plugin_root, "stale").exists():
                break
            await anyio.sleep(0.01)
        assert not ingest_dir(plugin_root, "stale").exists()
        assert await store.list_statuses() == []


async def test_an_ingests_updated_at_is_never_earlier_than_its_last_write(tmp_path: Path) -> None:
    store = LocalContentStore(tmp_path)
    writer = await store.writer("r")
    for _ in range(20):
        before = datetime.now(UTC)
        await writer.write(b"x" * 1000)
        after = datetime.now(UTC)
        mine = (await writer.status()).updated_at
        await writer.close()
        listed = (await store.status("r")).updated_at
        # The file system's clock (a file's mtime) trails the wall clock by up to a tick; the
        # ingest's time must be the write's own, as a reader of the wall clock saw it.
        assert before <= mine <= after
        assert listed == mine
        writer = await store.writer("r")
        assert (await writer.status()).updated_at == mine
    await writer.close()
