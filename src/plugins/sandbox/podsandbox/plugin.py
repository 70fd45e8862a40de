"""io.containerd.podsandbox.controller.v1.podsandbox — pods as pause containers on the shim runtime.

Its section configures the pause image (built from busybox-static and imported when missing),
the snapshotter and runtime the pause container uses, and CNI: where network configurations and
plugin binaries are (containerd's CRI defaults, then Debian's ``/usr/lib/cni``). Network
namespaces are kept under the plugin's state directory (``netns/cni-…``), CNI attachments in
``cni/``. Needs root: without it the plugin is skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from corral.kernel import InitContext, Registration, SkipPlugin
from corral.plugins import types
from corral.plugins.cni import CNI, DEFAULT_BIN_DIRS, DEFAULT_CONF_DIR, CNISettings
from corral.plugins.metadata import Metadata
from corral.plugins.runtimes import PlatformRuntime
from corral.plugins.sandbox.podsandbox import PAUSE_IMAGE, PodSandboxController, Settings
from corral.plugins.transfer import Transferrer


@dataclass(frozen=True)
class PodSandboxPluginConfig:
    """The ``io.containerd.podsandbox.controller.v1.podsandbox`` section."""

    sandbox_image: str = PAUSE_IMAGE
    """The pause image, looked up in the sandbox's namespace."""
    build_sandbox_image: bool = True
    """Build the pause image from busybox-static and import it when the namespace lacks it."""
    busybox: str = ""
    """The static busybox the pause image is built from ("": Debian's busybox-static)."""
    snapshotter: str = "overlayfs"
    runtime_type: str = "io.containerd.runc.v2"
    """The runtime of a sandbox whose record names none."""
    cni_conf_dir: str = ""
    """Where pods' network configs are ("": the CRI runtime plugin's ``cni.conf_dir``, where
    containerd keeps CNI settings, or ``/etc/cni/net.d`` without that plugin)."""
    cni_bin_dirs: tuple[str, ...] = ()
    """Where CNI plugin binaries are (empty: the CRI runtime plugin's ``cni.bin_dirs``, or
    ``/opt/cni/bin`` then ``/usr/lib/cni``)."""
    cni_max_conf_num: int = -1
    """How many networks of the configuration directory a pod joins (0: all; -1: the CRI runtime
    plugin's ``cni.max_conf_num``, or 1)."""


async def init(ic: InitContext) -> PodSandboxController:
    if os.geteuid() != 0:
        raise SkipPlugin("pod sandboxes need root (network namespaces, mounts, runc)")
    config: PodSandboxPluginConfig = ic.config
    runtime = ic.get_by_id(types.RUNTIME_V2, "task", PlatformRuntime)
    metadata = ic.get_single(types.METADATA, Metadata)
    transferrers = ic.get_by_type(types.TRANSFER, Transferrer)
    # CNI is the CRI's setting in containerd: this section's keys override it when set.
    cri = ic.get_by_type(types.CRI).get("runtime")
    cri_cni = getattr(getattr(cri, "config", None), "cni", None)
    conf_dir = config.cni_conf_dir or getattr(cri_cni, "conf_dir", "") or DEFAULT_CONF_DIR
    bin_dirs = tuple(config.cni_bin_dirs or getattr(cri_cni, "bin_dirs", ()) or DEFAULT_BIN_DIRS)
    cni = CNI(
        CNISettings(
            conf_dir=Path(conf_dir),
            bin_dirs=bin_dirs,
            max_conf_num=(
                config.cni_max_conf_num
                if config.cni_max_conf_num >= 0
                else getattr(cri_cni, "max_conf_num", 1)
            ),
            cache_dir=ic.state / "cni",
        )
    )
    settings = Settings(
        sandbox_image=config.sandbox_image,
        build_sandbox_image=config.build_sandbox_image,
        busybox=config.busybox,
        snapshotter=config.snapshotter,
        runtime_type=config.runtime_type,
        root=ic.root,
        state=ic.state,
        netns_dir=ic.state / "netns",
    )
    controller = PodSandboxController(
        settings,
        metadata=metadata,
        runtime=runtime,
        cni=cni,
        transferrer=next(iter(transferrers.values()), None),
    )
    controller.serve_in(await ic.task_group("sandboxes"))
    await controller.recover()
    ic.meta.exports.update(
        {"netns_dir": str(settings.netns_dir), "cni_conf_dir": conf_dir, "cni_bin_dirs": ":".join(bin_dirs)}
    )
    return controller


registration = Registration(
    type=types.POD_SANDBOX,
    id="podsandbox",
    init=init,
    requires=(types.METADATA, types.RUNTIME_V2),
    after=(types.TRANSFER, types.SNAPSHOTTER, types.EVENT, types.CRI),
    config=PodSandboxPluginConfig,
    description="pod sandboxes: a pause container per pod holding its network (CNI), IPC and UTS namespaces",
)
