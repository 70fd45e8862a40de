"""The btrfs snapshotter (``io.containerd.snapshotter.v1.btrfs``): snapshots as btrfs subvolumes."""

from corral.plugins.snapshots.btrfs.snapshotter import BtrfsSnapshotter
from corral.plugins.snapshots.btrfs.subvolumes import diff_usage, kernel_has_btrfs, mount_of

__all__ = ["BtrfsSnapshotter", "diff_usage", "kernel_has_btrfs", "mount_of"]
