"""Namespace calls."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property

from corral.api.client._connection import Connection
from corral.api.types.containerd.services.namespaces import v1 as namespaces_pb
from corral.api.types.google import protobuf


class NamespaceCalls(Connection):
    """Namespace calls."""

    @cached_property
    def namespaces(self) -> namespaces_pb.NamespacesStub:
        return namespaces_pb.NamespacesStub(self.channel, metadata=self._metadata())

    async def list_namespaces(self) -> list[namespaces_pb.Namespace]:
        reply = await self.call(self.namespaces.list(namespaces_pb.ListNamespacesRequest()))
        return list(reply.namespaces)

    async def get_namespace(self, name: str) -> namespaces_pb.Namespace:
        reply = await self.call(self.namespaces.get(namespaces_pb.GetNamespaceRequest(name=name)))
        assert reply.namespace is not None
        return reply.namespace

    async def create_namespace(
        self, name: str, labels: Mapping[str, str] | None = None
    ) -> namespaces_pb.Namespace:
        ns = namespaces_pb.Namespace(name=name, labels=dict(labels or {}))
        reply = await self.call(self.namespaces.create(namespaces_pb.CreateNamespaceRequest(namespace=ns)))
        assert reply.namespace is not None
        return reply.namespace

    async def label_namespace(self, name: str, labels: Mapping[str, str]) -> namespaces_pb.Namespace:
        """Set (or, with an empty value, remove) the given labels, leaving the others alone."""
        request = namespaces_pb.UpdateNamespaceRequest(
            namespace=namespaces_pb.Namespace(name=name, labels={k: v for k, v in labels.items() if v}),
            update_mask=protobuf.FieldMask(paths=[f"labels.{k}" for k in labels]),
        )
        reply = await self.call(self.namespaces.update(request))
        assert reply.namespace is not None
        return reply.namespace

    async def delete_namespace(self, name: str) -> None:
        await self.call(self.namespaces.delete(namespaces_pb.DeleteNamespaceRequest(name=name)))
