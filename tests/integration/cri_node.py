"""The node the CRI integration tests run their pods on, and the calls they make to it.

corrald runs in a network namespace of its own (the node) with a temp CNI configuration, so the
bridge, veths and iptables rules the plugins make never touch the machine's. The helpers are plain
CRI calls (pods, containers, user namespaces) and the checks that a pod left nothing behind; the
fixtures (``node``, ``open_base``) reach the tests through conftest.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cri_client import CRIClient
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from harness import Daemon
from tooling import require_root, require_tool

from corral.api.types.runtime import v1 as pb
from corral.plugins.images.build import build_busybox_image

NS = "k8s.io"
PLUGIN_STATE = "io.containerd.podsandbox.controller.v1.podsandbox"
CNI_BIN = Path("/usr/lib/cni")


# -- the node: a network namespace, corrald in it, the pods' CNI network ---------------------------
@dataclass
class Node:
    """A network namespace standing in for the node, held by a sleeping process."""

    holder: subprocess.Popen[bytes]

    @property
    def netns(self) -> str:
        return f"/proc/{self.holder.pid}/ns/net"

    def run(self, *argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["nsenter", f"--net={self.netns}", *argv],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )


@dataclass
class NodeDaemon(Daemon):
    node_netns: str = ""

    def command(self) -> list[str]:
        return ["nsenter", f"--net={self.node_netns}", *super().command()]


@pytest.fixture
def node() -> Iterator[Node]:
    require_root()
    for tool in ("nsenter", "unshare", "iptables-save", "busybox"):
        require_tool(tool)
    if not (CNI_BIN / "bridge").exists():
        pytest.fail("containernetworking-plugins is not installed (./dev installs it)")
    holder = subprocess.Popen(["unshare", "--net", "sleep", "infinity"])
    n = Node(holder)
    # Until unshare has run, the holder is still in this namespace: wait for its own.
    deadline = time.monotonic() + 5
    while os.stat(n.netns).st_ino == os.stat("/proc/self/ns/net").st_ino:
        assert time.monotonic() < deadline, "the node namespace did not come up"
        time.sleep(0.02)
    n.run("ip", "link", "set", "lo", "up")
    assert "LOOPBACK,UP" in n.run("ip", "link", "show", "lo").stdout
    try:
        yield n
    finally:
        holder.kill()
        holder.wait()


@dataclass
class Network:
    conf_dir: Path
    ipam_dir: Path
    bridge: str
    subnet_prefix: str


def write_network(
    base: Path,
    *,
    extra_plugins: list[dict[str, Any]] | None = None,
    name: str = "pods",
    hairpin: bool = False,
) -> Network:
    """A bridge network list (host-local IPAM, portmap) on a bridge and subnet of its own; with
    ``hairpin``, the bridge plugin's ``hairpinMode``."""
    conf = base / "net.d"
    conf.mkdir(parents=True)
    bridge = f"crl{secrets.token_hex(3)}"
    prefix = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(250)}"
    plugins: list[dict[str, Any]] = [
        {
            "type": "bridge",
            "bridge": bridge,
            "isGateway": True,
            "ipMasq": True,
            **({"hairpinMode": True} if hairpin else {}),
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": f"{prefix}.0/24"}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": str(base / "ipam"),
            },
        },
        {"type": "portmap", "capabilities": {"portMappings": True}},
        *(extra_plugins or []),
    ]
    doc = {"cniVersion": "1.0.0", "name": name, "plugins": plugins}
    (conf / f"10-{name}.conflist").write_text(json.dumps(doc))
    return Network(conf, base / "ipam" / name, bridge, prefix)


def start_daemon(base: Path, node: Node, network: Network, extra: str = "") -> NodeDaemon:
    # CNI where an operator's containerd config has it: the pod sandbox controller takes it from
    # the CRI runtime plugin's section.
    config = f"""
        version = 3
        [plugins."io.containerd.cri.v1.runtime".cni]
        conf_dir = "{network.conf_dir}"
        bin_dir = "{CNI_BIN}"
        {extra}
    """
    return NodeDaemon(base / "corral", config, node_netns=node.netns).start()  # type: ignore[return-value]


# -- what a pod leaves behind ----------------------------------------------------------------------
def shims_of(daemon: Daemon) -> list[int]:
    """Live shim processes started for this daemon (their command line names its socket)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().split()[2]
        except OSError:
            continue
        if b"containerd-shim-runc-v2" in cmdline[0] and daemon.socket.encode() in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def pod_cgroups(pid: int, sandbox_id: str) -> list[Path]:
    """The cgroup directories (v1 hierarchies or v2) of a pause process that name its sandbox."""
    found = []
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if sandbox_id not in path:
            continue
        hierarchy = controllers.split(",")[0].removeprefix("name=") if controllers else "unified"
        base = Path("/sys/fs/cgroup") / hierarchy
        if not base.is_dir():
            base = Path("/sys/fs/cgroup")
        found.append(base / path.lstrip("/"))
    return found


def assert_nothing_left(
    daemon: Daemon,
    node: Node,
    network: Network,
    ids: list[str],
    ips: list[str],
    cgroups: list[Path] = (),  # type: ignore[assignment]
) -> None:
    """No veth, iptables rule, IP allocation, mount, netns file, shim or cgroup of these pods."""
    links = node.run("ip", "-o", "link").stdout
    assert "veth" not in links, links
    rules = node.run("iptables-save").stdout
    for needle in [*ids, *ips]:
        assert needle not in rules, f"{needle} is still in the node's iptables:\n{rules}"
    allocated = sorted(p.name for p in network.ipam_dir.iterdir()) if network.ipam_dir.exists() else []
    assert [a for a in allocated if a.startswith(network.subnet_prefix)] == [], allocated
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(daemon.base) not in mounts, [m for m in mounts.splitlines() if str(daemon.base) in m]
    netns_dir = daemon.base / "state" / PLUGIN_STATE / "netns"
    assert not netns_dir.exists() or list(netns_dir.iterdir()) == []
    cache = daemon.base / "state" / PLUGIN_STATE / "cni"
    assert not cache.exists() or list(cache.iterdir()) == []
    for cgroup in cgroups:
        assert not cgroup.exists(), cgroup
    deadline = time.monotonic() + 10
    while shims_of(daemon) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert shims_of(daemon) == []
    assert daemon.ctr("containers", "ls", "-q", namespace=NS).stdout.split() == []
    snapshots = daemon.ctr("snapshots", "ls", namespace=NS).stdout
    for sid in ids:
        assert sid not in snapshots.split()


# -- pods through the CRI --------------------------------------------------------------------------
def pod(name: str, *, attempt: int = 0, labels: dict[str, str] | None = None) -> pb.PodSandboxConfig:
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace="default", attempt=attempt),
        hostname=name,
        labels=labels if labels is not None else {"app": name},
        annotations={"note": f"about {name}"},
    )


def run(cri: CRIClient, config: pb.PodSandboxConfig, handler: str = "") -> str:
    reply = cri.runtime("run_pod_sandbox", pb.RunPodSandboxRequest(config=config, runtime_handler=handler))
    return str(reply.pod_sandbox_id)


def status(cri: CRIClient, sandbox_id: str, verbose: bool = False) -> pb.PodSandboxStatusResponse:
    return cri.runtime(
        "pod_sandbox_status", pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=verbose)
    )


def listed(cri: CRIClient, flt: pb.PodSandboxFilter | None = None) -> list[pb.PodSandbox]:
    return list(cri.runtime("list_pod_sandbox", pb.ListPodSandboxRequest(filter=flt)).items)


def stop(cri: CRIClient, sandbox_id: str) -> None:
    cri.runtime("stop_pod_sandbox", pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))


def remove(cri: CRIClient, sandbox_id: str) -> None:
    cri.runtime("remove_pod_sandbox", pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))


def remove_all(daemon: NodeDaemon) -> None:
    if daemon.proc is None or daemon.proc.poll() is not None:
        return
    cri = CRIClient(daemon.socket)
    with contextlib.suppress(Exception):
        for item in listed(cri):
            remove(cri, item.id)


def code_of(call: object) -> tuple[Status, str]:
    with pytest.raises(GRPCError) as err:
        call()  # type: ignore[operator]
    return err.value.status, str(err.value.message)


def sandbox_pid(cri: CRIClient, sandbox_id: str) -> int:
    return int(json.loads(status(cri, sandbox_id, verbose=True).info["info"])["pid"])


# -- containers through the CRI --------------------------------------------------------------------
BUSYBOX = "docker.io/library/busybox:latest"


def import_busybox(daemon: NodeDaemon, base: Path) -> None:
    archive = base / "busybox.tar"
    build_busybox_image(archive, names=(BUSYBOX,))
    daemon.ctr("images", "import", str(archive), namespace=NS)


def container(name: str, *args: str, log: str = "", **extra: object) -> pb.ContainerConfig:
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name),
        image=pb.ImageSpec(image=BUSYBOX),
        command=["/bin/sh", "-c"],
        args=list(args),
        log_path=log,
        labels={"c": name},
        **extra,  # type: ignore[arg-type]
    )


def create(cri: CRIClient, pod_id: str, config: pb.ContainerConfig, sandbox: pb.PodSandboxConfig) -> str:
    request = pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=sandbox)
    return str(cri.runtime("create_container", request).container_id)


def cstatus(cri: CRIClient, container_id: str) -> pb.ContainerStatus:
    return cri.runtime("container_status", pb.ContainerStatusRequest(container_id=container_id)).status


def containers(cri: CRIClient, flt: pb.ContainerFilter | None = None) -> list[pb.Container]:
    return list(cri.runtime("list_containers", pb.ListContainersRequest(filter=flt)).containers)


def wait_for(predicate: object, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def busybox_archive(base: Path) -> Path:
    archive = base / "busybox.tar"
    if not archive.exists():
        build_busybox_image(archive, names=(BUSYBOX,))
    return archive


# -- user namespaces -------------------------------------------------------------------------------
UIDS = [(0, 100000, 1000), (1000, 300000, 64536)]
"""Non-contiguous on the host: root…999 at 100000, 1000… at 300000."""
GIDS = [(0, 200000, 65536)]


def userns(
    mode: pb.NamespaceMode, uids: list[tuple[int, int, int]], gids: list[tuple[int, int, int]]
) -> pb.UserNamespace:
    return pb.UserNamespace(
        mode=mode,
        uids=[pb.IdMapping(container_id=c, host_id=h, length=n) for c, h, n in uids],
        gids=[pb.IdMapping(container_id=c, host_id=h, length=n) for c, h, n in gids],
    )


def with_userns(config: pb.PodSandboxConfig, options: pb.UserNamespace) -> pb.PodSandboxConfig:
    config.linux = pb.LinuxPodSandboxConfig(
        security_context=pb.LinuxSandboxSecurityContext(
            namespace_options=pb.NamespaceOption(userns_options=options)
        )
    )
    return config


def container_in(name: str, options: pb.UserNamespace | None, *args: str) -> pb.ContainerConfig:
    config = container(name, *args)
    config.linux = pb.LinuxContainerConfig(
        security_context=pb.LinuxContainerSecurityContext(
            namespace_options=pb.NamespaceOption(userns_options=options)
        )
    )
    return config


@pytest.fixture
def open_base() -> Iterator[Path]:
    """A daemon base the pod's root (a host uid of the mapping) can traverse to its bundles: not
    under /tmp/pytest-of-root, which every pytest session on the machine sets back to 0700."""
    base = Path(tempfile.mkdtemp(prefix="corral-userns-", dir="/tmp"))
    base.chmod(0o711)
    try:
        yield base
    finally:
        if not any(str(base) in line for line in Path("/proc/self/mountinfo").read_text().splitlines()):
            shutil.rmtree(base, ignore_errors=True)
