"""io.containerd.grpc.v1.sandboxes — containerd.services.sandbox.v1.Store over the sandbox store."""

from __future__ import annotations

from corral.api.grpc import GRPCServices
from corral.api.types.containerd import types as ctypes
from corral.api.types.containerd.services.sandbox import v1 as pb
from corral.api.types.google import protobuf
from corral.api.wire import any_from_wire, any_to_wire
from corral.kernel import InitContext, InvalidArgument, Registration
from corral.plugins import types
from corral.plugins.metadata import AnyValue, Sandbox, SandboxRuntime, SandboxStore


def sandbox_to_wire(s: Sandbox) -> ctypes.Sandbox:
    """containerd's sandbox.ToProto."""
    return ctypes.Sandbox(
        sandbox_id=s.id,
        runtime=ctypes.SandboxRuntime(name=s.runtime.name, options=any_to_wire(s.runtime.options)),
        spec=any_to_wire(s.spec),
        labels=dict(s.labels),
        created_at=s.created_at,
        updated_at=s.updated_at,
        extensions={k: protobuf.Any(type_url=v.type_url, value=v.value) for k, v in s.extensions.items()},
        sandboxer=s.sandboxer,
    )


def sandbox_from_wire(s: ctypes.Sandbox | None) -> Sandbox:
    """containerd's sandbox.FromProto (which a request without a sandbox would crash)."""
    if s is None:
        raise InvalidArgument("sandbox is required")
    runtime = s.runtime
    return Sandbox(
        id=s.sandbox_id,
        runtime=SandboxRuntime(
            runtime.name if runtime else "", any_from_wire(runtime.options if runtime else None)
        ),
        labels=dict(s.labels),
        spec=any_from_wire(s.spec),
        sandboxer=s.sandboxer,
        extensions={k: AnyValue(v.type_url, bytes(v.value)) for k, v in s.extensions.items()},
        created_at=s.created_at,
        updated_at=s.updated_at,
    )


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
