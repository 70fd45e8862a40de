"""io.containerd.grpc.v1.introspection — containerd.services.introspection.v1.Introspection."""

from __future__ import annotations

from corral.api import wire
from corral.api.grpc import GRPCServices
from corral.api.types.containerd.services.introspection import v1 as pb
from corral.api.types.google import protobuf
from corral.kernel import FailedPrecondition, InitContext, NotFound, Registration, Unimplemented
from corral.plugins import types
from corral.plugins.services.introspection import Introspection


class IntrospectionService(pb.IntrospectionBase):
    def __init__(self, local: Introspection) -> None:
        self._local = local

    async def plugins(self, message: pb.PluginsRequest) -> pb.PluginsResponse:
        return pb.PluginsResponse(plugins=[wire.plugin(r) for r in self._local.plugins(message.filters)])

    async def server(self, message: protobuf.Empty) -> pb.ServerResponse:
        info = self._local.server()
        return pb.ServerResponse(uuid=info.uuid, pid=info.pid, pidns=info.pidns)

    async def plugin_info(self, message: pb.PluginInfoRequest) -> pb.PluginInfoResponse:
        rec = self._local.get(f"{message.type}.{message.id}")
        if rec is None or rec.status.value in ("disabled", "not-enabled", "pending"):
            raise NotFound(f"plugin {message.type}.{message.id}")
        if message.options is not None:
            if not rec.ok:
                raise FailedPrecondition(f"plugin {rec.uri} failed to initialize")
            raise Unimplemented("plugin does not provide extra information")
        return pb.PluginInfoResponse(plugin=wire.plugin(rec))


async def init(ic: InitContext) -> GRPCServices:
    return GRPCServices(
        (IntrospectionService(ic.get_by_id(types.SERVICE, "introspection-service", Introspection)),)
    )


registration = Registration(type=types.GRPC, id="introspection", init=init, requires=(types.SERVICE,))
