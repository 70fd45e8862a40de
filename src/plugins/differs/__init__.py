"""The differ contract: apply a layer to mounts, and compute the layer between two mounts.

Differs (``io.containerd.differ.v1``) read and write layers through the namespaced content
store. ``apply`` returns the uncompressed layer's descriptor (its digest is the diffID);
``compare`` stores a new layer and returns its descriptor. Errors are the kernel's kinds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable

from corral.plugins.core import Descriptor, Mount

__all__ = ["Differ"]


@runtime_checkable
class Differ(Protocol):
    async def apply(self, desc: Descriptor, mounts: Sequence[Mount]) -> Descriptor:
        """Apply the layer ``desc`` (from the content store) to what ``mounts`` show.

        Returns the uncompressed layer: ``application/vnd.oci.image.layer.v1.tar``, its diffID and
        size. Unimplemented for a media type that is not a layer; FailedPrecondition when the
        diffID is not the one ``desc`` (or the content's labels) promised; InvalidArgument for a
        malformed layer. Nothing is ever written outside the mounts' tree.
        """
        ...

    async def compare(
        self,
        lower: Sequence[Mount],
        upper: Sequence[Mount],
        *,
        media_type: str = "",
        ref: str = "",
        labels: Mapping[str, str] | None = None,
        source_date_epoch: datetime | None = None,
    ) -> Descriptor:
        """Store the layer that turns ``lower`` into ``upper`` and return its descriptor.

        ``media_type`` picks the compression ("" is gzip); the blob is labelled with its
        uncompressed digest (``containerd.io/uncompressed``) and ``labels``. With
        ``source_date_epoch`` no entry's mtime is later than it (reproducible layers).
        """
        ...
