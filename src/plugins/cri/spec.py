"""The OCI spec of a CRI container, after containerd 2.0's ``internal/cri/server/container_create_linux.go``
and ``internal/cri/opts/spec_linux.go``: what CreateContainer's ContainerConfig becomes.

``ContainerSpec`` is the part of a ContainerConfig the node keeps (decoded at the wire's edge and
saved with the container so a restarted daemon has it); ``oci_spec`` turns it, the pod and the
image's config into the runtime spec.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from corral.kernel import CorralError, InvalidArgument
from corral.plugins.cri.sandboxes import K8S, CRISandbox, invalid, worded
from corral.plugins.cri.userns import container_idmap, userns_of, userns_spec_opts
from corral.plugins.runtimes import spec as specs

__all__ = ["ContainerSpec", "HostMount", "oci_spec"]

# containerd's CRI annotations on a container's spec.
CONTAINER_TYPE = "io.kubernetes.cri.container-type"
CONTAINER_NAME = "io.kubernetes.cri.container-name"
SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
SANDBOX_NAME = "io.kubernetes.cri.sandbox-name"
SANDBOX_NAMESPACE = "io.kubernetes.cri.sandbox-namespace"
SANDBOX_UID = "io.kubernetes.cri.sandbox-uid"
IMAGE_NAME = "io.kubernetes.cri.image-name"


@dataclass(frozen=True)
class HostMount:
    """A CRI Mount; ``propagation`` is PROPAGATION_PRIVATE, _HOST_TO_CONTAINER or _BIDIRECTIONAL."""

    container_path: str
    host_path: str
    readonly: bool = False
    propagation: str = "PROPAGATION_PRIVATE"
    image: str = ""
    """An image volume: the image whose layers are mounted (``corral.plugins.cri.volumes``)."""
    image_sub_path: str = ""


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
    userns_mode: str = ""
    """The container's own ``namespace_options.userns_options`` (it must be the pod's)."""
    uid_mappings: tuple[tuple[int, int, int], ...] = ()
    gid_mappings: tuple[tuple[int, int, int], ...] = ()

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["mounts"] = [asdict(m) for m in self.mounts]
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ContainerSpec:
        values = dict(obj)
        values["mounts"] = tuple(HostMount(**m) for m in values.get("mounts", ()))
        values["envs"] = tuple(tuple(e) for e in values.get("envs", ()))
        for key in ("command", "args", "cdi_devices", "add_capabilities", "drop_capabilities"):
            values[key] = tuple(values.get(key, ()))
        for key in ("uid_mappings", "gid_mappings"):
            values[key] = tuple(tuple(m) for m in values.get(key, ()))
        return cls(**values)


def oci_spec(
    container_id: str, pod: CRISandbox, spec: ContainerSpec, image: Mapping[str, Any],
    image_name: str, cgroup: str,
) -> specs.Spec:  # fmt: skip
    config = image.get("config") or {}
    entrypoint = list(config.get("Entrypoint") or [])
    cmd = list(config.get("Cmd") or [])
    if spec.command:
        args = [*spec.command, *spec.args]
    elif spec.args:
        args = [*entrypoint, *spec.args]
    else:
        args = [*entrypoint, *cmd]
    if not args:
        raise invalid("no command specified")
    env = list(config.get("Env") or [])
    env = specs.replace_or_append_env(env, [f"{key}={value}" for key, value in spec.envs])
    opts: list[specs.SpecOpt] = [
        specs.with_process_args(*args),
        specs.with_env(env),
    ]
    cwd = spec.working_dir or config.get("WorkingDir") or ""
    if cwd:
        opts.append(specs.with_process_cwd(cwd))
    if cgroup:
        opts.append(specs.with_cgroup(cgroup))
    pid = pod.pid
    if pod.pod.host_network:
        opts += [specs.with_host_namespace("network"), specs.with_host_namespace("uts")]
    else:
        opts += [
            specs.with_linux_namespace("network", pod.netns_path or f"/proc/{pid}/ns/net"),
            specs.with_linux_namespace("uts", f"/proc/{pid}/ns/uts"),
        ]
    if pod.pod.ipc_mode == "NODE":
        opts.append(specs.with_host_namespace("ipc"))
    else:
        opts.append(specs.with_linux_namespace("ipc", f"/proc/{pid}/ns/ipc"))
    if pod.pod.pid_mode == "NODE":
        opts.append(specs.with_host_namespace("pid"))
    elif pod.pod.pid_mode == "POD":
        opts.append(specs.with_linux_namespace("pid", f"/proc/{pid}/ns/pid"))
    opts += _user_namespace_opts(pod, spec)
    mounts = []
    for m in spec.mounts:
        flags = ["rbind", "ro" if m.readonly else "rw"]
        flags.append(
            {"PROPAGATION_HOST_TO_CONTAINER": "rslave", "PROPAGATION_BIDIRECTIONAL": "rshared"}.get(
                m.propagation, "rprivate"
            )
        )
        mounts.append(
            {"source": m.host_path, "destination": m.container_path, "type": "bind", "options": flags}
        )
    asked = {m.container_path for m in spec.mounts}
    # The pod's resolv.conf and /dev/shm, as containerd binds its sandbox's: unless the request
    # mounts those paths itself.
    if "/etc/resolv.conf" not in asked and pod.resolv_path:
        mode = "ro" if spec.readonly_rootfs else "rw"
        mounts.append({"source": pod.resolv_path, "destination": "/etc/resolv.conf",
                       "type": "bind", "options": ["rbind", "rprivate", mode]})  # fmt: skip
    if "/dev/shm" not in asked and pod.shm_path:
        mounts.append({"source": pod.shm_path, "destination": "/dev/shm", "type": "bind",
                       "options": ["rbind", "rprivate", "rw", "nosuid", "nodev", "noexec"]})  # fmt: skip
    if mounts:
        opts += [
            specs.without_mounts(*(str(m["destination"]) for m in mounts)),
            specs.with_mounts(mounts),
        ]
    if spec.privileged:
        opts.append(specs.with_privileged)
    else:
        if spec.add_capabilities:
            opts.append(specs.with_added_capabilities([_cap(c) for c in spec.add_capabilities]))
        if spec.drop_capabilities:
            opts.append(specs.with_dropped_capabilities([_cap(c) for c in spec.drop_capabilities]))
    if spec.readonly_rootfs:
        opts.append(specs.with_readonly_rootfs)
    if spec.run_as_user is not None:
        opts.append(specs.with_uid_gid(spec.run_as_user, spec.run_as_group or 0))
    if spec.no_new_privs:
        opts.append(specs.with_no_new_privileges)
    if spec.cpu_shares:
        opts.append(specs.with_cpu_shares(spec.cpu_shares))
    if spec.cpu_quota or spec.cpu_period:
        opts.append(specs.with_cpu_cfs(spec.cpu_quota, spec.cpu_period))
    if spec.memory_limit:
        opts.append(specs.with_memory_limit(spec.memory_limit))
    opts.append(
        specs.with_annotations(
            {
                **spec.annotations,
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
    try:
        return specs.generate_spec(K8S, container_id, *opts)
    except (ValueError, CorralError) as exc:
        raise worded(InvalidArgument, f"failed to generate container spec: {exc}") from None


def _user_namespace_opts(pod: CRISandbox, spec: ContainerSpec) -> list[specs.SpecOpt]:
    """The pod's user namespace, when it has one of its own (``corral.plugins.cri.userns``)."""
    try:
        idmap = container_idmap(userns_of(pod.pod), userns_of(spec))
    except InvalidArgument as exc:
        raise worded(InvalidArgument, f"failed to generate container spec: {exc.detail}") from None
    return [] if idmap is None else userns_spec_opts(idmap, pod.pid, pod.pod.host_network)


def _cap(name: str) -> str:
    upper = name.upper()
    return upper if upper.startswith("CAP_") else f"CAP_{upper}"
