"""A content store in another process, reached over containerd's Content API (core/content/proxy).

It stands in for the daemon's content backend: disable ``io.containerd.content.v1.content`` and the
metadata store keeps its namespaced records over this one. Writes speak containerd's Write protocol
in lock step (STAT, WRITE at the current offset, COMMIT), one stream per open writer.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import weakref
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime
from typing import TypeVar

from grpclib.client import Stream
from grpclib.const import Cardinality
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from corral.api.edge import error_for
from corral.api.proxy._channel import ProxyChannel
from corral.api.types.containerd.services.content import v1 as pb
from corral.kernel import FailedPrecondition, InvalidArgument
from corral.plugins.content import Info, IngestStatus
from corral.plugins.core import digest_error

T = TypeVar("T")
WRITE_PATH = "/containerd.services.content.v1.Content/Write"
_EPOCH = datetime.fromtimestamp(0, UTC)


def _checked(digest: str) -> str:
    """A malformed digest is refused here, as the local store words it, before any call is made."""
    if digest_error(digest) is not None:
        raise InvalidArgument(f'"{digest}" failed validation')
    return digest


def info_from_wire(info: pb.Info | None) -> Info:
    if info is None:
        return Info("", 0, _EPOCH, _EPOCH)
    return Info(
        info.digest, info.size, info.created_at or _EPOCH, info.updated_at or _EPOCH, dict(info.labels)
    )


def status_from_wire(status: pb.Status | None) -> IngestStatus:
    if status is None:
        return IngestStatus("", 0, 0, "", _EPOCH, _EPOCH)
    return IngestStatus(
        status.ref,
        status.offset,
        status.total,
        status.expected,
        status.started_at or _EPOCH,
        status.updated_at or _EPOCH,
    )


class ProxyContentStore:
    """corral's ``ContentStore`` contract over the wire to a proxy content process."""

    def __init__(self, address: str, *, channel: ProxyChannel | None = None) -> None:
        self.connection = channel or ProxyChannel(address)
        self.address = address
        self.open_writers: weakref.WeakSet[ProxyWriter] = weakref.WeakSet()

    @property
    def _stub(self) -> pb.ContentStub:
        return pb.ContentStub(self.connection.channel)

    async def info(self, digest: str) -> Info:
        request = pb.InfoRequest(digest=_checked(digest))
        response = await self.connection.call(self._stub.info(request, metadata=self.connection.metadata()))
        return info_from_wire(response.info)

    async def list(self) -> AsyncIterator[Info]:
        responses = self._stub.list(pb.ListContentRequest(), metadata=self.connection.metadata())
        async for batch in self.connection.stream(responses):
            for info in batch.info:
                yield info_from_wire(info)

    async def delete(self, digest: str) -> None:
        request = pb.DeleteContentRequest(digest=_checked(digest))
        await self.connection.call(self._stub.delete(request, metadata=self.connection.metadata()))

    async def read(self, digest: str, offset: int = 0, size: int = 0) -> AsyncIterator[bytes]:
        if offset < 0 or size < 0:
            raise InvalidArgument(f"invalid read range: offset {offset}, size {size}")
        request = pb.ReadContentRequest(digest=_checked(digest), offset=offset, size=size)
        responses = self._stub.read(request, metadata=self.connection.metadata())
        async for chunk in self.connection.stream(responses):
            if chunk.data:
                yield chunk.data

    async def writer(self, ref: str, total: int = 0, expected: str = "") -> ProxyWriter:
        if expected:
            _checked(expected)
        writer = ProxyWriter(self, ref, total, expected)
        await writer.open()
        self.open_writers.add(writer)
        return writer

    async def status(self, ref: str) -> IngestStatus:
        request = pb.StatusRequest(ref=ref)
        response = await self.connection.call(self._stub.status(request, metadata=self.connection.metadata()))
        return status_from_wire(response.status)

    async def list_statuses(self) -> builtins.list[IngestStatus]:
        request = pb.ListStatusesRequest()
        response = await self.connection.call(
            self._stub.list_statuses(request, metadata=self.connection.metadata())
        )
        return [status_from_wire(s) for s in response.statuses]

    async def abort(self, ref: str) -> None:
        request = pb.AbortRequest(ref=ref)
        await self.connection.call(self._stub.abort(request, metadata=self.connection.metadata()))

    async def condition(self) -> str:
        """ "" while the proxy process accepts connections; else why calls will fail."""
        return await self.connection.probe()

    async def aclose(self) -> None:
        """End the writes still open (the remote keeps their ingests), then the connection."""
        for writer in list(self.open_writers):
            await writer.close()
        self.close()

    def close(self) -> None:
        self.connection.close()


class ProxyWriter:
    """One ingest on the remote, held (its ref locked there) while this writer's stream is open."""

    def __init__(self, store: ProxyContentStore, ref: str, total: int, expected: str) -> None:
        self._store = store
        self._ref = ref
        self._total = total
        self._expected = expected
        self._offset = 0
        self._digest = ""
        self._started = _EPOCH
        self._updated = _EPOCH
        self._stack: contextlib.AsyncExitStack | None = None
        self._stream: Stream[pb.WriteContentRequest, pb.WriteContentResponse] | None = None
        self._ended = False
        """The request side is closed (COMMIT went with end-of-stream)."""

    @property
    def ref(self) -> str:
        return self._ref

    @property
    def offset(self) -> int:
        return self._offset

    def digest(self) -> str:
        return self._digest

    async def open(self) -> None:
        """Open the stream and ask where the ingest stands (a resumed one is past 0)."""
        connection = self._store.connection
        await connection.call(_nothing())  # a socket that is not there is Unavailable, as for any call
        stack = contextlib.AsyncExitStack()
        try:
            stream = await self._translate(
                stack.enter_async_context(
                    connection.channel.request(
                        WRITE_PATH,
                        Cardinality.STREAM_STREAM,
                        pb.WriteContentRequest,
                        pb.WriteContentResponse,
                        metadata=connection.metadata(),
                    )
                )
            )
            self._stack, self._stream, self._ended = stack, stream, False
            await self._translate(stream.send_request())
            await self._exchange(
                pb.WriteContentRequest(
                    action=pb.WriteAction.STAT, ref=self._ref, total=self._total, expected=self._expected
                )
            )
        except BaseException:
            await self._finish()
            raise

    async def status(self) -> IngestStatus:
        reply = await self._exchange(pb.WriteContentRequest(action=pb.WriteAction.STAT, ref=self._ref))
        return IngestStatus(
            self._ref, reply.offset, reply.total or self._total, self._expected, self._started, self._updated
        )

    async def write(self, data: bytes) -> int:
        if not data:
            return self._offset
        request = pb.WriteContentRequest(
            action=pb.WriteAction.WRITE, ref=self._ref, offset=self._offset, data=bytes(data)
        )
        await self._exchange(request)
        return self._offset

    async def truncate(self, size: int) -> None:
        """Restart the ingest: the remote's ref is aborted and opened afresh."""
        if size != 0:
            raise InvalidArgument(f"truncate to {size}: only 0 is supported")
        await self._finish()
        await self._store.abort(self._ref)
        self._offset = 0
        await self.open()

    async def commit(self, size: int, expected: str) -> Info:
        request = pb.WriteContentRequest(
            action=pb.WriteAction.COMMIT, ref=self._ref, offset=self._offset, total=size, expected=expected
        )
        try:
            stream = self._require()
            self._ended = True
            await self._translate(stream.send_message(request, end=True))
            reply = await self._reply()
            while await self._translate(stream.recv_message()) is not None:
                pass  # containerd 1.6 repeats its COMMIT reply
            return Info(reply.digest or expected, reply.offset, datetime.now(UTC), datetime.now(UTC))
        finally:
            await self._finish()

    async def close(self) -> None:
        await self._finish()

    def _require(self) -> Stream[pb.WriteContentRequest, pb.WriteContentResponse]:
        if self._stream is None:
            raise FailedPrecondition(f"writer for {self._ref} is closed")
        return self._stream

    async def _exchange(self, request: pb.WriteContentRequest) -> pb.WriteContentResponse:
        stream = self._require()
        await self._translate(stream.send_message(request))
        return await self._reply()

    async def _reply(self) -> pb.WriteContentResponse:
        reply = await self._translate(self._require().recv_message())
        if reply is None:
            # the remote ended the stream: why is in its trailers, which leaving the stream reads
            raise await self._failed(StreamTerminatedError(f"the remote ended the write of {self._ref}"))
        self._offset = reply.offset
        self._digest = reply.digest or self._digest
        if reply.started_at:
            self._started = reply.started_at
        if reply.updated_at:
            self._updated = reply.updated_at
        return reply

    async def _translate(self, awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except StreamTerminatedError as exc:
            # grpclib wakes a task waiting on a stream the remote reset by cancelling it, then
            # raises this instead; the cancellation was spent on that, so it must not linger
            # (anyio would take it for a cancellation of the caller).
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                task.uncancel()
            raise await self._failed(exc) from None
        except (GRPCError, OSError, ProtocolError) as exc:
            raise await self._failed(exc) from None

    async def _failed(self, exc: BaseException) -> Exception:
        """The error a broken stream stands for: the remote's status when it sent one."""
        stack, self._stack, self._stream = self._stack, None, None
        if stack is not None and not isinstance(exc, GRPCError):
            try:
                await stack.__aexit__(type(exc), exc, exc.__traceback__)
            except GRPCError as status:
                exc = status
            except BaseException:
                pass
        elif stack is not None:
            with contextlib.suppress(BaseException):
                await stack.aclose()
        if isinstance(exc, GRPCError):
            return error_for(exc.status.value, exc.message or "")
        return self._store.connection.unavailable(exc)

    async def _finish(self) -> None:
        """End the stream and wait for the remote to finish it, so its lock on the ref is released
        by the time this returns (a new writer for the ref may follow at once)."""
        stack, stream = self._stack, self._stream
        self._stack, self._stream = None, None
        if stack is None:
            return
        try:
            if stream is not None and not self._ended:
                await stream.end()
                while await stream.recv_message() is not None:
                    pass
                await stream.recv_trailing_metadata()
        except Exception:
            pass
        with contextlib.suppress(Exception):
            await stack.aclose()


async def _nothing() -> None:
    return None
