"""Crash safety: the process writing an ingest is killed (SIGKILL), then the store is opened again.

A child process opens the store on a root, writes a blob through one ref in chunks (saying
``written OFFSET`` after each write returns), commits it (``committing``, ``committed``) or not,
then waits to be killed. It is killed after chosen writes, at random moments while it writes or
commits, or right after the commit returned. Opened again on the same root, the store must show
either the whole blob, or the ingest with at least every byte a returned write took, exactly those
bytes; the ingest resumes there and commits the blob whole.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

from corral.kernel import NotFound, Unavailable
from corral.plugins.content import ContentStore, Writer
from corral.plugins.content.conformance._blobs import digest_of, payload, read_all
from corral.plugins.content.conformance._subject import Plugin, Subject, durable_only, open_store

SIZE = 4 << 20
CHUNK = 256 << 10
LIMIT = 60.0
"""Seconds a child may take to reach the point where it is killed."""


@dataclass(frozen=True)
class Plan:
    """What the child does: write ``SIZE`` bytes of ``seed`` through ``ref`` (only the first
    ``writes`` chunks when not 0), then commit or not."""

    root: str
    ref: str
    seed: int
    commit: bool
    writes: int = 0


@dataclass(frozen=True)
class Seen:
    """What the child said before it died: the offset its last returned write reported, and so on."""

    acknowledged: int = 0
    committing: bool = False
    committed: bool = False


async def _run_child(plugin: Plugin, plan: Plan, kill_when: str, delay: float) -> Seen:
    """Run ``plan`` in a child, kill it when it says ``kill_when`` (after ``delay`` seconds), and
    return what it said before it died."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    code = "from corral.plugins.content.conformance._crash import child; child()"
    acknowledged, committing, committed = 0, False, False
    async with await anyio.open_process([sys.executable, "-c", code], env=env, stderr=None) as process:
        assert process.stdin is not None and process.stdout is not None
        await process.stdin.send(pickle.dumps((plugin, plan)))
        lines = BufferedByteReceiveStream(process.stdout)
        try:
            with anyio.fail_after(LIMIT):
                while True:
                    try:
                        line = (await lines.receive_until(b"\n", 4096)).decode()
                    except anyio.EndOfStream:
                        raise AssertionError(
                            f"the writing child process died by itself (exit {await process.wait()})"
                        ) from None
                    word, _, rest = line.partition(" ")
                    if word == "error":
                        raise AssertionError(f"the writing child process failed: {rest}")
                    if word == "written":
                        acknowledged = int(rest)
                    committing |= word == "committing"
                    committed |= word == "committed"
                    if line.startswith(kill_when):
                        break
            await anyio.sleep(delay)
        finally:
            process.kill()
            await process.wait()
        # What the child said between the kill's decision and its death counts too.
        try:
            while True:
                word, _, rest = (await lines.receive_until(b"\n", 4096)).decode().partition(" ")
                if word == "written":
                    acknowledged = int(rest)
                committing |= word == "committing"
                committed |= word == "committed"
        except (anyio.EndOfStream, anyio.IncompleteRead):
            pass
    assert process.returncode == -signal.SIGKILL, f"the writing child exited {process.returncode}"
    return Seen(acknowledged, committing, committed)


def child() -> None:
    """The writing process: ``(plugin, plan)`` pickled on stdin; reports on stdout; waits to be killed."""
    plugin, plan = pickle.load(sys.stdin.buffer)
    report = os.dup(1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # what the store prints must not garble the reports

    def say(line: str) -> None:
        os.write(report, (line.replace("\n", " ") + "\n").encode())

    async def main() -> None:
        data = payload(SIZE, plan.seed)
        async with open_store(plugin, Path(plan.root)) as store:
            writer = await store.writer(plan.ref, total=SIZE, expected=digest_of(data))
            say("opened")
            for start in range(0, plan.writes * CHUNK or SIZE, CHUNK):
                say(f"written {await writer.write(data[start : start + CHUNK])}")
            if plan.commit:
                say("committing")
                await writer.commit(SIZE, digest_of(data))
                say("committed")
            say("waiting")
            await anyio.sleep(3600)

    try:
        anyio.run(main)
    except BaseException as exc:
        say(f"error {type(exc).__name__}: {exc}")
        raise


async def _reopen(store: ContentStore, ref: str) -> Writer:
    """Resume ``ref`` as containerd's client does: retrying while it is Unavailable (a store just
    opened may be busy expiring stale ingests)."""
    with anyio.fail_after(10):
        while True:
            try:
                return await store.writer(ref)
            except Unavailable:
                await anyio.sleep(0.01)


@durable_only
async def check_an_ingest_survives_its_writer_being_killed(subject: Subject) -> None:
    root = subject.new_root()
    chunks = SIZE // CHUNK
    # (when, the line that triggers the kill, seconds after it, commit?, writes before waiting)
    attempts: list[tuple[str, str, float, bool, int]] = [
        (f"after write {n} of {chunks}", "waiting", 0.0, False, n) for n in (1, chunks)
    ]
    attempts.append(("at a random moment while it writes", "opened", random.uniform(0, 0.05), True, 0))
    attempts += [
        ("at a random moment while it commits", "committing", random.uniform(0, 0.03), True, 0)
        for _ in (1, 2)
    ]
    attempts.append(("right after its commit returned", "committed", 0.0, True, 0))
    for n, (when, kill_when, delay, commit, writes) in enumerate(attempts):
        plan = Plan(str(root), f"pull-{n}", seed=n, commit=commit, writes=writes)
        seen = await _run_child(subject.plugin, plan, kill_when, delay)
        data = payload(SIZE, plan.seed)
        where = f"the writer killed {when} (it had written {seen.acknowledged} bytes)"
        async with subject.open(root) as store:
            try:
                info = await store.info(digest_of(data))
            except NotFound:
                info = None
            if seen.committed:
                assert info is not None, f"{where}: a blob whose commit returned is gone"
            if info is not None:
                assert info.size == SIZE and await read_all(store, info.digest) == data, (
                    f"{where}: the blob is damaged"
                )
                with contextlib.suppress(NotFound):
                    await store.abort(plan.ref)  # what a commit cut short may leave of the ingest
                continue
            try:
                status = await store.status(plan.ref)
            except NotFound:
                raise AssertionError(
                    f"{where}: neither the blob nor its ingest is left: the bytes are lost"
                ) from None
            assert seen.acknowledged <= status.offset <= SIZE, (
                f"{where}: the ingest shows offset {status.offset}, yet writes up to {seen.acknowledged} returned"
            )
            if plan.writes:  # the child stopped writing and waited to be killed
                assert status.offset == seen.acknowledged, f"{where}: the ingest shows offset {status.offset}"
            assert (status.total, status.expected) == (SIZE, digest_of(data)), f"{where}: {status}"
            writer = await _reopen(store, plan.ref)
            assert writer.offset == status.offset, (
                f"{where}: resumed at {writer.offset}, status said {status.offset}"
            )
            assert writer.digest() == digest_of(data[: writer.offset]), (
                f"{where}: the {writer.offset} bytes kept are not the bytes written"
            )
            await writer.write(data[writer.offset :])
            info = await writer.commit(SIZE, digest_of(data))
            assert await read_all(store, info.digest) == data, f"{where}: the resumed blob is damaged"
            assert await store.list_statuses() == [], (
                f"{where}: ingests are left: {await store.list_statuses()}"
            )
