"""The pause image: built here from Debian's busybox-static (no registry), imported and unpacked
into the namespace that runs pods the first time one is started."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from corral.kernel import FailedPrecondition, NotFound
from corral.plugins.images import oci
from corral.plugins.metadata import ImageStore, NamespacedContent, NamespacedSnapshots
from corral.plugins.transfer import ImageImportStream, ImageStoreTarget, Transferrer, UnpackRequest

if TYPE_CHECKING:
    from corral.plugins.images.build import BuiltImage

PAUSE_IMAGE = "localhost/corral/pause:3.10"
PAUSE_ARGS = ("/bin/sleep", "infinity")
PINNED_LABELS = {"io.cri-containerd.image": "managed", "io.cri-containerd.pinned": "pinned"}
"""What containerd's CRI labels its sandbox image with: managed by CRI, pinned (never garbage-collected
by the kubelet's image GC)."""


@dataclass(frozen=True)
class PauseImage:
    """An imported pause image as a sandbox needs it: its name, how it runs, its unpacked chain."""

    name: str
    config: oci.ContainerConfig
    chain_id: str


def build_pause_image(busybox: str | os.PathLike[str] | None = None) -> BuiltImage:
    """One layer: ``/bin/busybox`` and ``/bin/sleep``, running ``sleep infinity`` (a process that
    does nothing but hold the pod's namespaces; it ends by SIGKILL, as containerd stops pods)."""
    from corral.plugins.images.build import build_image, find_busybox, layer_from_directory

    binary = find_busybox(busybox)
    with tempfile.TemporaryDirectory(prefix="pause-rootfs-") as scratch:
        root = Path(scratch) / "rootfs"
        for name, mode in (("bin", 0o755), ("dev", 0o755), ("etc", 0o755), ("proc", 0o555), ("sys", 0o555)):
            (root / name).mkdir(parents=True)
            (root / name).chmod(mode)
        shutil.copyfile(binary, root / "bin" / "busybox")
        (root / "bin" / "busybox").chmod(0o755)
        (root / "bin" / "sleep").symlink_to("busybox")
        (root / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/false\n")
        (root / "etc" / "group").write_text("root:x:0:\n")
        for name in ("passwd", "group"):
            (root / "etc" / name).chmod(0o644)
        root.chmod(0o755)
        layer = layer_from_directory(root)
    return build_image([layer], entrypoint=PAUSE_ARGS, history=["pause: busybox sleep"])


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 1 << 20):
        yield data[i : i + (1 << 20)]


async def ensure_pause_image(
    name: str,
    *,
    images: ImageStore,
    content: NamespacedContent,
    snapshots: NamespacedSnapshots,
    snapshotter: str,
    transferrer: Transferrer | None,
    build: bool,
    busybox: str = "",
) -> PauseImage:
    """The pause image of the request's namespace, unpacked in ``snapshotter``; built and imported
    first when it is missing and ``build`` allows it."""
    from corral.plugins.unpack import select_manifest

    try:
        image = await images.get(name)
    except NotFound:
        if not build or transferrer is None:
            raise FailedPrecondition(f'sandbox image "{name}" is not in the image store') from None
        built = build_pause_image(busybox or None)
        target = ImageStoreTarget(
            name=name, labels=PINNED_LABELS, unpacks=(UnpackRequest(snapshotter=snapshotter),)
        )
        await transferrer.transfer(ImageImportStream(_chunks(built.oci_archive([name]))), target)
        image = await images.get(name)
    desc = oci.Descriptor(image.target.media_type, image.target.digest, image.target.size)
    found = await select_manifest(content, desc, oci.default_matcher())
    if found is None:
        raise FailedPrecondition(f'sandbox image "{name}" has no manifest for this platform')
    _, manifest = found
    data = b"".join([chunk async for chunk in await content.read(manifest.config.digest)])
    config = oci.parse_image_config(data)
    chain = oci.chain_id(config.diff_ids)
    try:
        await snapshots.get(snapshotter).stat(chain)
    except NotFound:
        raise FailedPrecondition(
            f'sandbox image "{name}" is not unpacked in snapshotter {snapshotter}'
        ) from None
    if not config.config.entrypoint and not config.config.cmd:
        raise FailedPrecondition(f"invalid empty entrypoint and cmd in image config of {name}")
    return PauseImage(name, config.config, chain)
