"""Unpacking an image into a snapshotter, as containerd's unpacker does.

Layers are applied in order through a differ, each in an ``extract-<unique> <chainID>`` snapshot
committed as its chain ID; a chain already committed is reused. Labels are containerd's: the
snapshot's ``containerd.io/snapshot.ref``, ``containerd.io/snapshot/diff-id`` and
``containerd.io/snapshot/parent-chain-id``; the layer's ``containerd.io/uncompressed``; and the
config's ``containerd.io/gc.ref.snapshot.<snapshotter>`` naming the top of the chain, so an image
holding its config holds its snapshots against garbage collection. Not a plugin: the transfer
service, CRI and clients use it with the snapshotter and differ they choose.
"""

from corral.plugins.unpack._unpacker import (
    LABEL_PARENT_CHAIN_ID,
    LABEL_SNAPSHOT_DIFF_ID,
    LABEL_SNAPSHOT_REF,
    UNPACK_KEY_PREFIX,
    ChainLocks,
    LayerApplier,
    UnpackContent,
    UnpackProgress,
    UnpackResult,
    UnpackTarget,
    select_manifest,
    unpack_image,
    unpack_key,
)

__all__ = [
    "LABEL_PARENT_CHAIN_ID",
    "LABEL_SNAPSHOT_DIFF_ID",
    "LABEL_SNAPSHOT_REF",
    "UNPACK_KEY_PREFIX",
    "ChainLocks",
    "LayerApplier",
    "UnpackContent",
    "UnpackProgress",
    "UnpackResult",
    "UnpackTarget",
    "select_manifest",
    "unpack_image",
    "unpack_key",
]
