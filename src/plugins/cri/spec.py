"""The OCI spec of a CRI container, after containerd 2.x's ``internal/cri/server/container_create*.go``
and ``internal/cri/opts/spec_linux*.go``: what CreateContainer's ContainerConfig becomes.

``ContainerSpec`` is the part of a ContainerConfig the node keeps (decoded at the wire's edge and
saved with the container so a restarted daemon has it). ``oci_spec`` turns it, the pod and the
image's config into the runtime spec (containerd's ``buildLinuxSpec``); ``rootfs_spec_opts`` are
the options that read the image's own files or follow the capabilities (containerd's
``platformSpecOpts``: user, groups, AppArmor, seccomp), applied once the snapshot is mounted.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from corral.kernel import CorralError, InvalidArgument
from corral.plugins.cri.config import RuntimeConfig
from corral.plugins.cri.resources import (
    HugepageLimit,
    ResourceUpdate,
    apply_resources,
    hugetlb_controller_present,
    swap_controller_available,
)
from corral.plugins.cri.runtime import recursive_read_only_supported
from corral.plugins.cri.sandboxes import K8S, CRISandbox, invalid, worded
from corral.plugins.cri.seccomp import SecurityProfile, apparmor_spec_opt, profile_from_path, seccomp_spec_opt
from corral.plugins.cri.userns import container_idmap, userns_of, userns_spec_opts
from corral.plugins.runtimes import spec as specs

__all__ = [
    "ContainerSpec",
    "DeviceRequest",
    "HandlerOptions",
    "HostMount",
    "SecurityProfile",
    "apply_rootfs_spec_opts",
    "handler_options",
    "oci_spec",
    "passthrough_annotations",
    "recursive_read_only_supported",
    "rootfs_spec_opts",
]

# containerd's CRI annotations on a container's spec.
CONTAINER_TYPE = "io.kubernetes.cri.container-type"
CONTAINER_NAME = "io.kubernetes.cri.container-name"
SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
SANDBOX_NAME = "io.kubernetes.cri.sandbox-name"
SANDBOX_NAMESPACE = "io.kubernetes.cri.sandbox-namespace"
SANDBOX_UID = "io.kubernetes.cri.sandbox-uid"
IMAGE_NAME = "io.kubernetes.cri.image-name"

ETC_HOSTNAME, ETC_HOSTS, RESOLV_CONF, DEV_SHM = "/etc/hostname", "/etc/hosts", "/etc/resolv.conf", "/dev/shm"
CGROUP_MOUNT_OPTIONS = ("nosuid", "noexec", "nodev", "relatime")
CGROUP2_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class HostMount:
    """A CRI Mount; ``propagation`` is PROPAGATION_PRIVATE, _HOST_TO_CONTAINER or _BIDIRECTIONAL."""

    container_path: str
    host_path: str
    readonly: bool = False
    propagation: str = "PROPAGATION_PRIVATE"
    recursive_read_only: bool = False
    selinux_relabel: bool = False

    image: str = ""
    """An image volume: the image whose layers are mounted (``corral.plugins.cri.volumes``)."""
    image_sub_path: str = ""


@dataclass(frozen=True)
class DeviceRequest:
    """A CRI Device: the host's node (or directory of nodes) and its cgroup permissions."""

    container_path: str
    host_path: str
    permissions: str = "rwm"


@dataclass(frozen=True)
class ContainerSpec:
    """What CreateContainer needs of a CRI ContainerConfig, decoded at the wire's edge."""

    name: str
    attempt: int = 0
    image: str = ""
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    working_dir: str = ""
    envs: tuple[tuple[str, str], ...] = ()
    mounts: tuple[HostMount, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    log_path: str = ""
    tty: bool = False
    cdi_devices: tuple[str, ...] = ()
    privileged: bool = False
    run_as_user: int | None = None
    run_as_group: int | None = None
    readonly_rootfs: bool = False
    add_capabilities: tuple[str, ...] = ()
    drop_capabilities: tuple[str, ...] = ()
    no_new_privs: bool = False
    cpu_period: int = 0
    cpu_quota: int = 0
    cpu_shares: int = 0
    memory_limit: int = 0
    # The rest of the security context.
    run_as_username: str = ""
    supplemental_groups: tuple[int, ...] = ()
    supplemental_groups_policy: str = "Merge"
    masked_paths: tuple[str, ...] = ()
    readonly_paths: tuple[str, ...] = ()
    seccomp: SecurityProfile | None = None
    seccomp_profile_path: str = ""
    apparmor: SecurityProfile | None = None
    apparmor_profile: str = ""
    pid_mode: str = "POD"
    target_id: str = ""
    devices: tuple[DeviceRequest, ...] = ()
    # The rest of the resources; ``has_resources`` as the request's ``resources`` was sent or not.
    has_resources: bool = False
    oom_score_adj: int = 0
    cpuset_cpus: str = ""
    cpuset_mems: str = ""
    hugepage_limits: tuple[tuple[str, int], ...] = ()
    unified: Mapping[str, str] = field(default_factory=dict)
    memory_swap_limit: int = 0
    userns_mode: str = ""
    """The container's own ``namespace_options.userns_options`` (it must be the pod's)."""
    uid_mappings: tuple[tuple[int, int, int], ...] = ()
    gid_mappings: tuple[tuple[int, int, int], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ContainerSpec:
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in obj.items() if k in known}
        values["mounts"] = tuple(HostMount(**m) for m in values.get("mounts", ()))
        values["devices"] = tuple(DeviceRequest(**d) for d in values.get("devices", ()))
        values["envs"] = tuple(tuple(e) for e in values.get("envs", ()))
        values["hugepage_limits"] = tuple(tuple(h) for h in values.get("hugepage_limits", ()))
        for key in ("seccomp", "apparmor"):
            if values.get(key) is not None:
                values[key] = SecurityProfile(**values[key])
        for key in (
            "command", "args", "cdi_devices", "add_capabilities", "drop_capabilities",
            "supplemental_groups", "masked_paths", "readonly_paths",
        ):  # fmt: skip
            values[key] = tuple(values.get(key, ()))
        for key in ("uid_mappings", "gid_mappings"):
            values[key] = tuple(tuple(m) for m in values.get(key, ()))
        return cls(**values)


@dataclass(frozen=True)
class HandlerOptions:
    """What the pod's runtime handler changes in its containers' specs."""

    cgroup_writable: bool = False
    privileged_without_host_devices: bool = False
    privileged_without_host_devices_all_devices_allowed: bool = False
    disable_hugetlb_controller: bool = True
    tolerate_missing_hugetlb_controller: bool = True
    pod_annotations: tuple[str, ...] = ()
    container_annotations: tuple[str, ...] = ()
    restrict_oom_score_adj: bool = False


def handler_options(config: RuntimeConfig, runtime_handler: str) -> HandlerOptions:
    """The options of the pod's runtime handler (the default handler's when it names none) and
    the runtime section's own that change a container's spec."""
    handler = config.containerd.runtimes.get(runtime_handler or config.containerd.default_runtime_name)
    section = HandlerOptions(
        disable_hugetlb_controller=config.disable_hugetlb_controller,
        tolerate_missing_hugetlb_controller=config.tolerate_missing_hugetlb_controller,
        restrict_oom_score_adj=config.restrict_oom_score_adj,
    )
    if handler is None:
        return section
    return dataclasses.replace(
        section,
        cgroup_writable=handler.cgroup_writable,
        privileged_without_host_devices=handler.privileged_without_host_devices,
        privileged_without_host_devices_all_devices_allowed=(
            handler.privileged_without_host_devices_all_devices_allowed
        ),
        pod_annotations=tuple(handler.pod_annotations),
        container_annotations=tuple(handler.container_annotations),
    )


def oci_spec(
    container_id: str, pod: CRISandbox, spec: ContainerSpec, image: Mapping[str, Any],
    image_name: str, cgroup: str, handler: HandlerOptions | None = None, *, target_pid: int = 0,
) -> specs.Spec:  # fmt: skip
    """containerd's ``buildLinuxSpec`` over its default spec; bad input is InvalidArgument in
    containerd's words (``failed to generate container "<id>" spec: ...``)."""
    handler = handler or HandlerOptions()
    config = image.get("config") or {}
    try:
        opts = _linux_spec_opts(container_id, pod, spec, config, image_name, cgroup, handler, target_pid)
    except (ValueError, CorralError) as exc:
        raise worded(
            InvalidArgument,
            f'failed to generate container "{container_id}" spec: failed to generate spec opts: {exc}',
        ) from None
    try:
        return specs.generate_spec(K8S, container_id, *opts)
    except (ValueError, OSError, CorralError) as exc:
        raise worded(
            InvalidArgument,
            f'failed to generate container "{container_id}" spec: failed to generate spec: {exc}',
        ) from None


def _linux_spec_opts(
    container_id: str, pod: CRISandbox, spec: ContainerSpec, config: Mapping[str, Any], image_name: str,
    cgroup: str, handler: HandlerOptions, target_pid: int = 0,
) -> list[specs.SpecOpt]:  # fmt: skip
    opts: list[specs.SpecOpt] = [
        specs.without_run_mount,
        _without_default_security_settings,
        specs.with_rootfs_path("rootfs"),
        _with_process_args(spec, config),
        specs.with_default_path_env,
        specs.with_new_privileges,
    ]
    cwd = spec.working_dir or config.get("WorkingDir") or ""
    if cwd:
        opts.append(specs.with_process_cwd(cwd))
    if spec.tty:
        opts.append(specs.with_tty)
    opts.append(specs.with_env([f"HOSTNAME={pod.pod.hostname or socket.gethostname()}"]))
    env = [*(config.get("Env") or []), *(f"{key}={value}" for key, value in spec.envs)]
    opts.append(specs.with_env(env))
    if _cgroup2_unified() and not spec.privileged:
        opts.append(specs.with_linux_namespace("cgroup"))
    opts.append(_with_mounts(container_mounts(pod, spec), handler.cgroup_writable))
    opts += _masked_and_readonly_paths(spec)
    opts += [_with_devices(spec.devices), _with_capabilities(spec)]
    opts += _user_namespace_opts(pod, spec)
    if spec.privileged:
        if not pod.pod.privileged:
            raise ValueError("no privileged container allowed in sandbox")
        opts.append(specs.with_privileged)
        if not handler.privileged_without_host_devices:
            opts += [specs.with_host_devices, specs.with_all_devices_allowed]
        elif handler.privileged_without_host_devices_all_devices_allowed:
            opts.append(specs.with_all_devices_allowed)
    opts.append(_without_ambient_capabilities)
    if spec.no_new_privs:
        opts.append(specs.with_no_new_privileges)
    if spec.readonly_rootfs:
        opts.append(specs.with_readonly_rootfs)
    if spec.has_resources:
        opts.append(_with_resources(spec, handler))
    if cgroup:
        opts.append(specs.with_cgroup(cgroup))
    if spec.has_resources:
        opts.append(_with_oom_score_adj(spec.oom_score_adj, handler.restrict_oom_score_adj))
    opts += [_with_pod_namespaces(pod, spec, target_pid), _with_supplemental_groups(spec.supplemental_groups)]
    opts.append(
        specs.with_annotations(
            {
                **passthrough_annotations(pod.pod.annotations, handler.pod_annotations),
                **passthrough_annotations(spec.annotations, handler.container_annotations),
                CONTAINER_TYPE: "container",
                CONTAINER_NAME: spec.name,
                SANDBOX_ID: pod.id,
                SANDBOX_NAME: pod.pod.name,
                SANDBOX_NAMESPACE: pod.pod.namespace,
                SANDBOX_UID: pod.pod.uid,
                IMAGE_NAME: image_name,
            }
        )
    )
    return opts


def _go_path_pattern(pattern: str) -> re.Pattern[str] | None:
    """Go's ``path.Match`` pattern as a regex (``*`` and ``?`` stop at ``/``); None when malformed."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        elif c == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                return None
            body = pattern[i + 1 : end]
            out += "[" + ("^" + body[1:] if body.startswith("^") else body).replace("/", "") + "]"
            i = end
        else:
            out += re.escape(c)
        i += 1
    try:
        return re.compile(out)
    except re.error:
        return None


def passthrough_annotations(annotations: Mapping[str, str], patterns: Sequence[str]) -> dict[str, str]:
    """The annotations a handler's ``pod_annotations`` / ``container_annotations`` patterns let
    into the spec (containerd's ``GetPassthroughAnnotations``); no other request annotation is."""
    compiled = [p for p in (_go_path_pattern(pattern) for pattern in patterns) if p is not None]
    return {k: v for k, v in annotations.items() if any(p.fullmatch(k) for p in compiled)}


def _with_process_args(spec: ContainerSpec, config: Mapping[str, Any]) -> specs.SpecOpt:
    """containerd's ``WithProcessArgs``: the request's command and args over the image's."""
    command, args = list(spec.command), list(spec.args)
    if not command:
        if not args:
            args = list(config.get("Cmd") or [])
        entrypoint = list(config.get("Entrypoint") or [])
        if entrypoint != [""]:
            command = entrypoint

    def opt(oci: specs.Spec) -> None:
        if not command and not args:
            raise ValueError("no command specified")
        specs.with_process_args(*command, *args)(oci)

    return opt


def _without_default_security_settings(spec: specs.Spec) -> None:
    process = spec.setdefault("process", {})
    process.pop("apparmorProfile", None)
    process.pop("rlimits", None)
    spec.setdefault("linux", {}).pop("seccomp", None)


def _without_ambient_capabilities(spec: specs.Spec) -> None:
    spec.setdefault("process", {}).setdefault("capabilities", {}).pop("ambient", None)


# -- mounts ------------------------------------------------------------------------------------------


def container_mounts(pod: CRISandbox, spec: ContainerSpec) -> list[HostMount]:
    """The request's mounts, then the pod's files it does not mount itself (containerd's
    ``linuxContainerMounts``): /etc/hostname, /etc/hosts, /etc/resolv.conf and /dev/shm."""
    asked = {os.path.normpath(m.container_path) for m in spec.mounts}
    extra = []
    for path, source in (
        (ETC_HOSTNAME, pod.hostname_path),
        (ETC_HOSTS, pod.hosts_path),
        (RESOLV_CONF, pod.resolv_path),
    ):
        if path not in asked and source and os.path.exists(source):
            extra.append(HostMount(path, source, readonly=spec.readonly_rootfs, selinux_relabel=True))
    if DEV_SHM not in asked:
        shm = DEV_SHM if pod.pod.ipc_mode == "NODE" else pod.shm_path
        if shm and os.path.exists(shm):
            extra.append(HostMount(DEV_SHM, shm, selinux_relabel=shm != DEV_SHM))
    return [*spec.mounts, *extra]


def _parts(m: HostMount) -> int:
    return os.path.normpath(m.container_path).count("/")


def _with_mounts(mounts: Sequence[HostMount], cgroup_writable: bool) -> specs.SpecOpt:
    """containerd's ``withMounts``: the container's cgroup mount (``rw`` with the handler's
    ``cgroup_writable``), the defaults a requested mount does not replace, then the requested
    mounts, fewest path parts first. A missing host path is made as a directory."""
    ordered = sorted(mounts, key=_parts)

    def opt(spec: specs.Spec) -> None:
        has_cgroupns = any(ns.get("type") == "cgroup" for ns in spec.get("linux", {}).get("namespaces", []))
        options = [*CGROUP_MOUNT_OPTIONS, "rw" if cgroup_writable else "ro"]
        if not has_cgroupns:
            options += _host_cgroup2_options()
        spec["mounts"] = [*spec.get("mounts", []), {"destination": "/sys/fs/cgroup", "type": "cgroup",
                                                     "source": "cgroup", "options": options}]  # fmt: skip
        wanted = {os.path.normpath(m.container_path) for m in ordered}
        kept = []
        for m in spec["mounts"]:
            dst = os.path.normpath(m["destination"])
            if dst in wanted or ("/dev" in wanted and dst.startswith("/dev/")):
                continue
            kept.append(m)
        spec["mounts"] = kept
        for m in ordered:
            spec["mounts"].append(_bind_mount(spec, m))

    return opt


def _bind_mount(spec: specs.Spec, m: HostMount) -> dict[str, Any]:
    src = m.host_path
    if not os.path.lexists(src):
        os.makedirs(src, 0o755, exist_ok=True)
    src = os.path.realpath(src)
    options = ["rbind"]
    linux = spec.setdefault("linux", {})
    if m.propagation == "PROPAGATION_BIDIRECTIONAL":
        _ensure_shared(src, slave_ok=False)
        options.append("rshared")
        linux["rootfsPropagation"] = "rshared"
    elif m.propagation == "PROPAGATION_HOST_TO_CONTAINER":
        _ensure_shared(src, slave_ok=True)
        options.append("rslave")
        if linux.get("rootfsPropagation") not in ("rshared", "rslave"):
            linux["rootfsPropagation"] = "rslave"
    else:
        options.append("rprivate")
    if m.readonly:
        if m.recursive_read_only:
            if not recursive_read_only_supported():
                raise ValueError(
                    "RROUnsupported: runtime handler does not support recursive read-only mounts "
                    f'(hostPath="{m.host_path}")'
                )
            if m.propagation != "PROPAGATION_PRIVATE":
                raise ValueError(
                    f'recursive read-only mount needs private propagation, got "{m.propagation}" '
                    f'(hostPath="{m.host_path}")'
                )
            options.append("rro")
        else:
            options.append("ro")
    else:
        if m.recursive_read_only:
            raise ValueError(f'recursive read-only mount conflicts with RW mount (hostPath="{m.host_path}")')
        options.append("rw")
    # SELinux relabelling: a no-op on a host without SELinux, as containerd's label.Relabel is there.
    return {"destination": m.container_path, "type": "bind", "source": src, "options": options}


@dataclass(frozen=True)
class MountInfo:
    mountpoint: str
    optional: tuple[str, ...]
    vfs_options: tuple[str, ...]


def _mountinfo(path: Path = Path("/proc/self/mountinfo")) -> list[MountInfo]:
    out = []
    for line in path.read_text().splitlines():
        fields = line.split()
        dash = fields.index("-")
        out.append(
            MountInfo(
                fields[4].encode().decode("unicode_escape"),
                tuple(fields[6:dash]),
                tuple(fields[dash + 3].split(",")) if len(fields) > dash + 3 else (),
            )
        )
    return out


def lookup_mount(path: str) -> MountInfo:
    """The mount that ``path`` is on (containerd's ``mount.Lookup``: the longest mountpoint prefix,
    the last one mounted winning)."""
    best: MountInfo | None = None
    for info in _mountinfo():
        mp = info.mountpoint
        if (path == mp or path.startswith(mp.rstrip("/") + "/")) and (
            best is None or len(mp) >= len(best.mountpoint)
        ):
            best = info
    if best is None:
        raise ValueError(f"failed to find the mount info for {path!r}")
    return best


def _ensure_shared(path: str, *, slave_ok: bool) -> None:
    info = lookup_mount(path)
    prefixes = ("shared:", "master:") if slave_ok else ("shared:",)
    if any(opt.startswith(prefixes) for opt in info.optional):
        return
    kind = "a shared or slave mount" if slave_ok else "a shared mount"
    raise ValueError(f'path "{path}" is mounted on "{info.mountpoint}" but it is not {kind}')


def _host_cgroup2_options() -> list[str]:
    """``nsdelegate`` and ``memory_recursiveprot`` of the host's cgroup2 mount, kept when the
    container shares the host's cgroup namespace (one superblock: stripping them would change it)."""
    if not _cgroup2_unified():
        return []
    try:
        info = lookup_mount(str(CGROUP2_ROOT))
    except (OSError, ValueError):
        return []
    return [o for o in info.vfs_options if o in ("nsdelegate", "memory_recursiveprot")]


@functools.cache
def _cgroup2_unified() -> bool:
    return (CGROUP2_ROOT / "cgroup.controllers").exists()


# -- confinement -------------------------------------------------------------------------------------


def _masked_and_readonly_paths(spec: ContainerSpec) -> list[specs.SpecOpt]:
    """containerd 2.x's rule: none of the default spec's, the request's own lists when it sends
    them (cleared again for a privileged container)."""
    opts = [specs.with_masked_paths([]), specs.with_readonly_paths([])]
    if spec.masked_paths:
        opts.append(specs.with_masked_paths(spec.masked_paths))
    if spec.readonly_paths:
        opts.append(specs.with_readonly_paths(spec.readonly_paths))
    return opts


def _with_devices(devices: Sequence[DeviceRequest]) -> specs.SpecOpt:
    def opt(spec: specs.Spec) -> None:
        for device in devices:
            path = os.path.realpath(device.host_path)
            if not os.path.exists(path):
                raise ValueError(f"lstat {device.host_path}: no such file or directory")
            specs.with_devices(path, device.container_path, device.permissions)(spec)

    return opt


def _with_capabilities(spec: ContainerSpec) -> specs.SpecOpt:
    """containerd's ``WithCapabilities``: "ALL" adds (or drops) every one first, so single
    names still apply after it."""
    added = [c for c in spec.add_capabilities if c.upper() != "ALL"]
    dropped = [c for c in spec.drop_capabilities if c.upper() != "ALL"]
    opts: list[specs.SpecOpt] = []
    if len(added) < len(spec.add_capabilities):
        opts.append(specs.with_capabilities(specs.current_capabilities()))
    if len(dropped) < len(spec.drop_capabilities):
        opts.append(specs.with_capabilities([]))
    opts.append(specs.with_added_capabilities([f"CAP_{c.upper()}" for c in added]))
    opts.append(specs.with_dropped_capabilities([f"CAP_{c.upper()}" for c in dropped]))
    return specs.compose(*opts)


# -- resources and namespaces ------------------------------------------------------------------------


def _with_resources(request: ContainerSpec, handler: HandlerOptions) -> specs.SpecOpt:
    """containerd's ``WithResources`` at create (``corral.plugins.cri.resources.apply_resources``,
    which UpdateContainerResources uses too), with the host's swap and hugetlb controllers."""
    update = ResourceUpdate(
        cpu_period=request.cpu_period, cpu_quota=request.cpu_quota, cpu_shares=request.cpu_shares,
        memory_limit=request.memory_limit, memory_swap_limit=request.memory_swap_limit,
        cpuset_cpus=request.cpuset_cpus, cpuset_mems=request.cpuset_mems,
        hugepage_limits=tuple(HugepageLimit(size, limit) for size, limit in request.hugepage_limits),
        unified=dict(request.unified),
    )  # fmt: skip

    def opt(spec: specs.Spec) -> None:
        swap = swap_controller_available()
        hugetlb = not handler.disable_hugetlb_controller and hugetlb_controller_present()
        apply_resources(
            spec, update, tolerate_missing_hugetlb=handler.tolerate_missing_hugetlb_controller,
            disable_hugetlb=handler.disable_hugetlb_controller, swap=swap, hugetlb=hugetlb,
        )  # fmt: skip

    return opt


def _daemon_oom_score_adj() -> int:
    try:
        return int(Path("/proc/self/oom_score_adj").read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"could not get the daemon oom_score_adj: {exc}") from None


def _with_oom_score_adj(adj: int, restrict: bool) -> specs.SpecOpt:
    """The request's score; with ``restrict_oom_score_adj`` never below the daemon's own."""

    def opt(spec: specs.Spec) -> None:
        spec.setdefault("process", {})["oomScoreAdj"] = max(adj, _daemon_oom_score_adj()) if restrict else adj

    return opt


def _with_pod_namespaces(pod: CRISandbox, spec: ContainerSpec, target_pid: int = 0) -> specs.SpecOpt:
    """containerd's ``WithPodNamespaces``: the pause process's network, IPC and UTS namespaces,
    and its PID namespace unless the container asks for its own (or a target container's)."""
    pid = pod.pid
    opts = [
        specs.with_linux_namespace("network", f"/proc/{pid}/ns/net"),
        specs.with_linux_namespace("ipc", f"/proc/{pid}/ns/ipc"),
        specs.with_linux_namespace("uts", f"/proc/{pid}/ns/uts"),
    ]
    if spec.pid_mode != "CONTAINER":
        opts.append(specs.with_linux_namespace("pid", f"/proc/{target_pid or pid}/ns/pid"))
    return specs.compose(*opts)


def _merge_gids(*groups: Sequence[int]) -> list[int]:
    return sorted({g for gids in groups for g in gids})


def _with_supplemental_groups(groups: Sequence[int]) -> specs.SpecOpt:
    def opt(spec: specs.Spec) -> None:
        user = spec.setdefault("process", {}).setdefault("user", {"uid": 0, "gid": 0})
        merged = _merge_gids(user.get("additionalGids", []), [g & 0xFFFFFFFF for g in groups])
        if merged:
            user["additionalGids"] = merged
        else:
            user.pop("additionalGids", None)

    return opt


# -- what reads the image's files ----------------------------------------------------------------------


def _user_string(spec: ContainerSpec) -> str:
    """containerd's ``GenerateUserString``."""
    user = str(spec.run_as_user) if spec.run_as_user is not None else ""
    if spec.run_as_username:
        user = spec.run_as_username
    group = str(spec.run_as_group) if spec.run_as_group is not None else ""
    if not user:
        if group:
            raise ValueError(
                f'failed to generate user string: user group "{group}" is specified without user'
            )
        return ""
    return f"{user}:{group}" if group else user


def _with_additional_gids(user: str, rootfs: str | Path) -> specs.SpecOpt:
    """The CRI's ``WithAdditionalGIDs``: the groups /etc/group lists ``user`` in, merged with those
    already set, sorted."""

    def opt(spec: specs.Spec) -> None:
        before = list(spec.get("process", {}).get("user", {}).get("additionalGids", []))
        specs.with_additional_gids(user, rootfs)(spec)
        u = spec["process"]["user"]
        u["additionalGids"] = _merge_gids(u.get("additionalGids", []), before)

    return opt


def rootfs_spec_opts(
    container_id: str, spec: ContainerSpec, image: Mapping[str, Any], rootfs: str | Path
) -> list[specs.SpecOpt]:
    """containerd's ``platformSpecOpts`` for Linux: the user (read in the image's /etc/passwd and
    /etc/group under ``rootfs``), its supplementary groups and the request's, AppArmor and seccomp.
    Errors are InvalidArgument in containerd's words."""
    config = image.get("config") or {}
    try:
        opts: list[specs.SpecOpt] = []
        user = _user_string(spec) or str(config.get("User") or "")
        if user:
            opts.append(specs.with_user(user, rootfs))
        if spec.supplemental_groups_policy != "Merge" and spec.supplemental_groups_policy != "Strict":
            raise ValueError(
                "not implemented in this containerd release: "
                f"SupplementalGroupsPolicy={spec.supplemental_groups_policy}"
            )
        if spec.supplemental_groups_policy == "Merge":
            group_user = spec.run_as_username or (
                str(spec.run_as_user)
                if spec.run_as_user is not None
                else str(config.get("User") or "").split(":")[0]
            )
            opts.append(_with_additional_gids(group_user or "0", rootfs))
        opts.append(_with_supplemental_groups(spec.supplemental_groups))
        try:
            apparmor = spec.apparmor or (
                profile_from_path(spec.apparmor_profile) if spec.apparmor_profile else None
            )
            apparmor_spec_opt(apparmor)
        except ValueError as exc:
            raise ValueError(f"failed to generate apparmor spec opts: {exc}") from None
        try:
            seccomp = spec.seccomp or (
                profile_from_path(spec.seccomp_profile_path) if spec.seccomp_profile_path else None
            )
            seccomp_opt = seccomp_spec_opt(seccomp, spec.privileged)
        except ValueError as exc:
            raise ValueError(f"failed to generate seccomp spec opts: {exc}") from None
    except ValueError as exc:
        raise invalid(f"failed to get container spec opts: {exc}") from None
    if seccomp_opt is not None:
        opts.append(seccomp_opt)
    return opts


def apply_rootfs_spec_opts(oci: specs.Spec, opts: Sequence[specs.SpecOpt]) -> None:
    """Apply ``rootfs_spec_opts``: what fails here (a user not in the image, a profile file that
    cannot be read) is InvalidArgument as ``failed to create containerd container: ...``."""
    try:
        specs.apply_opts(oci, *opts)
    except (ValueError, OSError, CorralError) as exc:
        raise invalid(f"failed to create containerd container: {exc}") from None


def _user_namespace_opts(pod: CRISandbox, spec: ContainerSpec) -> list[specs.SpecOpt]:
    """The pod's user namespace, when it has one of its own (``corral.plugins.cri.userns``)."""
    try:
        idmap = container_idmap(userns_of(pod.pod), userns_of(spec))
    except InvalidArgument as exc:
        raise worded(InvalidArgument, f"failed to generate container spec: {exc.detail}") from None
    return [] if idmap is None else userns_spec_opts(idmap, pod.pid, pod.pod.host_network)
