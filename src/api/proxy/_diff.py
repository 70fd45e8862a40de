"""A differ in another process, reached over containerd's Diff API (core/diff/proxy).

The remote reads and writes layers in its own content store, under the caller's namespace.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from corral.api.proxy._channel import ProxyChannel
from corral.api.types.containerd.services.diff import v1 as pb
from corral.api.wire import descriptor_from_wire, descriptor_to_wire, mounts_to_wire
from corral.plugins.core import Descriptor, Mount


class ProxyDiffer:
    """corral's ``Differ`` contract over the wire to a proxy differ process."""

    def __init__(self, address: str, *, channel: ProxyChannel | None = None) -> None:
        self.connection = channel or ProxyChannel(address)
        self.address = address

    @property
    def _stub(self) -> pb.DiffStub:
        return pb.DiffStub(self.connection.channel)

    async def apply(self, desc: Descriptor, mounts: Sequence[Mount]) -> Descriptor:
        request = pb.ApplyRequest(diff=descriptor_to_wire(desc), mounts=mounts_to_wire(mounts))
        response = await self.connection.call(self._stub.apply(request, metadata=self.connection.metadata()))
        return descriptor_from_wire(response.applied, "applied descriptor")

    async def compare(
        self,
        lower: Sequence[Mount],
        upper: Sequence[Mount],
        *,
        media_type: str = "",
        ref: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> Descriptor:
        request = pb.DiffRequest(
            left=mounts_to_wire(lower),
            right=mounts_to_wire(upper),
            media_type=media_type,
            ref=ref,
            labels=dict(labels or {}),
        )
        response = await self.connection.call(self._stub.diff(request, metadata=self.connection.metadata()))
        return descriptor_from_wire(response.diff, "diff descriptor")

    async def condition(self) -> str:
        """ "" while the proxy process accepts connections; else why calls will fail."""
        return await self.connection.probe()

    def close(self) -> None:
        self.connection.close()
