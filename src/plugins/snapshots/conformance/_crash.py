"""Crash safety: the snapshotter is killed (SIGKILL) inside prepare, commit and remove, then opened again.

Each call runs in a child process (see ``_children``), killed at spread-out points among the
filesystem calls it makes, right after it returned, and at random moments while it runs. After
each kill the snapshotter is opened again on the same root, and:

- a call that returned before the kill took effect (it is durable);
- a snapshot that is listed is whole (its tree is its parent's and its own), and a commit is all
  or nothing (the active snapshot or the committed one, never both or neither);
- every committed snapshot is intact, and a new snapshot can be made before any cleanup;
- once this round's snapshots are removed, ``cleanup`` leaves the root as it was before the round.
"""

from __future__ import annotations

import os
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from corral.kernel import CorralError
from corral.plugins.snapshots import Kind, Snapshotter
from corral.plugins.snapshots.conformance._children import Children, Job, Outcome
from corral.plugins.snapshots.conformance._subject import Subject, needs_root
from corral.plugins.snapshots.conformance._trees import (
    committed,
    contents,
    differences,
    digest_of,
    tree_of,
    tree_of_committed,
    walk_all,
    write,
)

CRASH_POINTS = 5
"""Kill points per call, spread over the filesystem calls it makes."""
TIMED_KILLS = 1
"""Kills per call at a random moment while it runs."""
BASE_FILES = 100
"""Files in the parent every call works on: enough that copying it takes a while."""
VOLATILE = ("-wal", "-shm", "-journal")
"""Names a database keeps beside itself and removes as it pleases: not leftovers."""


@dataclass(frozen=True)
class Round:
    """One call crashed again and again: how to set up before it, and what must hold after."""

    operation: str
    args: Callable[[int], tuple[str, ...]]
    setup: Callable[[Snapshotter, int], Awaitable[None]]
    keys: Callable[[int], tuple[str, ...]]
    """The snapshots a round made or may have made, to check and then remove (children first)."""


def listing(root: Path) -> set[str]:
    """Every path under ``root``, but the database's own companions."""
    found: set[str] = set()
    prefix = len(os.fspath(root)) + 1
    for directory, dirnames, filenames in os.walk(root):
        found.update(
            f"{directory}/{name}"[prefix:] for name in dirnames + filenames if not name.endswith(VOLATILE)
        )
    return found


def spread(count: int, points: int) -> list[int]:
    """At most ``points`` of 1..count, evenly spread, first and last included."""
    if count <= points:
        return list(range(1, count + 1))
    return sorted({1 + round(i * (count - 1) / (points - 1)) for i in range(points)})


@needs_root
async def check_crash_safety(subject: Subject) -> None:
    root = subject.new_root()
    base_files = {f"files/{n:03d}": f"file {n}\n".encode() * 20 for n in range(BASE_FILES)}
    async with subject.open(root) as sn:
        await committed(sn, "base", files=base_files | {"link": "files/000"})
        base = contents(await tree_of_committed(sn, "base"))
        await sn.cleanup()  # of the view just removed, where removal leaves that to cleanup
    baseline = listing(root)

    async def work_on_base(sn: Snapshotter, i: int) -> None:
        await sn.prepare(f"work-{i}", "base")
        await write(sn, f"work-{i}", {f"added-{i}": f"round {i}\n".encode()})

    async def doomed_on_base(sn: Snapshotter, i: int) -> None:
        await committed(sn, f"doomed-{i}", "base", files={f"doomed-{i}": b"to be removed\n"})

    async def nothing(sn: Snapshotter, i: int) -> None:
        return None

    rounds = (
        Round("prepare", lambda i: (f"victim-{i}", "base"), nothing, lambda i: (f"victim-{i}",)),
        Round(
            "commit",
            lambda i: (f"layer-{i}", f"work-{i}"),
            work_on_base,
            lambda i: (f"layer-{i}", f"work-{i}"),
        ),
        Round("remove", lambda i: (f"doomed-{i}",), doomed_on_base, lambda i: (f"doomed-{i}",)),
    )
    counter = iter(range(1 << 30))
    async with Children.start(subject.plugin) as children:
        for r in rounds:

            async def attempt(
                kill_at: int = 0,
                kill_after: bool = False,
                kill_after_seconds: float | None = None,
                r: Round = r,
            ) -> Outcome:
                i = next(counter)
                if r.setup is not nothing:
                    async with subject.open(root) as sn:
                        await r.setup(sn, i)
                job = Job(str(root), r.operation, r.args(i), kill_at=kill_at, kill_after=kill_after)
                outcome = await children.run(job, kill_after_seconds=kill_after_seconds)
                where = _where(r.operation, outcome, kill_at, kill_after, kill_after_seconds)
                assert not outcome.timed_out, f"{where}: the call did not finish"
                assert not outcome.error, f"{where}: the call failed: {outcome.error}"
                assert outcome.returned or outcome.killed, f"{where}: the child exited {outcome.exit_code}"
                async with subject.open(root) as sn:
                    await _verify(sn, r, i, outcome, base, where)
                    await sn.cleanup()
                left = listing(root) - baseline
                gone = baseline - listing(root)
                assert not left and not gone, (
                    f"{where}: after removing its snapshots and cleanup, the root has leftovers {sorted(left)[:10]}"
                    f" and lost {sorted(gone)[:10]}"
                )
                return outcome

            counted = await attempt()
            assert counted.returned, f"{r.operation} in a child process did not return: {counted}"
            for point in spread(counted.events, CRASH_POINTS):
                await attempt(kill_at=point)
            await attempt(kill_after=True)
            for _ in range(TIMED_KILLS):
                await attempt(kill_after_seconds=random.uniform(0, counted.seconds))
    async with subject.open(root) as sn:
        assert set(await walk_all(sn)) == {"base"}
        seen = contents(await tree_of_committed(sn, "base"))
        assert seen == base, f"after every crash, the committed parent changed: {differences(base, seen)}"


def _where(operation: str, outcome: Outcome, kill_at: int, kill_after: bool, seconds: float | None) -> str:
    if kill_at:
        how = f"killed at filesystem call {kill_at}"
    elif kill_after:
        how = "killed right after it returned"
    elif seconds is not None:
        how = f"killed after {seconds * 1000:.1f} ms"
    else:
        how = "not killed"
    died = "; it had returned" if outcome.returned else ("; it died first" if outcome.killed else "")
    return f"{operation} {how}{died}"


async def _verify(
    sn: Snapshotter, r: Round, i: int, outcome: Outcome, base: dict[str, tuple[object, ...]], where: str
) -> None:
    listed = await walk_all(sn)
    assert "base" in listed and listed["base"].kind is Kind.COMMITTED, (
        f"{where}: the committed parent is gone"
    )
    if r.operation == "prepare":
        (victim,) = r.keys(i)
        if outcome.returned:
            assert victim in listed, f"{where}: the prepared snapshot is not listed"
        if victim in listed:
            assert (listed[victim].kind, listed[victim].parent) == (Kind.ACTIVE, "base"), (
                f"{where}: {listed[victim]}"
            )
            seen = await _contents(sn, victim, where, committed=False)
            assert seen == base, f"{where}: the listed snapshot is half made: {differences(base, seen)}"
    elif r.operation == "commit":
        layer, work = r.keys(i)
        assert (layer in listed) != (work in listed), (
            f"{where}: a commit must be all or nothing, yet the committed snapshot is"
            f" {'' if layer in listed else 'not '}listed and the active one"
            f" {'' if work in listed else 'not '}listed"
        )
        if outcome.returned:
            assert layer in listed, f"{where}: the committed snapshot is not listed"
        expected = {**base, f"added-{i}": _file(base, f"round {i}\n".encode())}
        if layer in listed:
            assert listed[layer].kind is Kind.COMMITTED
            seen = await _contents(sn, layer, where, committed=True)
        else:
            assert listed[work].kind is Kind.ACTIVE
            seen = await _contents(sn, work, where, committed=False)
        assert seen == expected, f"{where}: the snapshot lost what was written: {differences(expected, seen)}"
    else:
        (doomed,) = r.keys(i)
        if outcome.returned:
            assert doomed not in listed, f"{where}: the removed snapshot is still listed"
        if doomed in listed:
            expected = {**base, doomed: _file(base, b"to be removed\n")}
            seen = await _contents(sn, doomed, where, committed=True)
            assert seen == expected, (
                f"{where}: a snapshot whose removal was cut short is damaged: {differences(expected, seen)}"
            )
    # A crash must not stand in the way of new snapshots, cleanup or not.
    probe = f"probe-{i}"
    try:
        await sn.prepare(probe, "base")
    except CorralError as exc:
        raise AssertionError(f"{where}: prepare after the crash, before cleanup, failed: {exc}") from exc
    seen = contents(await tree_of(sn, probe))
    assert seen == base, f"{where}: a snapshot made after the crash is wrong: {differences(base, seen)}"
    for key in (probe, *r.keys(i)):
        if key in listed or key == probe:
            await sn.remove(key)


async def _contents(
    sn: Snapshotter, key: str, where: str, *, committed: bool
) -> dict[str, tuple[object, ...]]:
    """What the listed snapshot ``key`` holds; a snapshot that cannot be read is half made."""
    try:
        return contents(await (tree_of_committed(sn, key) if committed else tree_of(sn, key)))
    except Exception as exc:
        raise AssertionError(
            f"{where}: the listed snapshot {key} is half made: it cannot be read: {type(exc).__name__}: {exc}"
        ) from exc


def _file(base: dict[str, tuple[object, ...]], data: bytes) -> tuple[object, ...]:
    """A file as the round wrote it: with the mode the parent's files were written with."""
    kind, mode, _, target, device = base["files/000"]
    return (kind, mode, digest_of(data), target, device)
