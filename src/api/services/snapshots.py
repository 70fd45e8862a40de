"""io.containerd.grpc.v1.snapshots — containerd.services.snapshots.v1.Snapshots; ``snapshotter`` picks one."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from corral.api.services import GRPCServices
from corral.api.types.containerd import types as ctypes
from corral.api.types.containerd.services.snapshots import v1 as pb
from corral.api.types.google import protobuf
from corral.kernel import InitContext, InvalidArgument, Registration
from corral.plugins import types
from corral.plugins.services.snapshots import SnapshotsService
from corral.plugins.snapshots import Info, Kind, Mount

LIST_BATCH = 100


def wire_mounts(mounts: Sequence[Mount]) -> list[ctypes.Mount]:
    return [
        ctypes.Mount(type=m.type, source=m.source, target=m.target, options=list(m.options)) for m in mounts
    ]


def _info(info: Info) -> pb.Info:
    return pb.Info(
        name=info.name,
        parent=info.parent,
        kind=pb.Kind(info.kind.value),
        created_at=info.created_at,
        updated_at=info.updated_at,
        labels=dict(info.labels),
    )


class SnapshotsGRPC(pb.SnapshotsBase):
    def __init__(self, local: SnapshotsService) -> None:
        self._local = local

    async def prepare(self, message: pb.PrepareSnapshotRequest) -> pb.PrepareSnapshotResponse:
        mounts = await self._local.prepare(message.snapshotter, message.key, message.parent, message.labels)
        return pb.PrepareSnapshotResponse(mounts=wire_mounts(mounts))

    async def view(self, message: pb.ViewSnapshotRequest) -> pb.ViewSnapshotResponse:
        mounts = await self._local.view(message.snapshotter, message.key, message.parent, message.labels)
        return pb.ViewSnapshotResponse(mounts=wire_mounts(mounts))

    async def mounts(self, message: pb.MountsRequest) -> pb.MountsResponse:
        return pb.MountsResponse(
            mounts=wire_mounts(await self._local.mounts(message.snapshotter, message.key))
        )

    async def commit(self, message: pb.CommitSnapshotRequest) -> protobuf.Empty:
        await self._local.commit(message.snapshotter, message.name, message.key, message.labels)
        return protobuf.Empty()

    async def remove(self, message: pb.RemoveSnapshotRequest) -> protobuf.Empty:
        await self._local.remove(message.snapshotter, message.key)
        return protobuf.Empty()

    async def stat(self, message: pb.StatSnapshotRequest) -> pb.StatSnapshotResponse:
        return pb.StatSnapshotResponse(info=_info(await self._local.stat(message.snapshotter, message.key)))

    async def update(self, message: pb.UpdateSnapshotRequest) -> pb.UpdateSnapshotResponse:
        if message.info is None:
            raise InvalidArgument("info is required")
        paths = list(message.update_mask.paths) if message.update_mask else []
        info = Info(message.info.name, Kind.UNKNOWN, labels=dict(message.info.labels))
        return pb.UpdateSnapshotResponse(
            info=_info(await self._local.update(message.snapshotter, info, paths))
        )

    async def list(self, message: pb.ListSnapshotsRequest) -> AsyncIterator[pb.ListSnapshotsResponse]:
        batch: list[pb.Info] = []
        async for info in self._local.walk(message.snapshotter, message.filters):
            batch.append(_info(info))
            if len(batch) == LIST_BATCH:
                yield pb.ListSnapshotsResponse(info=batch)
                batch = []
        if batch:
            yield pb.ListSnapshotsResponse(info=batch)

    async def usage(self, message: pb.UsageRequest) -> pb.UsageResponse:
        usage = await self._local.usage(message.snapshotter, message.key)
        return pb.UsageResponse(size=usage.size, inodes=usage.inodes)

    async def cleanup(self, message: pb.CleanupRequest) -> protobuf.Empty:
        await self._local.cleanup(message.snapshotter)
        return protobuf.Empty()


async def init(ic: InitContext) -> GRPCServices:
    return GRPCServices((SnapshotsGRPC(ic.get_by_id(types.SERVICE, "snapshots-service")),))


registration = Registration(type=types.GRPC, id="snapshots", init=init, requires=(types.SERVICE,))
