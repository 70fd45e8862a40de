"""The pod sandbox controller (containerd 2.0's ``podsandbox``): a pause process per pod, run by
the shim runtime from a pause image built here, holding the pod's network (CNI), IPC and UTS
namespaces. ``corral.plugins.sandbox.podsandbox.plugin`` registers it."""

from corral.plugins.sandbox.podsandbox._controller import KIND_LABEL, PodSandboxController, Settings
from corral.plugins.sandbox.podsandbox._pause import (
    PAUSE_ARGS,
    PAUSE_IMAGE,
    PINNED_LABELS,
    PauseImage,
    build_pause_image,
    ensure_pause_image,
)
from corral.plugins.sandbox.podsandbox._spec import pause_spec, resolv_conf

__all__ = [
    "KIND_LABEL",
    "PAUSE_ARGS",
    "PAUSE_IMAGE",
    "PINNED_LABELS",
    "PauseImage",
    "PodSandboxController",
    "Settings",
    "build_pause_image",
    "ensure_pause_image",
    "pause_spec",
    "resolv_conf",
]
