"""io.containerd.differ.v1.erofs — layers applied to erofs snapshots as EROFS images.

Skipped, with the reason, without ``mkfs.erofs`` (Debian's ``erofs-utils``), as containerd skips it.
Put it before ``walking`` in the diff service's ``default`` to use it
(``default = ["erofs", "walking"]``): it passes every other snapshotter's mounts on.
"""

from __future__ import annotations

from dataclasses import dataclass

from corral.kernel import InitContext, Platform, PluginUnavailable, Registration, SkipPlugin
from corral.plugins import types
from corral.plugins.differs.erofs.differ import ErofsDiffer
from corral.plugins.metadata import Metadata, NamespacedContent
from corral.plugins.snapshots.erofs import mkfs_path


@dataclass(frozen=True)
class ErofsDifferConfig:
    """The ``io.containerd.differ.v1.erofs`` section."""

    mkfs_options: tuple[str, ...] = ()
    """Extra options for every mkfs.erofs that makes a layer image (``-zlz4hc``, ``--chunksize=4096`` …)."""


async def init(ic: InitContext) -> ErofsDiffer:
    config: ErofsDifferConfig = ic.config
    mkfs = mkfs_path()
    if mkfs is None:
        raise SkipPlugin("could not find mkfs.erofs: not in PATH (Debian's erofs-utils)")
    try:
        content = ic.get_single(types.METADATA, Metadata).view(NamespacedContent)
    except PluginUnavailable as exc:
        raise SkipPlugin(f"no content store to read layers from: {exc}") from None
    ic.meta.platforms.append(Platform.host())
    return ErofsDiffer(content, mkfs=mkfs, mkfs_options=config.mkfs_options)


registration = Registration(
    type=types.DIFFER,
    id="erofs",
    init=init,
    requires=(types.METADATA,),
    config=ErofsDifferConfig,
    description="applies layers to erofs snapshots as EROFS images (mkfs.erofs)",
)
