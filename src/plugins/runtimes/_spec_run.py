"""The spec ``ctr run`` and ``ctr containers create`` build from their flags, option by option.

``run_spec_opts`` turns the flags into options in the order ctr 2.1 applies them, so a
``corral run`` with the same flags writes the same spec. Flags that need machinery this module
does not have (seccomp profiles, AppArmor, CDI devices, blkio and RDT classes, GPUs) are not here.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.kernel import InvalidArgument, Unimplemented
from corral.plugins.runtimes._spec_default import Spec, SpecOpt, default_spec
from corral.plugins.runtimes._spec_linux import (
    with_all_devices_allowed,
    with_annotations,
    with_cgroup,
    with_cpu_burst,
    with_cpu_cfs,
    with_cpu_count,
    with_cpu_shares,
    with_cpuset_cpus,
    with_cpuset_mems,
    with_default_unix_devices,
    with_devices,
    with_host_devices,
    with_host_hosts_file,
    with_host_namespace,
    with_host_resolvconf,
    with_hostname,
    with_linux_namespace,
    with_memory_limit,
    with_mount_flags,
    with_privileged,
    with_readonly_rootfs,
    with_rootfs_path,
    with_rootfs_propagation,
    with_user_namespace,
)
from corral.plugins.runtimes._spec_parse import parse_id_map
from corral.plugins.runtimes._spec_process import (
    with_added_capabilities,
    with_additional_gids,
    with_dropped_capabilities,
    with_env,
    with_env_file,
    with_image_config,
    with_new_privileges,
    with_process_args,
    with_process_cwd,
    with_tty,
    with_user,
)

# The namespaces ctr's --with-ns accepts.
WITH_NS_TYPES = frozenset({"pid", "network", "uts", "mount", "user", "ipc", "cgroup"})


@dataclass(frozen=True)
class RunFlags:
    """ctr's container flags, by their ctr names. ``cpu_shares`` is 0 here, as for
    ``ctr containers create``; ``ctr run`` passes 1024 unless told otherwise."""

    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    env_file: str = ""
    mounts: tuple[str, ...] = ()
    read_only: bool = False
    cwd: str = ""
    user: str = ""
    tty: bool = False
    privileged: bool = False
    privileged_without_host_devices: bool = False
    net_host: bool = False
    annotations: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    cpus: float = 0.0
    cpuset_cpus: str = ""
    cpuset_mems: str = ""
    cpu_shares: int = 0
    cpu_quota: int = -1
    cpu_period: int = 0
    cpu_burst: int = 0
    with_ns: tuple[str, ...] = ()
    allow_new_privs: bool = False
    cgroup: str | None = None
    memory_limit: int = 0
    devices: tuple[str, ...] = ()
    rootfs_propagation: str = ""
    hostname: str = ""
    uidmap: tuple[str, ...] = ()
    gidmap: tuple[str, ...] = ()
    rootfs_path: str = ""


def annotation_args(values: Sequence[str]) -> dict[str, str]:
    """``--annotation key=value`` values; a value without ``=`` is refused."""
    out = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep:
            raise InvalidArgument(f"invalid key=value format annotation: {value}")
        out[key] = val
    return out


def label_args(values: Sequence[str]) -> dict[str, str]:
    """``--label key=value`` values; a bare key means ``true``."""
    out = {}
    for value in values:
        key, sep, val = value.partition("=")
        out[key] = val if sep else "true"
    return out


def _is_cdi_name(device: str) -> bool:
    vendor_class, sep, name = device.partition("=")
    return bool(sep and name and "/" in vendor_class and not device.startswith("/"))


def run_spec_opts(
    flags: RunFlags, *, image: Mapping[str, Any] | None = None, rootfs: str | Path | None = None
) -> list[SpecOpt]:
    """The options after the default spec, in ctr's order; ``image`` is the image config
    document (None with ``rootfs_path``), ``rootfs`` where the image's files can be read."""
    opts: list[SpecOpt] = [with_default_unix_devices]
    if flags.env_file:
        opts.append(with_env_file(flags.env_file))
    opts += [with_env(flags.env), with_mount_flags(flags.mounts)]
    if flags.rootfs_path:
        opts.append(with_rootfs_path(os.path.abspath(flags.rootfs_path)))
    elif image is not None:
        opts.append(with_image_config(image, rootfs=rootfs))
        if flags.uidmap and flags.gidmap:
            opts.append(
                with_user_namespace(parse_id_map(flags.uidmap, "uid"), parse_id_map(flags.gidmap, "gid"))
            )
    if flags.read_only:
        opts.append(with_readonly_rootfs)
    if flags.args:
        opts.append(with_process_args(*flags.args))
    if flags.cwd:
        opts.append(with_process_cwd(flags.cwd))
    if flags.user:
        opts += [with_user(flags.user, rootfs), with_additional_gids(flags.user, rootfs)]
    if flags.tty:
        opts.append(with_tty)
    if flags.privileged_without_host_devices and not flags.privileged:
        raise InvalidArgument("can't use 'privileged-without-host-devices' without 'privileged' specified")
    if flags.privileged:
        opts.append(with_privileged)
        if not flags.privileged_without_host_devices:
            opts += [with_all_devices_allowed, with_host_devices]
    if flags.net_host:
        opts += [
            with_host_namespace("network"),
            with_host_hosts_file,
            with_host_resolvconf,
            with_env([f"HOSTNAME={socket.gethostname()}"]),
        ]
    if flags.annotations:
        opts.append(with_annotations(annotation_args(flags.annotations)))
    if flags.cap_add:
        opts.append(with_added_capabilities(flags.cap_add))
    if flags.cap_drop:
        opts.append(with_dropped_capabilities(flags.cap_drop))
    if flags.cpus > 0:
        opts.append(with_cpu_count(flags.cpus))
    if flags.cpuset_cpus:
        opts.append(with_cpuset_cpus(flags.cpuset_cpus))
    if flags.cpuset_mems:
        opts.append(with_cpuset_mems(flags.cpuset_mems))
    if flags.cpu_shares > 0:
        opts.append(with_cpu_shares(flags.cpu_shares))
    if flags.cpu_quota != -1 or flags.cpu_period != 0:
        if flags.cpus > 0:
            raise InvalidArgument("cpus and quota/period should be used separately")
        opts.append(with_cpu_cfs(flags.cpu_quota, flags.cpu_period))
    if flags.cpu_burst:
        opts.append(with_cpu_burst(flags.cpu_burst))
    for ns in flags.with_ns:
        kind, sep, path = ns.partition(":")
        if not sep:
            raise InvalidArgument(
                "joining a Linux namespace using --with-ns requires the format 'nstype:path'"
            )
        if kind not in WITH_NS_TYPES:
            raise InvalidArgument(f"the Linux namespace type specified in --with-ns is not valid: {kind}")
        opts.append(with_linux_namespace(kind, path))
    if flags.allow_new_privs:
        opts.append(with_new_privileges)
    if flags.cgroup is not None:
        opts.append(with_cgroup(flags.cgroup))
    if flags.memory_limit:
        opts.append(with_memory_limit(flags.memory_limit))
    for device in flags.devices:
        if _is_cdi_name(device):
            raise Unimplemented(f"CDI devices are not supported: {device}")
        opts.append(with_devices(device, "", "rwm"))
    if flags.rootfs_propagation:
        opts.append(with_rootfs_propagation(flags.rootfs_propagation))
    if flags.hostname:
        opts.append(with_hostname(flags.hostname))
    opts.append(with_annotations(label_args(flags.labels)))
    return opts


def run_spec(
    namespace: str,
    container_id: str,
    flags: RunFlags,
    *,
    image: Mapping[str, Any] | None = None,
    rootfs: str | Path | None = None,
) -> Spec:
    """The whole spec ctr would store for this container."""
    spec = default_spec(namespace, container_id)
    for opt in run_spec_opts(flags, image=image, rootfs=rootfs):
        opt(spec)
    return spec
