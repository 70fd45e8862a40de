"""io.containerd.lease.v1.manager — leases over the metadata store, with synchronous deletes."""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from corral.kernel import InitContext, Registration
from corral.plugins import types
from corral.plugins.metadata import CollectionResult, Lease, LeaseStore, Metadata, Resource


@runtime_checkable
class Collecting(Protocol):
    """What a sync delete needs from the ``io.containerd.gc.v1`` plugin."""

    async def collect_now(self) -> CollectionResult: ...


class Leases:
    """What the leases service offers; ``delete(sync=True)`` returns once the garbage is gone."""

    def __init__(self, manager: LeaseStore, scheduler: Collecting | None) -> None:
        self._manager = manager
        self._scheduler = scheduler

    async def create(self, lease_id: str = "", labels: Mapping[str, str] | None = None) -> Lease:
        return await self._manager.create(lease_id, labels)

    async def delete(self, lease_id: str, *, sync: bool = False) -> None:
        await self._manager.delete(lease_id)
        if sync and self._scheduler is not None:
            await self._scheduler.collect_now()

    async def list(self, filters: Sequence[str] = ()) -> list[Lease]:
        return await self._manager.list(filters)

    async def add_resource(self, lease_id: str, resource: Resource) -> None:
        await self._manager.add_resource(lease_id, resource)

    async def delete_resource(self, lease_id: str, resource: Resource) -> None:
        await self._manager.delete_resource(lease_id, resource)

    async def list_resources(self, lease_id: str) -> builtins.list[Resource]:
        return await self._manager.list_resources(lease_id)


async def init(ic: InitContext) -> Leases:
    metadata = ic.get_single(types.METADATA, Metadata)
    return Leases(metadata.view(LeaseStore), ic.get_single(types.GC, Collecting))


registration = Registration(
    type=types.LEASE,
    id="manager",
    init=init,
    requires=(types.METADATA, types.GC),
    description="leases: holds on content and snapshots until removed or expired",
)
