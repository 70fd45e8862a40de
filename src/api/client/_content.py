"""Content calls, the ingest protocol included."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from contextlib import aclosing, asynccontextmanager
from functools import cached_property
from typing import IO

import anyio.to_thread
from grpclib.client import Channel, Stream
from grpclib.const import Cardinality
from grpclib.exceptions import GRPCError, StreamTerminatedError

from corral.api.client._connection import Connection
from corral.api.edge import error_for
from corral.api.types.containerd.services.content import v1 as content_pb
from corral.api.types.google import protobuf
from corral.kernel import AlreadyExists, DataLoss, FailedPrecondition

WRITE_CHUNK = 1 << 20
"""ctr writes content in chunks of 1 MiB, well under gRPC's 16 MiB message limit."""

IngestSource = bytes | bytearray | memoryview | IO[bytes] | AsyncIterable[bytes]
"""What ``Client.ingest`` reads: bytes and seekable files can resume an interrupted ingest."""


class ContentCalls(Connection):
    """Content calls, the ingest protocol included."""

    @cached_property
    def content(self) -> content_pb.ContentStub:
        return content_pb.ContentStub(self.channel, metadata=self._metadata())

    async def content_info(self, digest: str) -> content_pb.Info:
        reply = await self.call(self.content.info(content_pb.InfoRequest(digest=digest)))
        assert reply.info is not None
        return reply.info

    async def list_content(self, filters: Sequence[str] = ()) -> list[content_pb.Info]:
        request = content_pb.ListContentRequest(filters=list(filters))
        async with aclosing(self.call_stream(self.content.list(request))) as batches:
            return [info async for batch in batches for info in batch.info]

    async def read_content(self, digest: str, offset: int = 0, size: int = 0) -> AsyncIterator[bytes]:
        """The blob's bytes from ``offset``: ``size`` of them, or all the rest when ``size`` is 0."""
        request = content_pb.ReadContentRequest(digest=digest, offset=offset, size=size)
        async with aclosing(self.call_stream(self.content.read(request))) as chunks:
            async for chunk in chunks:
                if chunk.data:
                    yield chunk.data

    async def delete_content(self, digest: str) -> None:
        await self.call(self.content.delete(content_pb.DeleteContentRequest(digest=digest)))

    async def label_content(self, digest: str, labels: Mapping[str, str]) -> content_pb.Info:
        """Set (or, with an empty value, remove) the given labels, leaving the others alone."""
        request = content_pb.UpdateRequest(
            info=content_pb.Info(digest=digest, labels={k: v for k, v in labels.items() if v}),
            update_mask=protobuf.FieldMask(paths=[f"labels.{k}" for k in labels]),
        )
        reply = await self.call(self.content.update(request))
        assert reply.info is not None
        return reply.info

    async def content_statuses(self, filters: Sequence[str] = ()) -> list[content_pb.Status]:
        """The ingests in progress (or abandoned) in this namespace."""
        reply = await self.call(
            self.content.list_statuses(content_pb.ListStatusesRequest(filters=list(filters)))
        )
        return list(reply.statuses)

    async def abort_ingest(self, ref: str) -> None:
        await self.call(self.content.abort(content_pb.AbortRequest(ref=ref)))

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
                    content_pb.WriteContentRequest(
                        action=content_pb.WriteAction.STAT, ref=ref, total=total, expected=expected
                    )
                )
                reader = _Source(source)
                offset = status.offset if await reader.seek(status.offset, status.digest) else 0
                running = status.digest if offset == status.offset else ""
                async for chunk in reader.chunks():
                    reply = await writer.send(
                        content_pb.WriteContentRequest(
                            action=content_pb.WriteAction.WRITE, offset=offset, data=chunk
                        )
                    )
                    if reply.offset - offset < len(chunk):
                        raise DataLoss(f"short write to {ref}: {reply.offset - offset} of {len(chunk)} bytes")
                    offset, running = reply.offset, reply.digest
                committing = True
                done = await writer.commit(
                    content_pb.WriteContentRequest(
                        action=content_pb.WriteAction.COMMIT,
                        total=total,
                        expected=expected,
                        offset=offset,
                        labels=dict(labels or {}),
                    )
                )
        except GRPCError as exc:
            error = error_for(exc.status.value, exc.message or "")
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


WRITE_PATH = "/containerd.services.content.v1.Content/Write"


class _Writer:
    """One Content/Write stream, spoken in lock step: each request waits for the daemon's reply."""

    def __init__(
        self, stream: Stream[content_pb.WriteContentRequest, content_pb.WriteContentResponse]
    ) -> None:
        self._stream = stream

    async def send(self, request: content_pb.WriteContentRequest) -> content_pb.WriteContentResponse:
        await self._stream.send_message(request)
        return await self._reply()

    async def commit(self, request: content_pb.WriteContentRequest) -> content_pb.WriteContentResponse:
        """The last request: it also half-closes the stream, so the daemon's final status is read."""
        await self._stream.send_message(request, end=True)
        reply = await self._reply()
        while await self._stream.recv_message() is not None:
            pass  # containerd 1.6 repeats its COMMIT reply; ctr ignores the copy too
        return reply

    async def _reply(self) -> content_pb.WriteContentResponse:
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
        content_pb.WriteContentRequest,
        content_pb.WriteContentResponse,
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
        if self._stream is not None:
            async for chunk in _rechunk(self._stream):
                yield chunk
        elif self._file is not None:
            # read1: what a pipe has now (up to a chunk), so a slow writer's bytes reach the daemon
            # (and `content active`) as they come, not once a whole MiB has gathered.
            read = getattr(self._file, "read1", self._file.read)
            while piece := await anyio.to_thread.run_sync(read, WRITE_CHUNK):
                yield piece


async def _rechunk(pieces: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
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
