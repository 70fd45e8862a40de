"""A CRI container in its pod's user namespace, after containerd 2.x's ``WithPodNamespaces``,
``sameUsernsConfig`` and ``snapshotterRemapOpts``.

A container of a pod with a user namespace of its own must ask for the same one (mode and
mappings, in order); it joins the pause process's user namespace with the pod's mappings, and its
rootfs is a snapshot labelled with them, which a snapshotter that can remap ids (overlayfs with
the capability ``remap-ids``) hands out as idmapped mounts: the image's files appear owned by the
namespace's ids without a copy.
"""

from __future__ import annotations

from typing import Protocol

from corral.kernel import InvalidArgument
from corral.plugins.core import Mount
from corral.plugins.core.idmap import IDMap
from corral.plugins.cri.sandboxes import CRISandbox
from corral.plugins.runtimes import spec as specs
from corral.plugins.sandbox.userns import prepare_remapped, userns_idmap
from corral.plugins.snapshots import Snapshotter

__all__ = ["container_idmap", "prepare_rootfs", "userns_of", "userns_spec_opts"]

Ranges = tuple[tuple[int, int, int], ...]


class _HasUserns(Protocol):
    @property
    def userns_mode(self) -> str: ...
    @property
    def uid_mappings(self) -> Ranges: ...
    @property
    def gid_mappings(self) -> Ranges: ...


def userns_of(owner: _HasUserns) -> tuple[str, Ranges, Ranges]:
    """A pod's or a container's ``userns_options`` as (mode, uid ranges, gid ranges)."""
    return owner.userns_mode, owner.uid_mappings, owner.gid_mappings


def _describe(mode: str, uids: Ranges, gids: Ranges) -> str:
    """A UserNamespace the way Go's %v prints the CRI message."""
    if not mode:
        return "nil"

    def ranges(name: str, given: Ranges) -> str:
        return "".join(f" {name}:{{host_id:{h} container_id:{c} length:{n}}}" for c, h, n in given)

    return f"mode:{mode}{ranges('uids', uids)}{ranges('gids', gids)}"


def container_idmap(pod: tuple[str, Ranges, Ranges], container: tuple[str, Ranges, Ranges]) -> IDMap | None:
    """The container's user namespace mappings (None: the node's); InvalidArgument when they are
    malformed or not the pod's (containerd's parseUsernsIDs then sameUsernsConfig)."""
    try:
        idmap = userns_idmap(*container)
    except InvalidArgument as exc:
        raise InvalidArgument(f"user namespace configuration: {exc.detail}") from None
    if not _same(pod, container):
        raise InvalidArgument(
            "user namespace config for sandbox is different from container. "
            f"Sandbox userns config: {_describe(*pod)} - Container userns config: {_describe(*container)}"
        )
    return idmap


def _same(a: tuple[str, Ranges, Ranges], b: tuple[str, Ranges, Ranges]) -> bool:
    if not a[0] and not b[0]:
        return True
    if not a[0] or not b[0] or a[0] != b[0]:
        return False
    try:
        return userns_idmap(*a) == userns_idmap(*b)
    except InvalidArgument:
        return False


def userns_spec_opts(idmap: IDMap, sandbox_pid: int, host_network: bool) -> list[specs.SpecOpt]:
    """Join the pod's user namespace through its pause process, with the pod's mappings."""
    opts = [
        specs.with_user_namespace(
            [specs.IDMapping(m.container_id, m.host_id, m.size) for m in idmap.uids],
            [specs.IDMapping(m.container_id, m.host_id, m.size) for m in idmap.gids],
        ),
        specs.with_linux_namespace("user", f"/proc/{sandbox_pid}/ns/user"),
    ]
    if host_network:
        # As containerd: sysfs cannot be mounted from a user namespace that does not own the
        # network namespace, so the node's /sys is bound (read-only: runc 1.1 has no "rro").
        sys_bind = {"source": "/sys", "destination": "/sys", "type": "bind",
                    "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]}  # fmt: skip
        opts += [specs.without_mounts("/sys"), specs.with_mounts([sys_bind])]
    return opts


async def prepare_rootfs(
    snapshotter: Snapshotter, name: str, key: str, chain_id: str, pod: CRISandbox, container: _HasUserns
) -> list[Mount]:
    """The container's rootfs snapshot, its ids remapped to the pod's user namespace when it has
    one of its own (containerd's snapshotterRemapOpts; ``prepare_remapped``)."""
    idmap = container_idmap(userns_of(pod.pod), userns_of(container))
    if idmap is None:
        return await snapshotter.prepare(key, chain_id)
    return await prepare_remapped(snapshotter, name, key, chain_id, idmap, chown=name != "overlayfs")
