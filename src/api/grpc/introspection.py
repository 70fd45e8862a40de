"""io.containerd.grpc.v1.introspection — containerd.services.introspection.v1.Introspection."""

from __future__ import annotations

from corral.api import wire
from corral.api.grpc import GRPCServices
from corral.api.grpc.codec import put_varint
from corral.api.types.containerd.services.introspection import v1 as pb
from corral.api.types.google import protobuf
from corral.kernel import FailedPrecondition, InitContext, NotFound, Registration, Unimplemented
from corral.plugins import types
from corral.plugins.services.introspection import Introspection


class _EncodedPlugins(pb.PluginsResponse):
    """A PluginsResponse written from its plugins' encoded bytes (field 1, repeated Plugin)."""

    def __init__(self, plugins: list[bytes]) -> None:  # no dataclass set-up: the bytes are ready
        self._encoded = b"".join(_length_delimited(1, p) for p in plugins)

    def SerializeToString(self) -> bytes:  # the name the codec calls
        return self._encoded

    __bytes__ = SerializeToString


def _length_delimited(number: int, data: bytes) -> bytes:
    head = bytearray([number << 3 | 2])
    put_varint(head, len(data))
    return bytes(head) + data


class IntrospectionService(pb.IntrospectionBase):
    def __init__(self, local: Introspection) -> None:
        self._local = local

    async def plugins(self, message: pb.PluginsRequest) -> pb.PluginsResponse:
        return _EncodedPlugins([wire.plugin_bytes(r) for r in self._local.plugins(message.filters)])

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
