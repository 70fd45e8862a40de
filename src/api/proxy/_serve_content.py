"""Serve any corral ``ContentStore`` over containerd's Content API on a unix socket.

The process behind a ``type = "content"`` proxy plugin. Namespaces are ignored (a backend has
none: the daemon's metadata store keeps each namespace's records); so are labels, which a backend
does not keep either — Update is refused as containerd's local store refuses it without a label store.
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from functools import partial
from typing import cast

from corral.api.grpc import GRPCServices
from corral.api.grpc.content import ContentGRPC
from corral.api.grpc.server import GRPCServer as Server
from corral.api.grpc.server import build_mapping, serve_unix
from corral.kernel import FailedPrecondition, Origin, PluginRecord, Status, adapt_mapping, parse_filters
from corral.plugins import types
from corral.plugins.content import ContentStore, Info, IngestStatus, Writer
from corral.plugins.metadata import NamespacedContent


def _info_fields(info: Info, path: Sequence[str]) -> str | None:
    return adapt_mapping({"digest": info.digest, "size": str(info.size), "labels": dict(info.labels)})(path)


def _status_fields(status: IngestStatus, path: Sequence[str]) -> str | None:
    return adapt_mapping({"ref": status.ref, "expected": status.expected})(path)


class _BackendWriter:
    def __init__(self, writer: Writer) -> None:
        self._writer = writer

    @property
    def ref(self) -> str:
        return self._writer.ref

    @property
    def offset(self) -> int:
        return self._writer.offset

    def digest(self) -> str:
        return self._writer.digest()

    async def status(self) -> IngestStatus:
        return await self._writer.status()

    async def write(self, data: bytes) -> int:
        return await self._writer.write(data)

    async def truncate(self, size: int) -> None:
        await self._writer.truncate(size)

    async def commit(self, size: int, expected: str, labels: Mapping[str, str] | None = None) -> Info:
        return await self._writer.commit(size, expected)

    async def close(self) -> None:
        await self._writer.close()


class _BackendContent:
    """The view the Content service adapter expects, over a namespace-less backend."""

    def __init__(self, store: ContentStore) -> None:
        self._store = store

    async def info(self, digest: str) -> Info:
        return await self._store.info(digest)

    async def update(self, digest: str, labels: Mapping[str, str], paths: Sequence[str]) -> Info:
        await self._store.info(digest)
        raise FailedPrecondition("update not supported on immutable content store")

    async def list(self, filters: Sequence[str] = ()) -> builtins.list[Info]:
        match = parse_filters(list(filters))
        return [info async for info in self._store.list() if match.match(partial(_info_fields, info))]

    async def delete(self, digest: str) -> None:
        await self._store.delete(digest)

    async def read(self, digest: str, offset: int = 0, size: int = 0) -> AsyncIterator[bytes]:
        await self._store.info(digest)  # NotFound before the first chunk, as the service expects
        return self._store.read(digest, offset, size)

    async def writer(self, ref: str, total: int = 0, expected: str = "") -> _BackendWriter:
        return _BackendWriter(await self._store.writer(ref, total, expected))

    async def status(self, ref: str) -> IngestStatus:
        return await self._store.status(ref)

    async def list_statuses(self, filters: Sequence[str] = ()) -> builtins.list[IngestStatus]:
        match = parse_filters(list(filters))
        return [s for s in await self._store.list_statuses() if match.match(partial(_status_fields, s))]

    async def abort(self, ref: str) -> None:
        await self._store.abort(ref)


@contextlib.asynccontextmanager
async def serve_content_store(
    store: ContentStore, address: str, *, mode: int = 0o660
) -> AsyncIterator[Server]:
    """Serve ``store`` on the unix socket ``address`` until the block ends."""
    service = ContentGRPC(cast(NamespacedContent, _BackendContent(store)))
    origin = Origin("corral", "", "proxy", "serve_content_store", builtin=True)
    record = PluginRecord(
        f"{types.GRPC}.content", types.GRPC, "content", origin, Status.OK, instance=GRPCServices((service,))
    )
    async with serve_unix(build_mapping([record]), address, mode=mode) as server:
        yield server
