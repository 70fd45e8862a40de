"""io.containerd.grpc.v1.snapshots — containerd.services.snapshots.v1.Snapshots; ``snapshotter`` picks one."""

from __future__ import annotations

from collections.abc import AsyncIterator

from corral.api.grpc import GRPCServices
from corral.api.types.containerd.services.snapshots import v1 as pb
from corral.api.types.google import protobuf
from corral.api.wire import field_mask_paths, mounts_to_wire, snapshot_info, snapshot_info_from_wire
from corral.kernel import InitContext, Registration
from corral.plugins import types
from corral.plugins.metadata import NamespacedSnapshots

LIST_BATCH = 100


class SnapshotsGRPC(pb.SnapshotsBase):
    def __init__(self, local: NamespacedSnapshots) -> None:
        self._local = local

    async def prepare(self, message: pb.PrepareSnapshotRequest) -> pb.PrepareSnapshotResponse:
        snapshotter = self._local.get(message.snapshotter)
        mounts = await snapshotter.prepare(message.key, message.parent, message.labels)
        return pb.PrepareSnapshotResponse(mounts=mounts_to_wire(mounts))

    async def view(self, message: pb.ViewSnapshotRequest) -> pb.ViewSnapshotResponse:
        mounts = await self._local.get(message.snapshotter).view(message.key, message.parent, message.labels)
        return pb.ViewSnapshotResponse(mounts=mounts_to_wire(mounts))

    async def mounts(self, message: pb.MountsRequest) -> pb.MountsResponse:
        mounts = await self._local.get(message.snapshotter).mounts(message.key)
        return pb.MountsResponse(mounts=mounts_to_wire(mounts))

    async def commit(self, message: pb.CommitSnapshotRequest) -> protobuf.Empty:
        await self._local.get(message.snapshotter).commit(message.name, message.key, message.labels)
        return protobuf.Empty()

    async def remove(self, message: pb.RemoveSnapshotRequest) -> protobuf.Empty:
        await self._local.get(message.snapshotter).remove(message.key)
        return protobuf.Empty()

    async def stat(self, message: pb.StatSnapshotRequest) -> pb.StatSnapshotResponse:
        info = await self._local.get(message.snapshotter).stat(message.key)
        return pb.StatSnapshotResponse(info=snapshot_info(info))

    async def update(self, message: pb.UpdateSnapshotRequest) -> pb.UpdateSnapshotResponse:
        info = snapshot_info_from_wire(message.info)
        snapshotter = self._local.get(message.snapshotter)
        updated = await snapshotter.update(info, field_mask_paths(message.update_mask))
        return pb.UpdateSnapshotResponse(info=snapshot_info(updated))

    async def list(self, message: pb.ListSnapshotsRequest) -> AsyncIterator[pb.ListSnapshotsResponse]:
        batch: list[pb.Info] = []
        async for info in self._local.get(message.snapshotter).walk(message.filters):
            batch.append(snapshot_info(info))
            if len(batch) == LIST_BATCH:
                yield pb.ListSnapshotsResponse(info=batch)
                batch = []
        if batch:
            yield pb.ListSnapshotsResponse(info=batch)

    async def usage(self, message: pb.UsageRequest) -> pb.UsageResponse:
        usage = await self._local.get(message.snapshotter).usage(message.key)
        return pb.UsageResponse(size=usage.size, inodes=usage.inodes)

    async def cleanup(self, message: pb.CleanupRequest) -> protobuf.Empty:
        await self._local.get(message.snapshotter).cleanup()
        return protobuf.Empty()


async def init(ic: InitContext) -> GRPCServices:
    local = ic.get_by_id(types.SERVICE, "snapshots-service", NamespacedSnapshots)
    return GRPCServices((SnapshotsGRPC(local),))


registration = Registration(type=types.GRPC, id="snapshots", init=init, requires=(types.SERVICE,))
