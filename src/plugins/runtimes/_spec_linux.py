"""Options on the spec's mounts, root and Linux section: namespaces, cgroups, devices, resources."""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from corral.kernel import InvalidArgument, NotFound
from corral.plugins.runtimes._spec_default import (
    RWM,
    Spec,
    SpecOpt,
    clean_path,
    linux,
    put,
    resources,
    section,
)
from corral.plugins.runtimes._spec_host import device_from_path, devices_under, host_devices
from corral.plugins.runtimes._spec_parse import IDMapping, parse_mount, validate_id_map
from corral.plugins.runtimes._spec_process import (
    with_all_current_capabilities,
    with_apparmor_profile,
    with_selinux_label,
)

NAMESPACE_TYPES = frozenset({"pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time"})
ROOTFS_PROPAGATIONS = frozenset(
    {"", "private", "rprivate", "slave", "rslave", "shared", "rshared", "unbindable", "runbindable"}
)
CGROUP_MOUNT_OPTIONS = ("nosuid", "noexec", "nodev", "relatime")
RRO_MIN_KERNEL = (5, 12)  # mount_setattr(2), which a recursive read-only mount needs

# Root.


def with_rootfs_path(path: str) -> SpecOpt:
    """Use an unmanaged root filesystem at ``path`` (ctr's ``--rootfs``)."""

    def opt(spec: Spec) -> None:
        section(spec, "root")["path"] = path

    return opt


def with_readonly_rootfs(spec: Spec) -> None:
    """The runtime mounts the root filesystem read-only (ctr's ``--read-only``)."""
    root = section(spec, "root")
    root.setdefault("path", "")
    root["readonly"] = True


def with_rootfs_propagation(propagation: str) -> SpecOpt:
    """Mount propagation of the root filesystem (``rshared``, ``rslave``, ``private``...)."""
    if propagation not in ROOTFS_PROPAGATIONS:
        raise InvalidArgument(f"unknown rootfs propagation {propagation!r}")

    def opt(spec: Spec) -> None:
        put(linux(spec), "rootfsPropagation", propagation)

    return opt


def with_hostname(name: str) -> SpecOpt:
    def opt(spec: Spec) -> None:
        put(spec, "hostname", name)

    return opt


def with_domainname(name: str) -> SpecOpt:
    def opt(spec: Spec) -> None:
        put(spec, "domainname", name)

    return opt


def with_annotations(annotations: Mapping[str, str]) -> SpecOpt:
    """Add or replace annotations."""

    def opt(spec: Spec) -> None:
        put(spec, "annotations", {**spec.get("annotations", {}), **annotations})

    return opt


def with_sysctls(sysctls: Mapping[str, str]) -> SpecOpt:
    """Add or replace namespaced sysctls the runtime writes (``net.ipv4.ip_forward``: ``"1"``)."""
    for key in sysctls:
        if not key or key.startswith((".", "/")):
            raise InvalidArgument(f"invalid sysctl name {key!r}")

    def opt(spec: Spec) -> None:
        put(linux(spec), "sysctl", {**linux(spec).get("sysctl", {}), **sysctls})

    return opt


# Mounts.


def with_mounts(mounts: Sequence[Mapping[str, Any]]) -> SpecOpt:
    """Append spec mounts (``{"destination", "type", "source", "options"}``) after the existing ones."""

    def opt(spec: Spec) -> None:
        spec["mounts"] = [*spec.get("mounts", []), *(copy.deepcopy(dict(m)) for m in mounts)]

    return opt


def without_mounts(*destinations: str) -> SpecOpt:
    """Drop the mounts whose cleaned destination is one of ``destinations``."""

    def opt(spec: Spec) -> None:
        kept = [m for m in spec.get("mounts", []) if clean_path(m["destination"]) not in destinations]
        put(spec, "mounts", kept)

    return opt


def with_mount_flags(flags: Sequence[str]) -> SpecOpt:
    """ctr's ``--mount`` values: each replaces a mount at the same destination, then all are appended."""
    mounts = [parse_mount(flag) for flag in flags]

    def opt(spec: Spec) -> None:
        without_mounts(*(m["destination"] for m in mounts))(spec)
        with_mounts(mounts)(spec)

    return opt


def _host_file(path: str) -> SpecOpt:
    def opt(spec: Spec) -> None:
        with_mounts([{"destination": path, "type": "bind", "source": path, "options": ["rbind", "ro"]}])(spec)

    return opt


with_host_hosts_file = _host_file("/etc/hosts")
with_host_resolvconf = _host_file("/etc/resolv.conf")
with_host_localtime = _host_file("/etc/localtime")
without_run_mount = without_mounts("/run")


def with_dev_shm_size(kb: int) -> SpecOpt:
    """Size of the ``/dev/shm`` tmpfs in KiB."""

    def opt(spec: Spec) -> None:
        for m in spec.get("mounts", []):
            if (
                clean_path(m["destination"]) == "/dev/shm"
                and m.get("source") == "shm"
                and m.get("type") == "tmpfs"
            ):
                m["options"] = [o for o in m.get("options", []) if not o.startswith("size=")] + [
                    f"size={kb}k"
                ]
                return
        raise NotFound("no /dev/shm mount specified")

    return opt


def with_bind_mount(
    source: str,
    destination: str,
    *,
    readonly: bool = False,
    recursive_read_only: bool = False,
    propagation: str = "private",
) -> SpecOpt:
    """A CRI host-path mount: ``rbind``, its propagation, and ``ro``, ``rro`` or ``rw``.

    ``recursive_read_only`` asks for ``rro``: the runtime bind-mounts recursively and then makes
    the whole tree read-only with ``mount_setattr(AT_RECURSIVE, MOUNT_ATTR_RDONLY)``, so sub-mounts
    are read-only too (plain ``ro`` covers only the top mount). It needs ``readonly`` and private
    propagation, as containerd's CRI requires; whether the runtime can do it is
    ``supports_recursive_read_only``. Default mounts at the same destination are replaced.
    """
    kinds = {"private": "rprivate", "host-to-container": "rslave", "bidirectional": "rshared"}
    if propagation not in kinds:
        raise InvalidArgument(f"unknown mount propagation {propagation!r}; one of {sorted(kinds)}")
    if recursive_read_only and not readonly:
        raise InvalidArgument(f"recursive read-only mount conflicts with RW mount (hostPath={source!r})")
    if recursive_read_only and propagation != "private":
        raise InvalidArgument(
            f"recursive read-only mount needs private propagation, got {propagation!r} (hostPath={source!r})"
        )
    mode = "rro" if recursive_read_only else "ro" if readonly else "rw"
    mount = {"destination": destination, "type": "bind", "source": source,
             "options": ["rbind", kinds[propagation], mode]}  # fmt: skip
    target = clean_path(destination)

    def opt(spec: Spec) -> None:
        kept = [
            m for m in spec.get("mounts", [])
            if clean_path(m["destination"]) != target
            and not (target == "/dev" and clean_path(m["destination"]).startswith("/dev/"))
        ]  # fmt: skip
        spec["mounts"] = [*kept, copy.deepcopy(mount)]
        current = linux(spec).get("rootfsPropagation", "")
        if propagation == "bidirectional":
            linux(spec)["rootfsPropagation"] = "rshared"
        elif propagation == "host-to-container" and current not in ("rshared", "rslave"):
            linux(spec)["rootfsPropagation"] = "rslave"

    return opt


def kernel_version(release: str | None = None) -> tuple[int, int]:
    """(major, minor) of a kernel release string such as ``6.1.0-18-amd64``."""
    match = re.match(r"(\d+)\.(\d+)", release if release is not None else os.uname().release)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def supports_recursive_read_only(features: Mapping[str, Any], kernel_release: str | None = None) -> bool:
    """Whether ``rro`` mounts work: the runtime lists it among ``runc features`` mount options
    (runc >= 1.1) and the kernel has ``mount_setattr`` (5.12), as containerd's CRI checks."""
    return "rro" in features.get("mountOptions", ()) and kernel_version(kernel_release) >= RRO_MIN_KERNEL


def _flip_ro(spec: Spec, mount_type: str) -> None:
    for m in spec.get("mounts", []):
        if m.get("type") == mount_type:
            m["options"] = ["rw" if o == "ro" else o for o in m.get("options", [])]


def with_writable_sysfs(spec: Spec) -> None:
    """Every sysfs mount read-write."""
    _flip_ro(spec, "sysfs")


def with_writable_cgroupfs(spec: Spec) -> None:
    """Every cgroup mount read-write (what ``--privileged`` does to the mounts it finds)."""
    _flip_ro(spec, "cgroup")


def with_cgroup_mount(writable: bool = False) -> SpecOpt:
    """The container's own cgroup at ``/sys/fs/cgroup``, as containerd's CRI adds it: read-only, or
    read-write with its ``cgroup_writable`` runtime option."""
    mount = {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": [*CGROUP_MOUNT_OPTIONS, "rw" if writable else "ro"]}  # fmt: skip

    def opt(spec: Spec) -> None:
        without_mounts("/sys/fs/cgroup")(spec)
        with_mounts([mount])(spec)

    return opt


def with_cgroup_writable(spec: Spec) -> None:
    """A writable ``/sys/fs/cgroup`` (CRI's ``cgroup_writable``): the container may make sub-cgroups."""
    with_cgroup_mount(writable=True)(spec)


# Namespaces.


def _namespaces(spec: Spec) -> list[dict[str, Any]]:
    return list(linux(spec).get("namespaces", []))


def _check_namespace(kind: str) -> None:
    if kind not in NAMESPACE_TYPES:
        raise InvalidArgument(f"unknown Linux namespace type {kind!r}; one of {sorted(NAMESPACE_TYPES)}")


def with_host_namespace(kind: str) -> SpecOpt:
    """Share the host's namespace of ``kind`` (drop it from the spec), e.g. ``network``."""
    _check_namespace(kind)

    def opt(spec: Spec) -> None:
        namespaces = _namespaces(spec)
        for i, ns in enumerate(namespaces):
            if ns.get("type") == kind:
                del namespaces[i]
                break
        put(linux(spec), "namespaces", namespaces)

    return opt


def with_linux_namespace(kind: str, path: str = "") -> SpecOpt:
    """A namespace of ``kind``, joined at ``path`` when given (a pod's netns); replaces one of the same kind."""
    _check_namespace(kind)
    entry = {"type": kind, "path": path} if path else {"type": kind}

    def opt(spec: Spec) -> None:
        namespaces = _namespaces(spec)
        for i, ns in enumerate(namespaces):
            if ns.get("type") == kind:
                namespaces[i] = dict(entry)
                break
        else:
            namespaces.append(dict(entry))
        linux(spec)["namespaces"] = namespaces

    return opt


def with_user_namespace(uid_maps: Sequence[IDMapping], gid_maps: Sequence[IDMapping]) -> SpecOpt:
    """A new user namespace with these ranges added to any already there; the resulting maps
    must be ones the kernel accepts (no empty, overflowing or overlapping ranges)."""

    def opt(spec: Spec) -> None:
        section_ = linux(spec)
        uids = [*(IDMapping(m["containerID"], m["hostID"], m["size"]) for m in section_.get("uidMappings", [])),
                *uid_maps]  # fmt: skip
        gids = [*(IDMapping(m["containerID"], m["hostID"], m["size"]) for m in section_.get("gidMappings", [])),
                *gid_maps]  # fmt: skip
        if not uids or not gids:
            raise InvalidArgument("a user namespace needs both uid and gid mappings")
        validate_id_map(uids, "uid")
        validate_id_map(gids, "gid")
        if not any(ns.get("type") == "user" for ns in _namespaces(spec)):
            section_["namespaces"] = [*_namespaces(spec), {"type": "user"}]
        section_["uidMappings"] = [m.to_spec() for m in uids]
        section_["gidMappings"] = [m.to_spec() for m in gids]

    return opt


# Cgroups and resources.


def with_cgroup(path: str) -> SpecOpt:
    """The container's cgroup path ("" leaves the choice, and the cgroup, to the runtime)."""

    def opt(spec: Spec) -> None:
        put(linux(spec), "cgroupsPath", path)

    return opt


def with_namespaced_cgroup(namespace: str, container_id: str) -> SpecOpt:
    """``/<namespace>/<id>``, the cgroup path containerd's default spec uses."""
    return with_cgroup(clean_path(f"/{namespace}/{container_id}"))


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise InvalidArgument(f"{name} {value} is out of range {low}..{high}")


_INT64 = (-(2**63), 2**63 - 1)
_UINT64 = (0, 2**64 - 1)


def with_memory_limit(limit: int) -> SpecOpt:
    """Memory limit in bytes (on a spec with a Linux section)."""
    _check_range("memory limit", limit, 0, _INT64[1])

    def opt(spec: Spec) -> None:
        if spec.get("linux") is not None:
            section(resources(spec), "memory")["limit"] = limit

    return opt


def with_memory_swap(swap: int) -> SpecOpt:
    _check_range("memory swap", swap, *_INT64)

    def opt(spec: Spec) -> None:
        section(resources(spec), "memory")["swap"] = swap

    return opt


def with_pids_limit(limit: int) -> SpecOpt:
    _check_range("pids limit", limit, *_INT64)

    def opt(spec: Spec) -> None:
        resources(spec)["pids"] = {"limit": limit}

    return opt


def _cpu(spec: Spec) -> dict[str, Any]:
    return section(resources(spec), "cpu")


def with_cpu_shares(shares: int) -> SpecOpt:
    _check_range("cpu shares", shares, *_UINT64)

    def opt(spec: Spec) -> None:
        _cpu(spec)["shares"] = shares

    return opt


def with_cpu_cfs(quota: int, period: int) -> SpecOpt:
    """CFS quota and period in microseconds (quota -1 is unlimited)."""
    _check_range("cpu quota", quota, *_INT64)
    _check_range("cpu period", period, *_UINT64)

    def opt(spec: Spec) -> None:
        cpu = _cpu(spec)
        cpu["quota"], cpu["period"] = quota, period

    return opt


def with_cpu_count(cpus: float) -> SpecOpt:
    """ctr's ``--cpus``: a quota of ``cpus`` periods of 100ms."""
    if not cpus > 0:
        raise InvalidArgument(f"cpus must be positive, got {cpus}")
    return with_cpu_cfs(int(cpus * 100000.0), 100000)


def with_cpu_burst(burst: int) -> SpecOpt:
    _check_range("cpu burst", burst, *_UINT64)

    def opt(spec: Spec) -> None:
        _cpu(spec)["burst"] = burst

    return opt


def with_cpu_rt(runtime: int, period: int) -> SpecOpt:
    """Realtime scheduling runtime and period in microseconds."""
    _check_range("realtime runtime", runtime, *_INT64)
    _check_range("realtime period", period, *_UINT64)

    def opt(spec: Spec) -> None:
        cpu = _cpu(spec)
        cpu["realtimeRuntime"], cpu["realtimePeriod"] = runtime, period

    return opt


def with_cpuset_cpus(cpus: str) -> SpecOpt:
    """The CPUs the container may run on, e.g. ``0-2,4``."""

    def opt(spec: Spec) -> None:
        put(_cpu(spec), "cpus", cpus)

    return opt


def with_cpuset_mems(mems: str) -> SpecOpt:
    def opt(spec: Spec) -> None:
        put(_cpu(spec), "mems", mems)

    return opt


# Devices.

# (major, minor or None for every minor) in containerd's order: null, random, full, tty, zero,
# urandom, console, the pts range, ptmx.
DEFAULT_UNIX_DEVICES = ((1, 3), (1, 8), (1, 7), (5, 0), (1, 5), (1, 9), (5, 1), (136, None), (5, 2))


def _device_rule(kind: str, major: int | None, minor: int | None, access: str) -> dict[str, Any]:
    rule: dict[str, Any] = {"allow": True, "type": kind}
    if major is not None:
        rule["major"] = major
    if minor is not None:
        rule["minor"] = minor
    put(rule, "access", access)
    return rule


def _device_rules(spec: Spec) -> list[dict[str, Any]]:
    return list(resources(spec).get("devices", []))


def with_default_unix_devices(spec: Spec) -> None:
    """Allow the standard character devices after whatever rules are there."""
    rules = _device_rules(spec) + [
        _device_rule("c", major, minor, RWM) for major, minor in DEFAULT_UNIX_DEVICES
    ]
    resources(spec)["devices"] = rules


def with_all_devices_allowed(spec: Spec) -> None:
    """One rule allowing read, write and mknod on every device."""
    resources(spec)["devices"] = [{"allow": True, "access": RWM}]


def with_parent_cgroup_devices(spec: Spec) -> None:
    """No device rules: the container inherits its parent cgroup's."""
    resources(spec).pop("devices", None)


def with_linux_devices(devices: Sequence[Mapping[str, Any]]) -> SpecOpt:
    """Add spec device nodes (``{"path", "type", "major", "minor", ...}``) without cgroup rules."""

    def opt(spec: Spec) -> None:
        linux(spec)["devices"] = [*linux(spec).get("devices", []), *(dict(d) for d in devices)]

    return opt


def with_host_devices(spec: Spec) -> None:
    """Every device node of the host's /dev (privileged containers)."""
    with_linux_devices(host_devices())(spec)


def _add_devices(spec: Spec, devices: Sequence[dict[str, Any]], permissions: str) -> None:
    with_linux_devices(devices)(spec)
    rules = _device_rules(spec)
    rules += [_device_rule(d["type"], d["major"], d["minor"], permissions) for d in devices]
    resources(spec)["devices"] = rules


def with_devices(device_path: str, container_path: str = "", permissions: str = RWM) -> SpecOpt:
    """The device at ``device_path`` (or every one below that directory) with a cgroup rule each;
    ``container_path`` renames it inside (ctr's ``--device``)."""

    def opt(spec: Spec) -> None:
        _add_devices(spec, devices_under(device_path, container_path), permissions)

    return opt


def with_linux_device(path: str, permissions: str = RWM, follow_symlinks: bool = False) -> SpecOpt:
    """One device node and its cgroup rule."""

    def opt(spec: Spec) -> None:
        resolved = os.path.realpath(path) if follow_symlinks else path
        device = device_from_path(resolved)
        if device is None:
            raise InvalidArgument(f"{resolved} is not a device node")
        _add_devices(spec, [device], permissions)

    return opt


# Confinement.


def with_masked_paths(paths: Sequence[str] | None) -> SpecOpt:
    """Replace the paths the runtime masks (None or empty for none)."""

    def opt(spec: Spec) -> None:
        put(linux(spec), "maskedPaths", list(paths or ()))

    return opt


def with_readonly_paths(paths: Sequence[str] | None) -> SpecOpt:
    """Replace the paths the runtime remounts read-only (None or empty for none)."""

    def opt(spec: Spec) -> None:
        put(linux(spec), "readonlyPaths", list(paths or ()))

    return opt


def with_seccomp_unconfined(spec: Spec) -> None:
    """No seccomp filter."""
    linux(spec).pop("seccomp", None)


def with_privileged(spec: Spec) -> None:
    """containerd's ``WithPrivileged``: the caller's capabilities, nothing masked or read-only,
    writable sysfs and cgroup mounts, no SELinux label, AppArmor profile or seccomp filter.
    (ctr's ``--privileged`` also adds ``with_all_devices_allowed`` and ``with_host_devices``.)"""
    for opt in (
        with_all_current_capabilities,
        with_masked_paths(None),
        with_readonly_paths(None),
        with_writable_sysfs,
        with_writable_cgroupfs,
        with_selinux_label(""),
        with_apparmor_profile(""),
        with_seccomp_unconfined,
    ):
        opt(spec)
