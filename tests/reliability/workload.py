"""The workload a kill interrupts: concurrent workers over content, snapshots, leases, namespaces
and collections, each recording in the ledger what the daemon acknowledged.

Every worker owns the objects it makes, so no acknowledged operation can fail for a reason other
than a bug; an error before the kill is one, an error after it only ends the worker.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread
from harness import Daemon
from ledger import (
    NAMESPACES,
    ROOT,
    SNAPSHOTTERS,
    Blob,
    Ingest,
    Lease,
    Ledger,
    Namespace,
    Snapshot,
    State,
    digest_of,
)

from corral.api.client import Client, connect
from corral.api.types.containerd import types as containerd_types
from corral.api.types.containerd.services.leases import v1 as leases_pb
from corral.kernel import Aborted, Unavailable

T = TypeVar("T")

SIZES = (0, 9, 4096, 65536 + 3, 1 << 20, (2 << 20) + 17)
"""The empty blob is one blob: it is made once per namespace (see ``_new_blob``)."""
SIZE_WEIGHTS = (1, 2, 6, 6, 3, 2)
MAX_BLOBS = 10
"""Per ingest worker: older blobs are deleted, so reading every blob back stays cheap."""
MAX_CHAIN = 4
GRACE = 5.0
"""How long workers get to notice the kill before they are cancelled."""


class Stopped(Exception):
    """The worker's call failed: after the kill that ends the worker, before it the round fails."""


class _Interrupted(Exception):
    """Raised by an ingest's source to walk away from it halfway."""


@dataclass
class Round:
    """One run of the workload, from a start of the daemon to its kill."""

    daemon: Daemon
    ledger: Ledger
    rng: random.Random
    killed: bool = False
    errors: list[str] = field(default_factory=list)

    async def call(self, what: str, awaitable: Awaitable[T]) -> T:
        self.ledger.note(f"{what}: sent")
        try:
            result = await awaitable
        except Exception as exc:
            if not self.killed:
                self.errors.append(f"{what}: {exc!r}")
            else:
                self.ledger.interrupted += 1
            self.ledger.note(f"{what}: failed {'after the kill' if self.killed else ''} {exc!r}")
            raise Stopped(what) from exc
        self.ledger.note(f"{what}: acknowledged")
        return result

    def acked(self) -> None:
        self.ledger.acknowledged += 1


def writable_directory(mounts: list[containerd_types.Mount]) -> Path:
    """Where an active snapshot's own files go: a bind mount's source, an overlay's upperdir."""
    first = mounts[0]
    if first.type == "bind":
        return Path(first.source)
    for option in first.options:
        if option.startswith("upperdir="):
            return Path(option.removeprefix("upperdir="))
    raise AssertionError(f"no writable directory in {mounts}")


async def _pieces(data: bytes, stop_at: int) -> AsyncIterator[bytes]:
    """The bytes in 64 KiB pieces, walking away once ``stop_at`` of them are sent (never at the end)."""
    for start in range(0, min(stop_at, len(data) - 1), 1 << 16):
        yield data[start : min(start + (1 << 16), stop_at)]
        await anyio.lowlevel.checkpoint()
    raise _Interrupted


async def ingest_worker(r: Round, namespace: str, owner: str) -> None:
    """New blobs of many sizes (some with their digest given), walked-away ingests and their
    resumption, blobs held by a lease of its own, and deletions."""
    ledger, rng = r.ledger, r.rng
    async with connect(r.daemon.socket, namespace) as client:
        while True:
            mine = [b for b in ledger.live_blobs(namespace) if b.owner == owner]
            unfinished = [i for i in ledger.ingests.values() if i.namespace == namespace and i.owner == owner]
            action = rng.choices(
                ["new", "walk-away", "resume", "delete", "shared", "held", "release"],
                weights=[40, 8, 12 if unfinished else 0, 15 if len(mine) > 2 else 0, 8, 8, 5],
            )[0]
            if len(mine) > MAX_BLOBS:
                action = "delete"
            if action == "new":
                await _new_blob(r, client, namespace, owner)
            elif action == "walk-away":
                await _walk_away(r, client, namespace, owner)
            elif action == "resume":
                await _resume(r, client, rng.choice(unfinished))
            elif action == "delete":
                blob = rng.choice(mine)
                blob.state = State.MAYBE
                await r.call(f"delete {blob.digest} in {namespace}", client.delete_content(blob.digest))
                blob.state = State.ABSENT
                r.acked()
            elif action == "shared":
                await _shared_blob(r, client, namespace, owner)
            elif action == "held":
                await _held_blob(r, client, namespace, owner)
            else:
                await _release(r, client, namespace, owner)


async def _new_blob(r: Round, client: Client, namespace: str, owner: str, lease: str = "") -> None:
    ledger, rng = r.ledger, r.rng
    number = ledger.next()
    size = rng.choices(SIZES, SIZE_WEIGHTS)[0]
    if size == 0 and (namespace, digest_of(b"")) in ledger.blobs:
        size = 4096
    data = ledger.blob_bytes(number, size)
    blob = Blob(namespace, number, size, digest_of(data), lease=lease, owner=owner)
    ref = f"{owner}-{number}"
    expected = blob.digest if rng.random() < 0.5 else ""
    key = (namespace, blob.digest)
    ledger.blobs[key] = blob
    ingest = Ingest(namespace, ref, number, size, expected, owner, listed=False)
    ledger.ingests[(namespace, ref)] = ingest
    labels = {} if lease else ROOT
    holder = ledger.leases.get((namespace, lease))
    if holder is not None:
        holder.resources[("content", blob.digest)] = State.MAYBE
    total = size if rng.random() < 0.5 else 0
    got = await r.call(
        f"ingest {ref} as {blob.digest} in {namespace} ({size} bytes, lease {lease!r})",
        client.ingest(ref, data, total=total, expected=expected, labels=labels, lease=lease or None),
    )
    del ledger.ingests[(namespace, ref)]
    if got != blob.digest:
        r.errors.append(f"ingest {ref} committed {got}, expected {blob.digest}")
    blob.state = State.PRESENT
    if holder is not None:
        holder.resources[("content", blob.digest)] = State.PRESENT
    r.acked()


async def _walk_away(r: Round, client: Client, namespace: str, owner: str) -> None:
    """Start an ingest and leave halfway: it must stay listed, resumable and abortable."""
    ledger, rng = r.ledger, r.rng
    number = ledger.next()
    size = rng.choice((65536 + 3, 1 << 20, (2 << 20) + 17))
    data = ledger.blob_bytes(number, size)
    ref = f"{owner}-{number}"
    expected = digest_of(data) if rng.random() < 0.5 else ""
    ingest = Ingest(namespace, ref, number, size, expected, owner, listed=False)
    ledger.ingests[(namespace, ref)] = ingest
    what = f"walk away from {ref}"
    try:
        await client.ingest(ref, _pieces(data, rng.randrange(1, size)), expected=expected)
    except _Interrupted:
        # The daemon answered the first STAT, so the ingest is on disk whatever happens next.
        ingest.listed = True
        return
    except Exception as exc:
        await r.call(what, _raise(exc))
    r.errors.append(f"walking away from {ref} committed it")


async def _resume(r: Round, client: Client, ingest: Ingest) -> None:
    """Finish an unfinished ingest: the daemon must still have it (or nothing), never a broken one."""
    ledger = r.ledger
    data = ledger.blob_bytes(ingest.number, ingest.size)
    blob = Blob(ingest.namespace, ingest.number, ingest.size, digest_of(data), owner=ingest.owner)
    ledger.blobs[(blob.namespace, blob.digest)] = blob
    ingest.listed = False  # once resumed it is committed, and gone from the active ingests
    what, deadline = f"resume {ingest.ref}", anyio.current_time() + 3.0
    while True:
        try:
            got = await client.ingest(ingest.ref, data, expected=ingest.expected, labels=ROOT)
            break
        except Unavailable as exc:
            # A walked-away writer may still be closing; it must not keep the ref locked for long.
            if r.killed or anyio.current_time() > deadline:
                await r.call(what, _raise(exc))
            await anyio.sleep(0.05)
        except Exception as exc:
            await r.call(what, _raise(exc))
    del ledger.ingests[(ingest.namespace, ingest.ref)]
    if got != blob.digest:
        r.errors.append(f"resumed {ingest.ref} committed {got}, expected {blob.digest}")
    blob.state = State.PRESENT
    r.acked()


async def _raise(exc: Exception) -> None:
    raise exc


async def _shared_blob(r: Round, client: Client, namespace: str, owner: str) -> None:
    """A blob another namespace holds, named by its digest: the shared policy commits it unsent."""
    ledger, rng = r.ledger, r.rng
    others = [b for ns in NAMESPACES if ns != namespace for b in ledger.live_blobs(ns)]
    theirs = [b for b in others if (namespace, b.digest) not in ledger.blobs]
    if not theirs:
        return
    source = rng.choice(theirs)
    blob = Blob(namespace, source.number, source.size, source.digest, owner=owner)
    ledger.blobs[(namespace, blob.digest)] = blob
    data = ledger.blob_bytes(source.number, source.size)
    ref = f"{owner}-shared-{ledger.next()}"
    # If the other namespace's blob goes meanwhile, the bytes are written after all.
    ledger.ingests[(namespace, ref)] = Ingest(
        namespace, ref, source.number, source.size, "", owner, listed=False
    )
    what = f"shared ingest {ref} of {blob.digest} in {namespace}"
    ledger.note(f"{what}: sent")
    try:
        got = await client.ingest(ref, data, expected=blob.digest, labels=ROOT)
    except Aborted:
        # The owner deleted its blob and a collection took the bytes before this commit: refused.
        del ledger.ingests[(namespace, ref)]
        blob.state = State.ABSENT
        ledger.note(f"{what}: aborted, the blob was collected meanwhile")
        return
    except Exception as exc:
        await r.call(what, _raise(exc))
    ledger.note(f"{what}: acknowledged")
    del ledger.ingests[(namespace, ref)]
    if got != blob.digest:
        r.errors.append(f"shared ingest {ref} committed {got}")
    blob.state = State.PRESENT
    r.acked()


async def _held_blob(r: Round, client: Client, namespace: str, owner: str) -> None:
    ledger = r.ledger
    held = [
        lease
        for lease in ledger.leases.values()
        if lease.owner == owner and lease.namespace == namespace and lease.state is State.PRESENT
    ]
    if not held:
        lease = Lease(namespace, f"hold-{ledger.next()}", owner=owner)
        ledger.leases[(namespace, lease.id)] = lease
        await r.call(f"create lease {lease.id}", client.create_lease(lease.id))
        lease.state = State.PRESENT
        r.acked()
        held = [lease]
    await _new_blob(r, client, namespace, owner, lease=held[0].id)


async def _release(r: Round, client: Client, namespace: str, owner: str) -> None:
    """Delete a holding lease: what only it held is garbage (gone by the next collection)."""
    ledger = r.ledger
    for lease in list(ledger.leases.values()):
        if lease.owner == owner and lease.namespace == namespace and lease.state is State.PRESENT:
            lease.state = State.MAYBE
            # What only it held may go with it (in a collection), from the moment it is sent.
            for blob in ledger.blobs.values():
                if blob.lease == lease.id and blob.state is State.PRESENT:
                    blob.state = State.MAYBE
            await r.call(f"delete lease {lease.id}", client.delete_lease(lease.id, sync=r.rng.random() < 0.5))
            lease.state = State.ABSENT
            r.acked()
            return


async def snapshot_worker(r: Round, snapshotter: str) -> None:
    """Chains of prepare, write, commit on ``snapshotter`` in both namespaces, removed from the tip."""
    ledger, rng = r.ledger, r.rng
    async with connect(r.daemon.socket, NAMESPACES[0]) as a, connect(r.daemon.socket, NAMESPACES[1]) as b:
        clients = {NAMESPACES[0]: a, NAMESPACES[1]: b}
        while True:
            namespace = rng.choice(NAMESPACES)
            client = clients[namespace]
            present = [s for s in ledger.snapshots_of(snapshotter, namespace) if s.state is State.PRESENT]
            active = [s for s in present if not s.committed]
            committed = [s for s in present if s.committed]
            parents = {s.parent for s in present}
            tips = [s for s in committed if s.key not in parents]
            if active:
                snap = active[0]
                if rng.random() < 0.8:
                    await _commit(r, client, snap)
                else:
                    await _remove(r, client, snap)
            elif tips and (len(committed) >= MAX_CHAIN or rng.random() < 0.2):
                await _remove(r, client, rng.choice(tips))
            else:
                parent = tips[0] if tips else None
                await _prepare(r, client, snapshotter, namespace, parent)


async def _prepare(
    r: Round, client: Client, snapshotter: str, namespace: str, parent: Snapshot | None
) -> None:
    ledger = r.ledger
    key = f"{snapshotter}-{namespace}-a{ledger.next()}"
    snap = Snapshot(
        snapshotter, namespace, key, parent.key if parent else "", committed=False,
        markers=dict(parent.markers) if parent else {},
    )  # fmt: skip
    ledger.snapshots[(snapshotter, namespace, key)] = snap
    mounts = await r.call(
        f"prepare {snapshotter} {key}", client.snapshot_prepare(snapshotter, key, snap.parent, labels=ROOT)
    )
    snap.state = State.PRESENT
    r.acked()
    name, contents = f"marker-{key}", os.urandom(32) + key.encode()
    await anyio.to_thread.run_sync((writable_directory(mounts) / name).write_bytes, contents)
    snap.markers[name] = contents


async def _commit(r: Round, client: Client, active: Snapshot) -> None:
    ledger = r.ledger
    name = f"{active.snapshotter}-{active.namespace}-c{ledger.next()}"
    made = Snapshot(
        active.snapshotter, active.namespace, name, active.parent, committed=True,
        markers=dict(active.markers), commit_of=active.key,
    )  # fmt: skip
    ledger.snapshots[(active.snapshotter, active.namespace, name)] = made
    active.state = State.MAYBE
    await r.call(
        f"commit {active.snapshotter} {active.key} as {name}",
        client.snapshot_commit(active.snapshotter, name, active.key, labels=ROOT),
    )
    made.state, active.state = State.PRESENT, State.ABSENT
    made.commit_of = ""
    r.acked()


async def _remove(r: Round, client: Client, snap: Snapshot) -> None:
    snap.state = State.MAYBE
    await r.call(f"remove {snap.snapshotter} {snap.key}", client.snapshot_remove(snap.snapshotter, snap.key))
    snap.state = State.ABSENT
    r.acked()


async def lease_worker(r: Round, namespace: str) -> None:
    """Leases created, given content and snapshot resources, and deleted."""
    ledger, rng = r.ledger, r.rng
    owner = f"leases-{namespace}"
    async with connect(r.daemon.socket, namespace) as client:
        while True:
            mine = [
                lease for lease in ledger.leases.values()
                if lease.owner == owner and lease.state is State.PRESENT
            ]  # fmt: skip
            action = rng.choices(
                ["create", "resource", "delete"], [3 if len(mine) < 4 else 0, 5 if mine else 0, 2]
            )[0]
            if action == "create":
                lease = Lease(namespace, f"lease-{ledger.next()}", owner=owner)
                ledger.leases[(namespace, lease.id)] = lease
                await r.call(f"create lease {lease.id}", client.create_lease(lease.id, {"made-by": owner}))
                lease.state = State.PRESENT
                r.acked()
            elif action == "resource":
                lease = rng.choice(mine)
                resource = _resource_for(r, namespace)
                if resource is None:
                    await anyio.sleep(0.01)
                    continue
                lease.resources[resource] = State.MAYBE
                request = leases_pb.AddResourceRequest(
                    id=lease.id, resource=leases_pb.Resource(id=resource[1], type=resource[0])
                )
                await r.call(
                    f"add {resource} to {lease.id}", client.call(client.leases.add_resource(request))
                )
                lease.resources[resource] = State.PRESENT
                r.acked()
            elif mine:
                lease = rng.choice(mine)
                lease.state = State.MAYBE
                await r.call(f"delete lease {lease.id}", client.delete_lease(lease.id))
                lease.state = State.ABSENT
                r.acked()
            await anyio.sleep(0.01)


def _resource_for(r: Round, namespace: str) -> tuple[str, str] | None:
    blobs = [b for b in r.ledger.live_blobs(namespace) if not b.lease]
    snaps = [
        s for s in r.ledger.snapshots.values() if s.namespace == namespace and s.state is State.PRESENT
    ]  # fmt: skip
    if blobs and (not snaps or r.rng.random() < 0.5):
        return ("content", r.rng.choice(blobs).digest)
    if snaps:
        snap = r.rng.choice(snaps)
        return (f"snapshots/{snap.snapshotter}", snap.key)
    return None


async def namespace_worker(r: Round) -> None:
    """Namespaces created with labels, labelled again, and deleted."""
    ledger, rng = r.ledger, r.rng
    async with connect(r.daemon.socket, "default") as client:
        while True:
            live = [ns for ns in ledger.namespaces.values() if ns.state is State.PRESENT]
            action = rng.choices(
                ["create", "label", "delete"], [3 if len(live) < 3 else 0, 4 if live else 0, 2]
            )[0]
            if action == "create":
                ns = Namespace(f"relns-{ledger.next()}")
                ledger.namespaces[ns.name] = ns
                ns.labels["made"] = ("yes", State.MAYBE)
                await r.call(f"create namespace {ns.name}", client.create_namespace(ns.name, {"made": "yes"}))
                ns.state = State.PRESENT
                ns.labels["made"] = ("yes", State.PRESENT)
                r.acked()
            elif action == "label":
                ns = rng.choice(live)
                key, value = f"k{rng.randint(0, 2)}", str(ledger.next())
                ns.labels[key] = (value, State.MAYBE)
                await r.call(f"label namespace {ns.name}", client.label_namespace(ns.name, {key: value}))
                ns.labels[key] = (value, State.PRESENT)
                r.acked()
            elif live:
                ns = rng.choice(live)
                ns.state = State.MAYBE
                await r.call(f"delete namespace {ns.name}", client.delete_namespace(ns.name))
                ns.state = State.ABSENT
                r.acked()
            await anyio.sleep(0.01)


async def gc_worker(r: Round) -> None:
    """Collections, as an operator triggers them: ``ctr leases rm --sync`` of a fresh lease."""
    ledger, rng = r.ledger, r.rng
    namespace = NAMESPACES[0]
    while True:
        await anyio.sleep(rng.uniform(0.1, 0.4))
        lease = Lease(namespace, f"gc-{ledger.next()}", owner="gc")
        ledger.leases[(namespace, lease.id)] = lease
        await r.call(
            f"ctr leases create {lease.id}", ctr(r.daemon, namespace, "leases", "create", "--id", lease.id)
        )
        lease.state = State.PRESENT
        r.acked()
        lease.state = State.MAYBE
        await r.call(
            f"ctr leases rm --sync {lease.id}", ctr(r.daemon, namespace, "leases", "rm", "--sync", lease.id)
        )
        lease.state = State.ABSENT
        r.acked()


async def ctr(d: Daemon, namespace: str, *args: str) -> str:
    result = await anyio.run_process(["ctr", "-a", d.socket, "-n", namespace, *args], check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ctr {' '.join(args)}: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout.decode()


WORKERS: tuple[Callable[[Round], Awaitable[None]], ...] = (
    *(
        functools.partial(ingest_worker, namespace=ns, owner=f"ingest{i}-{ns}")
        for ns in NAMESPACES
        for i in range(2)
    ),
    *(functools.partial(snapshot_worker, snapshotter=sn) for sn in SNAPSHOTTERS),
    *(functools.partial(lease_worker, namespace=ns) for ns in NAMESPACES),
    namespace_worker,
    gc_worker,
)


async def run_until_killed(r: Round, delay: float) -> None:
    """Run every worker, SIGKILL the daemon after ``delay`` seconds, and wait for the workers to
    notice (cancelling those that take longer than ``GRACE``)."""

    async def guarded(worker: Callable[[Round], Awaitable[None]]) -> None:
        with contextlib.suppress(Stopped):
            await worker(r)

    proc = r.daemon.proc
    assert proc is not None
    async with anyio.create_task_group() as tg:
        for worker in WORKERS:
            tg.start_soon(guarded, worker)
        await anyio.sleep(delay)
        r.killed = True
        os.kill(proc.pid, signal.SIGKILL)
        await anyio.to_thread.run_sync(proc.wait)
        tg.cancel_scope.deadline = anyio.current_time() + GRACE
