"""io.containerd.event.v1.exchange — fans events out to filtered subscribers, in publish order.

Slow subscribers are disconnected, not waited for and not silently skipped. Each subscription has
a bounded queue (``subscriber_queue_size``); publishing never waits. When a subscriber's queue is
full it is cut off: it still receives what was already queued, then its iterator raises
SubscriberFellBehind (ResourceExhausted), so it knows its history has a gap and can resubscribe.
Blocking publishers would let one stuck client stall every service that emits events; dropping
events quietly would let a client act on a history with holes in it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from corral.kernel import (
    ConfigError,
    Filter,
    InitContext,
    InvalidArgument,
    Registration,
    ResourceExhausted,
    adapt_mapping,
    parse_filters,
)
from corral.plugins import types
from corral.plugins.core import namespace_required, validate_identifier, validate_namespace
from corral.plugins.events.types import Envelope, Event, RawEvent

DEFAULT_QUEUE_SIZE = 1024


@dataclass(frozen=True)
class ExchangeConfig:
    """The ``io.containerd.event.v1.exchange`` section."""

    subscriber_queue_size: int = DEFAULT_QUEUE_SIZE
    """Events queued per subscriber; one that falls this far behind is disconnected."""


class SubscriberFellBehind(ResourceExhausted):
    """The subscription was cut off because its queue was full; later events were not delivered."""


def validate_topic(topic: str) -> None:
    """containerd's rule: ``/`` then one or more identifier components separated by ``/``."""
    if not topic:
        reason = "must not be empty"
    elif not topic.startswith("/"):
        reason = "must start with '/'"
    elif topic == "/":
        reason = "must have at least one component"
    else:
        for component in topic[1:].split("/"):
            try:
                validate_identifier(component)
            except InvalidArgument as exc:
                raise InvalidArgument(
                    f'envelope topic "{topic}": failed validation on component "{component}": {exc.detail}'
                ) from None
        return
    raise InvalidArgument(f'envelope topic "{topic}": {reason}')


def event_fields(event: Event) -> dict[str, object]:
    """The event's filterable fields: strings and string maps, as containerd's field adaptors expose."""
    if isinstance(event, RawEvent):
        return {}
    found: dict[str, object] = {}
    for f in dataclasses.fields(event):
        value = getattr(event, f.name)
        if isinstance(value, str | Mapping):
            found[f.name] = value
    return found


class _Subscriber:
    """One subscription's filter and the sending end of its bounded queue."""

    def __init__(self, match: Filter, send: MemoryObjectSendStream[Envelope]) -> None:
        self.match = match
        self.send = send
        self.fell_behind = False


class Subscription:
    """A subscription's events in publish order; ends when the exchange closes."""

    def __init__(
        self, receive: MemoryObjectReceiveStream[Envelope], subscriber: _Subscriber, size: int
    ) -> None:
        self._receive = receive
        self._subscriber = subscriber
        self._size = size

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Envelope:
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            if self._subscriber.fell_behind:
                raise SubscriberFellBehind(
                    f"subscriber fell behind: more than {self._size} events were waiting to be read"
                ) from None
            raise StopAsyncIteration from None


class Exchange:
    """Publish, forward and subscribe; every subscription belongs to the caller that opened it."""

    def __init__(self, *, queue_size: int = DEFAULT_QUEUE_SIZE, log: Any = None) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self._queue_size = queue_size
        self._subscribers: set[_Subscriber] = set()
        self._closed = False
        self._log = log if log is not None else structlog.get_logger("corral.events")

    async def publish(
        self, event: Event, *, topic: str | None = None, namespace: str | None = None
    ) -> Envelope:
        """Stamp ``event`` with the time and namespace (the request's by default) and deliver it."""
        if topic is None:
            if isinstance(event, RawEvent):
                raise InvalidArgument("an encoded event needs an explicit topic")
            topic = event.TOPIC
        if namespace is None:
            namespace = namespace_required()
        validate_namespace(namespace)
        validate_topic(topic)
        envelope = Envelope(timestamp=datetime.now(UTC), namespace=namespace, topic=topic, event=event)
        self._dispatch(envelope)
        return envelope

    async def forward(self, envelope: Envelope) -> None:
        """Deliver an envelope built elsewhere (a shim, another daemon) with its time and namespace kept."""
        try:
            validate_namespace(envelope.namespace)
        except InvalidArgument as exc:
            raise InvalidArgument(f"event envelope has invalid namespace: {exc.detail}") from None
        validate_topic(envelope.topic)
        if envelope.timestamp.tzinfo is None or envelope.timestamp.year <= 1:
            # Go's zero time (year 1) is how containerd's clients spell "unset".
            raise InvalidArgument("timestamp must be set on forwarded event")
        self._dispatch(envelope)

    @asynccontextmanager
    async def subscribe(self, filters: Sequence[str] = ()) -> AsyncIterator[Subscription]:
        """Events matching any of ``filters`` (all events without), until the block exits. A
        filter that does not parse is InvalidArgument in containerd's words (containerd answers
        Unknown)."""
        try:
            match = parse_filters(list(filters))
        except InvalidArgument as exc:
            raise InvalidArgument(
                f"subscription error: failed parsing subscription filters: {exc.detail}"
            ) from None
        send, receive = anyio.create_memory_object_stream[Envelope](self._queue_size)
        subscriber = _Subscriber(match, send)
        if self._closed:
            send.close()
        else:
            self._subscribers.add(subscriber)
        try:
            with receive:
                yield Subscription(receive, subscriber, self._queue_size)
        finally:
            self._subscribers.discard(subscriber)
            send.close()

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    async def aclose(self) -> None:
        """End every subscription: iterators finish after the events already queued."""
        self._closed = True
        for subscriber in self._subscribers:
            subscriber.send.close()
        self._subscribers.clear()

    def _dispatch(self, envelope: Envelope) -> None:
        if not self._subscribers:
            return
        source = adapt_mapping(
            {"topic": envelope.topic, "namespace": envelope.namespace, "event": event_fields(envelope.event)}
        )
        # A copy: disconnecting a subscriber mutates the set.
        for subscriber in list(self._subscribers):
            if not subscriber.match.match(source):
                continue
            try:
                subscriber.send.send_nowait(envelope)
            except anyio.WouldBlock:
                self._disconnect(subscriber)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._subscribers.discard(subscriber)

    def _disconnect(self, subscriber: _Subscriber) -> None:
        subscriber.fell_behind = True
        subscriber.send.close()
        self._subscribers.discard(subscriber)
        self._log.warning("event_subscriber_fell_behind", queue_size=self._queue_size)


async def init(ic: InitContext) -> Exchange:
    config: ExchangeConfig = ic.config
    if config.subscriber_queue_size < 1:
        raise ConfigError(f'plugins."{ic.uri}".subscriber_queue_size: must be at least 1')
    ic.meta.exports["subscriber_queue_size"] = str(config.subscriber_queue_size)
    return Exchange(queue_size=config.subscriber_queue_size, log=ic.log)


registration = Registration(
    type=types.EVENT,
    id="exchange",
    init=init,
    config=ExchangeConfig,
    description="publish, forward and subscribe to events, filtered, in publish order",
)
