"""The pod sandbox controller (containerd 2.0's ``podsandbox``): a pause process per pod, run by
the shim runtime from a pause image built here, holding the pod's network (CNI), IPC and UTS
namespaces. ``corral.plugins.sandbox.podsandbox.plugin`` registers it.

Names load on first use (PEP 562): the plugin's start imports the controller, the pause image's
builder waits for the first pod."""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral.kernel import names_on_first_use

if TYPE_CHECKING:
    from corral.plugins.sandbox.podsandbox._controller import KIND_LABEL as KIND_LABEL
    from corral.plugins.sandbox.podsandbox._controller import PodSandboxController as PodSandboxController
    from corral.plugins.sandbox.podsandbox._controller import Settings as Settings
    from corral.plugins.sandbox.podsandbox._pause import PAUSE_ARGS as PAUSE_ARGS
    from corral.plugins.sandbox.podsandbox._pause import PAUSE_IMAGE as PAUSE_IMAGE
    from corral.plugins.sandbox.podsandbox._pause import PINNED_LABELS as PINNED_LABELS
    from corral.plugins.sandbox.podsandbox._pause import PauseImage as PauseImage
    from corral.plugins.sandbox.podsandbox._pause import build_pause_image as build_pause_image
    from corral.plugins.sandbox.podsandbox._pause import ensure_pause_image as ensure_pause_image
    from corral.plugins.sandbox.podsandbox._spec import pause_spec as pause_spec
    from corral.plugins.sandbox.podsandbox._spec import resolv_conf as resolv_conf

_CONTROLLER = "corral.plugins.sandbox.podsandbox._controller"
_PAUSE = "corral.plugins.sandbox.podsandbox._pause"
_SPEC = "corral.plugins.sandbox.podsandbox._spec"
_SOURCES = {
    "KIND_LABEL": _CONTROLLER,
    "PAUSE_ARGS": _PAUSE,
    "PAUSE_IMAGE": _PAUSE,
    "PINNED_LABELS": _PAUSE,
    "PauseImage": _PAUSE,
    "PodSandboxController": _CONTROLLER,
    "Settings": _CONTROLLER,
    "build_pause_image": _PAUSE,
    "ensure_pause_image": _PAUSE,
    "pause_spec": _SPEC,
    "resolv_conf": _SPEC,
}

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


__getattr__ = names_on_first_use(__name__, _SOURCES)


def __dir__() -> list[str]:
    return list(__all__)
