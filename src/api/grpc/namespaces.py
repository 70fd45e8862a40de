"""io.containerd.grpc.v1.namespaces — containerd.services.namespaces.v1.Namespaces."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from corral.api.grpc import GRPCServices
from corral.api.types.containerd.services.namespaces import v1 as pb
from corral.api.types.google import protobuf
from corral.api.wire import field_mask_paths
from corral.api.wire import namespace as _wire
from corral.kernel import InitContext, InvalidArgument, NotFound, Registration, parse_filters
from corral.plugins import types
from corral.plugins.metadata import Namespace, NamespaceStore


class NamespacesGRPC(pb.NamespacesBase):
    def __init__(self, local: NamespaceStore) -> None:
        self._local = local

    async def get(self, message: pb.GetNamespaceRequest) -> pb.GetNamespaceResponse:
        """As containerd's: a namespace that does not exist is answered by its name, without
        labels (the Go client's ``NamespaceService().Labels`` reads it as "no labels")."""
        try:
            found = await self._local.get(message.name)
        except NotFound:
            found = Namespace(message.name, {})
        return pb.GetNamespaceResponse(namespace=_wire(found))

    async def list(self, message: pb.ListNamespacesRequest) -> pb.ListNamespacesResponse:
        match = parse_filters([message.filter] if message.filter else [])
        found = [ns for ns in await self._local.list() if match.match(partial(_field, ns))]
        return pb.ListNamespacesResponse(namespaces=[_wire(ns) for ns in found])

    async def create(self, message: pb.CreateNamespaceRequest) -> pb.CreateNamespaceResponse:
        if message.namespace is None:
            raise InvalidArgument("namespace is required")
        created = await self._local.create(message.namespace.name, message.namespace.labels)
        return pb.CreateNamespaceResponse(namespace=_wire(created))

    async def update(self, message: pb.UpdateNamespaceRequest) -> pb.UpdateNamespaceResponse:
        if message.namespace is None:
            raise InvalidArgument("namespace is required")
        paths = field_mask_paths(message.update_mask)
        updated = await self._local.update(message.namespace.name, message.namespace.labels, paths)
        return pb.UpdateNamespaceResponse(namespace=_wire(updated))

    async def delete(self, message: pb.DeleteNamespaceRequest) -> protobuf.Empty:
        await self._local.delete(message.name)
        return protobuf.Empty()


def _field(ns: Namespace, path: Sequence[str]) -> str | None:
    parts = list(path)
    if parts == ["name"]:
        return ns.name
    if len(parts) >= 2 and parts[0] == "labels":
        return ns.labels.get(".".join(parts[1:]))
    return None


async def init(ic: InitContext) -> GRPCServices:
    return GRPCServices((NamespacesGRPC(ic.get_by_id(types.SERVICE, "namespaces-service", NamespaceStore)),))


registration = Registration(type=types.GRPC, id="namespaces", init=init, requires=(types.SERVICE,))
