"""Version, introspection and health calls."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

from corral.api.client._connection import Connection
from corral.api.types.containerd.services.introspection import v1 as introspection_pb
from corral.api.types.containerd.services.version import v1 as version_pb
from corral.api.types.corral.introspection import v1 as corral_introspection
from corral.api.types.google import protobuf
from corral.api.types.grpc.health import v1 as health_pb


class IntrospectionCalls(Connection):
    """Version, introspection and health calls."""

    @cached_property
    def introspection(self) -> introspection_pb.IntrospectionStub:
        return introspection_pb.IntrospectionStub(self.channel, metadata=self._metadata())

    @cached_property
    def corral(self) -> corral_introspection.IntrospectionStub:
        return corral_introspection.IntrospectionStub(self.channel, metadata=self._metadata())

    @cached_property
    def version_service(self) -> version_pb.VersionStub:
        return version_pb.VersionStub(self.channel, metadata=self._metadata())

    @cached_property
    def health(self) -> health_pb.HealthStub:
        return health_pb.HealthStub(self.channel, metadata=self._metadata())

    async def version(self) -> version_pb.VersionResponse:
        return await self.call(self.version_service.version(protobuf.Empty()))

    async def server(self) -> introspection_pb.ServerResponse:
        return await self.call(self.introspection.server(protobuf.Empty()))

    async def plugins(self, filters: Sequence[str] = ()) -> list[introspection_pb.Plugin]:
        reply = await self.call(
            self.introspection.plugins(introspection_pb.PluginsRequest(filters=list(filters)))
        )
        return list(reply.plugins)

    async def plugin_details(
        self, filters: Sequence[str] = (), *, all: bool = False
    ) -> list[corral_introspection.PluginDetail]:
        request = corral_introspection.PluginsRequest(filters=list(filters), all=all)
        reply = await self.call(self.corral.plugins(request))
        return list(reply.plugins)
