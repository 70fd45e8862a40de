"""io.containerd.grpc.v1.healthcheck — grpc.health.v1.Health: serving once the daemon is up."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio

from corral.api.grpc import GRPCServices
from corral.api.types.grpc.health import v1 as pb
from corral.kernel import InitContext, Registration
from corral.plugins import types


class HealthService(pb.HealthBase):
    async def check(self, message: pb.HealthCheckRequest) -> pb.HealthCheckResponse:
        return pb.HealthCheckResponse(status=pb.HealthCheckResponseServingStatus.SERVING)

    async def watch(self, message: pb.HealthCheckRequest) -> AsyncIterator[pb.HealthCheckResponse]:
        yield pb.HealthCheckResponse(status=pb.HealthCheckResponseServingStatus.SERVING)
        # A watch stays open until the client leaves; the status cannot change while serving.
        await anyio.sleep_forever()


async def init(ic: InitContext) -> GRPCServices:
    return GRPCServices((HealthService(),))


registration = Registration(type=types.GRPC, id="healthcheck", init=init)
