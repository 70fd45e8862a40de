"""io.containerd.grpc.v1.diff — containerd.services.diff.v1.Diff (Apply, Diff)."""

from __future__ import annotations

from corral.api.services import GRPCServices
from corral.api.types.containerd import types as ctypes
from corral.api.types.containerd.services.diff import v1 as pb
from corral.kernel import InitContext, InvalidArgument, Registration
from corral.plugins import types
from corral.plugins.differs import Descriptor
from corral.plugins.services.diff import DiffService
from corral.plugins.snapshots import Mount


def _mounts(mounts: list[ctypes.Mount]) -> list[Mount]:
    return [Mount(m.type, m.source, tuple(m.options), m.target) for m in mounts]


def _descriptor(desc: Descriptor) -> ctypes.Descriptor:
    return ctypes.Descriptor(
        media_type=desc.media_type, digest=desc.digest, size=desc.size, annotations=dict(desc.annotations)
    )


class DiffGRPC(pb.DiffBase):
    def __init__(self, local: DiffService) -> None:
        self._local = local

    async def apply(self, message: pb.ApplyRequest) -> pb.ApplyResponse:
        if message.diff is None:
            raise InvalidArgument("diff descriptor is required")
        d = message.diff
        desc = Descriptor(d.media_type, d.digest, d.size, dict(d.annotations))
        applied = await self._local.apply(desc, _mounts(message.mounts))
        return pb.ApplyResponse(applied=_descriptor(applied))

    async def diff(self, message: pb.DiffRequest) -> pb.DiffResponse:
        made = await self._local.compare(
            _mounts(message.left),
            _mounts(message.right),
            media_type=message.media_type,
            ref=message.ref,
            labels=dict(message.labels),
        )
        return pb.DiffResponse(diff=_descriptor(made))


async def init(ic: InitContext) -> GRPCServices:
    return GRPCServices((DiffGRPC(ic.get_by_id(types.SERVICE, "diff-service")),))


registration = Registration(type=types.GRPC, id="diff", init=init, requires=(types.SERVICE,))
