"""The btrfs snapshotter: every snapshot a btrfs subvolume, a child a snapshot of its parent.

Layout, as containerd's: ``<root>/metadata.db`` and one subvolume per snapshot under
``<root>/active/<id>``, ``<root>/view/<id>`` (read-only) or ``<root>/snapshots/<id>`` (committed,
read-only). Mounts are of the file system's device with ``subvolid=``, as containerd hands them
out. A subvolume is made inside the transaction that records it, so a recorded snapshot always has
its subvolume; what a crash leaves is a subvolume without a record, which ``cleanup`` deletes.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import anyio
import anyio.to_thread
import structlog

from corral.kernel import FailedPrecondition
from corral.plugins.core import Mount
from corral.plugins.snapshots import Info, Kind, Usage
from corral.plugins.snapshots.btrfs.subvolumes import (
    create_subvolume,
    delete_subvolume,
    diff_usage,
    snapshot_subvolume,
    subvolume_id,
)
from corral.plugins.snapshots.storage import MetaStore, Snapshot, Transaction

log = structlog.get_logger("corral.snapshots.btrfs")

DATABASE = "metadata.db"
DIRECTORIES = {Kind.ACTIVE: "active", Kind.VIEW: "view", Kind.COMMITTED: "snapshots"}
"""Where each kind's subvolumes live, as containerd names the directories."""


class BtrfsSnapshotter:
    """A ``Snapshotter`` over btrfs subvolumes on the file system of ``device``; see the module docstring."""

    def __init__(self, root: Path, device: str) -> None:
        self.root = root
        self.device = device
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name in DIRECTORIES.values():
            (root / name).mkdir(mode=0o755, exist_ok=True)
        self.store = MetaStore(root / DATABASE)
        # A crash after a subvolume was made and before its record was committed leaves a
        # subvolume named by an id the database never kept: no later snapshot may get that id.
        self.store.skip_ids_through(
            max(
                (int(n) for d in DIRECTORIES.values() for n in os.listdir(root / d) if n.isdigit()),
                default=0,
            )
        )
        self._closed = False

    def path(self, kind: Kind, snapshot_id: int) -> Path:
        """The subvolume of the snapshot ``snapshot_id`` of ``kind``."""
        return self.root / DIRECTORIES[kind] / str(snapshot_id)

    # -- reading --------------------------------------------------------------------------------

    async def stat(self, key: str) -> Info:
        _, info, _ = await self.store.get_info(key)
        return info

    async def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        return await self.store.update_info(info, fieldpaths)

    async def walk(self, filters: Sequence[str] = ()) -> AsyncIterator[Info]:
        for _, info in await self.store.walk(filters):
            yield info

    async def usage(self, key: str) -> Usage:
        snapshot_id, info, usage = await self.store.get_info(key)
        if info.kind is not Kind.ACTIVE:
            return usage
        return await self._active_usage(snapshot_id, info.parent)

    async def _active_usage(self, snapshot_id: int, parent: str) -> Usage:
        lower = None
        if parent:
            parent_id, _, _ = await self.store.get_info(parent)
            lower = self.path(Kind.COMMITTED, parent_id)
        return await anyio.to_thread.run_sync(diff_usage, lower, self.path(Kind.ACTIVE, snapshot_id))

    async def mounts(self, key: str) -> builtins.list[Mount]:
        snapshot = await self.store.get_snapshot(key)
        return await anyio.to_thread.run_sync(self._mounts, snapshot)

    def _mounts(self, snapshot: Snapshot) -> builtins.list[Mount]:
        options = [f"subvolid={subvolume_id(self.path(snapshot.kind, snapshot.id))}"]
        if snapshot.kind is not Kind.ACTIVE:
            options.append("ro")
        return [Mount("btrfs", self.device, tuple(options))]

    # -- changing -------------------------------------------------------------------------------

    async def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> builtins.list[Mount]:
        return await self._create(Kind.ACTIVE, key, parent, labels)

    async def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> builtins.list[Mount]:
        return await self._create(Kind.VIEW, key, parent, labels)

    async def _create(
        self, kind: Kind, key: str, parent: str, labels: Mapping[str, str] | None
    ) -> builtins.list[Mount]:
        def create(tx: Transaction) -> builtins.list[Mount]:
            snapshot = tx.create_snapshot(kind, key, parent, labels)
            target = self.path(kind, snapshot.id)
            delete_subvolume(target)  # what a crash before an earlier commit of this id left
            if snapshot.parent_ids:
                source = self.path(Kind.COMMITTED, snapshot.parent_ids[0])
                snapshot_subvolume(source, target, readonly=kind is Kind.VIEW)
            else:
                create_subvolume(target)
            try:
                return self._mounts(snapshot)
            except BaseException:
                delete_subvolume(target)  # the record rolls back, and so does the subvolume
                raise

        return await self.store.run(create)

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        snapshot_id, info, _ = await self.store.get_info(key)
        if info.kind is not Kind.ACTIVE:
            raise FailedPrecondition(f"snapshot {key} is not active")
        usage = await self._active_usage(snapshot_id, info.parent)

        def commit(tx: Transaction) -> int:
            committed_id = tx.commit_active(key, name, usage, labels)
            target = self.path(Kind.COMMITTED, committed_id)
            delete_subvolume(target)  # what a crash before an earlier commit of this id left
            snapshot_subvolume(self.path(Kind.ACTIVE, committed_id), target, readonly=True)
            return committed_id

        committed_id = await self.store.run(commit)
        await self._delete(self.path(Kind.ACTIVE, committed_id), key)

    async def remove(self, key: str) -> None:
        snapshot_id, kind = await self.store.remove(key)
        await self._delete(self.path(kind, snapshot_id), key)

    async def _delete(self, subvolume: Path, key: str) -> None:
        try:
            with anyio.CancelScope(shield=True):  # the record is gone: the subvolume goes too
                await anyio.to_thread.run_sync(delete_subvolume, subvolume)
        except Exception as exc:
            # What is left is a leftover for cleanup.
            log.warning("snapshot_subvolume_delete_failed", key=key, subvolume=str(subvolume), error=str(exc))

    async def cleanup(self) -> None:
        """Delete every subvolume under the root that no snapshot of its kind owns."""

        def leftovers(tx: Transaction) -> builtins.list[Path]:
            # Listed inside a transaction: subvolumes are made in the transactions that record
            # them, so what is listed here without a record is truly orphaned.
            owned = {(DIRECTORIES[info.kind], str(i)) for i, info in tx.walk()}
            return sorted(
                self.root / d / n
                for d in DIRECTORIES.values()
                for n in os.listdir(self.root / d)
                if (d, n) not in owned
            )

        failed: builtins.list[str] = []
        for path in await self.store.read(leftovers):
            try:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(delete_subvolume, path)
            except Exception as exc:
                log.warning(
                    "snapshot_leftover_remove_failed", root=str(self.root), path=str(path), error=str(exc)
                )
                failed.append(f"{path.relative_to(self.root)}: {exc}")
                continue
            log.info("snapshot_leftover_removed", root=str(self.root), path=str(path.relative_to(self.root)))
        if failed:
            raise FailedPrecondition(
                f"could not remove {len(failed)} leftover subvolumes: {'; '.join(failed)}"
            )

    async def aclose(self) -> None:
        """Close the metadata database; closing again is harmless."""
        if not self._closed:
            self._closed = True
            await self.store.aclose()
