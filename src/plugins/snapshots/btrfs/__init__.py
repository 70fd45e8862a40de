"""The btrfs snapshotter (``io.containerd.snapshotter.v1.btrfs``): snapshots as btrfs subvolumes.

Names load on first use (PEP 562): where the plugin is skipped (no btrfs), the snapshotter's
module is never imported."""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral.kernel import names_on_first_use

if TYPE_CHECKING:
    from corral.plugins.snapshots.btrfs.snapshotter import BtrfsSnapshotter as BtrfsSnapshotter
    from corral.plugins.snapshots.btrfs.subvolumes import diff_usage as diff_usage
    from corral.plugins.snapshots.btrfs.subvolumes import kernel_has_btrfs as kernel_has_btrfs
    from corral.plugins.snapshots.btrfs.subvolumes import mount_of as mount_of

_SUBVOLUMES = "corral.plugins.snapshots.btrfs.subvolumes"
_SOURCES = {
    "BtrfsSnapshotter": "corral.plugins.snapshots.btrfs.snapshotter",
    "diff_usage": _SUBVOLUMES,
    "kernel_has_btrfs": _SUBVOLUMES,
    "mount_of": _SUBVOLUMES,
}

__all__ = ["BtrfsSnapshotter", "diff_usage", "kernel_has_btrfs", "mount_of"]


__getattr__ = names_on_first_use(__name__, _SOURCES)


def __dir__() -> list[str]:
    return list(__all__)
