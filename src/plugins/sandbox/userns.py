"""A pod's user namespace, after containerd 2.x's ``parseUsernsIDs``, ``setupNetnsWithinUserns``
and ``pinUserNamespace``.

A pod with ``userns_options.mode`` POD gets a user namespace of its own with the given uid and gid
mappings: its network namespace is made inside it (so the pod's root owns its network: sysctls,
ports), the user namespace is pinned by a bind mount next to the pod's state, the pause process
joins both and the pod's containers join the pause process's. Unlike containerd's CRI, which takes
one mapping line, several ranges are accepted (non-contiguous mappings), each checked as the
kernel checks ``uid_map``.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import anyio
import anyio.to_thread

from corral.kernel import CorralError, FailedPrecondition, InvalidArgument, NotFound
from corral.plugins.core import Mount
from corral.plugins.core.idmap import IDMap, IDMapping, detach, user_namespace
from corral.plugins.core.mount import temporary_mount
from corral.plugins.runtimes import spec as specs
from corral.plugins.sandbox import PodSandboxSpec
from corral.plugins.snapshots import Info

__all__ = [
    "netns_within_userns",
    "pin_user_namespace",
    "pod_idmap",
    "prepare_remapped",
    "remapped_snapshot_id",
    "unpin",
    "userns_idmap",
]

_NS_GET_USERNS = 0xB701
_MS_BIND = 4096


def userns_idmap(
    mode: str, uids: tuple[tuple[int, int, int], ...], gids: tuple[tuple[int, int, int], ...]
) -> IDMap | None:
    """containerd's parseUsernsIDs: the mappings of a POD user namespace, None for NODE or none
    asked; InvalidArgument, in containerd's words, for what it refuses."""
    if not mode:
        return None

    def ranges(kind: str, given: tuple[tuple[int, int, int], ...]) -> tuple[IDMapping, ...]:
        out = []
        for container_id, host_id, length in given:
            if length < 1:
                raise InvalidArgument(f"{kind} mapping: invalid mapping length: {length}")
            out.append(IDMapping(container_id, host_id, length))
        try:
            specs.validate_id_map(
                [specs.IDMapping(m.container_id, m.host_id, m.size) for m in out], kind.lower()
            )
        except InvalidArgument as exc:
            raise InvalidArgument(f"{kind} mapping: {exc.detail}") from None
        return tuple(out)

    uid_ranges, gid_ranges = ranges("UID", uids), ranges("GID", gids)
    if mode == "NODE":
        if uid_ranges or gid_ranges:
            raise InvalidArgument(
                f'can\'t use user namespace mode "{mode}" with mappings. '
                f"Got {len(uid_ranges)} UID mappings and {len(gid_ranges)} GID mappings"
            )
        return None
    if mode != "POD":
        raise InvalidArgument(f'unsupported user namespace mode: "{mode}"')
    if not uid_ranges or not gid_ranges:
        raise InvalidArgument(f'can\'t use user namespace mode "{mode}" without UID and GID mappings')
    idmap = IDMap(uid_ranges, gid_ranges)
    try:
        idmap.root()
    except InvalidArgument:
        raise InvalidArgument("container UID/GID mapping entries of 0 are required but not found") from None
    return idmap


def pod_idmap(pod: PodSandboxSpec) -> IDMap | None:
    """The pod's own user namespace mappings; InvalidArgument prefixed as containerd's sandbox
    spec prefixes it."""
    try:
        return userns_idmap(pod.userns_mode, pod.uid_mappings, pod.gid_mappings)
    except InvalidArgument as exc:
        raise InvalidArgument(f"user namespace configuration: {exc.detail}") from None


def _bind(source: str, target: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(os.fsencode(source), os.fsencode(target), b"none", ctypes.c_ulong(_MS_BIND), None) != 0:
        err = ctypes.get_errno()
        raise FailedPrecondition(f"failed to bind mount ns src: {source} at {target}: {os.strerror(err)}")


def _placeholder(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o444)
    os.close(fd)


async def netns_within_userns(path: Path, idmap: IDMap) -> None:
    """A network namespace at ``path`` owned by a new user namespace with ``idmap``."""
    _placeholder(path)
    try:
        async with user_namespace(idmap, net=True) as pid:
            await anyio.to_thread.run_sync(_bind, f"/proc/{pid}/ns/net", path)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def pin_user_namespace(netns_path: Path, pinned: Path) -> None:
    """The user namespace owning the network namespace at ``netns_path``, bind-mounted at ``pinned``."""
    _placeholder(pinned)
    try:
        with open(netns_path, "rb") as netns:
            userns = fcntl.ioctl(netns.fileno(), _NS_GET_USERNS)
        try:
            _bind(f"/proc/self/fd/{userns}", pinned)
        finally:
            os.close(userns)
    except BaseException:
        pinned.unlink(missing_ok=True)
        raise


def unpin(pinned: Path) -> None:
    """Remove a pinned namespace (unmounted lazily); gone already is fine."""
    if pinned.exists():
        detach(pinned)
        pinned.unlink(missing_ok=True)


# -- a rootfs with ids remapped ---------------------------------------------------------------------


def remapped_snapshot_id(parent: str, idmap: IDMap) -> str:
    """containerd's remappedSnapshot.ID: the digest of the parent and the (sorted) mappings."""

    def ranges(given: tuple[IDMapping, ...]) -> list[dict[str, int]]:
        return [m.to_spec() for m in sorted(given, key=lambda m: m.container_id)]

    doc = {"Parent": parent, "IDMap": {"UidMap": ranges(idmap.uids), "GidMap": ranges(idmap.gids)}}
    return "sha256:" + hashlib.sha256(json.dumps(doc, separators=(",", ":")).encode()).hexdigest()


class SnapshotsFor(Protocol):
    async def stat(self, key: str) -> Info: ...
    async def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]: ...
    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None: ...
    async def remove(self, key: str) -> None: ...


async def prepare_remapped(
    snapshotter: SnapshotsFor, name: str, key: str, parent: str, idmap: IDMap, *, chown: bool
) -> list[Mount]:
    """The active snapshot ``key`` on ``parent`` with ids remapped by ``idmap``: the snapshotter's
    idmapped mounts (``uidmap=`` options) when it hands them out; else, where ``chown`` allows (as
    containerd: every snapshotter but overlayfs, whose fallback is opt-in), containerd's fallback:
    a committed copy of ``parent`` chowned to the mapped ids, shared by every container with the
    same mappings (containerd's resolveSnapshotOptions)."""
    mounts = await snapshotter.prepare(key, parent, idmap.labels())
    if any(o.startswith("uidmap=") for m in mounts for o in m.options):
        return mounts
    with anyio.CancelScope(shield=True):
        await snapshotter.remove(key)
    if not chown:
        raise FailedPrecondition(
            f'snapshotter "{name}" doesn\'t support idmap mounts on this host '
            "(and corral's overlayfs has no `slow_chown` fallback)"
        )
    remapped = remapped_snapshot_id(parent, idmap)
    try:
        await snapshotter.stat(remapped)
    except NotFound:
        work = await snapshotter.prepare(f"{remapped}-remap", parent)
        try:
            async with temporary_mount(work) as root:
                await anyio.to_thread.run_sync(_chown_tree, root, idmap)
            await snapshotter.commit(remapped, f"{remapped}-remap")
        except BaseException:
            with anyio.CancelScope(shield=True), contextlib.suppress(CorralError):
                await snapshotter.remove(f"{remapped}-remap")
            raise
    return await snapshotter.prepare(key, remapped, idmap.labels())


def _chown_tree(root: Path, idmap: IDMap) -> None:
    """Every file's owner shifted into the mapping (containerd's remapRootFS)."""
    seen: set[tuple[int, int]] = set()
    for path in [root, *root.rglob("*")]:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) in seen:  # a hard link: shifted once
            continue
        seen.add((st.st_dev, st.st_ino))
        uid, gid = idmap.to_host(st.st_uid, st.st_gid)
        os.lchown(path, uid, gid)
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
            os.chmod(path, stat.S_IMODE(st.st_mode))  # chown clears set-id bits: put them back
