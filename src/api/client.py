"""An async client for corrald (and containerd): what the CLI, the tests and plugin authors use."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Mapping, Sequence
from contextlib import aclosing, asynccontextmanager
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import IO, TypeVar

import anyio.to_thread
from grpclib.client import Channel, Stream
from grpclib.const import Cardinality
from grpclib.exceptions import GRPCError, StreamTerminatedError

from corral.api.errors import error_from_status
from corral.api.server import NAMESPACE_HEADER
from corral.api.types.containerd import types as containerd_types
from corral.api.types.containerd.services.content import v1 as content
from corral.api.types.containerd.services.events import v1 as events
from corral.api.types.containerd.services.introspection import v1 as introspection
from corral.api.types.containerd.services.leases import v1 as leases
from corral.api.types.containerd.services.namespaces import v1 as namespaces
from corral.api.types.containerd.services.snapshots import v1 as snapshots
from corral.api.types.containerd.services.version import v1 as version
from corral.api.types.corral.introspection import v1 as corral_introspection
from corral.api.types.google import protobuf
from corral.api.types.grpc.health import v1 as health
from corral.kernel import AlreadyExists, DataLoss, FailedPrecondition
from corral.plugins.metadata._leases import EXPIRE_LABEL, LEASE_HEADER

T = TypeVar("T")

DEFAULT_NAMESPACE = "default"

WRITE_CHUNK = 1 << 20
"""ctr writes content in chunks of 1 MiB, well under gRPC's 16 MiB message limit."""

IngestSource = bytes | bytearray | memoryview | IO[bytes] | AsyncIterable[bytes]
"""What ``Client.ingest`` reads: bytes and seekable files can resume an interrupted ingest."""


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
        self.content = content.ContentStub(self.channel, metadata=self._metadata())
        self.leases = leases.LeasesStub(self.channel, metadata=self._metadata())
        self.events = events.EventsStub(self.channel, metadata=self._metadata())
        self.snapshots = snapshots.SnapshotsStub(self.channel, metadata=self._metadata())

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

    # Server streams get the same translation, and are closed when the caller stops early.
    @staticmethod
    async def call_stream(responses: AsyncIterator[T]) -> AsyncGenerator[T, None]:
        try:
            async for response in responses:
                yield response
        except GRPCError as exc:
            raise error_from_status(exc.status, exc.message or "") from None
        finally:
            await _aclose(responses)

    def _lease_metadata(self, lease: str | None) -> Mapping[str, str]:
        """The namespace header, plus ``containerd-lease``: what the call creates is held by ``lease``."""
        metadata = dict(self._metadata())
        if lease:
            metadata[LEASE_HEADER] = lease
        return metadata

    # ------------------------------------------------------------------ content

    async def content_info(self, digest: str) -> content.Info:
        reply = await self.call(self.content.info(content.InfoRequest(digest=digest)))
        assert reply.info is not None
        return reply.info

    async def list_content(self, filters: Sequence[str] = ()) -> list[content.Info]:
        request = content.ListContentRequest(filters=list(filters))
        async with aclosing(self.call_stream(self.content.list(request))) as batches:
            return [info async for batch in batches for info in batch.info]

    async def read_content(self, digest: str, offset: int = 0, size: int = 0) -> AsyncIterator[bytes]:
        """The blob's bytes from ``offset``: ``size`` of them, or all the rest when ``size`` is 0."""
        request = content.ReadContentRequest(digest=digest, offset=offset, size=size)
        async with aclosing(self.call_stream(self.content.read(request))) as chunks:
            async for chunk in chunks:
                if chunk.data:
                    yield chunk.data

    async def delete_content(self, digest: str) -> None:
        await self.call(self.content.delete(content.DeleteContentRequest(digest=digest)))

    async def label_content(self, digest: str, labels: Mapping[str, str]) -> content.Info:
        """Set (or, with an empty value, remove) the given labels, leaving the others alone."""
        request = content.UpdateRequest(
            info=content.Info(digest=digest, labels={k: v for k, v in labels.items() if v}),
            update_mask=protobuf.FieldMask(paths=[f"labels.{k}" for k in labels]),
        )
        reply = await self.call(self.content.update(request))
        assert reply.info is not None
        return reply.info

    async def content_statuses(self, filters: Sequence[str] = ()) -> list[content.Status]:
        """The ingests in progress (or abandoned) in this namespace."""
        reply = await self.call(
            self.content.list_statuses(content.ListStatusesRequest(filters=list(filters)))
        )
        return list(reply.statuses)

    async def abort_ingest(self, ref: str) -> None:
        await self.call(self.content.abort(content.AbortRequest(ref=ref)))

    async def ingest(
        self,
        ref: str,
        source: IngestSource,
        *,
        total: int = 0,
        expected: str = "",
        labels: Mapping[str, str] | None = None,
        lease: str | None = None,
    ) -> str:
        """Write ``source`` to the content store under ``ref`` and commit it; returns the blob's digest.

        containerd's Write protocol, as ctr speaks it: STAT with the ref, WRITE in 1 MiB chunks at their
        offsets, COMMIT with ``total``, ``expected`` and ``labels``. When the daemon already holds part of the
        ref, bytes and seekable files go on from its offset (if their first bytes match what it holds);
        other sources start again at 0. A blob that already exists is a success, as with ctr.
        """
        running = ""  # the daemon's digest of what it holds for ref
        committing = False
        try:
            async with _write_stream(self.channel, self._lease_metadata(lease)) as writer:
                status = await writer.send(
                    content.WriteContentRequest(
                        action=content.WriteAction.STAT, ref=ref, total=total, expected=expected
                    )
                )
                reader = _Source(source)
                offset = status.offset if await reader.seek(status.offset, status.digest) else 0
                running = status.digest if offset == status.offset else ""
                async for chunk in reader.chunks():
                    reply = await writer.send(
                        content.WriteContentRequest(
                            action=content.WriteAction.WRITE, offset=offset, data=chunk
                        )
                    )
                    if reply.offset - offset < len(chunk):
                        raise DataLoss(f"short write to {ref}: {reply.offset - offset} of {len(chunk)} bytes")
                    offset, running = reply.offset, reply.digest
                committing = True
                done = await writer.commit(
                    content.WriteContentRequest(
                        action=content.WriteAction.COMMIT,
                        total=total,
                        expected=expected,
                        offset=offset,
                        labels=dict(labels or {}),
                    )
                )
        except GRPCError as exc:
            error = error_from_status(exc.status, exc.message or "")
            if not isinstance(error, AlreadyExists):
                raise error from None
            if expected:
                return expected
            if committing and running:
                return running
            raise error from None
        if total and done.offset != total:
            raise FailedPrecondition(f"unexpected size: {done.offset} != {total}")
        if expected and done.digest != expected:
            raise FailedPrecondition(f"unexpected digest: {done.digest} != {expected}")
        return done.digest or running

    # ------------------------------------------------------------------ leases

    async def create_lease(
        self, id: str = "", labels: Mapping[str, str] | None = None, expire: timedelta | None = None
    ) -> leases.Lease:
        """A lease (the daemon names it when ``id`` is empty); ``expire`` sets containerd's gc.expire label."""
        all_labels = dict(labels or {})
        if expire is not None:
            all_labels[EXPIRE_LABEL] = rfc3339(datetime.now(UTC) + expire)
        reply = await self.call(self.leases.create(leases.CreateRequest(id=id, labels=all_labels)))
        assert reply.lease is not None
        return reply.lease

    async def list_leases(self, filters: Sequence[str] = ()) -> list[leases.Lease]:
        reply = await self.call(self.leases.list(leases.ListRequest(filters=list(filters))))
        return list(reply.leases)

    async def delete_lease(self, id: str, sync: bool = False) -> None:
        """Remove a lease; with ``sync`` the daemon collects garbage before it answers."""
        await self.call(self.leases.delete(leases.DeleteRequest(id=id, sync=sync)))

    async def lease_resources(self, id: str) -> list[leases.Resource]:
        reply = await self.call(self.leases.list_resources(leases.ListResourcesRequest(id=id)))
        return list(reply.resources)

    # ------------------------------------------------------------------ events

    async def subscribe(self, filters: Sequence[str] = ()) -> AsyncIterator[containerd_types.Envelope]:
        """Events as they are published; with no filters, from every namespace (as with ctr)."""
        request = events.SubscribeRequest(filters=list(filters))
        async with aclosing(self.call_stream(self.events.subscribe(request))) as envelopes:
            async for envelope in envelopes:
                yield envelope

    async def publish(self, topic: str, event: protobuf.Any) -> None:
        """Publish ``event`` on ``topic`` in the client's namespace; give its ``type_url`` without prefix."""
        await self.call(self.events.publish(events.PublishRequest(topic=topic, event=event)))

    # ------------------------------------------------------------------ snapshots
    # Every call names its snapshotter ("overlayfs", "native", ...), as containerd's service expects.

    async def snapshot_prepare(
        self, snapshotter: str, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[containerd_types.Mount]:
        """An active (writable) snapshot ``key`` on top of the committed ``parent``; returns its mounts."""
        request = snapshots.PrepareSnapshotRequest(
            snapshotter=snapshotter, key=key, parent=parent, labels=dict(labels or {})
        )
        reply = await self.call(self.snapshots.prepare(request))
        return list(reply.mounts)

    async def snapshot_view(
        self, snapshotter: str, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[containerd_types.Mount]:
        """A read-only snapshot ``key`` of the committed ``parent``; returns its mounts."""
        request = snapshots.ViewSnapshotRequest(
            snapshotter=snapshotter, key=key, parent=parent, labels=dict(labels or {})
        )
        reply = await self.call(self.snapshots.view(request))
        return list(reply.mounts)

    async def snapshot_mounts(self, snapshotter: str, key: str) -> list[containerd_types.Mount]:
        """The mounts of an active snapshot or a view."""
        request = snapshots.MountsRequest(snapshotter=snapshotter, key=key)
        reply = await self.call(self.snapshots.mounts(request))
        return list(reply.mounts)

    async def snapshot_commit(
        self, snapshotter: str, name: str, key: str, labels: Mapping[str, str] | None = None
    ) -> None:
        """Commit the active snapshot ``key`` as the committed snapshot ``name``; ``key`` is gone after."""
        request = snapshots.CommitSnapshotRequest(
            snapshotter=snapshotter, name=name, key=key, labels=dict(labels or {})
        )
        await self.call(self.snapshots.commit(request))

    async def snapshot_remove(self, snapshotter: str, key: str) -> None:
        await self.call(
            self.snapshots.remove(snapshots.RemoveSnapshotRequest(snapshotter=snapshotter, key=key))
        )

    async def snapshot_stat(self, snapshotter: str, key: str) -> snapshots.Info:
        reply = await self.call(
            self.snapshots.stat(snapshots.StatSnapshotRequest(snapshotter=snapshotter, key=key))
        )
        assert reply.info is not None
        return reply.info

    async def snapshot_update_labels(
        self, snapshotter: str, key: str, labels: Mapping[str, str]
    ) -> snapshots.Info:
        """Set (or, with an empty value, remove) the given labels, leaving the others alone."""
        request = snapshots.UpdateSnapshotRequest(
            snapshotter=snapshotter,
            info=snapshots.Info(name=key, labels={k: v for k, v in labels.items() if v}),
            update_mask=protobuf.FieldMask(paths=[f"labels.{k}" for k in labels]),
        )
        reply = await self.call(self.snapshots.update(request))
        assert reply.info is not None
        return reply.info

    async def snapshot_list(self, snapshotter: str, filters: Sequence[str] = ()) -> list[snapshots.Info]:
        """Every snapshot of ``snapshotter`` in this namespace that matches one of ``filters``."""
        request = snapshots.ListSnapshotsRequest(snapshotter=snapshotter, filters=list(filters))
        async with aclosing(self.call_stream(self.snapshots.list(request))) as batches:
            return [info async for batch in batches for info in batch.info]

    async def snapshot_usage(self, snapshotter: str, key: str) -> snapshots.UsageResponse:
        """The disk space (``size`` in bytes) and ``inodes`` the snapshot itself uses, without its parents."""
        return await self.call(self.snapshots.usage(snapshots.UsageRequest(snapshotter=snapshotter, key=key)))

    async def snapshot_cleanup(self, snapshotter: str) -> None:
        """Ask the snapshotter to free what no snapshot uses any more."""
        await self.call(self.snapshots.cleanup(snapshots.CleanupRequest(snapshotter=snapshotter)))


def rfc3339(moment: datetime) -> str:
    """RFC 3339 in UTC to the second, as containerd's gc.expire label carries it."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def _aclose(iterator: object) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


WRITE_PATH = "/containerd.services.content.v1.Content/Write"


class _Writer:
    """One Content/Write stream, spoken in lock step: each request waits for the daemon's reply."""

    def __init__(self, stream: Stream[content.WriteContentRequest, content.WriteContentResponse]) -> None:
        self._stream = stream

    async def send(self, request: content.WriteContentRequest) -> content.WriteContentResponse:
        await self._stream.send_message(request)
        return await self._reply()

    async def commit(self, request: content.WriteContentRequest) -> content.WriteContentResponse:
        """The last request: it also half-closes the stream, so the daemon's final status is read."""
        await self._stream.send_message(request, end=True)
        reply = await self._reply()
        while await self._stream.recv_message() is not None:
            pass  # containerd 1.6 repeats its COMMIT reply; ctr ignores the copy too
        return reply

    async def _reply(self) -> content.WriteContentResponse:
        reply = await self._stream.recv_message()
        if reply is None:
            # The daemon ended the stream: its status is in the trailers, which grpclib reads and
            # raises (as a GRPCError) when the stream is left on a StreamTerminatedError.
            raise StreamTerminatedError("corrald ended the content write stream without a reply")
        return reply


@asynccontextmanager
async def _write_stream(channel: Channel, metadata: Mapping[str, str]) -> AsyncIterator[_Writer]:
    # Not the generated stub: its request iterator is drained by a task of its own, while the Write
    # protocol needs each reply before choosing the next request, and the status of a stream that the
    # daemon ends early (AlreadyExists at COMMIT, say) must not be lost.
    async with channel.request(
        WRITE_PATH,
        Cardinality.STREAM_STREAM,
        content.WriteContentRequest,
        content.WriteContentResponse,
        metadata=metadata,
    ) as stream:
        await stream.send_request()
        yield _Writer(stream)


class _Source:
    """An ingest's bytes, read in WRITE_CHUNK pieces from the start or from where the daemon stopped."""

    def __init__(self, source: IngestSource) -> None:
        self._data: memoryview | None = None
        self._file: IO[bytes] | None = None
        self._stream: AsyncIterable[bytes] | None = None
        self._base = 0
        self._position = 0
        if isinstance(source, bytes | bytearray | memoryview):
            self._data = memoryview(source).cast("B")
        elif isinstance(source, AsyncIterable):
            self._stream = source
        else:
            self._file = source
            if source.seekable():
                self._base = source.tell()

    async def seek(self, offset: int, digest: str) -> bool:
        """Go on from ``offset`` if the source reaches it and its first bytes hash to ``digest``."""
        if offset <= 0:
            return False
        if self._data is not None:
            if len(self._data) < offset or not _prefix_matches(self._data[:offset], digest):
                return False
            self._position = offset
            return True
        if self._file is None or not self._file.seekable():
            return False  # a pipe or a stream: what the daemon already holds cannot be skipped safely
        return await anyio.to_thread.run_sync(self._seek_file, self._file, offset, digest)

    def _seek_file(self, file: IO[bytes], offset: int, digest: str) -> bool:
        matches = False
        if file.seek(0, os.SEEK_END) - self._base >= offset:
            file.seek(self._base)
            matches = _prefix_matches(file.read(offset), digest)
        file.seek(self._base + offset if matches else self._base)
        return matches

    async def chunks(self) -> AsyncIterator[bytes]:
        if self._data is not None:
            for start in range(self._position, len(self._data), WRITE_CHUNK):
                yield bytes(self._data[start : start + WRITE_CHUNK])
            return
        async for chunk in _rechunk(self._pieces()):
            yield chunk

    async def _pieces(self) -> AsyncIterator[bytes]:
        if self._stream is not None:
            async for piece in self._stream:
                yield piece
        elif self._file is not None:
            while piece := await anyio.to_thread.run_sync(self._file.read, WRITE_CHUNK):
                yield piece


async def _rechunk(pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Whole WRITE_CHUNK pieces (the last one shorter), whatever sizes the source yields."""
    pending = bytearray()
    async for piece in pieces:
        pending += piece
        while len(pending) >= WRITE_CHUNK:
            yield bytes(pending[:WRITE_CHUNK])
            del pending[:WRITE_CHUNK]
    if pending:
        yield bytes(pending)


def _prefix_matches(prefix: bytes | memoryview, digest: str) -> bool:
    """Whether ``prefix`` is what the daemon holds; digests other than sha256 are trusted, as ctr does."""
    algorithm, _, hexdigest = digest.partition(":")
    if algorithm != "sha256" or not hexdigest:
        return True
    return hashlib.sha256(prefix).hexdigest() == hexdigest


@asynccontextmanager
async def connect(address: str | None = None, namespace: str = DEFAULT_NAMESPACE) -> AsyncIterator[Client]:
    client = Client(address, namespace)
    try:
        yield client
    finally:
        client.close()
