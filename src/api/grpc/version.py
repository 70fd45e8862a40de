"""io.containerd.grpc.v1.version — containerd.services.version.v1.Version."""

from __future__ import annotations

from corral import __version__
from corral.api.grpc import GRPCServices
from corral.api.types.containerd.services.version import v1 as pb
from corral.api.types.google import protobuf
from corral.kernel import InitContext, Registration
from corral.plugins import types

REVISION = "corral"


class VersionService(pb.VersionBase):
    async def version(self, message: protobuf.Empty) -> pb.VersionResponse:
        return pb.VersionResponse(version=__version__, revision=REVISION)


async def init(ic: InitContext) -> GRPCServices:
    return GRPCServices((VersionService(),))


registration = Registration(type=types.GRPC, id="version", init=init)
