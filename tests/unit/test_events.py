"""The event exchange: delivery, filters, order, slow subscribers, validation, and the wire mapping."""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from corral.api.edge import NAMESPACE_HEADER
from corral.api.grpc import events as events_grpc
from corral.api.grpc.server import build_mapping, serve_unix
from corral.api.types.containerd import events as pb_events
from corral.api.types.containerd import types as ctypes
from corral.api.types.containerd.services.events import v1 as pb
from corral.api.types.google import protobuf
from corral.api.wire import envelope_from_wire, envelope_to_wire, event_from_any, event_to_any
from corral.kernel import (
    DaemonConfig,
    FailedPrecondition,
    InvalidArgument,
    Kernel,
    ResourceExhausted,
    builtin_candidate,
)
from corral.kernel import (
    Status as PluginStatus,
)
from corral.plugins.core import namespace
from corral.plugins.events import exchange as exchange_plugin
from corral.plugins.events.exchange import Exchange, SubscriberFellBehind
from corral.plugins.events.types import (
    ContentCreate,
    ContentDelete,
    Envelope,
    NamespaceCreate,
    NamespaceDelete,
    NamespaceUpdate,
    RawEvent,
    SnapshotCommit,
    SnapshotPrepare,
    SnapshotRemove,
    TypedEvent,
)
from corral.plugins.metadata import NamespaceStore
from corral.plugins.metadata.sqlite import open_metadata

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def take(events: AsyncIterator[Envelope], count: int) -> list[Envelope]:
    with anyio.fail_after(2):
        return [await anext(events) for _ in range(count)]


# -- publish and subscribe -------------------------------------------------------------------


async def test_publish_stamps_time_namespace_and_the_event_topic() -> None:
    exchange = Exchange()
    async with exchange.subscribe() as events:
        before = datetime.now(UTC)
        with namespace("ns1"):
            published = await exchange.publish(NamespaceCreate(name="ns1", labels={"a": "b"}))
        (got,) = await take(events, 1)
    assert got == published
    assert got.namespace == "ns1" and got.topic == "/namespaces/create"
    assert got.event == NamespaceCreate(name="ns1", labels={"a": "b"})
    assert got.timestamp.tzinfo is not None and got.timestamp.utcoffset() == timedelta(0)
    assert before <= got.timestamp <= datetime.now(UTC)


async def test_explicit_topic_and_namespace_override_the_defaults() -> None:
    exchange = Exchange()
    async with exchange.subscribe() as events:
        with namespace("caller"):
            await exchange.publish(NamespaceDelete(name="gone"), topic="/custom/topic", namespace="gone")
        (got,) = await take(events, 1)
    assert (got.namespace, got.topic) == ("gone", "/custom/topic")


async def test_publish_without_a_namespace_is_failed_precondition() -> None:
    with pytest.raises(FailedPrecondition, match="namespace is required"):
        await Exchange().publish(NamespaceDelete(name="x"))


async def test_an_encoded_event_needs_an_explicit_topic() -> None:
    with pytest.raises(InvalidArgument, match="explicit topic"):
        await Exchange().publish(RawEvent("containerd.events.TaskExit", b""), namespace="default")


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ((), ["a", "b", "c", "d"]),
        (('topic=="/namespaces/create"',), ["a", "c"]),
        (("namespace==ns2",), ["b", "c"]),
        (("event.name==d",), ["d"]),
        (("event.labels.tier==db",), ["c"]),
        (('topic=="/namespaces/create",namespace==ns2',), ["c"]),
        (("namespace==ns1", "event.name==d"), ["a", "d"]),
        (("topic~=delete$",), ["b", "d"]),
        (("event.digest",), []),
    ],
)
async def test_filters_select_by_topic_namespace_and_event_fields(
    filters: Sequence[str], expected: list[str]
) -> None:
    published = {
        "a": (NamespaceCreate(name="a"), "ns1"),
        "b": (NamespaceDelete(name="b"), "ns2"),
        "c": (NamespaceCreate(name="c", labels={"tier": "db"}), "ns2"),
        "d": (NamespaceDelete(name="d"), "ns1"),
    }
    exchange = Exchange()
    async with exchange.subscribe(filters) as events:
        for event, ns in published.values():
            await exchange.publish(event, namespace=ns)
        await exchange.aclose()
        with anyio.fail_after(2):
            got = [e.event async for e in events]
    assert got == [published[name][0] for name in expected]


async def test_encoded_events_have_no_event_fields_to_filter_on() -> None:
    exchange = Exchange()
    async with exchange.subscribe(["event.name==x", 'topic=="/x"']) as events:
        await exchange.publish(
            RawEvent("containerd.events.NamespaceCreate", b"\n\x01x"), topic="/t", namespace="n"
        )
        await exchange.publish(NamespaceCreate(name="x"), namespace="n")
        (got,) = await take(events, 1)
    assert got.event == NamespaceCreate(name="x")


async def test_a_bad_filter_is_invalid_argument_before_subscribing() -> None:
    exchange = Exchange()
    with pytest.raises(
        InvalidArgument,
        match=r"^subscription error: failed parsing subscription filters: filters: parse error",
    ):
        async with exchange.subscribe(["topic=="]):
            pass
    assert exchange.subscriber_count == 0


async def test_events_arrive_in_publish_order() -> None:
    exchange = Exchange()
    async with exchange.subscribe() as events:
        for i in range(200):
            await exchange.publish(NamespaceCreate(name=f"n{i}"), namespace="ns")
        got = await take(events, 200)
    assert [e.event.name for e in got if isinstance(e.event, NamespaceCreate)] == [
        f"n{i}" for i in range(200)
    ]


async def test_every_subscriber_receives_every_event() -> None:
    exchange = Exchange()
    async with exchange.subscribe() as first, exchange.subscribe() as second:
        assert exchange.subscriber_count == 2
        for name in ("a", "b", "c"):
            await exchange.publish(NamespaceDelete(name=name), namespace="ns")
        one, two = await take(first, 3), await take(second, 3)
    assert one == two and [e.event for e in one] == [NamespaceDelete(name=n) for n in "abc"]


async def test_leaving_the_block_ends_the_subscription() -> None:
    exchange = Exchange()
    async with exchange.subscribe():
        assert exchange.subscriber_count == 1
    assert exchange.subscriber_count == 0
    await exchange.publish(NamespaceDelete(name="x"), namespace="ns")


async def test_closing_the_exchange_ends_iteration_after_queued_events() -> None:
    exchange = Exchange()
    async with exchange.subscribe() as events:
        await exchange.publish(NamespaceDelete(name="last"), namespace="ns")
        await exchange.aclose()
        with anyio.fail_after(2):
            got = [e async for e in events]
    assert [e.event for e in got] == [NamespaceDelete(name="last")]


# -- slow subscribers ------------------------------------------------------------------------


async def test_a_slow_subscriber_is_disconnected_while_others_keep_receiving() -> None:
    exchange = Exchange(queue_size=2)
    received: list[Envelope] = []
    async with exchange.subscribe() as slow, exchange.subscribe() as fast:

        async def read_fast() -> None:
            async for envelope in fast:
                received.append(envelope)
                if len(received) == 6:
                    return

        async with anyio.create_task_group() as tg:
            tg.start_soon(read_fast)
            for i in range(6):
                # Publishing never waits for subscribers: each call returns at once.
                with anyio.fail_after(0.5):
                    await exchange.publish(NamespaceCreate(name=f"n{i}"), namespace="ns")
                await anyio.lowlevel.checkpoint()  # let the fast reader drain, as a live client would
        assert exchange.subscriber_count == 1
        # The slow one gets what was queued before it was cut off, then a clear error.
        queued = await take(slow, 2)
        with pytest.raises(SubscriberFellBehind, match="subscriber fell behind") as caught:
            await anext(slow)
    assert isinstance(caught.value, ResourceExhausted)
    assert [e.event for e in queued] == [NamespaceCreate(name="n0"), NamespaceCreate(name="n1")]
    assert [e.event for e in received] == [NamespaceCreate(name=f"n{i}") for i in range(6)]


async def test_publishing_does_not_block_when_nobody_reads() -> None:
    exchange = Exchange(queue_size=1)
    async with exchange.subscribe():
        with anyio.fail_after(1):
            for i in range(1000):
                await exchange.publish(NamespaceDelete(name=f"n{i}"), namespace="ns")
        assert exchange.subscriber_count == 0


# -- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "message"),
    [
        ("", 'envelope topic "": must not be empty'),
        ("namespaces/create", "must start with '/'"),
        ("/", "must have at least one component"),
        ("/a//b", 'failed validation on component "": identifier must not be empty'),
        ("/tasks/bad topic", 'component "bad topic": identifier "bad topic" must match'),
        ("/trailing/", 'failed validation on component ""'),
    ],
)
async def test_invalid_topics_are_invalid_argument(topic: str, message: str) -> None:
    exchange = Exchange()
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        await exchange.publish(NamespaceDelete(name="x"), topic=topic, namespace="ns")


async def test_valid_topics_with_dashes_and_dots_are_accepted() -> None:
    envelope = await Exchange().publish(
        NamespaceDelete(name="x"), topic="/tasks/exec-added.v1", namespace="ns"
    )
    assert envelope.topic == "/tasks/exec-added.v1"


async def test_an_invalid_namespace_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="namespace validation"):
        await Exchange().publish(NamespaceDelete(name="x"), namespace="Bad_NS!")


async def test_forward_keeps_timestamp_namespace_and_topic() -> None:
    exchange = Exchange()
    sent = Envelope(
        timestamp=datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
        namespace="k8s.io",
        topic="/tasks/exit",
        event=RawEvent("containerd.events.TaskExit", b"\n\x02c1"),
    )
    async with exchange.subscribe() as events:
        with namespace("other"):
            await exchange.forward(sent)
        (got,) = await take(events, 1)
    assert got == sent


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"namespace": ""}, "event envelope has invalid namespace"),
        ({"topic": "tasks/exit"}, "must start with '/'"),
        ({"timestamp": datetime(1, 1, 1, tzinfo=UTC)}, "timestamp must be set"),
        ({"timestamp": datetime(2024, 1, 1)}, "timestamp must be set"),
    ],
)
async def test_forward_rejects_incomplete_envelopes(change: dict[str, object], message: str) -> None:
    good = Envelope(datetime.now(UTC), "ns", "/tasks/exit", RawEvent("t", b""))
    with pytest.raises(InvalidArgument, match=message):
        await Exchange().forward(dataclasses.replace(good, **change))  # type: ignore[arg-type]


async def test_a_queue_size_below_one_is_a_config_error(tmp_path: Path) -> None:
    config = DaemonConfig(
        root=str(tmp_path / "root"),
        state=str(tmp_path / "state"),
        plugins={exchange_plugin.registration.uri: {"subscriber_queue_size": 0}},
    )
    kernel = Kernel(config, candidates=[builtin_candidate(exchange_plugin.registration)])
    async with kernel.running():
        record = kernel.get(exchange_plugin.registration.uri)
    assert record is not None and record.status is PluginStatus.ERROR
    assert "subscriber_queue_size: must be at least 1" in str(record.error)


# -- the wire mapping ------------------------------------------------------------------------

EXAMPLES: list[tuple[TypedEvent, object]] = [
    (
        NamespaceCreate(name="ns1", labels={"a": "b"}),
        pb_events.NamespaceCreate(name="ns1", labels={"a": "b"}),
    ),
    (
        NamespaceUpdate(name="ns1", labels={"c": "d"}),
        pb_events.NamespaceUpdate(name="ns1", labels={"c": "d"}),
    ),
    (NamespaceDelete(name="ns1"), pb_events.NamespaceDelete(name="ns1")),
    (
        ContentCreate(digest="sha256:" + "a" * 64, size=4096),
        pb_events.ContentCreate(digest="sha256:" + "a" * 64, size=4096),
    ),
    (ContentDelete(digest="sha256:" + "b" * 64), pb_events.ContentDelete(digest="sha256:" + "b" * 64)),
    (
        SnapshotPrepare(key="k", parent="p", snapshotter="overlayfs"),
        pb_events.SnapshotPrepare(key="k", parent="p", snapshotter="overlayfs"),
    ),
    (
        SnapshotCommit(key="k", name="n", snapshotter="native"),
        pb_events.SnapshotCommit(key="k", name="n", snapshotter="native"),
    ),
    (
        SnapshotRemove(key="k", snapshotter="overlayfs"),
        pb_events.SnapshotRemove(key="k", snapshotter="overlayfs"),
    ),
]


@pytest.mark.parametrize(("event", "message"), EXAMPLES, ids=lambda v: type(v).__name__)
def test_each_event_maps_to_its_proto_under_the_bare_type_url(event: TypedEvent, message: object) -> None:
    wire = event_to_any(event)
    assert wire.type_url == f"containerd.events.{type(event).__name__}" == event.TYPE_URL
    assert not wire.type_url.startswith("type.googleapis.com/")
    assert wire.value == bytes(message)  # type: ignore[call-overload]
    decoded = type(message).parse(wire.value)  # type: ignore[attr-defined]
    for f in dataclasses.fields(event):
        assert getattr(decoded, f.name) == getattr(event, f.name)
    assert event_from_any(wire) == event


def test_every_event_record_has_a_topic_under_its_area() -> None:
    topics = {type(event).__name__: event.TOPIC for event, _ in EXAMPLES}
    assert topics == {
        "NamespaceCreate": "/namespaces/create",
        "NamespaceUpdate": "/namespaces/update",
        "NamespaceDelete": "/namespaces/delete",
        "ContentCreate": "/content/create",
        "ContentDelete": "/content/delete",
        "SnapshotPrepare": "/snapshot/prepare",
        "SnapshotCommit": "/snapshot/commit",
        "SnapshotRemove": "/snapshot/remove",
    }


def test_encoded_events_pass_through_byte_for_byte() -> None:
    # An event no record type is defined for (shims' /tasks/oom), kept encoded.
    raw = RawEvent("containerd.events.TaskOOM", b"\n\x02c1")
    wire = event_to_any(raw)
    assert (wire.type_url, wire.value) == (raw.type_url, raw.value)
    assert event_from_any(wire) == raw
    assert event_from_any(protobuf.Any(type_url="x.y.Unknown", value=b"\x01")) == RawEvent(
        "x.y.Unknown", b"\x01"
    )


def test_envelopes_round_trip_through_the_wire_format() -> None:
    envelope = Envelope(
        timestamp=datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
        namespace="ns1",
        topic="/namespaces/create",
        event=NamespaceCreate(name="ns1", labels={"a": "b"}),
    )
    parsed = ctypes.Envelope.parse(bytes(envelope_to_wire(envelope)))
    assert parsed.timestamp == envelope.timestamp
    assert (parsed.namespace, parsed.topic) == ("ns1", "/namespaces/create")
    assert parsed.event is not None and parsed.event.type_url == "containerd.events.NamespaceCreate"
    back = envelope_from_wire(parsed)
    assert back == dataclasses.replace(envelope, event=RawEvent(parsed.event.type_url, parsed.event.value))
    assert event_from_any(parsed.event) == envelope.event


def test_a_forwarded_envelope_needs_a_timestamp_and_an_event() -> None:
    with pytest.raises(InvalidArgument, match="timestamp must be set"):
        envelope_from_wire(ctypes.Envelope(namespace="n", topic="/t", event=protobuf.Any(type_url="t")))
    with pytest.raises(InvalidArgument, match="event must be set"):
        envelope_from_wire(ctypes.Envelope(timestamp=datetime.now(UTC), namespace="n", topic="/t"))


# -- the metadata store publishes namespace changes --------------------------------------------------------


async def test_namespace_changes_are_published_under_the_namespace_concerned(tmp_path: Path) -> None:
    exchange = Exchange()
    service = open_metadata(tmp_path / "meta.db", publisher=exchange).view(NamespaceStore)
    async with exchange.subscribe() as events:
        with namespace("default"):
            await service.create("ns1", {"a": "b"})
            await service.update("ns1", {"c": "d"}, ["labels.c"])
            await service.delete("ns1")
        got = await take(events, 3)
    assert [(e.namespace, e.topic, e.event) for e in got] == [
        ("ns1", "/namespaces/create", NamespaceCreate(name="ns1", labels={"a": "b"})),
        ("ns1", "/namespaces/update", NamespaceUpdate(name="ns1", labels={"c": "d"})),
        ("ns1", "/namespaces/delete", NamespaceDelete(name="ns1")),
    ]


async def test_namespaces_work_without_an_exchange(tmp_path: Path) -> None:
    service = open_metadata(tmp_path / "meta.db").view(NamespaceStore)
    await service.create("ns1", {})
    await service.delete("ns1")
    assert await service.list() == []


# -- the gRPC service, in process ------------------------------------------------------------


@contextlib.asynccontextmanager
async def events_server(
    tmp_path: Path, queue_size: int = 1024
) -> AsyncIterator[tuple[Exchange, pb.EventsStub]]:
    config = DaemonConfig(
        root=str(tmp_path / "root"),
        state=str(tmp_path / "state"),
        plugins={exchange_plugin.registration.uri: {"subscriber_queue_size": queue_size}},
    )
    regs = [exchange_plugin.registration, events_grpc.registration]
    kernel = Kernel(config, candidates=[builtin_candidate(r) for r in regs])
    socket = str(tmp_path / "events.sock")
    # A hung stream fails the test instead of stalling the run.
    with anyio.fail_after(10):
        async with kernel.running(), serve_unix(build_mapping(kernel.records()), socket):
            record = kernel.get(exchange_plugin.registration.uri)
            assert record is not None and isinstance(record.instance, Exchange)
            channel = Channel(path=socket)
            try:
                yield record.instance, pb.EventsStub(channel, metadata={NAMESPACE_HEADER: "default"})
            finally:
                channel.close()


async def wait_for_subscribers(exchange: Exchange, count: int) -> None:
    # The exchange offers no "subscribed" signal; a gRPC client cannot observe one either.
    with anyio.fail_after(5):
        while exchange.subscriber_count < count:  # noqa: ASYNC110
            await anyio.sleep(0.01)


async def test_grpc_publish_and_forward_reach_a_grpc_subscriber(tmp_path: Path) -> None:
    async with events_server(tmp_path) as (exchange, stub), anyio.create_task_group() as tg:
        received: list[ctypes.Envelope] = []

        async def subscribe() -> None:
            async for envelope in stub.subscribe(pb.SubscribeRequest()):
                received.append(envelope)
                if len(received) == 3:
                    return

        tg.start_soon(subscribe)
        await wait_for_subscribers(exchange, 1)
        raw = protobuf.Any(type_url="containerd.events.TaskExit", value=b"\n\x02c1")
        await stub.publish(pb.PublishRequest(topic="/tasks/exit", event=raw))
        stamp = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
        forwarded = ctypes.Envelope(timestamp=stamp, namespace="k8s", topic="/tasks/start", event=raw)
        await stub.forward(pb.ForwardRequest(envelope=forwarded))
        await exchange.publish(NamespaceDelete(name="ns1"), namespace="ns1")
    first, second, third = received
    assert (first.namespace, first.topic, first.event) == ("default", "/tasks/exit", raw)
    assert (second.timestamp, second.namespace, second.topic, second.event) == (
        stamp,
        "k8s",
        "/tasks/start",
        raw,
    )
    assert third.event == event_to_any(NamespaceDelete(name="ns1"))


async def test_grpc_errors_carry_containerds_status_codes(tmp_path: Path) -> None:
    async with events_server(tmp_path) as (_, stub):
        with pytest.raises(GRPCError) as bad_topic:
            await stub.publish(pb.PublishRequest(topic="nope", event=protobuf.Any(type_url="t")))
        with pytest.raises(GRPCError) as bad_filter:
            async for _ in stub.subscribe(pb.SubscribeRequest(filters=["topic=="])):
                pass
    assert bad_topic.value.status is Status.INVALID_ARGUMENT
    assert bad_topic.value.message is not None and "must start with '/'" in bad_topic.value.message
    assert bad_filter.value.status is Status.INVALID_ARGUMENT


async def test_a_grpc_subscriber_that_falls_behind_gets_resource_exhausted(tmp_path: Path) -> None:
    async with events_server(tmp_path, queue_size=2) as (exchange, stub), anyio.create_task_group() as tg:
        outcome: list[object] = []

        async def subscribe() -> None:
            try:
                async for envelope in stub.subscribe(pb.SubscribeRequest()):
                    outcome.append(envelope.topic)
            except GRPCError as exc:
                outcome.append(exc)

        tg.start_soon(subscribe)
        await wait_for_subscribers(exchange, 1)
        # No checkpoint between publishes, so the handler cannot drain the queue in between.
        for i in range(5):
            await exchange.publish(NamespaceDelete(name=f"n{i}"), topic=f"/t/n{i}", namespace="ns")
    *topics, error = outcome
    assert topics == ["/t/n0", "/t/n1", "/t/n2"]
    assert isinstance(error, GRPCError) and error.status is Status.RESOURCE_EXHAUSTED
    assert error.message is not None and "subscriber fell behind" in error.message


def test_a_task_create_is_encoded_with_its_nested_mounts_and_io_and_passed_on_raw_when_forwarded() -> None:
    from corral.api.types.containerd.events import TaskCreate as WireTaskCreate
    from corral.plugins.core import Mount
    from corral.plugins.events.types import TaskCreate, TaskIO

    event = TaskCreate(
        container_id="c1",
        bundle="/b",
        rootfs=(Mount("overlay", "overlay", options=("lowerdir=/l", "upperdir=/u")),),
        io=TaskIO(stdout="/fifo/out", terminal=True),
        pid=42,
    )
    encoded = event_to_any(event)
    wire = WireTaskCreate.parse(encoded.value)
    assert (wire.container_id, wire.bundle, wire.pid) == ("c1", "/b", 42)
    assert [(m.type, m.source, list(m.options)) for m in wire.rootfs] == [
        ("overlay", "overlay", ["lowerdir=/l", "upperdir=/u"])
    ]
    assert wire.io is not None and (wire.io.stdout, wire.io.terminal) == ("/fifo/out", True)
    # a shim's encoded TaskCreate is forwarded byte for byte: nothing of it is dropped by a record
    assert event_from_any(encoded) == RawEvent(type_url=encoded.type_url, value=encoded.value)
