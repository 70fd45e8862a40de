"""kill -9 at any point, then restart: committed data intact, nothing half-made listed, nothing leaked.

A real corrald runs a concurrent workload (ingests of many sizes, some with their digest given,
some walked away from and resumed; snapshot chains on overlayfs and native; leases with resources;
namespaces with labels; collections) and is killed with SIGKILL at a random moment, restarted on
the same root and state, and checked against what the client saw acknowledged; then again. At the
end everything is removed, and after a synchronous collection nothing is left on disk.

Short form (the normal run): 5 kills. Long form: ``CORRAL_RELIABILITY_KILLS=50``. The seed is
``CORRAL_RELIABILITY_SEED``, random by default and named in every failure.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from pathlib import Path

import anyio
import pytest
from harness import Daemon
from invariants import check_after_restart, check_disk, stale_mounts
from ledger import NAMESPACES, SNAPSHOTTERS, Ledger
from tooling import require_root, require_tool
from workload import Round, ctr, run_until_killed

from corral.api.client import Client, connect
from corral.kernel import NotFound

KILLS = int(os.environ.get("CORRAL_RELIABILITY_KILLS", "5"))
SEED = int(os.environ.get("CORRAL_RELIABILITY_SEED", str(random.randrange(1 << 32))))
EARLIEST_KILL, LATEST_KILL = 0.2, 1.5
"""Seconds into the workload; a start-up takes about half a second of its own."""


@pytest.fixture
def daemon(tmp_path: Path) -> Daemon:
    require_root()
    require_tool("ctr")
    return Daemon(tmp_path / "corral")


@pytest.mark.root
def test_kill_9_at_random_points_loses_nothing_half_makes_nothing_leaks_nothing(
    daemon: Daemon, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    ledger = Ledger(SEED)
    mnt = tmp_path / "mnt"
    started = time.monotonic()
    daemon.start()
    try:
        for kill in range(1, KILLS + 1):
            where = f"seed {SEED}, kill {kill} of {KILLS}"
            r = Round(daemon, ledger, rng)
            anyio.run(run_until_killed, r, rng.uniform(EARLIEST_KILL, LATEST_KILL))
            assert not r.errors, (
                f"calls failed before the kill ({where}):\n" + "\n".join(r.errors) + explain(ledger, r.errors)
            )
            daemon.start()
            problems = anyio.run(check_after_restart, daemon, ledger, mnt)
            assert not problems, (
                f"after the restart ({where}):\n" + "\n".join(problems) + explain(ledger, problems)
            )
        problems = anyio.run(drain, daemon, ledger)
        assert not problems, f"after removing everything (seed {SEED}):\n" + "\n".join(problems)
    finally:
        daemon.stop()
    assert not stale_mounts(daemon.base)
    print(
        f"\n{KILLS} kills in {time.monotonic() - started:.1f}s (seed {SEED}):"
        f" {ledger.acknowledged} operations acknowledged and kept, {ledger.interrupted} cut short and"
        " checked either way; nothing lost, half-made or leaked"
    )


def explain(ledger: Ledger, problems: list[str]) -> str:
    """What the workload did to each object a problem names."""
    lines = []
    for problem in problems:
        for word in problem.split():
            if word.startswith(("sha256:", "overlayfs-", "native-", "lease-", "hold-", "relns-")):
                lines += [f"\n  {word}:", *(f"    {e}" for e in ledger.history(word.rstrip(",:")))]
    return "".join(f"\n{line}" if not line.startswith("\n") else line for line in lines)


async def drain(d: Daemon, ledger: Ledger) -> list[str]:
    """Finish or abort every unfinished ingest, remove everything, collect: the disk is empty."""
    problems: list[str] = []
    for namespace in NAMESPACES:
        active = (await ctr(d, namespace, "content", "active")).splitlines()[1:]
        refs = sorted(line.split()[0] for line in active if line.strip())
        async with connect(d.socket, namespace) as client:
            for i, ref in enumerate(refs):
                ingest = ledger.ingests.get((namespace, ref))
                if ingest is None:
                    problems.append(f"unexpected: ingest {ref} in {namespace}")
                    continue
                data = ledger.blob_bytes(ingest.number, ingest.size)
                if i % 2 == 0:
                    digest = await client.ingest(ref, data, expected=ingest.expected)
                    if digest != ingest.expected and ingest.expected:
                        problems.append(f"resumed {ref} committed {digest}, expected {ingest.expected}")
                else:
                    await client.abort_ingest(ref)
            left = (await ctr(d, namespace, "content", "active")).splitlines()[1:]
            problems += [f"not resumable or abortable: ingest {line}" for line in left if line.strip()]
            await remove_everything(client)
    async with connect(d.socket, "default") as admin:
        for ns in await admin.list_namespaces():
            if ns.name != "default":
                await admin.delete_namespace(ns.name)
    await collect_in_default(d, ledger)
    problems += await check_disk(d)
    root = d.base / "root"
    for path in [root / "io.containerd.content.v1.content" / sub for sub in ("blobs/sha256", "ingest")] + [
        root / f"io.containerd.snapshotter.v1.{sn}" / "snapshots" for sn in SNAPSHOTTERS
    ]:
        if os.listdir(path):
            problems.append(f"leaked: {path} still holds {sorted(os.listdir(path))}")
    return problems


async def remove_everything(client: Client) -> None:
    """Snapshots leaf first, then blobs and leases, of the client's namespace.

    The removals schedule collections of their own, and a collection may take an unreferenced
    blob or snapshot between the listing and the removal: NotFound then means it is gone already.
    """
    for snapshotter in SNAPSHOTTERS:
        while infos := await client.snapshot_list(snapshotter):
            parents = {info.parent for info in infos}
            for info in infos:
                if info.name not in parents:
                    with contextlib.suppress(NotFound):
                        await client.snapshot_remove(snapshotter, info.name)
    for blob in await client.list_content():
        with contextlib.suppress(NotFound):
            await client.delete_content(blob.digest)
    for lease in await client.list_leases():
        await client.delete_lease(lease.id)


async def collect_in_default(d: Daemon, ledger: Ledger) -> None:
    lease = f"collect-{ledger.next()}"
    await ctr(d, "default", "leases", "create", "--id", lease)
    await ctr(d, "default", "leases", "rm", "--sync", lease)
