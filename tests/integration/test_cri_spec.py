"""The OCI spec a CRI CreateContainer makes, seen from inside real runc containers and in the stored
spec: seccomp, capabilities, masked and read-only paths, users and groups, the pod's files,
devices, resources, mount propagation, recursive read-only mounts and writable cgroups; and the
same requests against Debian's containerd 1.6 CRI.

The daemons run in a network namespace of their own (the node), as in test_cri_pods.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import containerd16_cri
import pytest
from cri_client import CRIClient
from cri_node import (
    BUSYBOX,
    NS,
    Node,
    NodeDaemon,
    code_of,
    container,
    containers,
    create,
    remove_all,
    run,
    start_daemon,
    wait_for,
    write_network,
)
from grpclib.const import Status

from corral.api.types.runtime import v1 as pb
from corral.plugins.cri.seccomp import default_seccomp_profile
from corral.plugins.cri.spec import recursive_read_only_supported
from corral.plugins.images.build import build_image, busybox_rootfs, layer_from_directory

pytestmark = pytest.mark.root

USERS_IMAGE = "docker.io/library/busybox-users:1"
PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\napp:x:1000:\naudio:x:29:app\nvideo:x:44:nobody,app\nstaff:x:50:nobody\nnogroup:x:65534:\n"
# What a kubelet sends for a container that is not privileged (its default ProcMount).
KUBELET_MASKED = [
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
]  # fmt: skip
KUBELET_READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
DEFAULT_CAP_BITS = 0x00000000A80425FB  # containerd's default set: chown ... audit_write
NET_BIND_SERVICE = 1 << 10
RUNTIME_DEFAULT = pb.SecurityProfile(profile_type=pb.SecurityProfileProfileType.RuntimeDefault)


def users_image_archive(base: Path) -> Path:
    """busybox with a user ``app`` (1000) in groups audio (29) and video (44) of /etc/group."""
    archive = base / "users.tar"
    if archive.exists():
        return archive
    with tempfile.TemporaryDirectory(prefix="users-rootfs-") as scratch:
        root = busybox_rootfs(Path(scratch) / "rootfs")
        (root / "etc" / "passwd").write_text(PASSWD)
        (root / "etc" / "group").write_text(GROUP)
        layer = layer_from_directory(root)
    archive.write_bytes(build_image([layer], cmd=("sh",)).oci_archive([USERS_IMAGE, BUSYBOX]))
    return archive


def pod_config(
    name: str, *, privileged: bool = False, sysctls: dict[str, str] | None = None
) -> pb.PodSandboxConfig:
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace="default"),
        hostname=name,
        annotations={"io.example/pod": name, "other": "not passed"},
        linux=pb.LinuxPodSandboxConfig(
            sysctls=sysctls or {},
            security_context=pb.LinuxSandboxSecurityContext(privileged=privileged),
        ),
    )


def spec_of(ctr: Callable[..., str], cid: str) -> dict[str, Any]:
    spec = json.loads(ctr("containers", "info", cid))["Spec"]
    assert isinstance(spec, dict)
    return spec


def sh(cri: CRIClient, cid: str, script: str) -> tuple[str, str, int]:
    reply = cri.runtime(
        "exec_sync", pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", script], timeout=20)
    )
    return reply.stdout.decode(), reply.stderr.decode(), reply.exit_code


def start(cri: CRIClient, cid: str) -> None:
    cri.runtime("start_container", pb.StartContainerRequest(container_id=cid))


def status_field(text: str, key: str) -> str:
    return next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith(key + ":"))


def secure_container(name: str) -> pb.ContainerConfig:
    """What a kubelet sends for a restricted pod's container: the runtime's seccomp profile, its
    masked and read-only paths, a non-root user with a supplemental group, every capability
    dropped but NET_BIND_SERVICE, no new privileges, a read-only rootfs and an OOM score."""
    config = container(name, "exec sleep 1000")
    config.image = pb.ImageSpec(image=USERS_IMAGE)
    config.annotations = {"io.example.c/kept": "yes", "io.example.c/sub/deep": "no", "dropped": "z"}
    config.linux = pb.LinuxContainerConfig(
        security_context=pb.LinuxContainerSecurityContext(
            seccomp=RUNTIME_DEFAULT,
            masked_paths=KUBELET_MASKED,
            readonly_paths=KUBELET_READONLY,
            run_as_user=pb.Int64Value(value=1000),
            supplemental_groups=[5000],
            capabilities=pb.Capability(add_capabilities=["NET_BIND_SERVICE"], drop_capabilities=["ALL"]),
            no_new_privs=True,
            readonly_rootfs=True,
        ),
        resources=pb.LinuxContainerResources(
            oom_score_adj=500, cpuset_cpus="0", memory_limit_in_bytes=64 << 20
        ),
    )
    return config


@contextlib.contextmanager
def corral_node(tmp_path: Path, node: Node, extra: str = "") -> Iterator[tuple[NodeDaemon, CRIClient]]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    network = write_network(tmp_path / "net")
    daemon = start_daemon(tmp_path, node, network, extra)
    try:
        daemon.ctr("images", "import", str(users_image_archive(tmp_path)), namespace=NS)
        yield daemon, CRIClient(daemon.socket)
    finally:
        remove_all(daemon)
        daemon.stop()


def test_a_restricted_container_runs_confined_as_containerd_confines_it(tmp_path: Path, node: Node) -> None:
    with corral_node(tmp_path, node) as (daemon, cri):
        sandbox = pod_config("secure", sysctls={"kernel.shm_rmid_forced": "1"})
        pod_id = run(cri, sandbox)
        secure = create(cri, pod_id, secure_container("secure"), sandbox)
        plain = create(cri, pod_id, container("plain", "exec sleep 1000"), sandbox)
        for cid in (secure, plain):
            start(cri, cid)

        status, _, _ = sh(cri, secure, "cat /proc/self/status")
        assert status_field(status, "Seccomp") == "2"
        assert status_field(status, "NoNewPrivs") == "1"
        assert int(status_field(status, "CapBnd"), 16) == NET_BIND_SERVICE
        assert int(status_field(status, "CapEff"), 16) == 0  # uid 1000 without ambient capabilities
        assert (status_field(status, "Uid").split()[0], status_field(status, "Gid").split()[0]) == (
            "1000",
            "1000",
        )
        # The primary group, /etc/group's audio and video for "app", the request's 5000.
        assert sorted(map(int, status_field(status, "Groups").split())) == [29, 44, 1000, 5000]
        assert sh(cri, secure, "wc -c < /proc/timer_list")[0].strip() == "0"  # masked: /dev/null
        proc_sys = sh(cri, secure, "grep ' /proc/sys ' /proc/self/mounts")[0].split()
        assert "ro" in proc_sys[3].split(","), proc_sys
        _, err, code = sh(cri, secure, "touch /probe")
        assert code != 0 and "Read-only file system" in err
        assert sh(cri, secure, "cat /proc/self/oom_score_adj")[0] == "500\n"
        assert sh(cri, secure, "cat /proc/sys/kernel/shm_rmid_forced")[0] == "1\n"  # the pod's sysctl
        assert sh(cri, secure, "cat /proc/sys/net/ipv4/ip_unprivileged_port_start")[0] == "0\n"
        assert sh(cri, secure, "cat /etc/hostname")[0] == "secure\n"
        assert sh(cri, secure, "cat /etc/hosts")[0] == Path("/etc/hosts").read_text()
        assert sh(cri, secure, "echo $HOSTNAME")[0] == "secure\n"
        assert (
            sh(
                cri,
                secure,
                "cat /sys/fs/cgroup/cpuset/cpuset.cpus 2>/dev/null || cat /sys/fs/cgroup/cpuset.cpus",
            )[0].strip()
            == "0"
        )

        # No security context: containerd applies no seccomp filter and masks nothing.
        status, _, _ = sh(cri, plain, "cat /proc/self/status")
        assert status_field(status, "Seccomp") == "0"
        assert int(status_field(status, "CapEff"), 16) == DEFAULT_CAP_BITS
        assert int(sh(cri, plain, "wc -c < /proc/timer_list")[0]) > 0
        assert sh(cri, plain, "touch /probe && echo ok")[0] == "ok\n"

        # A sysctl no namespace of the pod holds is refused by the runtime: no pod is left.
        pods = cri.runtime("list_pod_sandbox", pb.ListPodSandboxRequest()).items
        code, message = code_of(lambda: run(cri, pod_config("bad", sysctls={"vm.swappiness": "10"})))
        assert code != Status.OK and "vm.swappiness" in message, message
        assert cri.runtime("list_pod_sandbox", pb.ListPodSandboxRequest()).items == pods

        stored = spec_of(lambda *a: daemon.ctr(*a, namespace=NS).stdout, secure)
        seccomp = stored["linux"]["seccomp"]
        only = ["CAP_NET_BIND_SERVICE"]
        assert stored["process"]["capabilities"] == {"bounding": only, "effective": only, "permitted": only}
        assert seccomp == default_seccomp_profile(["CAP_NET_BIND_SERVICE"]), json.dumps(
            seccomp["syscalls"][1:]
        )
        assert stored["linux"]["maskedPaths"] == KUBELET_MASKED
        assert stored["linux"]["readonlyPaths"] == KUBELET_READONLY
        assert stored["process"]["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [29, 44, 1000, 5000]}
        assert stored["process"]["oomScoreAdj"] == 500 and stored["root"] == {
            "path": "rootfs",
            "readonly": True,
        }
        assert "rlimits" not in stored["process"] and "apparmorProfile" not in stored["process"]
        assert stored["linux"]["resources"]["memory"] == {"limit": 64 << 20, "swap": 64 << 20}
        destinations = [m["destination"] for m in stored["mounts"]]
        assert destinations[-4:] == ["/etc/hostname", "/etc/hosts", "/etc/resolv.conf", "/dev/shm"]
        assert {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]} in stored["mounts"]  # fmt: skip
        plain_spec = spec_of(lambda *a: daemon.ctr(*a, namespace=NS).stdout, plain)
        assert "seccomp" not in plain_spec["linux"] and "maskedPaths" not in plain_spec["linux"]


def test_an_image_root_left_mounted_by_a_killed_daemon_is_unmounted_at_start(
    tmp_path: Path, node: Node
) -> None:
    network = write_network(tmp_path / "net")
    stale = tmp_path / "corral" / "state" / "io.containerd.grpc.v1.cri" / "rootfs-mounts" / "corral-mount-x"
    stale.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(stale)], check=True)
    try:
        daemon = start_daemon(tmp_path, node, network)
        try:
            wait_for(lambda: not stale.exists())
        finally:
            daemon.stop()
    finally:
        if os.path.ismount(stale):
            subprocess.run(["umount", str(stale)], check=False)


def test_a_privileged_container_gets_every_capability_and_host_device_and_no_filter(
    tmp_path: Path, node: Node
) -> None:
    extra = """
        [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.nodevs]
        runtime_type = "io.containerd.runc.v2"
        privileged_without_host_devices = true
    """
    with corral_node(tmp_path, node, extra) as (daemon, cri):
        sandbox = pod_config("root", privileged=True)
        pod_id = run(cri, sandbox)
        config = container("admin", "exec sleep 1000")
        config.linux = pb.LinuxContainerConfig(
            security_context=pb.LinuxContainerSecurityContext(
                privileged=True, seccomp=RUNTIME_DEFAULT, masked_paths=KUBELET_MASKED
            )
        )
        cid = create(cri, pod_id, config, sandbox)
        start(cri, cid)
        status, _, _ = sh(cri, cid, "cat /proc/self/status")
        assert status_field(status, "Seccomp") == "0"
        ours = int(status_field(Path("/proc/self/status").read_text(), "CapEff"), 16)
        assert int(status_field(status, "CapEff"), 16) == ours
        assert int(sh(cri, cid, "wc -c < /proc/timer_list")[0]) > 0  # nothing masked
        host_block = next(p.name for p in Path("/dev").iterdir() if p.is_block_device())
        assert sh(cri, cid, f"test -b /dev/{host_block} && echo there")[0] == "there\n"
        stored = spec_of(lambda *a: daemon.ctr(*a, namespace=NS).stdout, cid)
        assert stored["linux"]["resources"]["devices"][-1] == {"allow": True, "access": "rwm"}
        assert "maskedPaths" not in stored["linux"] and "seccomp" not in stored["linux"]
        cgroup_mount = next(m for m in stored["mounts"] if m["destination"] == "/sys/fs/cgroup")
        assert "rw" in cgroup_mount["options"]

        # A handler with privileged_without_host_devices: privileged, but only the default devices.
        bare = pod_config("bare", privileged=True)
        reply = cri.runtime("run_pod_sandbox", pb.RunPodSandboxRequest(config=bare, runtime_handler="nodevs"))
        lean = create(cri, reply.pod_sandbox_id, config, bare)
        start(cri, lean)
        assert sh(cri, lean, f"test -b /dev/{host_block} || echo absent")[0] == "absent\n"
        assert int(status_field(sh(cri, lean, "cat /proc/self/status")[0], "CapEff"), 16) == ours
        lean_spec = spec_of(lambda *a: daemon.ctr(*a, namespace=NS).stdout, lean)
        assert {"allow": True, "access": "rwm"} not in lean_spec["linux"]["resources"]["devices"]

        # Not in a privileged pod: refused, nothing made.
        plain_pod = pod_config("plain")
        plain_id = run(cri, plain_pod)
        before = containers(cri)
        code, message = code_of(lambda: create(cri, plain_id, config, plain_pod))
        assert code == Status.INVALID_ARGUMENT
        assert re.fullmatch(
            r'failed to generate container "[0-9a-f]{64}" spec: failed to generate spec opts: '
            r"no privileged container allowed in sandbox",
            message,
        ), message
        assert containers(cri) == before


def test_seccomp_localhost_profile_devices_and_bad_security_contexts(tmp_path: Path, node: Node) -> None:
    with corral_node(tmp_path, node) as (daemon, cri):
        sandbox = pod_config("sec")
        pod_id = run(cri, sandbox)
        profile = tmp_path / "no-mkdir.json"
        profile.write_text(json.dumps({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}],
        }))  # fmt: skip
        config = container("local", "exec sleep 1000")
        config.devices = [pb.Device(container_path="/dev/mynull", host_path="/dev/null", permissions="rw")]
        config.linux = pb.LinuxContainerConfig(
            security_context=pb.LinuxContainerSecurityContext(
                seccomp=pb.SecurityProfile(
                    profile_type=pb.SecurityProfileProfileType.Localhost, localhost_ref=str(profile)
                ),
                apparmor=pb.SecurityProfile(profile_type=pb.SecurityProfileProfileType.Unconfined),
                run_as_username="app",
            )
        )
        config.image = pb.ImageSpec(image=USERS_IMAGE)
        cid = create(cri, pod_id, config, sandbox)
        start(cri, cid)
        _, err, code = sh(cri, cid, "mkdir /tmp/x")
        assert code != 0 and "Operation not permitted" in err
        assert status_field(sh(cri, cid, "cat /proc/self/status")[0], "Seccomp") == "2"
        assert sh(cri, cid, "id -u; id -g")[0] == "1000\n1000\n"
        assert (
            sh(cri, cid, "stat -c '%t,%T' /dev/mynull && echo hi > /dev/mynull && echo wrote")[0]
            == "1,3\nwrote\n"
        )
        stored = spec_of(lambda *a: daemon.ctr(*a, namespace=NS).stdout, cid)
        assert {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"} in stored["linux"][
            "resources"
        ]["devices"]

        def refused(cfg: pb.ContainerConfig) -> str:
            before = containers(cri)
            snapshots = daemon.ctr("snapshots", "ls", namespace=NS).stdout
            code, message = code_of(lambda: create(cri, pod_id, cfg, sandbox))
            assert code == Status.INVALID_ARGUMENT, message
            assert containers(cri) == before
            assert daemon.ctr("snapshots", "ls", namespace=NS).stdout == snapshots  # nothing left behind
            return message

        def with_security(name: str, **fields: Any) -> pb.ContainerConfig:
            cfg = container(name, "true")
            cfg.linux = pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(**fields))
            return cfg

        missing = tmp_path / "nonesuch.json"
        localhost = pb.SecurityProfile(
            profile_type=pb.SecurityProfileProfileType.Localhost, localhost_ref=str(missing)
        )
        assert refused(with_security("a", seccomp=localhost)) == (
            f'failed to create containerd container: cannot load seccomp profile "{missing}": '
            f"open {missing}: no such file or directory"
        )
        stray_ref = pb.SecurityProfile(
            profile_type=pb.SecurityProfileProfileType.RuntimeDefault, localhost_ref="x"
        )
        assert refused(with_security("b", seccomp=stray_ref)) == (
            "failed to get container spec opts: failed to generate seccomp spec opts: "
            "seccomp config invalid LocalhostRef must only be set if ProfileType is Localhost"
        )
        assert refused(with_security("c", apparmor=RUNTIME_DEFAULT)) == (
            "failed to get container spec opts: failed to generate apparmor spec opts: apparmor is not supported"
        )
        assert refused(with_security("d", seccomp_profile_path="bogus")) == (
            'failed to get container spec opts: failed to generate seccomp spec opts: invalid profile "bogus"'
        )
        assert refused(with_security("e", run_as_group=pb.Int64Value(value=5))) == (
            'failed to get container spec opts: failed to generate user string: user group "5" is specified '
            "without user"
        )

        # A container in a PID namespace of its own, and one that joins it (TARGET).
        def in_pid_namespace(name: str, mode: pb.NamespaceMode, target: str = "") -> pb.ContainerConfig:
            cfg = container(name, "exec sleep 1000")
            options = pb.NamespaceOption(pid=mode, target_id=target)
            cfg.linux = pb.LinuxContainerConfig(
                security_context=pb.LinuxContainerSecurityContext(namespace_options=options)
            )
            return cfg

        own = create(cri, pod_id, in_pid_namespace("own", pb.NamespaceMode.CONTAINER), sandbox)
        start(cri, own)
        debug = create(cri, pod_id, in_pid_namespace("debug", pb.NamespaceMode.TARGET, own), sandbox)
        start(cri, debug)
        seen = {c: sh(cri, c, "readlink /proc/self/ns/pid")[0] for c in (cid, own, debug)}
        assert seen[debug] == seen[own] != seen[cid], seen
        assert refused(in_pid_namespace("g", pb.NamespaceMode.TARGET, "nonesuch")).endswith(
            'failed to generate spec opts: invalid target container: container "nonesuch" does not exist: not found'
        )
        nodev = container("f", "true")
        nodev.devices = [pb.Device(container_path="/dev/x", host_path="/dev/nonesuch", permissions="rwm")]
        assert refused(nodev).endswith(
            "failed to generate spec: lstat /dev/nonesuch: no such file or directory"
        )


def _bind(name: str, host: Path, **fields: Any) -> pb.ContainerConfig:
    config = container(name, "exec sleep 1000")
    config.mounts = [pb.Mount(container_path="/mnt", host_path=str(host), **fields)]
    return config


def test_mount_propagation_and_recursive_read_only_are_checked_as_containerd_checks(
    tmp_path: Path, node: Node
) -> None:
    with corral_node(tmp_path, node) as (daemon, cri):
        sandbox = pod_config("mounts")
        pod_id = run(cri, sandbox)
        handlers = cri.status().runtime_handlers
        assert [h.features.recursive_read_only_mounts for h in handlers] == [
            recursive_read_only_supported()
        ] * 2
        private = tmp_path / "private"
        private.mkdir()
        host_mount = next(
            line for line in Path("/proc/self/mountinfo").read_text().splitlines() if " / / " in line
        )
        assert "shared:" not in host_mount  # this test's host paths are on a private mount

        code, message = code_of(
            lambda: create(
                cri,
                pod_id,
                _bind("bi", private, propagation=pb.MountPropagation.PROPAGATION_BIDIRECTIONAL),
                sandbox,
            )
        )
        assert code == Status.INVALID_ARGUMENT
        assert message.endswith(
            f'failed to generate spec: path "{private}" is mounted on "/" but it is not a shared mount'
        )
        code, message = code_of(
            lambda: create(
                cri,
                pod_id,
                _bind("h2c", private, propagation=pb.MountPropagation.PROPAGATION_HOST_TO_CONTAINER),
                sandbox,
            )
        )
        assert message.endswith(f'path "{private}" is mounted on "/" but it is not a shared or slave mount')
        code, message = code_of(
            lambda: create(cri, pod_id, _bind("rw-rro", private, recursive_read_only=True), sandbox)
        )
        assert message.endswith(f'recursive read-only mount conflicts with RW mount (hostPath="{private}")')

        # A shared source: bidirectional works and the rootfs becomes rshared.
        shared = tmp_path / "shared"
        shared.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(shared)], check=True)
        try:
            subprocess.run(["mount", "--make-shared", str(shared)], check=True)
            bi = create(
                cri,
                pod_id,
                _bind("bi2", shared, propagation=pb.MountPropagation.PROPAGATION_BIDIRECTIONAL),
                sandbox,
            )
            stored = spec_of(lambda *a: daemon.ctr(*a, namespace=NS).stdout, bi)
            assert stored["linux"]["rootfsPropagation"] == "rshared"
            mnt = next(m for m in stored["mounts"] if m["destination"] == "/mnt")
            assert mnt == {
                "destination": "/mnt",
                "type": "bind",
                "source": str(shared),
                "options": ["rbind", "rshared", "rw"],
            }
            cri.runtime("remove_container", pb.RemoveContainerRequest(container_id=bi))

            # Recursive read-only: a sub-mount under the mounted directory is read-only too.
            sub = shared / "sub"
            sub.mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(sub)], check=True)
            rro = _bind("rro", shared, readonly=True, recursive_read_only=True)
            if not recursive_read_only_supported():
                code, message = code_of(lambda: create(cri, pod_id, rro, sandbox))
                assert code == Status.INVALID_ARGUMENT
                assert message.endswith(
                    f'RROUnsupported: runtime handler does not support recursive read-only mounts (hostPath="{shared}")'
                )
                pytest.skip(
                    f"runc or the kernel ({os.uname().release}) cannot make rro mounts; the refusal was checked"
                )
            cid = create(cri, pod_id, rro, sandbox)
            start(cri, cid)
            out, _, _ = sh(cri, cid, "touch /mnt/top; echo top=$?; touch /mnt/sub/probe; echo sub=$?")
            assert out == "top=1\nsub=1\n"
            ro = create(cri, pod_id, _bind("ro", shared, readonly=True), sandbox)
            start(cri, ro)
            assert sh(cri, ro, "touch /mnt/sub/probe; echo sub=$?")[0] == "sub=0\n"
        finally:
            remove_all(daemon)
            subprocess.run(["umount", "-R", str(shared)], check=False)


def _cgroup_probe() -> str:
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        return "/sys/fs/cgroup/corral-sub"
    for controller in ("pids", "memory", "cpu"):
        if (Path("/sys/fs/cgroup") / controller / "cgroup.procs").exists():
            return f"/sys/fs/cgroup/{controller}/corral-sub"
    pytest.skip("no cgroup v2 nor a v1 pids/memory/cpu hierarchy on this host")


def test_cgroup_writable_handler_lets_its_containers_make_sub_cgroups_and_only_its(
    tmp_path: Path, node: Node
) -> None:
    extra = """
        [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.nested]
        runtime_type = "io.containerd.runc.v2"
        cgroup_writable = true
    """
    probe = _cgroup_probe()
    with corral_node(tmp_path, node, extra) as (daemon, cri):
        results = {}
        for handler in ("nested", ""):
            sandbox = pod_config(f"cg{handler}")
            reply = cri.runtime(
                "run_pod_sandbox", pb.RunPodSandboxRequest(config=sandbox, runtime_handler=handler)
            )
            cid = create(cri, reply.pod_sandbox_id, container("probe", "exec sleep 1000"), sandbox)
            start(cri, cid)
            results[handler] = sh(
                cri, cid, f"mkdir {probe} && test -e {probe}/cgroup.procs && echo made && rmdir {probe}"
            )
            stored = spec_of(lambda *a: daemon.ctr(*a, namespace=NS).stdout, cid)
            mount = next(m for m in stored["mounts"] if m["destination"] == "/sys/fs/cgroup")
            assert mount["options"][-1] == ("rw" if handler else "ro")
        assert results["nested"][0] == "made\n" and results["nested"][2] == 0, results
        assert results[""][2] != 0 and "Read-only file system" in results[""][1], results


# -- the same requests against Debian's containerd 1.6 CRI ------------------------------------------


def comparable(spec: dict[str, Any], base: Path) -> dict[str, Any]:
    """The stored spec with what differs by run (ids, the pause pid, the daemon's directories)
    written alike, less the two known differences: containerd 1.6 writes runtime-spec 1.0.2-dev,
    and its default seccomp profile is older (it allows 14 fewer calls and socket(2) for every
    family, where 2.x's refuses AF_ALG and AF_VSOCK) — corral's is checked against 2.x's own above."""
    text = json.dumps(spec, sort_keys=True)
    text = re.sub(r"[0-9a-f]{64}", "ID", text)
    text = re.sub(r"/proc/\d+/ns/", "/proc/PID/ns/", text)
    text = re.sub(r'"' + re.escape(str(base.parent)) + r'[^"]*', '"TMP', text)
    out = json.loads(text)
    out.pop("ociVersion")
    if "seccomp" in out["linux"]:
        out["linux"]["seccomp"].pop("syscalls")
    return out


def spec_facts(cri: CRIClient, ctr: Callable[..., str], base: Path) -> dict[str, Any]:
    """A restricted container and a plain one: what runs inside them and their stored specs."""
    base.mkdir(parents=True, exist_ok=True)
    ctr("images", "import", str(users_image_archive(base)))
    sandbox = pod_config("cmp", sysctls={"kernel.shm_rmid_forced": "1"})
    pod_id = run(cri, sandbox)
    facts: dict[str, Any] = {}
    for name, config in (
        ("secure", secure_container("secure")),
        ("plain", container("plain", "exec sleep 1000")),
    ):
        cid = create(cri, pod_id, config, sandbox)
        start(cri, cid)
        status, _, _ = sh(cri, cid, "cat /proc/self/status")
        facts[f"{name} inside"] = {
            key: status_field(status, key)
            for key in ("Seccomp", "NoNewPrivs", "CapBnd", "CapEff", "Uid", "Gid")
        } | {
            "groups": sorted(status_field(status, "Groups").split()),
            "timer_list": sh(cri, cid, "wc -c < /proc/timer_list")[0].strip() == "0",
            "hosts": sh(cri, cid, "cat /etc/hosts")[0],
            "hostname": sh(cri, cid, "cat /etc/hostname; echo $HOSTNAME")[0],
            "sysctl": sh(cri, cid, "cat /proc/sys/kernel/shm_rmid_forced")[0],
            "oom": sh(cri, cid, "cat /proc/self/oom_score_adj")[0],
            "rootfs": sh(cri, cid, "touch /probe 2>/dev/null; echo $?")[0],
        }
        facts[f"{name} spec"] = comparable(spec_of(ctr, cid), base)
    return facts


@contextlib.contextmanager
def containerd_16(tmp_path: Path, node: Node) -> Iterator[tuple[CRIClient, Callable[..., str]]]:
    extra = '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]' + PASSTHROUGH
    with containerd16_cri.containerd_16(tmp_path / "containerd", node.netns, extra) as (cri, ctr, _network):
        yield cri, ctr


PASSTHROUGH = """
    runtime_type = "io.containerd.runc.v2"
    pod_annotations = ["io.example/*"]
    container_annotations = ["io.example.c/*"]
"""


def test_the_stored_spec_and_what_runs_match_containerd_1_6s_cri(tmp_path: Path, node: Node) -> None:
    handler = '[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]' + PASSTHROUGH
    with corral_node(tmp_path / "corral", node, handler) as (daemon, cri):
        ours = spec_facts(cri, lambda *a: daemon.ctr(*a, namespace=NS).stdout, tmp_path / "corral-run")
    with containerd_16(tmp_path, node) as (cri16, ctr16):
        theirs = spec_facts(cri16, ctr16, tmp_path / "containerd-run")
    assert ours["secure spec"]["linux"]["maskedPaths"] == KUBELET_MASKED
    passed = {k: v for k, v in ours["secure spec"]["annotations"].items() if "example" in k}
    assert passed == {"io.example/pod": "cmp", "io.example.c/kept": "yes"}  # no other request annotation
    assert "maskedPaths" not in ours["plain spec"]["linux"]  # none asked for, none applied (also 1.6.20)
    assert ours == theirs
