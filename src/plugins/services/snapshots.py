"""io.containerd.service.v1.snapshots-service — namespaced snapshotters by name, publishing events."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Mapping, Sequence

from corral.kernel import InitContext, InvalidArgument, Registration, namespace_required
from corral.plugins import types
from corral.plugins.events import types as events
from corral.plugins.metadata._snapshots import NamespacedSnapshotter
from corral.plugins.snapshots import Info, Mount, Usage


class SnapshotsService:
    """Every snapshotter the metadata store knows, by name; mutations publish containerd's events."""

    def __init__(
        self, snapshotters: Mapping[str, NamespacedSnapshotter], exchange: events.Publisher | None
    ) -> None:
        self._snapshotters = dict(snapshotters)
        self._exchange = exchange

    @property
    def names(self) -> builtins.list[str]:
        return sorted(self._snapshotters)

    def get(self, name: str) -> NamespacedSnapshotter:
        try:
            return self._snapshotters[name]
        except KeyError:
            raise InvalidArgument(f"snapshotter not loaded: {name}") from None

    async def _publish(self, event: events.Event) -> None:
        if self._exchange is not None:
            await self._exchange.publish(event, namespace=namespace_required())

    async def prepare(
        self, name: str, key: str, parent: str, labels: Mapping[str, str]
    ) -> builtins.list[Mount]:
        mounts = await self.get(name).prepare(key, parent, labels)
        await self._publish(events.SnapshotPrepare(key=key, parent=parent, snapshotter=name))
        return mounts

    async def view(self, name: str, key: str, parent: str, labels: Mapping[str, str]) -> builtins.list[Mount]:
        return await self.get(name).view(key, parent, labels)

    async def commit(self, name: str, new_name: str, key: str, labels: Mapping[str, str]) -> None:
        await self.get(name).commit(new_name, key, labels)
        await self._publish(events.SnapshotCommit(key=key, name=new_name, snapshotter=name))

    async def remove(self, name: str, key: str) -> None:
        await self.get(name).remove(key)
        await self._publish(events.SnapshotRemove(key=key, snapshotter=name))

    async def mounts(self, name: str, key: str) -> builtins.list[Mount]:
        return await self.get(name).mounts(key)

    async def stat(self, name: str, key: str) -> Info:
        return await self.get(name).stat(key)

    async def update(self, name: str, info: Info, paths: Sequence[str]) -> Info:
        return await self.get(name).update(info, paths)

    async def usage(self, name: str, key: str) -> Usage:
        return await self.get(name).usage(key)

    def walk(self, name: str, filters: Sequence[str]) -> AsyncIterator[Info]:
        return self.get(name).walk(filters)

    async def cleanup(self, name: str) -> None:
        await self.get(name).cleanup()


async def init(ic: InitContext) -> SnapshotsService:
    metadata = ic.get_single(types.METADATA)
    return SnapshotsService(metadata.snapshotters, events.optional_publisher(ic.get_by_type(types.EVENT)))


registration = Registration(
    type=types.SERVICE,
    id="snapshots-service",
    init=init,
    requires=(types.METADATA,),
    after=(types.EVENT,),
    description="namespaced snapshotters by name",
)
