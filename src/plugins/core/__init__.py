"""The vocabulary every plugin shares: namespaces, leases, labels, digests, mounts, descriptors, tar.

Not a plugin and not the kernel (which knows nothing of containers): the words that content,
snapshots, images, containers, tasks and CRI all speak, kept in one place so no plugin type's
package becomes everybody's dependency.
"""

from corral.plugins.core.descriptors import (
    MEDIA_TYPE_DOCKER_LAYER_GZIP,
    MEDIA_TYPE_LAYER,
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_LAYER_ZSTD,
    Descriptor,
)
from corral.plugins.core.digests import digest_algorithm, digest_error, digest_hex, validate_digest
from corral.plugins.core.identifiers import MAX_IDENTIFIER_LENGTH, validate_identifier
from corral.plugins.core.labels import (
    DEFAULT_SNAPSHOTTER,
    GC_EXPIRE,
    GC_REF_CONTENT,
    GC_REF_SNAPSHOT,
    GC_ROOT,
    MAX_LABEL_SIZE,
    UNCOMPRESSED,
    update_labels,
    validate_labels,
)
from corral.plugins.core.leases import (
    bound_lease,
    current_lease,
    generate_lease_id,
    parse_expiry,
    validate_lease_id,
)
from corral.plugins.core.mount import Mount
from corral.plugins.core.namespaces import (
    DEFAULT_NAMESPACE,
    bound_namespace,
    current_namespace,
    namespace,
    namespace_required,
    validate_namespace,
)

__all__ = [
    "DEFAULT_NAMESPACE",
    "DEFAULT_SNAPSHOTTER",
    "GC_EXPIRE",
    "GC_REF_CONTENT",
    "GC_REF_SNAPSHOT",
    "GC_ROOT",
    "MAX_IDENTIFIER_LENGTH",
    "MAX_LABEL_SIZE",
    "MEDIA_TYPE_DOCKER_LAYER_GZIP",
    "MEDIA_TYPE_LAYER",
    "MEDIA_TYPE_LAYER_GZIP",
    "MEDIA_TYPE_LAYER_ZSTD",
    "UNCOMPRESSED",
    "Descriptor",
    "Mount",
    "bound_lease",
    "bound_namespace",
    "current_lease",
    "current_namespace",
    "digest_algorithm",
    "digest_error",
    "digest_hex",
    "generate_lease_id",
    "namespace",
    "namespace_required",
    "parse_expiry",
    "update_labels",
    "validate_digest",
    "validate_identifier",
    "validate_labels",
    "validate_lease_id",
    "validate_namespace",
]
