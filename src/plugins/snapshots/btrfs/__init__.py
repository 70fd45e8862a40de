"""The btrfs snapshotter (``io.containerd.snapshotter.v1.btrfs``): snapshots as btrfs subvolumes.

Names load on first use (PEP 562): where the plugin is skipped (no btrfs), the snapshotter's
module is never imported."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    module = _SOURCES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return list(__all__)
