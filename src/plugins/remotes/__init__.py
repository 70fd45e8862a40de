"""The OCI distribution client that pulls and pushes are built on: a library, no daemon involved.

``RegistryClient`` resolves references, fetches verified byte streams and pushes blobs and
manifests over the hosts that ``hosts`` reads from containerd-style ``config_path`` directories,
authenticating as ``auth`` answers the registries' challenges. Errors are the kernel's kinds.
"""

from corral.plugins.remotes._records import (
    MANIFEST_ACCEPT,
    MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_DOCKER_MANIFEST_LIST,
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_MANIFEST,
    Descriptor,
    PushOutcome,
    PushResult,
    is_manifest,
)
from corral.plugins.remotes._stream import BlobStream, Hasher
from corral.plugins.remotes.auth import Authorizer, Challenge, Credentials, parse_challenges, repository_scope
from corral.plugins.remotes.hosts import Capability, RegistryHost, default_hosts, load_hosts, parse_hosts_file
from corral.plugins.remotes.reference import Reference, parse_reference
from corral.plugins.remotes.registry import DEFAULT_CHUNK_SIZE, HostsLookup, RegistryClient

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MANIFEST_ACCEPT",
    "MEDIA_TYPE_DOCKER_MANIFEST",
    "MEDIA_TYPE_DOCKER_MANIFEST_LIST",
    "MEDIA_TYPE_OCI_INDEX",
    "MEDIA_TYPE_OCI_MANIFEST",
    "Authorizer",
    "BlobStream",
    "Capability",
    "Challenge",
    "Credentials",
    "Descriptor",
    "Hasher",
    "HostsLookup",
    "PushOutcome",
    "PushResult",
    "Reference",
    "RegistryClient",
    "RegistryHost",
    "default_hosts",
    "is_manifest",
    "load_hosts",
    "parse_challenges",
    "parse_hosts_file",
    "parse_reference",
    "repository_scope",
]
