"""io.containerd.grpc.v1.events — containerd.services.events.v1.Events over the event exchange."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from corral.api.grpc import GRPCServices
from corral.api.ttrpc import TTRPCContext, TTRPCServer
from corral.api.types.containerd import types as ctypes
from corral.api.types.containerd.services.events import v1 as pb
from corral.api.types.containerd.services.events.ttrpc import v1 as ttrpc_pb
from corral.api.types.google import protobuf
from corral.api.wire import envelope_from_wire, envelope_to_wire
from corral.kernel import InitContext, InvalidArgument, Registration
from corral.plugins import types
from corral.plugins.events.types import EventExchange, RawEvent


class EventsGRPC(pb.EventsBase):
    def __init__(self, exchange: EventExchange) -> None:
        self._exchange = exchange

    async def publish(self, message: pb.PublishRequest) -> protobuf.Empty:
        if message.event is None:
            raise InvalidArgument("event must be set")
        event = RawEvent(type_url=message.event.type_url, value=message.event.value)
        await self._exchange.publish(event, topic=message.topic)
        return protobuf.Empty()

    async def forward(self, message: pb.ForwardRequest) -> protobuf.Empty:
        if message.envelope is None:
            raise InvalidArgument("envelope must be set")
        await self._exchange.forward(envelope_from_wire(message.envelope))
        return protobuf.Empty()

    async def subscribe(self, message: pb.SubscribeRequest) -> AsyncIterator[ctypes.Envelope]:
        # Without filters every namespace's events are delivered, as containerd does.
        async with self._exchange.subscribe(list(message.filters)) as events:
            async for envelope in events:
                yield envelope_to_wire(envelope)


TTRPC_SERVICE = "containerd.services.events.ttrpc.v1.Events"


@dataclass(frozen=True)
class EventsServices(GRPCServices):
    """Events over gRPC, and Forward over ttrpc at ``<grpc address>.ttrpc`` for shims."""

    exchange: EventExchange | None = None

    def register_ttrpc(self, server: TTRPCServer) -> None:
        server.register_unary(TTRPC_SERVICE, "Forward", ttrpc_pb.ForwardRequest, self._forward)

    async def _forward(self, message: ttrpc_pb.ForwardRequest, ctx: TTRPCContext) -> protobuf.Empty:
        # The envelope's namespace and topic are the shim's, kept as sent (containerd does the same).
        if message.envelope is None:
            raise InvalidArgument("envelope must be set")
        assert self.exchange is not None
        await self.exchange.forward(envelope_from_wire(message.envelope))
        return protobuf.Empty()


async def init(ic: InitContext) -> EventsServices:
    exchange = ic.get_single(types.EVENT, EventExchange)
    return EventsServices((EventsGRPC(exchange),), exchange)


registration = Registration(type=types.GRPC, id="events", init=init, requires=(types.EVENT,))
