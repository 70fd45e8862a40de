"""io.containerd.service.v1.content-service — the namespaced content store, publishing its events."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Mapping, Sequence

from corral.kernel import InitContext, Registration, namespace_required
from corral.plugins import types
from corral.plugins.content import Info, IngestStatus
from corral.plugins.events import types as events
from corral.plugins.metadata._content import NamespacedContent, NamespacedWriter


class ContentService:
    """The content operations a client sees; storage and checks live in the metadata store."""

    def __init__(self, content: NamespacedContent, exchange: events.Publisher | None = None) -> None:
        self._content = content
        self._exchange = exchange

    async def _publish(self, event: events.Event) -> None:
        if self._exchange is not None:
            await self._exchange.publish(event, namespace=namespace_required())

    async def info(self, digest: str) -> Info:
        return await self._content.info(digest)

    async def update(self, digest: str, labels: Mapping[str, str], paths: Sequence[str]) -> Info:
        return await self._content.update(digest, labels, paths)

    async def list(self, filters: Sequence[str] = ()) -> list[Info]:
        return await self._content.list(filters)

    async def delete(self, digest: str) -> None:
        await self._content.delete(digest)
        await self._publish(events.ContentDelete(digest=digest))

    async def read(self, digest: str, offset: int = 0, size: int = 0) -> AsyncIterator[bytes]:
        return await self._content.read(digest, offset, size)

    async def writer(self, ref: str, total: int = 0, expected: str = "") -> NamespacedWriter:
        return await self._content.writer(ref, total, expected)

    async def committed(self, info: Info) -> None:
        await self._publish(events.ContentCreate(digest=info.digest, size=info.size))

    async def status(self, ref: str) -> IngestStatus:
        return await self._content.status(ref)

    async def list_statuses(self, filters: Sequence[str] = ()) -> builtins.list[IngestStatus]:
        return await self._content.list_statuses(filters)

    async def abort(self, ref: str) -> None:
        await self._content.abort(ref)


async def init(ic: InitContext) -> ContentService:
    metadata = ic.get_single(types.METADATA)
    if metadata.content is None:
        raise RuntimeError("the metadata store has no content store behind it")
    return ContentService(metadata.content, events.optional_publisher(ic.get_by_type(types.EVENT)))


registration = Registration(
    type=types.SERVICE,
    id="content-service",
    init=init,
    requires=(types.METADATA,),
    after=(types.EVENT,),
    description="namespaced content: ingests, blobs, labels",
)
