"""io.containerd.grpc.v1.containers — containerd.services.containers.v1.Containers."""

from __future__ import annotations

from collections.abc import AsyncIterator

from corral.api.edge import error_for
from corral.api.grpc import GRPCServices
from corral.api.types.containerd.services.containers import v1 as pb
from corral.api.types.google import protobuf
from corral.api.wire import container_from_wire, container_to_wire, field_mask_paths
from corral.kernel import InitContext, Registration
from corral.plugins import types
from corral.plugins.metadata import ContainerStore

INVALID_ARGUMENT = 3


class ContainersGRPC(pb.ContainersBase):
    def __init__(self, local: ContainerStore) -> None:
        self._local = local

    async def get(self, message: pb.GetContainerRequest) -> pb.GetContainerResponse:
        return pb.GetContainerResponse(container=container_to_wire(await self._local.get(message.id)))

    async def list(self, message: pb.ListContainersRequest) -> pb.ListContainersResponse:
        found = await self._local.list(message.filters)
        return pb.ListContainersResponse(containers=[container_to_wire(c) for c in found])

    async def list_stream(self, message: pb.ListContainersRequest) -> AsyncIterator[pb.ListContainerMessage]:
        # As containerd: the listing is read in one go, then sent one container per message.
        for c in await self._local.list(message.filters):
            yield pb.ListContainerMessage(container=container_to_wire(c))

    async def create(self, message: pb.CreateContainerRequest) -> pb.CreateContainerResponse:
        created = await self._local.create(container_from_wire(message.container))
        return pb.CreateContainerResponse(container=container_to_wire(created))

    async def update(self, message: pb.UpdateContainerRequest) -> pb.UpdateContainerResponse:
        if message.container is None or not message.container.id:
            raise error_for(INVALID_ARGUMENT, "Container.ID required")  # a bare status, as containerd's
        paths = field_mask_paths(message.update_mask)
        updated = await self._local.update(container_from_wire(message.container), paths)
        return pb.UpdateContainerResponse(container=container_to_wire(updated))

    async def delete(self, message: pb.DeleteContainerRequest) -> protobuf.Empty:
        await self._local.delete(message.id)
        return protobuf.Empty()


async def init(ic: InitContext) -> GRPCServices:
    local = ic.get_by_id(types.SERVICE, "containers-service", ContainerStore)
    return GRPCServices((ContainersGRPC(local),))


registration = Registration(type=types.GRPC, id="containers", init=init, requires=(types.SERVICE,))
