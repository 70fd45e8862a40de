"""Snapshot calls; each names its snapshotter ("overlayfs", "native", ...)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import aclosing
from functools import cached_property

from corral.api.client._connection import Connection
from corral.api.types.containerd import types as containerd_types
from corral.api.types.containerd.services.snapshots import v1 as snapshots_pb
from corral.api.types.google import protobuf


class SnapshotCalls(Connection):
    """Snapshot calls; each names its snapshotter ("overlayfs", "native", ...)."""

    @cached_property
    def snapshots(self) -> snapshots_pb.SnapshotsStub:
        return snapshots_pb.SnapshotsStub(self.channel, metadata=self._metadata())

    async def snapshot_prepare(
        self, snapshotter: str, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[containerd_types.Mount]:
        """An active (writable) snapshot ``key`` on top of the committed ``parent``; returns its mounts."""
        request = snapshots_pb.PrepareSnapshotRequest(
            snapshotter=snapshotter, key=key, parent=parent, labels=dict(labels or {})
        )
        reply = await self.call(self.snapshots.prepare(request))
        return list(reply.mounts)

    async def snapshot_view(
        self, snapshotter: str, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[containerd_types.Mount]:
        """A read-only snapshot ``key`` of the committed ``parent``; returns its mounts."""
        request = snapshots_pb.ViewSnapshotRequest(
            snapshotter=snapshotter, key=key, parent=parent, labels=dict(labels or {})
        )
        reply = await self.call(self.snapshots.view(request))
        return list(reply.mounts)

    async def snapshot_mounts(self, snapshotter: str, key: str) -> list[containerd_types.Mount]:
        """The mounts of an active snapshot or a view."""
        request = snapshots_pb.MountsRequest(snapshotter=snapshotter, key=key)
        reply = await self.call(self.snapshots.mounts(request))
        return list(reply.mounts)

    async def snapshot_commit(
        self, snapshotter: str, name: str, key: str, labels: Mapping[str, str] | None = None
    ) -> None:
        """Commit the active snapshot ``key`` as the committed snapshot ``name``; ``key`` is gone after."""
        request = snapshots_pb.CommitSnapshotRequest(
            snapshotter=snapshotter, name=name, key=key, labels=dict(labels or {})
        )
        await self.call(self.snapshots.commit(request))

    async def snapshot_remove(self, snapshotter: str, key: str) -> None:
        await self.call(
            self.snapshots.remove(snapshots_pb.RemoveSnapshotRequest(snapshotter=snapshotter, key=key))
        )

    async def snapshot_stat(self, snapshotter: str, key: str) -> snapshots_pb.Info:
        reply = await self.call(
            self.snapshots.stat(snapshots_pb.StatSnapshotRequest(snapshotter=snapshotter, key=key))
        )
        assert reply.info is not None
        return reply.info

    async def snapshot_update_labels(
        self, snapshotter: str, key: str, labels: Mapping[str, str]
    ) -> snapshots_pb.Info:
        """Set (or, with an empty value, remove) the given labels, leaving the others alone."""
        request = snapshots_pb.UpdateSnapshotRequest(
            snapshotter=snapshotter,
            info=snapshots_pb.Info(name=key, labels={k: v for k, v in labels.items() if v}),
            update_mask=protobuf.FieldMask(paths=[f"labels.{k}" for k in labels]),
        )
        reply = await self.call(self.snapshots.update(request))
        assert reply.info is not None
        return reply.info

    async def snapshot_list(self, snapshotter: str, filters: Sequence[str] = ()) -> list[snapshots_pb.Info]:
        """Every snapshot of ``snapshotter`` in this namespace that matches one of ``filters``."""
        request = snapshots_pb.ListSnapshotsRequest(snapshotter=snapshotter, filters=list(filters))
        async with aclosing(self.call_stream(self.snapshots.list(request))) as batches:
            return [info async for batch in batches for info in batch.info]

    async def snapshot_usage(self, snapshotter: str, key: str) -> snapshots_pb.UsageResponse:
        """The disk space (``size`` in bytes) and ``inodes`` the snapshot itself uses, without its parents."""
        return await self.call(
            self.snapshots.usage(snapshots_pb.UsageRequest(snapshotter=snapshotter, key=key))
        )

    async def snapshot_cleanup(self, snapshotter: str) -> None:
        """Ask the snapshotter to free what no snapshot uses any more."""
        await self.call(self.snapshots.cleanup(snapshots_pb.CleanupRequest(snapshotter=snapshotter)))
