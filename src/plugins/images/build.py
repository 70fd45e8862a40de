"""Build OCI images from directory trees, deterministically: for tests, and for plugin authors
who need an image without a registry or a daemon.

    layer = layer_from_directory(tree)                    # gzip; or Compression.NONE / ZSTD
    image = build_image([layer], cmd=["/bin/sh"])         # config and manifest for this host
    image.write_oci_archive("img.tar", ["docker.io/me/img:1"])

Layers are tars with sorted entries, fixed mtimes and owner 0, compressed without timestamps;
configs never read the clock. The same inputs give byte-identical archives. Blobs are held in
memory, so this is for test-sized images. ``build_busybox_image`` makes a runnable image from
Debian's ``busybox-static``.
"""

from corral.plugins.images._builder import (
    DEFAULT_PATH,
    EPOCH,
    BuiltImage,
    BuiltIndex,
    build_image,
    build_index,
)
from corral.plugins.images._busybox import (
    APPLETS,
    BUSYBOX_IMAGE_NAME,
    BusyboxImage,
    build_busybox_image,
    busybox_applets,
    busybox_rootfs,
    find_busybox,
    is_static_elf,
)
from corral.plugins.images._layers import (
    GZIP_LEVEL,
    OPAQUE_WHITEOUT,
    WHITEOUT_PREFIX,
    ZSTD_LEVEL,
    Compression,
    EntryKind,
    Layer,
    LayerEntry,
    build_layer,
    compress,
    diff_entries,
    directory_entries,
    layer_from_diff,
    layer_from_directory,
    layer_tar,
)

__all__ = [
    "APPLETS",
    "BUSYBOX_IMAGE_NAME",
    "DEFAULT_PATH",
    "EPOCH",
    "GZIP_LEVEL",
    "OPAQUE_WHITEOUT",
    "WHITEOUT_PREFIX",
    "ZSTD_LEVEL",
    "BuiltImage",
    "BuiltIndex",
    "BusyboxImage",
    "Compression",
    "EntryKind",
    "Layer",
    "LayerEntry",
    "build_busybox_image",
    "build_image",
    "build_index",
    "build_layer",
    "busybox_applets",
    "busybox_rootfs",
    "compress",
    "diff_entries",
    "directory_entries",
    "find_busybox",
    "is_static_elf",
    "layer_from_diff",
    "layer_from_directory",
    "layer_tar",
]
