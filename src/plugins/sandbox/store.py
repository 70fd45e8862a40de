"""io.containerd.sandbox.store.v1.local — the metadata store's sandboxes, as containerd's."""

from __future__ import annotations

from corral.kernel import InitContext, Registration
from corral.plugins import types
from corral.plugins.metadata import Metadata, SandboxStore


async def init(ic: InitContext) -> SandboxStore:
    return ic.get_single(types.METADATA, Metadata).view(SandboxStore)


registration = Registration(
    type=types.SANDBOX_STORE,
    id="local",
    init=init,
    requires=(types.METADATA,),
    description="sandbox records (runtime, spec, sandboxer, labels, extensions) in the metadata store",
)
