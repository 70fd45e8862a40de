"""Event calls: subscribe and publish."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from functools import cached_property

from corral.api.client._connection import Connection
from corral.api.types.containerd import types as containerd_types
from corral.api.types.containerd.services.events import v1 as events_pb
from corral.api.types.google import protobuf


class EventCalls(Connection):
    """Event calls: subscribe and publish."""

    @cached_property
    def events(self) -> events_pb.EventsStub:
        return events_pb.EventsStub(self.channel, metadata=self._metadata())

    async def subscribe(self, filters: Sequence[str] = ()) -> AsyncIterator[containerd_types.Envelope]:
        """Events as they are published; with no filters, from every namespace (as with ctr)."""
        request = events_pb.SubscribeRequest(filters=list(filters))
        async with aclosing(self.call_stream(self.events.subscribe(request))) as envelopes:
            async for envelope in envelopes:
                yield envelope

    async def publish(self, topic: str, event: protobuf.Any) -> None:
        """Publish ``event`` on ``topic`` in the client's namespace; give its ``type_url`` without prefix."""
        await self.call(self.events.publish(events_pb.PublishRequest(topic=topic, event=event)))
