"""io.containerd.grpc.v1.diff — containerd.services.diff.v1.Diff (Apply, Diff)."""

from __future__ import annotations

from corral.api.grpc import GRPCServices
from corral.api.types.containerd.services.diff import v1 as pb
from corral.api.wire import descriptor_from_wire, descriptor_to_wire, mounts_from_wire
from corral.kernel import InitContext, Registration
from corral.plugins import types
from corral.plugins.services.diff import DiffService


class DiffGRPC(pb.DiffBase):
    def __init__(self, local: DiffService) -> None:
        self._local = local

    async def apply(self, message: pb.ApplyRequest) -> pb.ApplyResponse:
        desc = descriptor_from_wire(message.diff, "diff descriptor")
        applied = await self._local.apply(desc, mounts_from_wire(message.mounts), sync_fs=message.sync_fs)
        return pb.ApplyResponse(applied=descriptor_to_wire(applied))

    async def diff(self, message: pb.DiffRequest) -> pb.DiffResponse:
        made = await self._local.compare(
            mounts_from_wire(message.left),
            mounts_from_wire(message.right),
            media_type=message.media_type,
            ref=message.ref,
            labels=dict(message.labels),
            source_date_epoch=message.source_date_epoch,
        )
        return pb.DiffResponse(diff=descriptor_to_wire(made))


async def init(ic: InitContext) -> GRPCServices:
    return GRPCServices((DiffGRPC(ic.get_by_id(types.SERVICE, "diff-service", DiffService)),))


registration = Registration(type=types.GRPC, id="diff", init=init, requires=(types.SERVICE,))
