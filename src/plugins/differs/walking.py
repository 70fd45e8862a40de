"""io.containerd.differ.v1.walking — layers applied and computed by walking directory trees."""

from __future__ import annotations

from corral.kernel import InitContext, Platform, Registration, SkipPlugin
from corral.plugins import types
from corral.plugins.differs.differ import WalkingDiffer


async def init(ic: InitContext) -> WalkingDiffer:
    metadata = ic.get_single(types.METADATA)
    content = getattr(metadata, "content", None)
    if content is None:
        raise SkipPlugin("the metadata plugin has no content store to read layers from")
    ic.meta.platforms.append(Platform.host())
    return WalkingDiffer(content)


registration = Registration(
    type=types.DIFFER,
    id="walking",
    init=init,
    requires=(types.METADATA,),
    description="applies layers to mounts and computes layers between mounts by walking the trees",
)
