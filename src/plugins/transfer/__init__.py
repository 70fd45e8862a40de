"""The transfer contract (``io.containerd.transfer.v1``): move images between sources and destinations.

A transferrer is given a source and a destination (records below, decoded from the wire by the
transfer service) and reports ``Progress`` as it goes. An image archive flows in as byte chunks
(``ImageImportStream``) into the image store (``ImageStoreTarget``); images flow out of the
store (``ImageLookup``) to an archive (``ImageExportStream``). Images are pulled from a registry
(``OCIRegistry``) into the store and pushed from the store to one. A pair a transferrer does not
handle is Unimplemented, so the service can ask the next one. ``corral.plugins.transfer.local``
is the built-in transferrer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from corral.plugins.core import Descriptor
from corral.plugins.images.oci import Platform

__all__ = [
    "TRANSFER_LEASE_LABEL",
    "ByteSink",
    "ImageExportStream",
    "ImageImportStream",
    "ImageLookup",
    "ImageReference",
    "ImageStoreTarget",
    "OCIRegistry",
    "Progress",
    "ProgressFunc",
    "RegistryCredentials",
    "Transferrer",
    "UnpackRequest",
]

TRANSFER_LEASE_LABEL = "corral.io/transfer"
"""On the lease a transfer holds its in-flight content with: what it is doing. Such a lease
outlives its transfer only when the daemon died; the next start removes it."""


@dataclass(frozen=True)
class Progress:
    """containerd's ``transfer.Progress``: an ``event`` about ``name`` (none: the whole transfer)."""

    event: str
    name: str = ""
    parents: tuple[str, ...] = ()
    progress: int = 0
    total: int = 0
    desc: Descriptor | None = None


ProgressFunc = Callable[[Progress], None]


class ByteSink(Protocol):
    """Where an export writes its archive."""

    async def write(self, data: bytes) -> None: ...


@dataclass(frozen=True)
class ImageImportStream:
    """An image archive (OCI layout or ``docker save``) as it arrives; ``media_type`` "" means
    it may be compressed (gzip or zstd), which is detected."""

    chunks: AsyncIterator[bytes]
    media_type: str = ""
    force_compress: bool = False


@dataclass(frozen=True)
class ImageExportStream:
    """An OCI archive to write: ``platforms`` pick from indexes (none: this host, strictly)."""

    sink: ByteSink
    media_type: str = ""
    platforms: tuple[Platform, ...] = ()
    all_platforms: bool = False
    skip_compatibility_manifest: bool = False
    skip_non_distributable: bool = False


@dataclass(frozen=True)
class ImageReference:
    """containerd's ``transfer.ImageReference``: a name, or a prefix names are made from."""

    name: str
    is_prefix: bool = False
    allow_overwrite: bool = False
    add_digest: bool = False
    skip_named_digest: bool = False


@dataclass(frozen=True)
class UnpackRequest:
    """Unpack for ``platform`` into ``snapshotter`` ("" for the configured default)."""

    platform: Platform | None = None
    snapshotter: str = ""


@dataclass(frozen=True)
class ImageStoreTarget:
    """containerd's ``transfer.ImageStore`` as a destination: how imported images are named,
    labelled, filtered by platform, and unpacked."""

    name: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    platforms: tuple[Platform, ...] = ()
    all_metadata: bool = False
    manifest_limit: int = 0
    extra_references: tuple[ImageReference, ...] = ()
    unpacks: tuple[UnpackRequest, ...] = ()


@dataclass(frozen=True)
class ImageLookup:
    """containerd's ``transfer.ImageStore`` as a source: the images named, in order; a push
    sends only ``platforms``' manifests of an index (none: all of them)."""

    name: str = ""
    extra_references: tuple[ImageReference, ...] = ()
    platforms: tuple[Platform, ...] = ()


RegistryCredentials = Callable[[str, str], Awaitable["tuple[str, str] | None"]]
"""Asked ``(reference, host)``: ``(username, secret)``, or None for anonymous access (an empty
username with a secret is an identity token)."""


@dataclass(frozen=True)
class OCIRegistry:
    """containerd's ``transfer.OCIRegistry``: a reference on a registry, reached through the
    hosts of ``host_dir`` (a ``certs.d``-style directory; "" the transfer service's
    ``config_path``), ``default_scheme`` "http" for plain HTTP, ``credentials`` asked per host."""

    reference: str
    host_dir: str = ""
    default_scheme: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    credentials: RegistryCredentials | None = None

    def __str__(self) -> str:
        return f"OCI Registry ({self.reference})"


@runtime_checkable
class Transferrer(Protocol):
    async def transfer(
        self, source: object, destination: object, progress: ProgressFunc | None = None
    ) -> None:
        """Unimplemented for a source and destination this transferrer does not move between."""
        ...
