"""io.containerd.grpc.v1.sandboxes — containerd.services.sandbox.v1.Store over the sandbox store."""

from __future__ import annotations

from corral.api.grpc import GRPCServices
from corral.api.sandbox_wire import sandbox_from_wire, sandbox_to_wire
from corral.api.types.containerd.services.sandbox import v1 as pb
from corral.kernel import InitContext, Registration
from corral.plugins import types
from corral.plugins.metadata import SandboxStore


class SandboxStoreGRPC(pb.StoreBase):
    def __init__(self, store: SandboxStore) -> None:
        self._store = store

    async def create(self, message: pb.StoreCreateRequest) -> pb.StoreCreateResponse:
        created = await self._store.create(sandbox_from_wire(message.sandbox))
        return pb.StoreCreateResponse(sandbox=sandbox_to_wire(created))

    async def update(self, message: pb.StoreUpdateRequest) -> pb.StoreUpdateResponse:
        updated = await self._store.update(sandbox_from_wire(message.sandbox), list(message.fields))
        return pb.StoreUpdateResponse(sandbox=sandbox_to_wire(updated))

    async def delete(self, message: pb.StoreDeleteRequest) -> pb.StoreDeleteResponse:
        await self._store.delete(message.sandbox_id)
        return pb.StoreDeleteResponse()

    async def list(self, message: pb.StoreListRequest) -> pb.StoreListResponse:
        found = await self._store.list(list(message.filters))
        return pb.StoreListResponse(list=[sandbox_to_wire(s) for s in found])

    async def get(self, message: pb.StoreGetRequest) -> pb.StoreGetResponse:
        return pb.StoreGetResponse(sandbox=sandbox_to_wire(await self._store.get(message.sandbox_id)))


async def init(ic: InitContext) -> GRPCServices:
    store = ic.get_by_id(types.SANDBOX_STORE, "local", SandboxStore)
    return GRPCServices((SandboxStoreGRPC(store),))


registration = Registration(type=types.GRPC, id="sandboxes", init=init, requires=(types.SANDBOX_STORE,))
