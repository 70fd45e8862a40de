"""io.containerd.snapshotter.v1.erofs — layers as read-only EROFS images, overlayfs for the writable layer.

Skipped, with the reason, where the kernel has no EROFS (after trying ``modprobe erofs``) or
``mkfs.erofs`` (Debian's ``erofs-utils``) is missing, as containerd skips it without EROFS.
"""

from __future__ import annotations

from dataclasses import dataclass

import anyio
import anyio.to_thread

from corral.kernel import InitContext, Registration, SkipPlugin
from corral.plugins import types
from corral.plugins.snapshots.erofs.layers import FILESYSTEMS, load_erofs_module, mkfs_path, verity_supported
from corral.plugins.snapshots.erofs.snapshotter import ErofsSnapshotter
from corral.plugins.snapshots.overlayfs import announce_host_root, overlay_root


@dataclass(frozen=True)
class ErofsConfig:
    """The ``io.containerd.snapshotter.v1.erofs`` section."""

    root_path: str = ""
    """Where snapshots live; empty means the plugin's directory under the daemon root."""
    ovl_mount_options: tuple[str, ...] = ()
    """Extra options for every overlay mount, after ``lowerdir``."""
    enable_fsverity: bool = False
    """Seal each committed layer image with fs-verity and refuse to mount one that is not sealed;
    the root's file system must support fs-verity (start-up fails otherwise, as in containerd)."""
    set_immutable: bool = False
    """Mark each committed layer image immutable (``chattr +i``), cleared when the layer is removed."""


async def init(ic: InitContext) -> ErofsSnapshotter:
    config: ErofsConfig = ic.config
    root = await overlay_root(ic, config.root_path)
    if not await anyio.to_thread.run_sync(load_erofs_module):
        raise SkipPlugin(f"EROFS unsupported, please `modprobe erofs` (no erofs in {FILESYSTEMS})")
    mkfs = mkfs_path()
    if mkfs is None:
        raise SkipPlugin("mkfs.erofs not found in PATH (Debian's erofs-utils): layers cannot be made")
    if config.enable_fsverity and not await anyio.to_thread.run_sync(verity_supported, root):
        raise RuntimeError(f"fsverity is not supported on the filesystem of {str(root)!r}")
    snapshotter = await anyio.to_thread.run_sync(
        lambda: ErofsSnapshotter(
            root,
            mkfs=mkfs,
            ovl_options=config.ovl_mount_options,
            enable_fsverity=config.enable_fsverity,
            set_immutable=config.set_immutable,
        )
    )
    announce_host_root(ic, root)
    return snapshotter


registration = Registration(
    type=types.SNAPSHOTTER,
    id="erofs",
    init=init,
    config=ErofsConfig,
    description="layers as read-only EROFS images, overlayfs on top for the writable layer",
)
