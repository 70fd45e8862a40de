"""io.containerd.service.v1.snapshots-service — every namespaced snapshotter by name."""

from __future__ import annotations

from corral.kernel import InitContext, Registration
from corral.plugins import types
from corral.plugins.metadata import Metadata, NamespacedSnapshots


async def init(ic: InitContext) -> NamespacedSnapshots:
    return ic.get_single(types.METADATA, Metadata).view(NamespacedSnapshots)


registration = Registration(
    type=types.SERVICE,
    id="snapshots-service",
    init=init,
    requires=(types.METADATA,),
    description="namespaced snapshotters by name",
)
