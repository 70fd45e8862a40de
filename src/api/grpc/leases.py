"""io.containerd.grpc.v1.leases — containerd.services.leases.v1.Leases."""

from __future__ import annotations

from corral.api.grpc import GRPCServices
from corral.api.types.containerd.services.leases import v1 as pb
from corral.api.types.google import protobuf
from corral.api.wire import lease as wire_lease
from corral.kernel import InitContext, InvalidArgument, Registration
from corral.plugins import types
from corral.plugins.leases.manager import Leases
from corral.plugins.metadata import Resource


def _resource(message: pb.Resource | None) -> Resource:
    if message is None:
        raise InvalidArgument("resource is required")
    return Resource(message.id, message.type)


class LeasesGRPC(pb.LeasesBase):
    def __init__(self, local: Leases) -> None:
        self._local = local

    async def create(self, message: pb.CreateRequest) -> pb.CreateResponse:
        return pb.CreateResponse(lease=wire_lease(await self._local.create(message.id, message.labels)))

    async def delete(self, message: pb.DeleteRequest) -> protobuf.Empty:
        await self._local.delete(message.id, sync=message.sync)
        return protobuf.Empty()

    async def list(self, message: pb.ListRequest) -> pb.ListResponse:
        return pb.ListResponse(
            leases=[wire_lease(lease) for lease in await self._local.list(message.filters)]
        )

    async def add_resource(self, message: pb.AddResourceRequest) -> protobuf.Empty:
        await self._local.add_resource(message.id, _resource(message.resource))
        return protobuf.Empty()

    async def delete_resource(self, message: pb.DeleteResourceRequest) -> protobuf.Empty:
        await self._local.delete_resource(message.id, _resource(message.resource))
        return protobuf.Empty()

    async def list_resources(self, message: pb.ListResourcesRequest) -> pb.ListResourcesResponse:
        resources = await self._local.list_resources(message.id)
        return pb.ListResourcesResponse(resources=[pb.Resource(id=r.id, type=r.type) for r in resources])


async def init(ic: InitContext) -> GRPCServices:
    return GRPCServices((LeasesGRPC(ic.get_single(types.LEASE, Leases)),))


registration = Registration(type=types.GRPC, id="leases", init=init, requires=(types.LEASE,))
