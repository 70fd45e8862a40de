"""What must hold after a kill and a restart: nothing acknowledged lost, nothing half-made listed,
and (after a collection) nothing on disk that no listing accounts for.

Each check returns the problems it found, as sentences; the ledger's MAYBE objects take the state
the daemon shows, so the next round starts from what is really there.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import anyio
from harness import Daemon
from ledger import NAMESPACES, ROOT, SNAPSHOTTERS, Ledger, State
from workload import ctr, writable_directory

from corral.api.client import Client, connect
from corral.api.types.containerd import types as containerd_types
from corral.api.types.containerd.services.snapshots import v1 as snapshots_pb

CONTENT = "io.containerd.content.v1.content"
VIEWS_CHECKED = 2
"""Committed tips per snapshotter and namespace whose whole chain is mounted and read back."""


def _adopt(state: State, listed: bool, what: str, problems: list[str]) -> State:
    """The state after the restart: PRESENT must be listed, ABSENT must not be, MAYBE is either."""
    if state is State.PRESENT and not listed:
        problems.append(f"lost: {what} was acknowledged but is not listed")
    if state is State.ABSENT and listed:
        problems.append(f"came back: {what} was deleted (acknowledged) but is listed")
    return State.PRESENT if listed else State.ABSENT


async def check_content(client: Client, ledger: Ledger, namespace: str) -> list[str]:
    problems: list[str] = []
    listed = {info.digest: info for info in await client.list_content()}
    for digest, info in listed.items():
        hasher, size = hashlib.sha256(), 0
        try:
            async for chunk in client.read_content(digest):
                hasher.update(chunk)
                size += len(chunk)
        except Exception as exc:
            problems.append(f"half-made: blob {digest} in {namespace} is listed but cannot be read: {exc}")
            continue
        if "sha256:" + hasher.hexdigest() != digest or size != info.size:
            problems.append(
                f"half-made: blob {digest} in {namespace} reads back as {size} bytes that do not hash to it"
            )
        if (namespace, digest) not in ledger.blobs:
            problems.append(f"unexpected: blob {digest} in {namespace} was never written")
    for (ns, digest), blob in ledger.blobs.items():
        if ns == namespace:
            blob.state = _adopt(blob.state, digest in listed, f"blob {digest} in {namespace}", problems)
            if (
                blob.state is State.PRESENT
                and not blob.lease
                and "containerd.io/gc.root" not in listed[digest].labels
            ):
                problems.append(
                    f"labels lost: blob {digest} in {namespace} has {dict(listed[digest].labels)}"
                )
    statuses = {st.ref: st for st in await client.content_statuses()}
    for ref, st in statuses.items():
        ingest = ledger.ingests.get((namespace, ref))
        if ingest is None:
            problems.append(f"unexpected: ingest {ref} in {namespace} was never started")
        elif st.offset > ingest.size:
            problems.append(f"half-made: ingest {ref} holds {st.offset} bytes of {ingest.size}")
    for (ns, ref), ingest in ledger.ingests.items():
        if ns == namespace and ingest.listed and ref not in statuses:
            problems.append(f"lost: unfinished ingest {ref} in {namespace} is not listed as active")
    return problems


async def check_snapshots(
    client: Client, ledger: Ledger, snapshotter: str, namespace: str, mnt: Path
) -> list[str]:
    problems: list[str] = []
    listed = {info.name: info for info in await client.snapshot_list(snapshotter)}
    where = f"{snapshotter} snapshot {{}} in {namespace}"
    for name, info in listed.items():
        if info.parent and (
            info.parent not in listed or listed[info.parent].kind != snapshots_pb.Kind.COMMITTED
        ):
            problems.append(
                f"half-made: {where.format(name)} is listed without its committed parent {info.parent}"
            )
        if info.kind == snapshots_pb.Kind.ACTIVE:
            try:
                mounts = await client.snapshot_mounts(snapshotter, name)
                if not writable_directory(mounts).is_dir():
                    problems.append(f"half-made: {where.format(name)} mounts a directory that is not there")
            except Exception as exc:
                problems.append(f"half-made: {where.format(name)} is listed but has no mounts: {exc}")
        if (snapshotter, namespace, name) not in ledger.snapshots:
            problems.append(f"unexpected: {where.format(name)} was never made")
    for snap in ledger.snapshots_of(snapshotter, namespace):
        if (
            snap.commit_of
            and snap.state is State.MAYBE
            and (snap.key in listed) == (snap.commit_of in listed)
        ):
            problems.append(
                f"half-made: an interrupted commit of {where.format(snap.commit_of)} as {snap.key} left "
                + ("both" if snap.key in listed else "neither")
            )
        snap.state = _adopt(snap.state, snap.key in listed, where.format(snap.key), problems)
        snap.commit_of = ""
        if snap.state is not State.PRESENT:
            continue
        info = listed[snap.key]
        kind = snapshots_pb.Kind.COMMITTED if snap.committed else snapshots_pb.Kind.ACTIVE
        if info.parent != snap.parent or info.kind != kind:
            problems.append(f"changed: {where.format(snap.key)} is {info.kind.name} on {info.parent!r}")
        elif not snap.committed and not any("has no mounts" in p and f" {snap.key} " in p for p in problems):
            problems += await _check_markers(client, snap.snapshotter, snap.key, snap.markers, None)
    present = [s for s in ledger.snapshots_of(snapshotter, namespace) if s.state is State.PRESENT]
    parents = {s.parent for s in present}
    tips = [s for s in present if s.committed and s.key not in parents][:VIEWS_CHECKED]
    for tip in tips:
        view = f"verify-{ledger.next()}"
        # Rooted: a collection (a removal triggers one) would otherwise take it while it is read.
        mounts = await client.snapshot_view(snapshotter, view, tip.key, labels=ROOT)
        try:
            problems += await _check_markers(client, snapshotter, tip.key, tip.markers, (mounts, mnt))
        finally:
            await client.snapshot_remove(snapshotter, view)
    return problems


async def _check_markers(
    client: Client,
    snapshotter: str,
    key: str,
    markers: dict[str, bytes],
    view: tuple[list[containerd_types.Mount], Path] | None,
) -> list[str]:
    """Every file written into the snapshot (and its parents) reads back: an active snapshot's own
    in its writable directory, a committed chain's through a mounted view of it."""
    if view is None:
        root = writable_directory(await client.snapshot_mounts(snapshotter, key))
        own = {n: c for n, c in markers.items() if n == f"marker-{key}"}
        return [f"lost: {n} of active {snapshotter} {key}" for n, c in own.items() if _read(root / n) != c]
    mounts, target = view
    target.mkdir(parents=True, exist_ok=True)
    await _mount(mounts, target)
    try:
        return [
            f"lost: {n} of committed {snapshotter} {key}"
            for n, c in markers.items()
            if _read(target / n) != c
        ]
    finally:
        await anyio.run_process(["umount", str(target)])


async def _mount(mounts: list[containerd_types.Mount], target: Path) -> None:
    m = mounts[0]
    if m.type == "bind":
        await anyio.run_process(["mount", "--rbind", m.source, str(target)])
    else:
        await anyio.run_process(["mount", "-t", m.type, m.source, "-o", ",".join(m.options), str(target)])


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


async def check_leases(client: Client, ledger: Ledger, namespace: str) -> list[str]:
    problems: list[str] = []
    listed = {lease.id for lease in await client.list_leases()}
    for lease_id in listed:
        if (namespace, lease_id) not in ledger.leases:
            problems.append(f"unexpected: lease {lease_id} in {namespace} was never created")
    for (ns, lease_id), lease in ledger.leases.items():
        if ns != namespace:
            continue
        lease.state = _adopt(lease.state, lease_id in listed, f"lease {lease_id} in {namespace}", problems)
        if lease.state is not State.PRESENT:
            continue
        resources = {(r.type, r.id) for r in await client.lease_resources(lease_id)}
        for resource, state in list(lease.resources.items()):
            lease.resources[resource] = _adopt(
                state, resource in resources, f"{resource} of lease {lease_id}", problems
            )
        problems += [f"unexpected: {res} of lease {lease_id}" for res in resources - set(lease.resources)]
    return problems


async def check_namespaces(client: Client, ledger: Ledger) -> list[str]:
    problems: list[str] = []
    listed = {
        ns.name: dict(ns.labels) for ns in await client.list_namespaces() if ns.name.startswith("relns-")
    }
    problems += [f"unexpected: namespace {name}" for name in set(listed) - set(ledger.namespaces)]
    for name, ns in ledger.namespaces.items():
        ns.state = _adopt(ns.state, name in listed, f"namespace {name}", problems)
        if ns.state is not State.PRESENT:
            continue
        for key, (value, state) in ns.labels.items():
            if state is State.PRESENT and listed[name].get(key) != value:
                problems.append(f"lost: label {key}={value} of namespace {name} (has {listed[name]})")
    return problems


async def collect(d: Daemon, ledger: Ledger) -> None:
    """A synchronous collection, as an operator asks for one: ``ctr leases rm --sync`` of a new lease."""
    lease = f"collect-{ledger.next()}"
    await ctr(d, NAMESPACES[0], "leases", "create", "--id", lease)
    await ctr(d, NAMESPACES[0], "leases", "rm", "--sync", lease)


async def check_after_restart(d: Daemon, ledger: Ledger, mnt: Path) -> list[str]:
    """(a) and (b): every namespace's objects against the ledger; then a collection, and (c)."""
    problems: list[str] = []
    for namespace in NAMESPACES:
        async with connect(d.socket, namespace) as client:
            problems += await check_content(client, ledger, namespace)
            for snapshotter in SNAPSHOTTERS:
                problems += await check_snapshots(client, ledger, snapshotter, namespace, mnt)
            problems += await check_leases(client, ledger, namespace)
    async with connect(d.socket, "default") as client:
        problems += await check_namespaces(client, ledger)
    await collect(d, ledger)
    problems += await check_collected(d, ledger)
    problems += await check_disk(d)
    forget_absent(ledger)
    return problems


async def check_collected(d: Daemon, ledger: Ledger) -> list[str]:
    """Blobs only a deleted lease held are gone after the collection."""
    problems = []
    for namespace in NAMESPACES:
        async with connect(d.socket, namespace) as client:
            listed = {info.digest for info in await client.list_content()}
        for blob in ledger.blobs.values():
            if blob.namespace != namespace or not blob.lease or blob.state is not State.PRESENT:
                continue
            holder = ledger.leases.get((namespace, blob.lease))
            if holder is None or holder.state is State.ABSENT:
                if blob.digest in listed:
                    problems.append(
                        f"leaked: blob {blob.digest} outlived its lease {blob.lease} past a collection"
                    )
                blob.state = State.ABSENT
    return problems


async def check_disk(d: Daemon) -> list[str]:
    """Nothing on disk that no listing names: blobs, ingests, snapshot directories, mounts."""
    problems = []
    root = d.base / "root"
    async with connect(d.socket, "default") as admin:
        namespaces = [ns.name for ns in await admin.list_namespaces()]
    digests: set[str] = set()
    ingests = 0
    snapshots = dict.fromkeys(SNAPSHOTTERS, 0)
    for namespace in namespaces:
        async with connect(d.socket, namespace) as client:
            digests |= {info.digest.removeprefix("sha256:") for info in await client.list_content()}
            ingests += len(await client.content_statuses())
            for snapshotter in SNAPSHOTTERS:
                snapshots[snapshotter] += len(await client.snapshot_list(snapshotter))
    blobs = set(os.listdir(root / CONTENT / "blobs" / "sha256"))
    if blobs != digests:
        problems.append(
            f"leaked: blobs on disk no record names: {sorted(blobs - digests)}; missing: {sorted(digests - blobs)}"
        )
    # Broken ingests (a start cut short) are removed by the expiry pass the daemon runs at start.
    with anyio.move_on_after(5.0):
        while len(os.listdir(root / CONTENT / "ingest")) != ingests:  # noqa: ASYNC110 (the disk, not a task)
            await anyio.sleep(0.1)
    on_disk = os.listdir(root / CONTENT / "ingest")
    if len(on_disk) != ingests:
        problems.append(f"leaked: {len(on_disk)} ingest directories for {ingests} active ingests")
    for snapshotter, count in snapshots.items():
        directories = os.listdir(root / f"io.containerd.snapshotter.v1.{snapshotter}" / "snapshots")
        if len(directories) != count:
            problems.append(
                f"leaked: {len(directories)} {snapshotter} snapshot directories for {count} snapshots:"
                f" {sorted(directories)}"
            )
    # The erofs snapshotter keeps a live committed layer's image mounted on its fs directory while
    # the daemon runs (overlay lower directories are mounted paths), as containerd's does; the
    # daemon unmounts them when it stops. Any other mount, or one of a removed layer, is a leak.
    erofs = root / "io.containerd.snapshotter.v1.erofs" / "snapshots"
    problems += [
        f"leaked: mount {line}"
        for line in stale_mounts(d.base)
        if not (
            Path(line.split()[4]).parent.parent == erofs
            and (Path(line.split()[4]).parent / "layer.erofs").exists()
        )
    ]
    return problems


def stale_mounts(base: Path) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(base) in line]


def forget_absent(ledger: Ledger) -> None:
    """Drop what is checked to be gone, so the ledger (and each check) stays small."""
    ledger.blobs = {k: b for k, b in ledger.blobs.items() if b.state is not State.ABSENT}
    ledger.snapshots = {k: s for k, s in ledger.snapshots.items() if s.state is not State.ABSENT}
    ledger.leases = {k: lease for k, lease in ledger.leases.items() if lease.state is not State.ABSENT}
    ledger.namespaces = {k: ns for k, ns in ledger.namespaces.items() if ns.state is not State.ABSENT}
