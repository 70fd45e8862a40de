"""The pause container's OCI spec, after containerd's ``sandboxContainerSpec`` (Linux)."""

from __future__ import annotations

from pathlib import Path

from corral.plugins.core.idmap import IDMap
from corral.plugins.images import oci
from corral.plugins.runtimes import spec as specs
from corral.plugins.sandbox import PodSandboxSpec

DEV_SHM = "/dev/shm"
RESOLV_CONF = "/etc/resolv.conf"
ETC_HOSTS = "/etc/hosts"
DEFAULT_SHM_SIZE = 64 * 1024 * 1024
DEFAULT_SANDBOX_CPU_SHARES = 2
DEFAULT_SANDBOX_OOM_ADJ = -998

# containerd's CRI annotations on the pause container (internal/cri/annotations).
CONTAINER_TYPE = "io.kubernetes.cri.container-type"
SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
SANDBOX_NAME = "io.kubernetes.cri.sandbox-name"
SANDBOX_NAMESPACE = "io.kubernetes.cri.sandbox-namespace"
SANDBOX_UID = "io.kubernetes.cri.sandbox-uid"
SANDBOX_LOG_DIR = "io.kubernetes.cri.sandbox-log-directory"
SANDBOX_IMAGE_NAME = "io.kubernetes.cri.image-name"


def pause_spec(
    namespace: str,
    sandbox_id: str,
    pod: PodSandboxSpec,
    image: oci.ContainerConfig,
    image_name: str,
    *,
    netns_path: str,
    shm_path: Path,
    resolv_path: Path,
    idmap: IDMap | None = None,
    userns_path: str = "",
) -> specs.Spec:
    """Read-only rootfs, the image's entrypoint, the pod's hostname and sysctls, the pod's own
    network (joined at ``netns_path``), IPC, UTS and PID namespaces unless the pod shares the
    node's, ``/dev/shm`` and ``/etc/resolv.conf`` bound from the sandbox's directories."""
    opts: list[specs.SpecOpt] = [
        specs.without_run_mount,
        specs.with_env(list(image.env)),
        specs.with_readonly_rootfs,
        specs.with_process_args(*image.entrypoint, *image.cmd),
    ]
    if image.working_dir:
        opts.append(specs.with_process_cwd(image.working_dir))
    if pod.cgroup_parent:
        opts.append(specs.with_cgroup(f"{pod.cgroup_parent.rstrip('/')}/{sandbox_id}"))
    if pod.host_network:
        # The node's UTS namespace too; its hostname is the node's (runc refuses to set one there,
        # and the kubelet sends none for such a pod).
        opts += [specs.with_host_namespace("network"), specs.with_host_namespace("uts")]
    else:
        opts += [specs.with_linux_namespace("network", netns_path), specs.with_hostname(pod.hostname)]
    if pod.pid_mode == "NODE":
        opts.append(specs.with_host_namespace("pid"))
    if pod.ipc_mode == "NODE":
        opts.append(specs.with_host_namespace("ipc"))
    shm = "/dev/shm" if pod.ipc_mode == "NODE" else str(shm_path)
    flags = ["rbind", "ro", "nosuid", "nodev", "noexec"]
    opts += [
        specs.without_mounts(DEV_SHM),
        specs.with_mounts(
            [
                {"source": shm, "destination": DEV_SHM, "type": "bind", "options": flags},
                {"source": str(resolv_path), "destination": RESOLV_CONF, "type": "bind", "options": flags},
            ]
        ),
    ]
    if idmap is not None:
        opts += user_namespace_opts(pod, idmap, userns_path)
    sysctls = dict(pod.sysctls)
    if not pod.host_network:
        sysctls.setdefault("net.ipv4.ip_unprivileged_port_start", "0")
    if sysctls:
        opts.append(specs.with_sysctls(sysctls))
    if pod.run_as_user is not None:
        opts.append(specs.with_uid_gid(pod.run_as_user, pod.run_as_group or 0))
    opts.append(specs.with_cpu_shares(DEFAULT_SANDBOX_CPU_SHARES))
    opts.append(
        specs.with_annotations(
            {
                CONTAINER_TYPE: "sandbox",
                SANDBOX_ID: sandbox_id,
                SANDBOX_NAME: pod.name,
                SANDBOX_NAMESPACE: pod.namespace,
                SANDBOX_UID: pod.uid,
                SANDBOX_LOG_DIR: pod.log_directory,
                SANDBOX_IMAGE_NAME: image_name,
            }
        )
    )
    spec = specs.generate_spec(namespace, sandbox_id, *opts)
    spec["process"]["oomScoreAdj"] = max(DEFAULT_SANDBOX_OOM_ADJ, current_oom_score_adj())
    return spec


def user_namespace_opts(pod: PodSandboxSpec, idmap: IDMap, userns_path: str) -> list[specs.SpecOpt]:
    """The pod's own user namespace with its mappings, joined at ``userns_path`` when one is made
    (with its network namespace); a pod on the node's network gets /sys bound, as containerd
    does (a sysfs cannot be mounted from a user namespace that does not own the network)."""
    opts = [
        specs.with_user_namespace(
            [specs.IDMapping(m.container_id, m.host_id, m.size) for m in idmap.uids],
            [specs.IDMapping(m.container_id, m.host_id, m.size) for m in idmap.gids],
        )
    ]
    if userns_path:
        opts.append(specs.with_linux_namespace("user", userns_path))
    if pod.host_network:
        # containerd binds it "rro"; runc 1.1 knows no rro, so read-only at the top.
        sys_bind = {"source": "/sys", "destination": "/sys", "type": "bind",
                    "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]}  # fmt: skip
        opts += [specs.without_mounts("/sys"), specs.with_mounts([sys_bind])]
    return opts


def current_oom_score_adj() -> int:
    """The daemon's own score: a pod may not go below it (containerd's ``restrict_oom_score_adj``;
    lowering a score needs CAP_SYS_RESOURCE, which a daemon in a container often lacks)."""
    try:
        return int(Path("/proc/self/oom_score_adj").read_text())
    except (OSError, ValueError):
        return 0


def copy_host_hosts(target: Path, host: Path = Path(ETC_HOSTS)) -> None:
    """The pod's /etc/hosts: a copy of the host's, mode 0644 (containerd's setupSandboxFiles)."""
    target.write_bytes(host.read_bytes())
    target.chmod(0o644)


def pod_files(root: Path) -> dict[str, str]:
    """The pod's /etc/hostname and /etc/hosts, which every container of the pod binds."""
    return {f"{name}_path": str(root / name) for name in ("hostname", "hosts") if (root / name).exists()}


def resolv_conf(pod: PodSandboxSpec, host: Path = Path(RESOLV_CONF)) -> str:
    """The pod's resolv.conf: its DNS config, or the host's when it has none (containerd's rule)."""
    if not pod.has_dns_config:
        try:
            return host.read_text()
        except OSError:
            return ""
    out = ""
    if pod.dns_searches:
        out += f"search {' '.join(pod.dns_searches)}\n"
    if pod.dns_servers:
        out += "".join(f"nameserver {s}\n" for s in pod.dns_servers)
    if pod.dns_options:
        out += f"options {' '.join(pod.dns_options)}\n"
    return out
