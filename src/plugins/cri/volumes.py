"""Image volumes: a CRI ``Mount.image`` mounts an image's layers read-only in a container, after
containerd 2.1's ``internal/cri/server/container_image_mount*.go``.

As containerd does, an image volume belongs to the pod: the first container of the pod that
mounts an image makes it — the image resolved in ``k8s.io`` (pulled first when it is missing,
where containerd 2.1 fails and leaves the pull to the kubelet), unpacked in the pod's snapshotter
if it is not, an active snapshot of its chain keyed by its mount point
``<state>/image-volumes/<pod>/<image id>``, held by a lease named after the pod, mounted there
(``volatile`` for an overlay) — and every container of the pod that asks for the same image binds
that directory (or a directory inside it, ``image_sub_path``). They are unmounted and their
snapshots removed when the pod stops, and the lease goes when it is removed; after a daemon is
killed, the directories on disk are what the next stop cleans up.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import anyio
import anyio.to_thread

from corral.kernel import AlreadyExists, CorralError, FailedPrecondition, InvalidArgument, NotFound
from corral.plugins.core import Mount, bound_lease, namespace
from corral.plugins.core.idmap import IDMap, remove_scratch, resolve_idmapped
from corral.plugins.core.mount import mount_all
from corral.plugins.cri.images import CRIImage, CRIImageService
from corral.plugins.cri.sandboxes import K8S, worded
from corral.plugins.metadata import LeaseStore, Metadata, NamespacedSnapshots

__all__ = ["IMAGE_VOLUME_DIR", "ImageVolumes", "MountRequest"]

IMAGE_VOLUME_DIR = "image-volumes"
MOUNT_FAILED = "ImageVolumeMountFailed"
"""The CRI's ErrImageVolumeMountFailed, which containerd puts in front of the reason."""


class MountRequest(Protocol):
    """What an image volume needs of a CRI Mount (``HostMount`` in ``corral.plugins.cri.spec``)."""

    @property
    def container_path(self) -> str: ...
    @property
    def host_path(self) -> str: ...
    @property
    def readonly(self) -> bool: ...
    @property
    def image(self) -> str: ...
    @property
    def image_sub_path(self) -> str: ...


def _described(m: MountRequest) -> str:
    """The Mount as containerd's ``%+v`` shows it in its errors (the fields that matter here)."""
    return (
        f'container_path:"{m.container_path}" host_path:"{m.host_path}" readonly:{str(m.readonly).lower()} '
        f'image:{{image:"{m.image}"}} image_sub_path:"{m.image_sub_path}"'
    )


class ImageVolumes:
    def __init__(self, *, images: CRIImageService, metadata: Metadata, state: Path) -> None:
        self._images = images
        self._metadata = metadata
        self._state = state

    def base(self, sandbox_id: str) -> Path:
        return self._state / IMAGE_VOLUME_DIR / sandbox_id

    async def mount(self, sandbox_id: str, mounts: tuple[MountRequest, ...], snapshotter: str,
                    idmap: IDMap | None) -> dict[int, str]:  # fmt: skip
        """The host path of each image mount (by index): made when the pod has none yet."""
        wanted = [(i, m) for i, m in enumerate(mounts) if m.image or m.image_sub_path]
        if not wanted:
            return {}
        out = {}
        with namespace(K8S):
            try:
                leases = self._metadata.view(LeaseStore)
                with contextlib.suppress(AlreadyExists):
                    await leases.create(sandbox_id)
                with bound_lease(sandbox_id):
                    for i, m in wanted:
                        out[i] = await self._mount_one(sandbox_id, m, snapshotter, idmap)
            except CorralError as exc:
                raise worded(
                    type(exc), f"failed to mount image volume: {MOUNT_FAILED}: {_text(exc)}"
                ) from None
        return out

    async def _mount_one(
        self, sandbox_id: str, m: MountRequest, snapshotter: str, idmap: IDMap | None
    ) -> str:
        if m.host_path:
            raise InvalidArgument(f"hostpath must be empty while mount image: {_described(m)}")
        if not m.readonly:
            raise InvalidArgument(f"readonly must be true while mount image: {_described(m)}")
        if not m.image:
            raise InvalidArgument(f"image not specified in: {_described(m)}")
        image = await self._resolve_or_pull(m.image)
        target = self.base(sandbox_id) / image.id.partition(":")[2]
        if not os.path.ismount(target):
            await self._make(target, image_chain=await self._images.unpacked(image, snapshotter),
                             snapshotter=snapshotter, idmap=idmap)  # fmt: skip
        if m.image_sub_path:
            return str(_sub_path(target, m.image_sub_path))
        return str(target)

    async def _resolve_or_pull(self, ref: str) -> CRIImage:
        """The image in ``k8s.io``, pulled first when it is not there (containerd 2.1 leaves that to
        the kubelet and fails; a node driven by anything else gets the volume it asked for). A
        reference that cannot be pulled (an image id, a name no registry has) fails as
        containerd's resolve does: ``failed to resolve image "…": not found``."""
        try:
            return await self._images.resolve(ref)
        except NotFound:
            pass
        except CorralError as exc:
            raise worded(type(exc), f'failed to resolve image "{ref}": {_text(exc)}') from None
        try:
            await self._images.pull(ref)
        except NotFound:
            raise worded(NotFound, f'failed to resolve image "{ref}": not found') from None
        except CorralError as exc:
            raise worded(type(exc), f'failed to pull image "{ref}": {_text(exc)}') from None
        try:
            return await self._images.resolve(ref)
        except CorralError as exc:
            raise worded(type(exc), f'failed to resolve image "{ref}": {_text(exc)}') from None

    async def _make(self, target: Path, *, image_chain: str, snapshotter: str, idmap: IDMap | None) -> None:
        snapshots = self._metadata.view(NamespacedSnapshots).get(snapshotter)
        key = str(target)
        try:
            mounts = await snapshots.prepare(key, image_chain, idmap.labels() if idmap else None)
        except AlreadyExists:
            mounts = await snapshots.mounts(key)
        try:
            target.mkdir(parents=True, exist_ok=True, mode=0o755)
            volatile = [
                replace(m, options=(*m.options, "volatile"))
                if m.type == "overlay" and "volatile" not in m.options
                else m
                for m in mounts
            ]
            async with resolve_idmapped(volatile, target.parent / f".{target.name}.idmapped") as resolved:
                await _mount_all(resolved, target)
        except BaseException:
            with anyio.CancelScope(shield=True), contextlib.suppress(CorralError):
                await snapshots.remove(key)
            raise

    async def unmount_all(self, sandbox_id: str, snapshotter: str) -> None:
        """Every image volume of the pod unmounted, its snapshot and directory removed (StopPodSandbox)."""
        base = self.base(sandbox_id)
        if not base.is_dir():
            return
        with namespace(K8S):
            snapshots = self._metadata.view(NamespacedSnapshots).get(snapshotter)
            for target in sorted(base.iterdir()):
                if target.name.startswith("."):  # idmapped layers a killed daemon left
                    await anyio.to_thread.run_sync(remove_scratch, target)
                    continue
                while os.path.ismount(target):
                    await _unmount(target)
                with contextlib.suppress(NotFound):
                    await snapshots.remove(str(target))
                with contextlib.suppress(FileNotFoundError):
                    target.rmdir()
        with contextlib.suppress(OSError):
            base.rmdir()

    async def release(self, sandbox_id: str) -> None:
        """The pod's lease on its image volumes goes (RemovePodSandbox)."""
        with namespace(K8S), contextlib.suppress(NotFound):
            await self._metadata.view(LeaseStore).delete(sandbox_id)


def _text(exc: CorralError) -> str:
    return str(exc.detail or exc)


def _sub_path(mount_point: Path, sub_path: str) -> Path:
    """containerd's ensureImageSubPath: a directory inside the image, never outside it."""
    root = mount_point.resolve()
    found = (root / sub_path.lstrip("/")).resolve()
    if found != root and root not in found.parents:
        raise InvalidArgument(
            f"path escapes from parent: subpath {sub_path!r}, mountpoint {str(mount_point)!r}"
        )
    if not found.exists():
        raise NotFound(f"openat {sub_path}: no such file or directory")
    if not found.is_dir():
        raise InvalidArgument(
            f'only directory subpath is supported, subpath: "{sub_path}", mountpoint: "{mount_point}" '
        )
    return found


async def _mount_all(mounts: tuple[Mount, ...], target: Path) -> None:
    try:
        await mount_all(mounts, target)
    except CorralError:
        while os.path.ismount(target):
            await _unmount(target)
        raise


async def _unmount(target: Path) -> None:
    done = await anyio.run_process(["umount", str(target)], check=False)
    if done.returncode != 0:
        raise worded(
            FailedPrecondition,
            f"failed to unmount image volume component {str(target)!r}: {done.stderr.decode().strip()}",
        )
