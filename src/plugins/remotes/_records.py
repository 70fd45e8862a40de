"""The records the distribution client speaks in, and the media types it knows."""

from __future__ import annotations

import enum
from dataclasses import dataclass

# The one import of the shared descriptor record: re-point here when it moves.
from corral.plugins.core import Descriptor

__all__ = [
    "INDEX_MEDIA_TYPES",
    "MANIFEST_ACCEPT",
    "MANIFEST_MEDIA_TYPES",
    "MAX_MANIFEST_SIZE",
    "MEDIA_TYPE_DOCKER_MANIFEST",
    "MEDIA_TYPE_DOCKER_MANIFEST_LIST",
    "MEDIA_TYPE_DOCKER_SCHEMA1",
    "MEDIA_TYPE_OCI_INDEX",
    "MEDIA_TYPE_OCI_MANIFEST",
    "Descriptor",
    "PushOutcome",
    "PushResult",
    "is_manifest",
]

MEDIA_TYPE_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_TYPE_DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_TYPE_DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"

MANIFEST_MEDIA_TYPES = frozenset(
    {MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_DOCKER_SCHEMA1}
)
INDEX_MEDIA_TYPES = frozenset({MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_DOCKER_MANIFEST_LIST})

MANIFEST_ACCEPT = ", ".join(
    [
        MEDIA_TYPE_DOCKER_MANIFEST,
        MEDIA_TYPE_DOCKER_MANIFEST_LIST,
        MEDIA_TYPE_OCI_MANIFEST,
        MEDIA_TYPE_OCI_INDEX,
        "*/*",
    ]
)
"""The Accept header of a resolve, in containerd's order."""

MAX_MANIFEST_SIZE = 4 * 1048 * 1048
"""Manifests larger than this are refused when resolving (containerd's limit)."""


def is_manifest(media_type: str) -> bool:
    """Whether content of this type lives under ``/manifests/`` rather than ``/blobs/``."""
    return media_type in MANIFEST_MEDIA_TYPES or media_type in INDEX_MEDIA_TYPES


class PushOutcome(enum.Enum):
    UPLOADED = "uploaded"
    """The bytes were sent and the registry committed them."""
    MOUNTED = "mounted"
    """The registry linked the blob from another repository; nothing was uploaded."""
    EXISTS = "exists"
    """The registry already had it in the target repository; nothing was uploaded."""


@dataclass(frozen=True)
class PushResult:
    """What a push did, and the HTTP status of the answer that decided it."""

    outcome: PushOutcome
    status: int
