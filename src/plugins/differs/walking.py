"""io.containerd.differ.v1.walking — layers applied and computed by walking directory trees."""

from __future__ import annotations

from corral.kernel import InitContext, Platform, PluginUnavailable, Registration, SkipPlugin
from corral.plugins import types
from corral.plugins.differs.differ import WalkingDiffer
from corral.plugins.metadata import Metadata, NamespacedContent


async def init(ic: InitContext) -> WalkingDiffer:
    try:
        content = ic.get_single(types.METADATA, Metadata).view(NamespacedContent)
    except PluginUnavailable as exc:
        raise SkipPlugin(f"no content store to read layers from: {exc}") from None
    ic.meta.platforms.append(Platform.host())
    return WalkingDiffer(content)


registration = Registration(
    type=types.DIFFER,
    id="walking",
    init=init,
    requires=(types.METADATA,),
    description="applies layers to mounts and computes layers between mounts by walking the trees",
)
