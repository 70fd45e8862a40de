"""io.containerd.service.v1.namespaces-service — namespaces over the metadata store."""

from __future__ import annotations

from corral.kernel import InitContext, Registration
from corral.plugins import types
from corral.plugins.metadata import Metadata, NamespaceStore


async def init(ic: InitContext) -> NamespaceStore:
    return ic.get_single(types.METADATA, Metadata).view(NamespaceStore)


registration = Registration(
    type=types.SERVICE,
    id="namespaces-service",
    init=init,
    requires=(types.METADATA,),
    description="create, label, list and remove namespaces",
)
