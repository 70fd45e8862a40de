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

import ctypes
import fcntl
import os
from pathlib import Path

import anyio

from corral.kernel import FailedPrecondition, InvalidArgument
from corral.plugins.core.idmap import IDMap, IDMapping, detach, user_namespace
from corral.plugins.runtimes import spec as specs
from corral.plugins.sandbox import PodSandboxSpec

__all__ = ["netns_within_userns", "pin_user_namespace", "pod_idmap", "unpin", "userns_idmap"]

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
