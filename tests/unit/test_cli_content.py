"""``corral content``, ``corral leases`` and ``corral events``, and the client calls behind them.

They run against a fake daemon: a grpclib server on a unix socket whose Content, Leases and Events
services keep their data in memory and record what the client sent, so the wire protocol itself
(containerd's Write conversation above all) is checked without corrald.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from click.testing import CliRunner, Result
from grpclib.const import Status as GRPCStatus
from grpclib.events import RecvRequest, listen
from grpclib.exceptions import GRPCError
from grpclib.server import Server

from corral.api.cli import cli
from corral.api.cli._output import human_duration, human_size, to_text
from corral.api.cli.content import content_json, content_table, statuses_table
from corral.api.cli.events import decode_event, event_json, event_line, go_time
from corral.api.cli.leases import parse_duration
from corral.api.client import Client, connect
from corral.api.types.containerd import events as ev
from corral.api.types.containerd.services.content import v1 as content_pb
from corral.api.types.containerd.services.events import v1 as events_pb
from corral.api.types.containerd.services.leases import v1 as leases_pb
from corral.api.types.containerd.types import Envelope
from corral.api.types.google import protobuf
from corral.kernel import FailedPrecondition, NotFound

T = TypeVar("T")

MiB = 1 << 20
STAT, WRITE, COMMIT = content_pb.WriteAction.STAT, content_pb.WriteAction.WRITE, content_pb.WriteAction.COMMIT
EXPIRE = "containerd.io/gc.expire"
NOW = datetime(2024, 5, 1, 10, 11, 12, 500000, tzinfo=UTC)
GO_ZERO = datetime(1, 1, 1, tzinfo=UTC)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def payload(size: int) -> bytes:
    """Bytes that differ from chunk to chunk, so a chunk sent at the wrong offset changes the digest."""
    return bytes((i * 7 + i // MiB) % 251 for i in range(size))


# ------------------------------------------------------------------------------ a fake daemon


@dataclass
class Blob:
    data: bytes
    labels: dict[str, str] = field(default_factory=dict)
    created_at: datetime = NOW


@dataclass
class Ingest:
    data: bytearray = field(default_factory=bytearray)
    total: int = 0
    expected: str = ""
    started_at: datetime = NOW
    updated_at: datetime = NOW


class FakeContent(content_pb.ContentBase):
    """containerd's content service, in memory: its Write follows contentserver.go step by step."""

    def __init__(self) -> None:
        self.blobs: dict[str, Blob] = {}
        self.ingests: dict[str, Ingest] = {}
        self.streams: list[list[content_pb.WriteContentRequest]] = []
        self.updates: list[content_pb.UpdateRequest] = []
        self.read_chunk = MiB
        self.drop_commit = False

    def add(self, data: bytes, **labels: str) -> str:
        digest = sha256(data)
        self.blobs[digest] = Blob(data, dict(labels))
        return digest

    def _blob(self, digest: str) -> Blob:
        if digest not in self.blobs:
            raise GRPCError(GRPCStatus.NOT_FOUND, f"content digest {digest}: not found")
        return self.blobs[digest]

    async def info(self, message: content_pb.InfoRequest) -> content_pb.InfoResponse:
        blob = self._blob(message.digest)
        return content_pb.InfoResponse(info=self._info(message.digest, blob))

    def _info(self, digest: str, blob: Blob) -> content_pb.Info:
        return content_pb.Info(
            digest=digest,
            size=len(blob.data),
            created_at=blob.created_at,
            updated_at=GO_ZERO,
            labels=blob.labels,
        )

    async def list(
        self, message: content_pb.ListContentRequest
    ) -> AsyncIterator[content_pb.ListContentResponse]:
        infos = [self._info(d, b) for d, b in self.blobs.items()]
        for start in range(0, len(infos), 2):  # small batches: the client must gather them
            yield content_pb.ListContentResponse(info=infos[start : start + 2])

    async def read(
        self, message: content_pb.ReadContentRequest
    ) -> AsyncIterator[content_pb.ReadContentResponse]:
        data = self._blob(message.digest).data
        end = message.offset + message.size if message.size else len(data)
        for start in range(message.offset, end, self.read_chunk):
            yield content_pb.ReadContentResponse(
                offset=start, data=data[start : min(end, start + self.read_chunk)]
            )

    async def delete(self, message: content_pb.DeleteContentRequest) -> protobuf.Empty:
        self._blob(message.digest)
        del self.blobs[message.digest]
        return protobuf.Empty()

    async def update(self, message: content_pb.UpdateRequest) -> content_pb.UpdateResponse:
        self.updates.append(message)
        assert message.info is not None and message.update_mask is not None
        blob = self._blob(message.info.digest)
        for path in message.update_mask.paths:
            key = path.removeprefix("labels.")
            if message.info.labels.get(key):
                blob.labels[key] = message.info.labels[key]
            else:
                blob.labels.pop(key, None)
        return content_pb.UpdateResponse(info=self._info(message.info.digest, blob))

    async def list_statuses(self, message: content_pb.ListStatusesRequest) -> content_pb.ListStatusesResponse:
        return content_pb.ListStatusesResponse(
            statuses=[
                content_pb.Status(
                    started_at=i.started_at,
                    updated_at=i.updated_at,
                    ref=ref,
                    offset=len(i.data),
                    total=i.total,
                    expected=i.expected,
                )
                for ref, i in self.ingests.items()
            ]
        )

    async def abort(self, message: content_pb.AbortRequest) -> protobuf.Empty:
        if self.ingests.pop(message.ref, None) is None:
            raise GRPCError(GRPCStatus.NOT_FOUND, f"ingest {message.ref}: not found")
        return protobuf.Empty()

    async def write(
        self, messages: AsyncIterator[content_pb.WriteContentRequest]
    ) -> AsyncIterator[content_pb.WriteContentResponse]:
        seen: list[content_pb.WriteContentRequest] = []
        self.streams.append(seen)
        ref = ""
        async for request in messages:
            seen.append(request)
            if not ref:
                if not request.ref:
                    raise GRPCError(GRPCStatus.INVALID_ARGUMENT, "first message must have a reference")
                ref = request.ref
                ingest = self.ingests.setdefault(ref, Ingest())
                ingest.total = request.total or ingest.total
                ingest.expected = request.expected or ingest.expected
            if request.expected and request.expected in self.blobs:
                self.ingests.pop(ref, None)
                raise GRPCError(GRPCStatus.ALREADY_EXISTS, f"content {request.expected}: already exists")
            data = ingest.data
            if request.action == STAT:
                yield content_pb.WriteContentResponse(
                    action=STAT, started_at=NOW, updated_at=NOW, offset=len(data), total=ingest.total,
                    digest=sha256(bytes(data)),
                )  # fmt: skip
                continue
            if request.offset > 0 and request.offset != len(data):
                raise GRPCError(
                    GRPCStatus.OUT_OF_RANGE,
                    f"write @{request.offset} must occur at current offset {len(data)}",
                )
            if request.offset == 0 and data:
                del data[:]
            data += request.data
            if request.action == WRITE:
                yield content_pb.WriteContentResponse(
                    action=WRITE, offset=len(data), total=ingest.total, digest=sha256(bytes(data))
                )
                continue
            if self.drop_commit:
                return  # ends the stream with status OK and no reply
            digest = sha256(bytes(data))
            total = request.total or ingest.total
            if total and total != len(data):
                raise GRPCError(
                    GRPCStatus.FAILED_PRECONDITION,
                    f'"{ref}" failed size validation: {len(data)} != {total}: failed precondition',
                )
            expected = request.expected or ingest.expected
            if expected and expected != digest:
                raise GRPCError(
                    GRPCStatus.FAILED_PRECONDITION,
                    f"unexpected commit digest {digest}, expected {expected}: failed precondition",
                )
            del self.ingests[ref]
            if digest in self.blobs:
                raise GRPCError(GRPCStatus.ALREADY_EXISTS, f"content {digest}: already exists")
            self.blobs[digest] = Blob(bytes(data), dict(request.labels))
            yield content_pb.WriteContentResponse(action=COMMIT, offset=len(data), digest=digest)
            return


class FakeLeases(leases_pb.LeasesBase):
    def __init__(self) -> None:
        self.leases: dict[str, leases_pb.Lease] = {}
        self.deletes: list[leases_pb.DeleteRequest] = []

    async def create(self, message: leases_pb.CreateRequest) -> leases_pb.CreateResponse:
        lease_id = message.id or f"generated-{len(self.leases) + 1}"
        if lease_id in self.leases:
            raise GRPCError(GRPCStatus.ALREADY_EXISTS, f"lease {lease_id!r}: already exists")
        lease = leases_pb.Lease(id=lease_id, created_at=NOW, labels=dict(message.labels))
        self.leases[lease_id] = lease
        return leases_pb.CreateResponse(lease=lease)

    async def list(self, message: leases_pb.ListRequest) -> leases_pb.ListResponse:
        return leases_pb.ListResponse(leases=builtin_list(self.leases.values()))

    async def delete(self, message: leases_pb.DeleteRequest) -> protobuf.Empty:
        self.deletes.append(message)
        if self.leases.pop(message.id, None) is None:
            raise GRPCError(GRPCStatus.NOT_FOUND, f'lease "{message.id}": not found')
        return protobuf.Empty()

    async def list_resources(
        self, message: leases_pb.ListResourcesRequest
    ) -> leases_pb.ListResourcesResponse:
        return leases_pb.ListResourcesResponse(
            resources=[leases_pb.Resource(id="sha256:abc", type="content")]
        )


builtin_list = list


class FakeEvents(events_pb.EventsBase):
    """Sends its envelopes to each subscriber, then ends the stream (or, if ``hold``, waits forever)."""

    def __init__(self, envelopes: list[Envelope], *, hold: bool = False) -> None:
        self.envelopes = envelopes
        self.hold = hold
        self.subscriptions: list[events_pb.SubscribeRequest] = []
        self.published: list[events_pb.PublishRequest] = []

    async def subscribe(self, message: events_pb.SubscribeRequest) -> AsyncIterator[Envelope]:
        self.subscriptions.append(message)
        for envelope in self.envelopes:
            yield envelope
        if self.hold:
            await asyncio.Event().wait()

    async def publish(self, message: events_pb.PublishRequest) -> protobuf.Empty:
        self.published.append(message)
        return protobuf.Empty()


@dataclass
class Daemon:
    socket: str
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)
    """The last request metadata seen per method path."""


@contextmanager
def fake_daemon(*services: Any) -> Iterator[Daemon]:
    """Serve ``services`` on a fresh unix socket from a thread of its own, recording request metadata."""
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        daemon = Daemon(os.path.join(tmp, "corral.sock"))
        loop = asyncio.new_event_loop()
        listening = threading.Event()
        servers: list[Server] = []

        async def record(event: RecvRequest) -> None:
            daemon.metadata[event.method_name] = {k: str(v) for k, v in event.metadata.items()}

        async def serve() -> None:
            server = Server(list(services))
            listen(server, RecvRequest, record)
            servers.append(server)
            await server.start(path=daemon.socket)
            listening.set()
            await server.wait_closed()

        thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
        thread.start()
        assert listening.wait(10)
        try:
            yield daemon
        finally:
            loop.call_soon_threadsafe(servers[0].close)
            thread.join(10)
            loop.close()


def run(daemon: Daemon, fn: Callable[[Client], Awaitable[T]], namespace: str = "default") -> T:
    async def conversation() -> T:
        async with connect(daemon.socket, namespace) as client:
            return await fn(client)

    return asyncio.run(conversation())


def corral(daemon: Daemon, *args: str, input: bytes | None = None) -> Result:
    return CliRunner().invoke(cli, ["-a", daemon.socket, *args], input=input, catch_exceptions=False)


def actions(stream: list[content_pb.WriteContentRequest]) -> list[tuple[str, int, int]]:
    """Each request as (action, offset, data length)."""
    return [(r.action.name, r.offset, len(r.data)) for r in stream]


async def pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


# ------------------------------------------------------------------------------ the Write protocol


def test_ingest_sends_stat_then_1_mib_writes_at_their_offsets_then_commit() -> None:
    data = payload(5 * MiB // 2)
    store = FakeContent()
    with fake_daemon(store) as daemon:
        digest = run(
            daemon,
            lambda c: c.ingest("ref-1", data, total=len(data), expected=sha256(data), labels={"a": "b"}),
        )
    assert digest == sha256(data)
    [stream] = store.streams
    assert actions(stream) == [
        ("STAT", 0, 0),
        ("WRITE", 0, MiB),
        ("WRITE", MiB, MiB),
        ("WRITE", 2 * MiB, MiB // 2),
        ("COMMIT", 5 * MiB // 2, 0),
    ]
    stat, commit = stream[0], stream[-1]
    assert (stat.ref, stat.total, stat.expected) == ("ref-1", len(data), sha256(data))
    assert (commit.total, commit.expected, commit.labels) == (len(data), sha256(data), {"a": "b"})
    assert store.blobs[digest].data == data
    assert store.blobs[digest].labels == {"a": "b"}
    assert store.ingests == {}


def test_ingest_of_a_stream_regroups_its_pieces_into_1_mib_chunks() -> None:
    data = payload(2 * MiB + 10)
    store = FakeContent()
    with fake_daemon(store) as daemon:
        digest = run(daemon, lambda c: c.ingest("ref-s", pieces(data, 300_000)))
    assert digest == sha256(data)
    assert actions(store.streams[0])[1:] == [
        ("WRITE", 0, MiB),
        ("WRITE", MiB, MiB),
        ("WRITE", 2 * MiB, 10),
        ("COMMIT", 2 * MiB + 10, 0),
    ]
    assert store.streams[0][-1].total == 0  # no size given: none is checked, as with ctr


def test_ingest_of_nothing_commits_the_empty_blob() -> None:
    store = FakeContent()
    with fake_daemon(store) as daemon:
        digest = run(daemon, lambda c: c.ingest("empty", b""))
    assert digest == sha256(b"")
    assert actions(store.streams[0]) == [("STAT", 0, 0), ("COMMIT", 0, 0)]


def test_a_blob_that_already_exists_is_a_success_at_commit() -> None:
    data = b"already here"
    store = FakeContent()
    store.add(data)
    with fake_daemon(store) as daemon:
        digest = run(daemon, lambda c: c.ingest("dup", data))
    assert digest == sha256(data)
    assert [r.action.name for r in store.streams[0]] == ["STAT", "WRITE", "COMMIT"]


def test_a_blob_that_already_exists_is_a_success_when_stat_says_so() -> None:
    data = b"already here"
    store = FakeContent()
    store.add(data)
    with fake_daemon(store) as daemon:
        digest = run(daemon, lambda c: c.ingest("dup", data, expected=sha256(data)))
    assert digest == sha256(data)
    assert [r.action.name for r in store.streams[0]] == ["STAT"]


def test_ingest_resumes_bytes_at_the_offset_the_daemon_holds() -> None:
    data = payload(5 * MiB // 2)
    store = FakeContent()
    store.ingests["resume"] = Ingest(bytearray(data[: MiB + 100]), total=len(data))
    with fake_daemon(store) as daemon:
        digest = run(daemon, lambda c: c.ingest("resume", data, total=len(data)))
    assert digest == sha256(data)
    assert actions(store.streams[0]) == [
        ("STAT", 0, 0),
        ("WRITE", MiB + 100, MiB),
        ("WRITE", 2 * MiB + 100, MiB // 2 - 100),
        ("COMMIT", 5 * MiB // 2, 0),
    ]


def test_ingest_resumes_a_seekable_file_from_where_it_was_opened() -> None:
    data = payload(3000)
    file = io.BytesIO(b"skip me" + data)
    file.seek(7)
    store = FakeContent()
    store.ingests["file"] = Ingest(bytearray(data[:1000]))
    with fake_daemon(store) as daemon:
        digest = run(daemon, lambda c: c.ingest("file", file))
    assert digest == sha256(data)
    assert actions(store.streams[0])[1:] == [("WRITE", 1000, 2000), ("COMMIT", 3000, 0)]


def test_ingest_of_a_stream_starts_over_at_0_when_the_daemon_holds_part_of_the_ref() -> None:
    data = payload(5000)
    store = FakeContent()
    store.ingests["pipe"] = Ingest(bytearray(data[:1000]))
    with fake_daemon(store) as daemon:
        digest = run(daemon, lambda c: c.ingest("pipe", pieces(data, 4096)))
    assert digest == sha256(data)
    assert actions(store.streams[0])[1:] == [("WRITE", 0, 5000), ("COMMIT", 5000, 0)]


def test_ingest_starts_over_when_what_the_daemon_holds_is_not_this_data() -> None:
    data = payload(5000)
    store = FakeContent()
    store.ingests["other"] = Ingest(bytearray(b"x" * 1000))
    with fake_daemon(store) as daemon:
        digest = run(daemon, lambda c: c.ingest("other", data))
    assert digest == sha256(data)
    assert actions(store.streams[0])[1] == ("WRITE", 0, 5000)


def test_a_wrong_expected_digest_is_the_daemons_failed_precondition() -> None:
    store = FakeContent()
    wrong = sha256(b"something else")
    with fake_daemon(store) as daemon, pytest.raises(FailedPrecondition, match="unexpected commit digest"):
        run(daemon, lambda c: c.ingest("bad", b"data", expected=wrong))


def test_a_stream_that_ends_without_a_commit_reply_is_a_transport_failure_not_a_digest() -> None:
    store = FakeContent()
    store.drop_commit = True
    with fake_daemon(store) as daemon:
        result = corral(daemon, "content", "ingest", "r", input=b"data")
    assert result.exit_code == 1
    assert result.stderr == (
        f"corral: connection to corrald at {daemon.socket} failed: "
        "corrald ended the content write stream without a reply\n"
    )


def test_ingest_carries_the_namespace_and_the_lease() -> None:
    store = FakeContent()
    with fake_daemon(store) as daemon:
        run(daemon, lambda c: c.ingest("leased", b"data", lease="lease-1"), namespace="ns1")
        run(daemon, lambda c: c.content_statuses())
    write = daemon.metadata["/containerd.services.content.v1.Content/Write"]
    assert write["containerd-namespace"] == "ns1"
    assert write["containerd-lease"] == "lease-1"
    statuses = daemon.metadata["/containerd.services.content.v1.Content/ListStatuses"]
    assert statuses["containerd-namespace"] == "default"
    assert "containerd-lease" not in statuses


# ------------------------------------------------------------------------------ other client calls


def test_label_content_sets_and_removes_through_a_field_mask() -> None:
    store = FakeContent()
    digest = store.add(b"blob", old="1", keep="2")
    with fake_daemon(store) as daemon:
        info = run(daemon, lambda c: c.label_content(digest, {"new": "x", "old": ""}))
    [update] = store.updates
    assert update.update_mask is not None and update.info is not None
    assert update.update_mask.paths == ["labels.new", "labels.old"]
    assert update.info.labels == {"new": "x"}
    assert info.labels == {"keep": "2", "new": "x"}


def test_read_content_returns_the_bytes_from_an_offset() -> None:
    store = FakeContent()
    store.read_chunk = 3
    digest = store.add(b"0123456789")
    with fake_daemon(store) as daemon:

        async def read(c: Client) -> bytes:
            return b"".join([chunk async for chunk in c.read_content(digest, offset=2, size=5)])

        assert run(daemon, read) == b"23456"
        with pytest.raises(NotFound, match="not found"):
            run(daemon, lambda c: c.content_info(sha256(b"missing")))


def test_list_content_gathers_every_batch() -> None:
    store = FakeContent()
    digests = {store.add(bytes([i])) for i in range(5)}
    with fake_daemon(store) as daemon:
        items = run(daemon, lambda c: c.list_content())
    assert {i.digest for i in items} == digests


def test_create_lease_sets_gc_expire_as_rfc3339_utc() -> None:
    store = FakeLeases()
    with fake_daemon(store) as daemon:
        before = datetime.now(UTC).replace(microsecond=0)
        lease = run(daemon, lambda c: c.create_lease("l1", {"a": "b"}, expire=timedelta(hours=2)))
        plain = run(daemon, lambda c: c.create_lease())
    expire = lease.labels[EXPIRE]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", expire)
    moment = datetime.strptime(expire, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert timedelta(hours=2) <= moment - before <= timedelta(hours=2, minutes=1)
    assert lease.labels["a"] == "b"
    assert plain.id == "generated-2" and plain.labels == {}


def test_publish_and_subscribe() -> None:
    event = protobuf.Any(
        type_url="containerd.events.NamespaceCreate", value=bytes(ev.NamespaceCreate(name="x"))
    )
    service = FakeEvents([Envelope(timestamp=NOW, namespace="x", topic="/namespaces/create", event=event)])
    with fake_daemon(service) as daemon:
        run(daemon, lambda c: c.publish("/test/topic", event))

        async def first(c: Client) -> list[Envelope]:
            return [e async for e in c.subscribe(['topic=="/namespaces/create"'])]

        envelopes = run(daemon, first)
    assert service.published[0].topic == "/test/topic"
    assert service.subscriptions[0].filters == ['topic=="/namespaces/create"']
    assert [e.topic for e in envelopes] == ["/namespaces/create"]


# ------------------------------------------------------------------------------ rendering


def test_sizes_and_ages_read_as_ctr_shows_them() -> None:
    assert [human_size(n) for n in (0, 999, 1000, 2_621_440, 5 * 10**12)] == [
        "0B",
        "999B",
        "1kB",
        "2.621MB",
        "5TB",
    ]
    assert [human_duration(s) for s in (0.5, 1, 59, 90, 3599, 5400, 86400 * 3, 86400 * 20)] == [
        "Less than a second", "1 second", "59 seconds", "About a minute", "59 minutes", "2 hours",
        "3 days", "2 weeks",
    ]  # fmt: skip


def test_content_table_and_json() -> None:
    info = content_pb.Info(
        digest=sha256(b"x"), size=2_621_440, created_at=NOW, updated_at=GO_ZERO, labels={"b": "2", "a": "1"}
    )
    text = to_text(content_table([info], now=NOW + timedelta(minutes=5)))
    assert text.splitlines()[0].split() == ["DIGEST", "SIZE", "AGE", "LABELS"]
    assert text.splitlines()[1].split() == [sha256(b"x"), "2.621MB", "5", "minutes", "a=1,b=2"]
    assert content_json([info]) == [
        {
            "digest": sha256(b"x"),
            "size": 2_621_440,
            "created_at": "2024-05-01T10:11:12Z",
            "updated_at": None,
            "labels": {"a": "1", "b": "2"},
        }
    ]


def test_statuses_table_shows_offset_as_size_and_dashes_for_unknowns() -> None:
    st = content_pb.Status(ref="r", offset=1000, total=0, started_at=NOW, updated_at=GO_ZERO)
    line = to_text(statuses_table([st], now=NOW + timedelta(seconds=3))).splitlines()[1]
    assert line.split() == ["r", "1kB", "-", "3", "seconds", "ago", "-"]


def test_event_line_is_timestamp_namespace_topic_and_the_event_as_json() -> None:
    created = ev.NamespaceCreate(name="ns1", labels={"a": "b"})
    envelope = Envelope(
        timestamp=NOW,
        namespace="ns1",
        topic="/namespaces/create",
        event=protobuf.Any(type_url="containerd.events.NamespaceCreate", value=bytes(created)),
    )
    assert event_line(envelope) == (
        '2024-05-01 10:11:12.5 +0000 UTC ns1 /namespaces/create {"name":"ns1","labels":{"a":"b"}}'
    )
    assert json.loads(event_json(envelope)) == {
        "timestamp": "2024-05-01T10:11:12.500000Z",
        "namespace": "ns1",
        "topic": "/namespaces/create",
        "type": "containerd.events.NamespaceCreate",
        "event": {"name": "ns1", "labels": {"a": "b"}},
    }


def test_events_decode_by_full_name_or_last_component_and_keep_unknown_ones() -> None:
    deleted = bytes(ev.ContentDelete(digest="sha256:abc"))
    assert decode_event(
        protobuf.Any(type_url="type.googleapis.com/containerd.events.ContentDelete", value=deleted)
    ) == {"digest": "sha256:abc"}
    assert decode_event(protobuf.Any(type_url="example.ContentDelete", value=deleted)) == {
        "digest": "sha256:abc"
    }
    assert decode_event(protobuf.Any(type_url="example.Unknown", value=b"\x01\x02")) == {
        "@type": "example.Unknown",
        "value": "AQI=",
    }
    assert decode_event(protobuf.Any(type_url="types.containerd.io/x/Spec", value=b'{"a":1}')) == {"a": 1}
    assert decode_event(None) is None
    assert go_time(datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2024-01-02 03:04:05 +0000 UTC"


def test_durations_are_read_as_go_reads_them() -> None:
    assert parse_duration("24h") == timedelta(hours=24)
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_duration("1.5h") == timedelta(minutes=90)
    assert parse_duration("500ms") == timedelta(milliseconds=500)
    assert parse_duration("0") == timedelta(0)


# ------------------------------------------------------------------------------ the commands


def test_content_ingest_reads_stdin_and_prints_the_digest() -> None:
    data = payload(MiB + 1)
    store = FakeContent()
    with fake_daemon(store) as daemon:
        result = corral(
            daemon, "content", "ingest", "in-1", "--expected-size", str(len(data)),
            "--expected-digest", sha256(data), "--label", "containerd.io/gc.root=x", "--lease", "l1",
            input=data,
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == sha256(data) + "\n"
    assert actions(store.streams[0])[1:] == [("WRITE", 0, MiB), ("WRITE", MiB, 1), ("COMMIT", MiB + 1, 0)]
    assert store.blobs[sha256(data)].labels == {"containerd.io/gc.root": "x"}
    assert daemon.metadata["/containerd.services.content.v1.Content/Write"]["containerd-lease"] == "l1"


def test_content_ingest_of_an_existing_blob_exits_0_and_a_bad_digest_exits_1() -> None:
    store = FakeContent()
    digest = store.add(b"dup")
    with fake_daemon(store) as daemon:
        again = corral(daemon, "content", "ingest", "r", input=b"dup")
        wrong = corral(daemon, "content", "ingest", "r2", "--expected-digest", digest, input=b"not dup")
        bad = corral(daemon, "content", "ingest", "r3", "--expected-size", "5", input=b"four")
    assert (again.exit_code, again.stdout) == (0, digest + "\n")
    assert (wrong.exit_code, wrong.stdout) == (0, digest + "\n")  # the daemon has it: ctr does the same
    assert bad.exit_code == 1
    assert bad.stderr == 'corral: "r3" failed size validation: 4 != 5: failed precondition\n'


def test_content_get_writes_the_raw_bytes() -> None:
    data = bytes(range(256)) * 5000  # every byte value, over more than one read chunk
    store = FakeContent()
    digest = store.add(data)
    with fake_daemon(store) as daemon:
        result = corral(daemon, "content", "get", digest)
        missing = corral(daemon, "content", "get", sha256(b"nope"))
    assert result.exit_code == 0
    assert result.stdout_bytes == data
    assert missing.exit_code == 1
    assert missing.stderr == f"corral: content digest {sha256(b'nope')}: not found\n"


def test_content_ls_table_json_and_quiet() -> None:
    store = FakeContent()
    first, second = store.add(b"a" * 1500, **{"containerd.io/gc.root": "x"}), store.add(b"b")
    with fake_daemon(store) as daemon:
        table = corral(daemon, "content", "ls")
        data = json.loads(corral(daemon, "content", "ls", "--format", "json").stdout)
        quiet = corral(daemon, "content", "ls", "-q")
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["DIGEST", "SIZE", "AGE", "LABELS"]
    by_digest = {line.split()[0]: line.split() for line in lines[1:]}
    assert by_digest[first][1] == "1.5kB" and by_digest[first][-1] == "containerd.io/gc.root=x"
    assert by_digest[second][1] == "1B" and by_digest[second][-1] == "-"
    assert {d["digest"]: d["size"] for d in data} == {first: 1500, second: 1}
    assert list(data[0]) == ["digest", "size", "created_at", "updated_at", "labels"]
    assert quiet.stdout.split() == sorted([first, second])


def test_content_label_and_rm() -> None:
    store = FakeContent()
    digest = store.add(b"blob", old="1")
    with fake_daemon(store) as daemon:
        labelled = corral(daemon, "content", "label", digest, "new=x", "old=")
        removed = corral(daemon, "content", "rm", digest, sha256(b"missing"))
    assert labelled.exit_code == 0 and labelled.stdout == ""
    assert store.updates[0].update_mask is not None
    assert store.updates[0].update_mask.paths == ["labels.new", "labels.old"]
    assert removed.exit_code == 1
    assert removed.stdout == digest + "\n"
    assert removed.stderr == f"corral: content digest {sha256(b'missing')}: not found\n"
    assert store.blobs == {}


def test_content_active_lists_ingests_in_progress() -> None:
    store = FakeContent()
    store.ingests["pull-1"] = Ingest(bytearray(b"x" * 2000), total=5000, expected=sha256(b"y"))
    with fake_daemon(store) as daemon:
        table = corral(daemon, "content", "active")
        data = json.loads(corral(daemon, "content", "active", "--format", "json").stdout)
    assert table.stdout.splitlines()[0].split() == ["REF", "SIZE", "TOTAL", "STARTED", "UPDATED"]
    assert table.stdout.splitlines()[1].split()[:3] == ["pull-1", "2kB", "5kB"]
    assert data == [
        {
            "ref": "pull-1",
            "offset": 2000,
            "total": 5000,
            "expected": sha256(b"y"),
            "started_at": "2024-05-01T10:11:12Z",
            "updated_at": "2024-05-01T10:11:12Z",
        }
    ]


def test_leases_create_ls_and_rm() -> None:
    store = FakeLeases()
    with fake_daemon(store) as daemon:
        made = corral(daemon, "leases", "create", "--id", "l1", "a=b")
        forever = corral(daemon, "leases", "create", "--expires", "0")
        short = corral(daemon, "leases", "create", "--id", "l3", "-x", "1h30m")
        after = datetime.now(UTC)
        table = corral(daemon, "leases", "ls")
        data = json.loads(corral(daemon, "leases", "ls", "--format", "json").stdout)
        removed = corral(daemon, "leases", "rm", "l1", "nope", "--sync")
    assert made.stdout == "l1\n"
    assert forever.stdout == "generated-2\n"
    assert short.stdout == "l3\n"
    expire_l3 = datetime.strptime(store.leases["l3"].labels[EXPIRE], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert timedelta(minutes=89) < expire_l3 - after <= timedelta(minutes=90)
    assert set(data[0]["labels"]) == {"a", EXPIRE}
    assert data[1] == {"id": "generated-2", "created_at": "2024-05-01T10:11:12Z", "labels": {}}
    expire = datetime.strptime(data[0]["labels"][EXPIRE], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert timedelta(hours=23, minutes=59) < expire - datetime.now(UTC) <= timedelta(hours=24)
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["ID", "CREATED", "LABELS"]
    assert lines[2].split() == ["generated-2", "2024-05-01T10:11:12Z", "-"]
    assert removed.exit_code == 1
    assert removed.stdout == "l1\n"
    assert removed.stderr == 'corral: lease "nope": not found\n'
    assert [d.sync for d in store.deletes] == [True, True]


def test_leases_create_with_a_bad_duration_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["leases", "create", "--expires", "tomorrow"])
    assert result.exit_code == 2
    assert result.stderr.startswith(
        "corral: invalid value for '--expires' / '-x': invalid duration 'tomorrow'"
    )


def envelopes() -> list[Envelope]:
    def wrap(ns: str, topic: str, type_url: str, message: Any) -> Envelope:
        return Envelope(
            timestamp=NOW,
            namespace=ns,
            topic=topic,
            event=protobuf.Any(type_url=type_url, value=bytes(message)),
        )

    return [
        wrap(
            "ns1", "/namespaces/create", "containerd.events.NamespaceCreate", ev.NamespaceCreate(name="ns1")
        ),
        wrap(
            "default",
            "/content/delete",
            "containerd.events.ContentDelete",
            ev.ContentDelete(digest="sha256:a"),
        ),
    ]


def test_events_prints_one_line_per_event_like_ctr() -> None:
    service = FakeEvents(envelopes())
    with fake_daemon(service) as daemon:
        text = corral(daemon, "events", 'topic~="/"')
        lines = corral(daemon, "events", "--format", "json").stdout.splitlines()
    assert text.exit_code == 0
    assert text.stdout == (
        '2024-05-01 10:11:12.5 +0000 UTC ns1 /namespaces/create {"name":"ns1"}\n'
        '2024-05-01 10:11:12.5 +0000 UTC default /content/delete {"digest":"sha256:a"}\n'
    )
    assert service.subscriptions[0].filters == ['topic~="/"']
    assert [json.loads(line)["event"] for line in lines] == [{"name": "ns1"}, {"digest": "sha256:a"}]


def test_events_exits_0_on_keyboard_interrupt(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(fn: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("corral.api.cli.events.call", interrupted)
    result = CliRunner().invoke(cli, ["events"])
    assert (result.exit_code, result.output) == (0, "")


def test_events_stops_on_sigint_with_status_0_and_no_traceback() -> None:
    service = FakeEvents(envelopes()[:1], hold=True)
    with fake_daemon(service) as daemon:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from corral.api.cli import main; main()", "-a", daemon.socket, "events"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()  # the event arrived: the stream is live
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert first.decode().endswith('/namespaces/create {"name":"ns1"}\n')
    assert (proc.returncode, out, err) == (0, b"", b"")


def test_the_new_groups_are_listed() -> None:
    help_text = CliRunner().invoke(cli, ["--help"]).stdout
    for name in ("content", "leases", "events"):
        assert f"  {name} " in help_text
