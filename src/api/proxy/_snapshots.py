"""A snapshotter in another process, reached over containerd's Snapshots API (core/snapshots/proxy).

Every request names the proxy plugin's id as its ``snapshotter``, as containerd's proxy does, and
carries the caller's namespace. Labels pass through unchanged: a remote (lazy-pulling)
snapshotter reads ``containerd.io/snapshot.ref`` and the ``containerd.io/snapshot/cri.*`` target
labels on Prepare and may answer AlreadyExists, meaning the layer is already there remotely.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Mapping, Sequence

from corral.api.proxy._channel import ProxyChannel
from corral.api.types.containerd.services.snapshots import v1 as pb
from corral.api.types.google import protobuf
from corral.api.wire import mounts_from_wire, snapshot_info
from corral.plugins.core import Mount
from corral.plugins.snapshots import Info, Kind, Usage


def info_from_wire(info: pb.Info | None) -> Info:
    """The whole record as the remote reports it (kind, parent and times included)."""
    if info is None:
        return Info("", Kind.UNKNOWN)
    return Info(
        info.name,
        Kind(int(info.kind)) if int(info.kind) in (1, 2, 3) else Kind.UNKNOWN,
        info.parent,
        dict(info.labels),
        info.created_at,
        info.updated_at,
    )


class ProxySnapshotter:
    """corral's ``Snapshotter`` contract over the wire to a proxy snapshotter process."""

    def __init__(self, address: str, name: str, *, channel: ProxyChannel | None = None) -> None:
        self.name = name
        self.connection = channel or ProxyChannel(address)
        self.address = address

    @property
    def _stub(self) -> pb.SnapshotsStub:
        return pb.SnapshotsStub(self.connection.channel)

    async def stat(self, key: str) -> Info:
        request = pb.StatSnapshotRequest(snapshotter=self.name, key=key)
        response = await self.connection.call(self._stub.stat(request, metadata=self.connection.metadata()))
        return info_from_wire(response.info)

    async def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        request = pb.UpdateSnapshotRequest(
            snapshotter=self.name,
            info=snapshot_info(info),
            update_mask=protobuf.FieldMask(paths=list(fieldpaths)) if fieldpaths else None,
        )
        response = await self.connection.call(self._stub.update(request, metadata=self.connection.metadata()))
        return info_from_wire(response.info)

    async def usage(self, key: str) -> Usage:
        request = pb.UsageRequest(snapshotter=self.name, key=key)
        response = await self.connection.call(self._stub.usage(request, metadata=self.connection.metadata()))
        return Usage(size=response.size, inodes=response.inodes)

    async def mounts(self, key: str) -> builtins.list[Mount]:
        request = pb.MountsRequest(snapshotter=self.name, key=key)
        response = await self.connection.call(self._stub.mounts(request, metadata=self.connection.metadata()))
        return mounts_from_wire(response.mounts)

    async def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> builtins.list[Mount]:
        request = pb.PrepareSnapshotRequest(
            snapshotter=self.name, key=key, parent=parent, labels=dict(labels or {})
        )
        response = await self.connection.call(
            self._stub.prepare(request, metadata=self.connection.metadata())
        )
        return mounts_from_wire(response.mounts)

    async def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> builtins.list[Mount]:
        request = pb.ViewSnapshotRequest(
            snapshotter=self.name, key=key, parent=parent, labels=dict(labels or {})
        )
        response = await self.connection.call(self._stub.view(request, metadata=self.connection.metadata()))
        return mounts_from_wire(response.mounts)

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        request = pb.CommitSnapshotRequest(
            snapshotter=self.name, name=name, key=key, labels=dict(labels or {})
        )
        await self.connection.call(self._stub.commit(request, metadata=self.connection.metadata()))

    async def remove(self, key: str) -> None:
        request = pb.RemoveSnapshotRequest(snapshotter=self.name, key=key)
        await self.connection.call(self._stub.remove(request, metadata=self.connection.metadata()))

    async def walk(self, filters: Sequence[str] = ()) -> AsyncIterator[Info]:
        request = pb.ListSnapshotsRequest(snapshotter=self.name, filters=list(filters))
        responses = self._stub.list(request, metadata=self.connection.metadata())
        async for batch in self.connection.stream(responses):
            for info in batch.info:
                yield info_from_wire(info)

    async def cleanup(self) -> None:
        """Unimplemented when the remote cannot clean up, as containerd's proxy passes it on."""
        request = pb.CleanupRequest(snapshotter=self.name)
        await self.connection.call(self._stub.cleanup(request, metadata=self.connection.metadata()))

    async def condition(self) -> str:
        """ "" while the proxy process accepts connections; else why calls will fail."""
        return await self.connection.probe()

    def close(self) -> None:
        self.connection.close()
