"""Container calls."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import cached_property

from corral.api.client._connection import Connection, rfc3339
from corral.api.types.containerd import types as containerd_types
from corral.api.types.containerd.services.containers import v1 as containers_pb
from corral.api.types.containerd.services.leases import v1 as leases_pb
from corral.api.types.containerd.services.snapshots import v1 as snapshots_pb
from corral.api.types.google import protobuf
from corral.plugins.core.labels import GC_EXPIRE

ROOTFS_LEASE = timedelta(hours=1)
"""The longest a new container's snapshot is held by the lease that covers its creation."""


class ContainerCalls(Connection):
    """Container calls."""

    @cached_property
    def containers(self) -> containers_pb.ContainersStub:
        return containers_pb.ContainersStub(self.channel, metadata=self._metadata())

    async def list_containers(self, filters: Sequence[str] = ()) -> list[containers_pb.Container]:
        """Every container matching ``filters``, one message per container (ListStream)."""
        request = containers_pb.ListContainersRequest(filters=list(filters))
        return [
            message.container
            async for message in self.call_stream(self.containers.list_stream(request))
            if message.container is not None
        ]

    async def get_container(self, id: str) -> containers_pb.Container:
        reply = await self.call(self.containers.get(containers_pb.GetContainerRequest(id=id)))
        assert reply.container is not None
        return reply.container

    async def create_container(self, container: containers_pb.Container) -> containers_pb.Container:
        reply = await self.call(
            self.containers.create(containers_pb.CreateContainerRequest(container=container))
        )
        assert reply.container is not None
        return reply.container

    async def create_container_with_rootfs(
        self,
        container: containers_pb.Container,
        parent: str,
        complete: Callable[[list[containerd_types.Mount]], Awaitable[containers_pb.Container]] | None = None,
    ) -> containers_pb.Container:
        """Prepare ``container.snapshot_key`` on ``parent`` in ``container.snapshotter`` and create
        the container, both under a short lease so no collection takes the snapshot in between (as
        containerd's client does); ``complete``, given the snapshot's mounts, may finish the
        container first (a spec that reads the image's /etc/group). A failed create removes the
        snapshot again."""
        leases = leases_pb.LeasesStub(self.channel, metadata=self._metadata())
        expiry = rfc3339(datetime.now(UTC) + ROOTFS_LEASE)
        reply = await self.call(leases.create(leases_pb.CreateRequest(labels={GC_EXPIRE: expiry})))
        assert reply.lease is not None
        lease = reply.lease.id
        try:
            snapshots = snapshots_pb.SnapshotsStub(self.channel, metadata=self._lease_metadata(lease))
            prepare = snapshots_pb.PrepareSnapshotRequest(
                snapshotter=container.snapshotter, key=container.snapshot_key, parent=parent
            )
            mounts = list((await self.call(snapshots.prepare(prepare))).mounts)
            try:
                if complete is not None:
                    container = await complete(mounts)
                return await self.create_container(container)
            except BaseException:
                remove = snapshots_pb.RemoveSnapshotRequest(
                    snapshotter=container.snapshotter, key=container.snapshot_key
                )
                await self.call(snapshots.remove(remove))
                raise
        finally:
            await self.call(leases.delete(leases_pb.DeleteRequest(id=lease)))

    async def update_container(
        self, container: containers_pb.Container, paths: Sequence[str] = ()
    ) -> containers_pb.Container:
        request = containers_pb.UpdateContainerRequest(
            container=container, update_mask=protobuf.FieldMask(paths=list(paths)) if paths else None
        )
        reply = await self.call(self.containers.update(request))
        assert reply.container is not None
        return reply.container

    async def label_container(self, id: str, labels: Mapping[str, str]) -> containers_pb.Container:
        """Set (or, with an empty value, remove) the given labels, leaving the others alone."""
        container = containers_pb.Container(id=id, labels={k: v for k, v in labels.items() if v})
        return await self.update_container(container, [f"labels.{k}" for k in labels])

    async def delete_container(self, id: str) -> None:
        await self.call(self.containers.delete(containers_pb.DeleteContainerRequest(id=id)))
