"""io.containerd.snapshotter.v1.btrfs — snapshots as btrfs subvolumes, children as btrfs snapshots.

Skipped, with the reason, where the kernel has no btrfs (after trying ``modprobe btrfs``), where
the root is not on a btrfs file system (containerd's message), or without ``btrfs`` (Debian's
``btrfs-progs``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread

from corral.kernel import InitContext, Platform, Registration, SkipPlugin
from corral.plugins import types
from corral.plugins.snapshots.btrfs.subvolumes import BTRFS, FILESYSTEMS, load_btrfs_module, mount_of

if TYPE_CHECKING:
    from corral.plugins.snapshots.btrfs.snapshotter import BtrfsSnapshotter


@dataclass(frozen=True)
class BtrfsConfig:
    """The ``io.containerd.snapshotter.v1.btrfs`` section."""

    root_path: str = ""
    """Where snapshots live (on a btrfs file system); empty means the plugin's directory under the daemon root."""


def _prepare_root(root: Path) -> None:
    # As containerd: made 0700 if missing, set to 0700 if it is not.
    if not root.exists():
        root.mkdir(mode=0o700, parents=True)
    elif root.stat().st_mode & 0o777 != 0o700:
        root.chmod(0o700)


async def init(ic: InitContext) -> BtrfsSnapshotter:
    config: BtrfsConfig = ic.config
    root = Path(config.root_path) if config.root_path else ic.root
    if not await anyio.to_thread.run_sync(load_btrfs_module):
        raise SkipPlugin(f"btrfs is not supported by this kernel (no btrfs in {FILESYSTEMS})")
    await anyio.to_thread.run_sync(_prepare_root, root)
    mount = await anyio.to_thread.run_sync(mount_of, root)
    if mount.fstype != "btrfs":
        raise SkipPlugin(
            f"path {root} ({mount.fstype}) must be a btrfs filesystem to be used with the btrfs snapshotter"
        )
    if not any(os.access(Path(d) / BTRFS, os.X_OK) for d in os.get_exec_path()):
        raise SkipPlugin("btrfs not found in PATH (Debian's btrfs-progs): subvolumes cannot be made")
    from corral.plugins.snapshots.btrfs.snapshotter import BtrfsSnapshotter  # (where btrfs is usable)

    snapshotter = await anyio.to_thread.run_sync(BtrfsSnapshotter, root, mount.source)
    ic.meta.platforms.append(Platform.host())
    ic.meta.exports["root"] = str(root)
    return snapshotter


registration = Registration(
    type=types.SNAPSHOTTER,
    id="btrfs",
    init=init,
    config=BtrfsConfig,
    description="snapshots as btrfs subvolumes, children as btrfs snapshots of their parent",
)
