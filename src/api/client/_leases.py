"""Lease calls."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import cached_property

from corral.api.client._connection import Connection, rfc3339
from corral.api.types.containerd.services.leases import v1 as leases_pb
from corral.plugins.core.labels import GC_EXPIRE


class LeaseCalls(Connection):
    """Lease calls."""

    @cached_property
    def leases(self) -> leases_pb.LeasesStub:
        return leases_pb.LeasesStub(self.channel, metadata=self._metadata())

    async def create_lease(
        self, id: str = "", labels: Mapping[str, str] | None = None, expire: timedelta | None = None
    ) -> leases_pb.Lease:
        """A lease (the daemon names it when ``id`` is empty); ``expire`` sets containerd's gc.expire label."""
        all_labels = dict(labels or {})
        if expire is not None:
            all_labels[GC_EXPIRE] = rfc3339(datetime.now(UTC) + expire)
        reply = await self.call(self.leases.create(leases_pb.CreateRequest(id=id, labels=all_labels)))
        assert reply.lease is not None
        return reply.lease

    async def list_leases(self, filters: Sequence[str] = ()) -> list[leases_pb.Lease]:
        reply = await self.call(self.leases.list(leases_pb.ListRequest(filters=list(filters))))
        return list(reply.leases)

    async def delete_lease(self, id: str, sync: bool = False) -> None:
        """Remove a lease; with ``sync`` the daemon collects garbage before it answers."""
        await self.call(self.leases.delete(leases_pb.DeleteRequest(id=id, sync=sync)))

    async def lease_resources(self, id: str) -> list[leases_pb.Resource]:
        reply = await self.call(self.leases.list_resources(leases_pb.ListResourcesRequest(id=id)))
        return list(reply.resources)
