"""io.containerd.service.v1.content-service — the namespaced content store, as the metadata store offers it."""

from __future__ import annotations

from corral.kernel import InitContext, Registration
from corral.plugins import types
from corral.plugins.metadata import Metadata, NamespacedContent


async def init(ic: InitContext) -> NamespacedContent:
    return ic.get_single(types.METADATA, Metadata).view(NamespacedContent)


registration = Registration(
    type=types.SERVICE,
    id="content-service",
    init=init,
    requires=(types.METADATA,),
    description="namespaced content: ingests, blobs, labels",
)
