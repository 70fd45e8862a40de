"""An async client for corrald (and containerd): what the CLI, the tests and plugin authors use."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import TypeVar

from grpclib.client import Channel
from grpclib.exceptions import GRPCError

from corral.api.errors import error_from_status
from corral.api.server import NAMESPACE_HEADER
from corral.api.types.containerd.services.introspection import v1 as introspection
from corral.api.types.containerd.services.namespaces import v1 as namespaces
from corral.api.types.containerd.services.version import v1 as version
from corral.api.types.corral.introspection import v1 as corral_introspection
from corral.api.types.google import protobuf
from corral.api.types.grpc.health import v1 as health

T = TypeVar("T")

DEFAULT_NAMESPACE = "default"


def default_address() -> str:
    """$CORRAL_ADDRESS, else where corrald listens by default for this user."""
    env = os.environ.get("CORRAL_ADDRESS")
    if env:
        return env
    if os.geteuid() == 0:
        return "/run/corral/corral.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    state = os.path.join(runtime, "corral") if runtime else f"/tmp/corral-{os.getuid()}"
    return os.path.join(state, "corral.sock")


class Client:
    """One connection to a daemon's socket; every call carries the client's namespace."""

    def __init__(self, address: str | None = None, namespace: str = DEFAULT_NAMESPACE) -> None:
        self.address = address or default_address()
        self.namespace = namespace
        self.channel = Channel(path=self.address)
        self.introspection = introspection.IntrospectionStub(self.channel, metadata=self._metadata())
        self.corral = corral_introspection.IntrospectionStub(self.channel, metadata=self._metadata())
        self.version_service = version.VersionStub(self.channel, metadata=self._metadata())
        self.namespaces = namespaces.NamespacesStub(self.channel, metadata=self._metadata())
        self.health = health.HealthStub(self.channel, metadata=self._metadata())

    def _metadata(self) -> Mapping[str, str]:
        return {NAMESPACE_HEADER: self.namespace}

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    # Each call turns a gRPC status back into the kernel's error kind, so callers catch
    # NotFound, AlreadyExists, ... rather than status codes.
    @staticmethod
    async def call(awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except GRPCError as exc:
            raise error_from_status(exc.status, exc.message or "") from None

    async def version(self) -> version.VersionResponse:
        return await self.call(self.version_service.version(protobuf.Empty()))

    async def server(self) -> introspection.ServerResponse:
        return await self.call(self.introspection.server(protobuf.Empty()))

    async def plugins(self, filters: Sequence[str] = ()) -> list[introspection.Plugin]:
        reply = await self.call(
            self.introspection.plugins(introspection.PluginsRequest(filters=list(filters)))
        )
        return list(reply.plugins)

    async def plugin_details(
        self, filters: Sequence[str] = (), *, all: bool = False
    ) -> list[corral_introspection.PluginDetail]:
        request = corral_introspection.PluginsRequest(filters=list(filters), all=all)
        reply = await self.call(self.corral.plugins(request))
        return list(reply.plugins)

    async def list_namespaces(self) -> list[namespaces.Namespace]:
        reply = await self.call(self.namespaces.list(namespaces.ListNamespacesRequest()))
        return list(reply.namespaces)

    async def get_namespace(self, name: str) -> namespaces.Namespace:
        reply = await self.call(self.namespaces.get(namespaces.GetNamespaceRequest(name=name)))
        assert reply.namespace is not None
        return reply.namespace

    async def create_namespace(
        self, name: str, labels: Mapping[str, str] | None = None
    ) -> namespaces.Namespace:
        ns = namespaces.Namespace(name=name, labels=dict(labels or {}))
        reply = await self.call(self.namespaces.create(namespaces.CreateNamespaceRequest(namespace=ns)))
        assert reply.namespace is not None
        return reply.namespace

    async def label_namespace(self, name: str, labels: Mapping[str, str]) -> namespaces.Namespace:
        """Set (or, with an empty value, remove) the given labels, leaving the others alone."""
        request = namespaces.UpdateNamespaceRequest(
            namespace=namespaces.Namespace(name=name, labels={k: v for k, v in labels.items() if v}),
            update_mask=protobuf.FieldMask(paths=[f"labels.{k}" for k in labels]),
        )
        reply = await self.call(self.namespaces.update(request))
        assert reply.namespace is not None
        return reply.namespace

    async def delete_namespace(self, name: str) -> None:
        await self.call(self.namespaces.delete(namespaces.DeleteNamespaceRequest(name=name)))


@asynccontextmanager
async def connect(address: str | None = None, namespace: str = DEFAULT_NAMESPACE) -> AsyncIterator[Client]:
    client = Client(address, namespace)
    try:
        yield client
    finally:
        client.close()
