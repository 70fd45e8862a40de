"""io.containerd.grpc.v1.events — containerd.services.events.v1.Events over the event exchange."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping
from typing import Any

import betterproto2

from corral.api.services import GRPCServices

# Imported for its side effect: it registers containerd's event messages in the message pool.
from corral.api.types.containerd import events as _events  # noqa: F401
from corral.api.types.containerd import types as ctypes
from corral.api.types.containerd.services.events import v1 as pb
from corral.api.types.google import protobuf
from corral.api.types.message_pool import default_message_pool
from corral.kernel import InitContext, InvalidArgument, Registration
from corral.plugins import types
from corral.plugins.events.types import EVENT_TYPES, Envelope, Event, EventExchange, RawEvent, TypedEvent

_POOL_PREFIX = "type.googleapis.com/"


def proto_class(type_url: str) -> type[betterproto2.Message]:
    """The generated message for a bare containerd type_url such as ``containerd.events.NamespaceCreate``."""
    try:
        return default_message_pool.url_to_type[_POOL_PREFIX + type_url]
    except KeyError:
        raise LookupError(f"no protobuf message is generated for {type_url}") from None


def event_to_any(event: Event) -> protobuf.Any:
    """An Any with containerd's bare type_url (no type.googleapis.com/ prefix, which ctr rejects)."""
    if isinstance(event, RawEvent):
        return protobuf.Any(type_url=event.type_url, value=event.value)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(event):
        value = getattr(event, f.name)
        values[f.name] = dict(value) if isinstance(value, Mapping) else value
    return protobuf.Any(type_url=event.TYPE_URL, value=bytes(proto_class(event.TYPE_URL)(**values)))


def event_from_any(value: protobuf.Any) -> Event:
    """The record type for a known type_url, else the encoded event as it came."""
    record = EVENT_TYPES.get(value.type_url)
    if record is None:
        return RawEvent(type_url=value.type_url, value=value.value)
    message = proto_class(value.type_url).parse(value.value)
    return _record(record, message)


def _record(record: type[TypedEvent], message: betterproto2.Message) -> TypedEvent:
    return record(**{f.name: getattr(message, f.name) for f in dataclasses.fields(record)})


def envelope_to_wire(envelope: Envelope) -> ctypes.Envelope:
    return ctypes.Envelope(
        timestamp=envelope.timestamp,
        namespace=envelope.namespace,
        topic=envelope.topic,
        event=event_to_any(envelope.event),
    )


def envelope_from_wire(envelope: ctypes.Envelope) -> Envelope:
    """A forwarded envelope, its event kept encoded so it reaches subscribers byte for byte."""
    if envelope.timestamp is None:
        raise InvalidArgument("timestamp must be set on forwarded event")
    if envelope.event is None:
        raise InvalidArgument("event must be set on forwarded event")
    return Envelope(
        timestamp=envelope.timestamp,
        namespace=envelope.namespace,
        topic=envelope.topic,
        event=RawEvent(type_url=envelope.event.type_url, value=envelope.event.value),
    )


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


async def init(ic: InitContext) -> GRPCServices:
    return GRPCServices((EventsGRPC(ic.get_single(types.EVENT)),))


registration = Registration(type=types.GRPC, id="events", init=init, requires=(types.EVENT,))
