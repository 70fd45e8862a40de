"""io.containerd.grpc.v1.content — containerd.services.content.v1.Content, streaming included."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from corral.api.grpc import GRPCServices
from corral.api.grpc.codec import put_varint
from corral.api.types.containerd.services.content import v1 as pb
from corral.api.types.google import protobuf
from corral.api.wire import content_info, field_mask_paths, ingest_status
from corral.kernel import InitContext, InvalidArgument, OutOfRange, Registration
from corral.plugins import types
from corral.plugins.core import digest_error, validate_digest
from corral.plugins.metadata import NamespacedContent

LIST_BATCH = 100


class _ReadChunk(pb.ReadContentResponse):
    """A ReadContentResponse written straight in protobuf's wire format: field 1 the offset
    (varint, left out when 0), field 2 the data (length-delimited, left out when empty).

    ``ctr content get`` reads in 32 KiB calls, thousands per blob; building each message as a
    betterproto2 dataclass and serialising it field by field cost more than reading its bytes."""

    def __init__(self, offset: int, data: bytes) -> None:  # no dataclass set-up: two fields
        self.offset = offset
        self.data = data

    def SerializeToString(self) -> bytes:  # the name grpclib's codec calls
        head = bytearray()
        if self.offset:
            head.append(0x08)
            put_varint(head, self.offset & 0xFFFFFFFFFFFFFFFF)
        if self.data:
            head.append(0x12)
            put_varint(head, len(self.data))
            return bytes(head) + self.data
        return bytes(head)

    __bytes__ = SerializeToString


def _failed_validation(digest: str) -> None:
    """containerd's answer to a malformed digest in Info and Update."""
    if digest_error(digest) is not None:
        raise InvalidArgument(f"{json.dumps(digest)} failed validation")


class ContentGRPC(pb.ContentBase):
    def __init__(self, local: NamespacedContent) -> None:
        self._local = local

    async def info(self, message: pb.InfoRequest) -> pb.InfoResponse:
        _failed_validation(message.digest)
        return pb.InfoResponse(info=content_info(await self._local.info(message.digest)))

    async def update(self, message: pb.UpdateRequest) -> pb.UpdateResponse:
        if message.info is None:
            raise InvalidArgument("info is required")
        _failed_validation(message.info.digest)
        paths = field_mask_paths(message.update_mask)
        updated = await self._local.update(message.info.digest, message.info.labels, paths)
        return pb.UpdateResponse(info=content_info(updated))

    async def list(self, message: pb.ListContentRequest) -> AsyncIterator[pb.ListContentResponse]:
        infos = await self._local.list(message.filters)
        for start in range(0, len(infos), LIST_BATCH):
            yield pb.ListContentResponse(info=[content_info(i) for i in infos[start : start + LIST_BATCH]])

    async def delete(self, message: pb.DeleteContentRequest) -> protobuf.Empty:
        problem = digest_error(message.digest)
        if problem is not None:
            raise InvalidArgument(problem)
        await self._local.delete(message.digest)
        return protobuf.Empty()

    async def read(self, message: pb.ReadContentRequest) -> AsyncIterator[pb.ReadContentResponse]:
        validate_digest(message.digest)
        # As containerd: a negative offset reads from the start, a size of 0 or less to the end.
        offset = max(message.offset, 0)
        async for chunk in await self._local.read(message.digest, offset, max(message.size, 0)):
            yield _ReadChunk(offset, chunk)
            offset += len(chunk)

    async def status(self, message: pb.StatusRequest) -> pb.StatusResponse:
        return pb.StatusResponse(status=ingest_status(await self._local.status(message.ref)))

    async def list_statuses(self, message: pb.ListStatusesRequest) -> pb.ListStatusesResponse:
        statuses = await self._local.list_statuses(message.filters)
        return pb.ListStatusesResponse(statuses=[ingest_status(s) for s in statuses])

    async def abort(self, message: pb.AbortRequest) -> protobuf.Empty:
        await self._local.abort(message.ref)
        return protobuf.Empty()

    async def write(
        self, messages: AsyncIterator[pb.WriteContentRequest]
    ) -> AsyncIterator[pb.WriteContentResponse]:
        """containerd's ingest protocol: one response per request, in lock step."""
        first = await anext(messages, None)
        if first is None:
            return
        if not first.ref:
            raise InvalidArgument("first message must have a reference")
        total, expected = first.total, first.expected
        writer = await self._local.writer(first.ref, total, expected)
        try:
            request: pb.WriteContentRequest | None = first
            while request is not None:
                total = request.total or total
                expected = request.expected or expected
                if request.action == pb.WriteAction.STAT:
                    st = await writer.status()
                    yield pb.WriteContentResponse(
                        action=pb.WriteAction.STAT,
                        started_at=st.started_at,
                        updated_at=st.updated_at,
                        offset=writer.offset,
                        total=total or st.total,
                        digest=writer.digest(),
                    )
                elif request.action in (pb.WriteAction.WRITE, pb.WriteAction.COMMIT):
                    if request.offset > 0 and request.offset != writer.offset:
                        raise OutOfRange(
                            f"write @{request.offset} must occur at current offset {writer.offset}"
                        )
                    if request.offset == 0 and writer.offset > 0 and request.data:
                        await writer.truncate(0)
                    if request.data:
                        await writer.write(request.data)
                    if request.action == pb.WriteAction.WRITE:
                        yield pb.WriteContentResponse(
                            action=pb.WriteAction.WRITE,
                            offset=writer.offset,
                            total=total,
                            digest=writer.digest(),
                        )
                    else:
                        info = await writer.commit(total, expected, request.labels)
                        yield pb.WriteContentResponse(
                            action=pb.WriteAction.COMMIT, offset=info.size, digest=info.digest
                        )
                        return
                else:
                    raise InvalidArgument(f"unknown write action {request.action}")
                request = await anext(messages, None)
        finally:
            await writer.close()


async def init(ic: InitContext) -> GRPCServices:
    return GRPCServices((ContentGRPC(ic.get_by_id(types.SERVICE, "content-service", NamespacedContent)),))


registration = Registration(type=types.GRPC, id="content", init=init, requires=(types.SERVICE,))
