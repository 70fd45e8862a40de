"""io.containerd.differ.v1.walking — layers applied and computed by walking directory trees."""

from __future__ import annotations

import platform

from corral.kernel import InitContext, Platform, Registration, SkipPlugin
from corral.plugins import types
from corral.plugins.differs.differ import WalkingDiffer

_ARCHITECTURES = {
    "x86_64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", ""),
    "i686": ("386", ""),
    "ppc64le": ("ppc64le", ""),
    "s390x": ("s390x", ""),
    "riscv64": ("riscv64", ""),
}


def host_platform() -> Platform:
    """This machine as containerd's platforms package names it (``linux/amd64``, ``linux/arm64/v8``)."""
    machine = platform.machine().lower()
    architecture, variant = _ARCHITECTURES.get(machine, (machine, ""))
    return Platform(platform.system().lower(), architecture, variant)


async def init(ic: InitContext) -> WalkingDiffer:
    metadata = ic.get_single(types.METADATA)
    content = getattr(metadata, "content", None)
    if content is None:
        raise SkipPlugin("the metadata plugin has no content store to read layers from")
    ic.meta.platforms.append(host_platform())
    return WalkingDiffer(content)


registration = Registration(
    type=types.DIFFER,
    id="walking",
    init=init,
    requires=(types.METADATA,),
    description="applies layers to mounts and computes layers between mounts by walking the trees",
)
