"""The erofs snapshotter (``io.containerd.snapshotter.v1.erofs``) and the layer-image contract it
shares with differs: a snapshot directory marked ``.erofslayer`` takes its layer as one EROFS
image ``layer.erofs``; see ``layers``."""

from corral.plugins.snapshots.erofs.layers import (
    APPLY_SCRATCH,
    LAYER_BLOB,
    LAYER_MARKER,
    UPPER,
    check_applicable,
    check_mkfs,
    directory_argv,
    kernel_has_erofs,
    layer_directory,
    layer_uuid,
    mkfs_path,
    mkfs_reads_tar,
    overlay_lowers,
    publish_blob,
    tar_argv,
    temporary_blob,
)
from corral.plugins.snapshots.erofs.snapshotter import ErofsSnapshotter

__all__ = [
    "APPLY_SCRATCH",
    "LAYER_BLOB",
    "LAYER_MARKER",
    "UPPER",
    "ErofsSnapshotter",
    "check_applicable",
    "check_mkfs",
    "directory_argv",
    "kernel_has_erofs",
    "layer_directory",
    "layer_uuid",
    "mkfs_path",
    "mkfs_reads_tar",
    "overlay_lowers",
    "publish_blob",
    "tar_argv",
    "temporary_blob",
]
