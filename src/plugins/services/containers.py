"""io.containerd.service.v1.containers-service — the namespaced container store."""

from __future__ import annotations

from corral.kernel import InitContext, Registration
from corral.plugins import types
from corral.plugins.metadata import ContainerStore, Metadata


async def init(ic: InitContext) -> ContainerStore:
    return ic.get_single(types.METADATA, Metadata).view(ContainerStore)


registration = Registration(
    type=types.SERVICE,
    id="containers-service",
    init=init,
    requires=(types.METADATA,),
    description="namespaced containers: runtime, spec, snapshot, image, labels, extensions",
)
