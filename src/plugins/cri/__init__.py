"""containerd's CRI, the API a kubelet drives a node's runtime through, as two plugins.

``io.containerd.cri.v1.images`` (``CRIImageService``) is the image service in the ``k8s.io``
namespace, shared with ``ctr -n k8s.io``; ``io.containerd.cri.v1.runtime`` (``CRIRuntimeService``)
holds the runtime handlers and CNI settings and answers for the node's status. The wire
(``runtime.v1`` on corrald's socket) is ``io.containerd.grpc.v1.cri`` in ``corral.api.grpc.cri``.
"""

from corral.plugins.cri.config import (
    CNIConfig,
    ContainerdConfig,
    ImageConfig,
    RegistryConfig,
    RuntimeConfig,
    RuntimeHandler,
    RuntimePlatform,
    ServerConfig,
    split_v2_section,
)
from corral.plugins.cri.images import (
    IMAGE_LABEL,
    IMAGE_LABEL_VALUE,
    K8S_NAMESPACE,
    PINNED_LABEL,
    PINNED_LABEL_VALUE,
    AuthConfig,
    CRIImage,
    CRIImageService,
    FilesystemUsage,
)
from corral.plugins.cri.runtime import (
    CNI_NOT_INITIALIZED,
    NETWORK_NOT_READY_REASON,
    Condition,
    CRIRuntimeService,
    HandlerFeatures,
    RuntimeStatus,
)

__all__ = [
    "CNI_NOT_INITIALIZED",
    "IMAGE_LABEL",
    "IMAGE_LABEL_VALUE",
    "K8S_NAMESPACE",
    "NETWORK_NOT_READY_REASON",
    "PINNED_LABEL",
    "PINNED_LABEL_VALUE",
    "AuthConfig",
    "CNIConfig",
    "CRIImage",
    "CRIImageService",
    "CRIRuntimeService",
    "Condition",
    "ContainerdConfig",
    "FilesystemUsage",
    "HandlerFeatures",
    "ImageConfig",
    "RegistryConfig",
    "RuntimeConfig",
    "RuntimeHandler",
    "RuntimePlatform",
    "RuntimeStatus",
    "ServerConfig",
    "split_v2_section",
]
