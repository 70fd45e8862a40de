"""CRI networking: a pod's hostPort through Debian's portmap plugin, and teardowns that leave
nothing behind — after StopPodSandbox and RemovePodSandbox, after corrald is killed with SIGKILL,
after a network setup that fails halfway — checked with the same client against corral and
Debian's containerd 1.6.

The node is a network namespace of its own, with an interface standing in for the host's LAN
address (``lan0``, 192.168.<n>.1) and a peer namespace on the other end of it standing in for
another machine on that LAN; corrald (or containerd) runs in the node namespace. The network list
is containerd's default one (``10-containerd-net.conflist`` of its install-cni script: bridge with
``isGateway`` and ``ipMasq``, host-local IPAM, portmap with the ``portMappings`` capability) but
for the hairpin: where br_netfilter is loaded (``bridge-nf-call-iptables`` 1, as here and on most
Kubernetes nodes) the DNAT of a pod's connection to its own hostPort happens on the bridge, which
sends the frame back out of the port it came in by only with ``hairpinMode`` on the veth
(containerd's ``promiscMode`` is not enough: that connection times out). Debian's portmap (1.1.1)
itself sets ``route_localnet`` on the bridge and marks connections from 127.0.0.1 and from the
pod's subnet for masquerading, so 127.0.0.1:<hostPort> needs nothing from the runtime but the
mapping.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cri_node
import pytest
from containerd16_cri import containerd_16
from cri_client import CRIClient
from cri_node import (
    BUSYBOX,
    CNI_BIN,
    NS,
    Network,
    Node,
    NodeDaemon,
    assert_nothing_left,
    container,
    create,
    listed,
    pod_cgroups,
    remove,
    remove_all,
    run,
    shims_of,
    start_daemon,
    status,
    stop,
)
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from tooling import require_root, require_tool

from corral.api.types.runtime import v1 as pb
from corral.plugins.images.build import build_busybox_image

pytestmark = pytest.mark.root

PAGE = "hello through the host port\n"
SERVE = f"mkdir -p /www && printf '{PAGE}' > /www/index.html && exec httpd -f -p 8080 -h /www"
SHARED_CHAINS = ("CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-MASQ", "CNI-HOSTPORT-SETMARK")
"""The chains portmap makes once per node and keeps (each pod's own chains and rules go)."""
SYSTEM_NETNS = Path("/var/run/netns")
"""Where containerd 1.6's CRI mounts its pods' namespaces (corral keeps them in its state dir)."""


# -- the node and its LAN ---------------------------------------------------------------------------
@dataclass
class Lan:
    """The node's LAN address and a peer machine (a namespace) on the other end of the wire."""

    node: Node
    peer: Node
    host_ip: str
    peer_ip: str


def _holder() -> Node:
    holder = subprocess.Popen(["unshare", "--net", "sleep", "infinity"])
    n = Node(holder)
    deadline = time.monotonic() + 5
    while os.stat(n.netns).st_ino == os.stat("/proc/self/ns/net").st_ino:
        assert time.monotonic() < deadline, "the namespace did not come up"
        time.sleep(0.02)
    n.run("ip", "link", "set", "lo", "up")
    return n


@contextlib.contextmanager
def make_lan() -> Iterator[Lan]:
    require_root()
    for tool in ("nsenter", "unshare", "ip", "iptables-save", "busybox"):
        require_tool(tool)
    if not (CNI_BIN / "portmap").exists():
        pytest.fail("containernetworking-plugins is not installed (./dev installs it)")
    node, peer = _holder(), _holder()
    try:
        net = f"192.168.{100 + secrets.randbelow(150)}"
        node.run(
            "ip", "link", "add", "lan0", "type", "veth", "peer", "name", "lan1", "netns", str(peer.holder.pid)
        )
        node.run("ip", "addr", "add", f"{net}.1/24", "dev", "lan0")
        node.run("ip", "link", "set", "lan0", "up")
        peer.run("ip", "addr", "add", f"{net}.2/24", "dev", "lan1")
        peer.run("ip", "link", "set", "lan1", "up")
        yield Lan(node, peer, f"{net}.1", f"{net}.2")
    finally:
        for n in (node, peer):
            n.holder.kill()
            n.holder.wait()


@pytest.fixture
def lan() -> Iterator[Lan]:
    with make_lan() as made:
        yield made


def write_network(base: Path, *, extra_plugins: list[dict[str, Any]] | None = None) -> Network:
    """containerd's default network list (install-cni's) with ``hairpinMode``, on a bridge and
    subnet of its own."""
    return cri_node.write_network(base, extra_plugins=extra_plugins, name="containerd-net", hairpin=True)


# -- what the node holds ----------------------------------------------------------------------------
def rules(node: Node) -> set[str]:
    """The node's iptables rules and chains (iptables-save without comments and counters)."""
    out = node.run("iptables-save").stdout
    kept = set()
    for line in out.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        kept.add(re.sub(r" \[\d+:\d+\]$", "", line))
    return kept


def added_rules(before: set[str], after: set[str]) -> set[str]:
    """Rules and chains in ``after`` that are not in ``before``, tables' own lines aside."""
    return {
        line
        for line in after - before
        if not line.startswith("*") and line != "COMMIT" and not re.fullmatch(r":[A-Z]+ (ACCEPT|DROP)", line)
    }


def assert_only_shared_chains(before: set[str], after: set[str], needles: list[str]) -> None:
    """What a teardown leaves in iptables is portmap's per-node chains and the jumps to them."""
    for line in added_rules(before, after):
        assert any(chain in line for chain in SHARED_CHAINS), f"left in iptables: {line}"
        assert not re.search(r"CNI-(DN-)?[0-9a-f]{16,}", line), f"a pod's chain is left: {line}"
    text = "\n".join(after)
    for needle in needles:
        assert needle not in text, f"{needle} is still in the node's iptables:\n{text}"


def bridge_ports(node: Node, bridge: str) -> list[str]:
    shown = node.run("ip", "-o", "link", "show", "master", bridge, check=False)
    return [line for line in shown.stdout.splitlines() if line.strip()]


def fetch(where: Node, ip: str, port: int, timeout: float = 20.0) -> str:
    """GET / from ``where`` (busybox wget), retried while the server comes up; "" if it never answers."""
    deadline = time.monotonic() + timeout
    while True:
        got = where.run(
            "busybox", "timeout", "5", "busybox", "wget", "-q", "-O", "-", f"http://{ip}:{port}/",
            check=False,
        )  # fmt: skip
        if got.returncode == 0 or time.monotonic() > deadline:
            return got.stdout if got.returncode == 0 else ""
        time.sleep(0.2)


def fetch_from_container(cri: CRIClient, container_id: str, ip: str, port: int) -> str:
    """GET / from inside a container (busybox nc: the image has no NSS files for wget)."""
    cmd = ["sh", "-c", f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {ip} {port}"]
    deadline = time.monotonic() + 20
    while True:
        reply = cri.runtime("exec_sync", pb.ExecSyncRequest(container_id=container_id, cmd=cmd, timeout=10))
        if (reply.exit_code == 0 and reply.stdout) or time.monotonic() > deadline:
            return str(reply.stdout.decode(errors="replace")).rpartition("\r\n\r\n")[2]
        time.sleep(0.2)


def host_port() -> int:
    return 20000 + secrets.randbelow(20000)


def web_pod(name: str, port: int, log_dir: Path) -> pb.PodSandboxConfig:
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace="default"),
        hostname=name,
        labels={"app": name},
        log_directory=str(log_dir),
        port_mappings=[pb.PortMapping(protocol=pb.Protocol.TCP, container_port=8080, host_port=port)],
    )


def start_web(cri: CRIClient, pod_id: str, config: pb.PodSandboxConfig) -> str:
    cid = create(cri, pod_id, container("web", SERVE), config)
    cri.runtime("start_container", pb.StartContainerRequest(container_id=cid))
    return cid


def import_busybox(ctr: Callable[..., object], base: Path) -> None:
    archive = base / "busybox.tar"
    if not archive.exists():
        build_busybox_image(archive, names=(BUSYBOX,))
    ctr("images", "import", str(archive))


# -- the hostPort scenario, for corral and containerd alike ----------------------------------------
def hostport_scenario(
    cri: CRIClient, ctr: Callable[..., object], lan: Lan, network: Network, base: Path
) -> dict[str, object]:
    """A pod serving on 8080 with hostPort ``port``: who reaches it, and what its teardown leaves."""
    facts: dict[str, object] = {}
    base.mkdir(parents=True, exist_ok=True)
    import_busybox(ctr, base)
    node = lan.node
    netns_before = set(os.listdir(SYSTEM_NETNS)) if SYSTEM_NETNS.is_dir() else set()
    before = rules(node)
    port = host_port()
    config = web_pod("web", port, base / "logs")
    pod_id = run(cri, config)
    ip = status(cri, pod_id).status.network.ip
    facts["pod ip on the bridge"] = ip.startswith(network.subnet_prefix + ".")
    facts["veths on the bridge"] = len(bridge_ports(node, network.bridge))
    web = start_web(cri, pod_id, config)
    facts["from the pod ip"] = fetch(node, ip, 8080)
    facts["from the node on 127.0.0.1"] = fetch(node, "127.0.0.1", port)
    facts["from the node on its lan ip"] = fetch(node, lan.host_ip, port)
    facts["from the lan"] = fetch(lan.peer, lan.host_ip, port)
    facts["from the pod itself through the host port"] = fetch_from_container(cri, web, lan.host_ip, port)
    facts["the pod's rules name it"] = any(pod_id in line for line in added_rules(before, rules(node)))
    facts["route_localnet on the bridge"] = node.run(
        "cat", f"/proc/sys/net/ipv4/conf/{network.bridge}/route_localnet"
    ).stdout.strip()

    stop(cri, pod_id)
    facts["stopped: ip"] = status(cri, pod_id).status.network.ip
    facts["stopped: 127.0.0.1 answers"] = fetch(node, "127.0.0.1", port, timeout=0) != ""
    facts["stopped: veths on the bridge"] = bridge_ports(node, network.bridge)
    remove(cri, pod_id)
    after = rules(node)
    assert_only_shared_chains(before, after, [pod_id, ip, str(port)])
    facts["shared chains left"] = sorted(
        {c for line in added_rules(before, after) for c in SHARED_CHAINS if c in line}
    )
    facts["ip allocations left"] = sorted(
        p.name for p in network.ipam_dir.iterdir() if p.name.startswith(network.subnet_prefix)
    ) if network.ipam_dir.exists() else []  # fmt: skip
    netns_after = set(os.listdir(SYSTEM_NETNS)) if SYSTEM_NETNS.is_dir() else set()
    facts["netns left in /var/run/netns"] = sorted(netns_after - netns_before)
    facts["links"] = sorted(
        line.split(":")[1].strip().split("@")[0] for line in node.run("ip", "-o", "link").stdout.splitlines()
    )

    # A second pod on the same port: the rules of the first are gone, the set returns to the same.
    again = run(cri, config)
    start_web(cri, again, config)
    facts["second pod from 127.0.0.1"] = fetch(node, "127.0.0.1", port)
    remove(cri, again)
    facts["rules after a second pod as after the first"] = rules(node) == after
    facts["listed"] = listed(cri)
    return facts


EXPECTED_LINKS = ["lan0", "lo"]


def assert_hostport_facts(facts: dict[str, object], network: Network) -> None:
    assert facts["pod ip on the bridge"] is True
    assert facts["veths on the bridge"] == 1
    for where in (
        "from the pod ip",
        "from the node on 127.0.0.1",
        "from the node on its lan ip",
        "from the lan",
        "from the pod itself through the host port",
        "second pod from 127.0.0.1",
    ):
        assert facts[where] == PAGE, (where, facts[where])
    assert facts["the pod's rules name it"] is True
    assert facts["route_localnet on the bridge"] == "1"
    assert facts["stopped: ip"] == "" and facts["stopped: 127.0.0.1 answers"] is False
    assert facts["stopped: veths on the bridge"] == []
    assert facts["ip allocations left"] == [] and facts["netns left in /var/run/netns"] == []
    assert facts["links"] == sorted([*EXPECTED_LINKS, network.bridge])  # the bridge is shared, kept
    assert facts["rules after a second pod as after the first"] is True
    assert facts["listed"] == []


def test_a_host_port_answers_on_127_0_0_1_the_host_ip_the_lan_and_the_pod_itself(
    tmp_path: Path, lan: Lan
) -> None:
    network = write_network(tmp_path)
    daemon = start_daemon(tmp_path, lan.node, network)
    try:
        cri = CRIClient(daemon.socket)
        facts = hostport_scenario(
            cri, lambda *a: daemon.ctr(*a, namespace=NS), lan, network, tmp_path / "run"
        )
        assert_hostport_facts(facts, network)
        assert facts["shared chains left"] == sorted(SHARED_CHAINS)
        assert_nothing_left(daemon, lan.node, network, [], [])
    finally:
        remove_all(daemon)
        daemon.stop()


def test_a_host_port_bound_to_one_host_ip_answers_there_only(tmp_path: Path, lan: Lan) -> None:
    """PortMapping.host_ip: portmap's DNAT matches that destination only."""
    network = write_network(tmp_path)
    daemon = start_daemon(tmp_path, lan.node, network)
    try:
        import_busybox(lambda *a: daemon.ctr(*a, namespace=NS), tmp_path)
        cri = CRIClient(daemon.socket)
        before = rules(lan.node)
        port = host_port()
        config = web_pod("bound", port, tmp_path / "logs")
        config.port_mappings[0].host_ip = lan.host_ip
        pod_id = run(cri, config)
        start_web(cri, pod_id, config)
        ip = status(cri, pod_id).status.network.ip
        assert fetch(lan.peer, lan.host_ip, port) == PAGE
        assert fetch(lan.node, lan.host_ip, port) == PAGE
        assert fetch(lan.node, "127.0.0.1", port, timeout=0) == ""
        dnat = [line for line in added_rules(before, rules(lan.node)) if "DNAT --to-destination" in line]
        assert dnat and all(f"-d {lan.host_ip}/32" in line for line in dnat), dnat
        remove(cri, pod_id)
        assert_only_shared_chains(before, rules(lan.node), [pod_id, ip, str(port)])
        assert_nothing_left(daemon, lan.node, network, [pod_id], [ip])
    finally:
        remove_all(daemon)
        daemon.stop()


def test_two_host_ports_of_two_pods_each_reach_their_own_pod(tmp_path: Path, lan: Lan) -> None:
    network = write_network(tmp_path)
    daemon = start_daemon(tmp_path, lan.node, network)
    try:
        import_busybox(lambda *a: daemon.ctr(*a, namespace=NS), tmp_path)
        cri = CRIClient(daemon.socket)
        before = rules(lan.node)
        ports = [host_port(), host_port()]
        while ports[0] == ports[1]:
            ports[1] = host_port()
        pods, ips = [], []
        for i, port in enumerate(ports):
            config = web_pod(f"web{i}", port, tmp_path / f"logs{i}")
            pod_id = run(cri, config)
            serve = f"mkdir -p /www && echo pod {i} > /www/index.html && exec httpd -f -p 8080 -h /www"
            cid = create(cri, pod_id, container("web", serve), config)
            cri.runtime("start_container", pb.StartContainerRequest(container_id=cid))
            pods.append(pod_id)
            ips.append(status(cri, pod_id).status.network.ip)
        assert [fetch(lan.node, "127.0.0.1", p) for p in ports] == ["pod 0\n", "pod 1\n"]
        assert [fetch(lan.peer, lan.host_ip, p) for p in ports] == ["pod 0\n", "pod 1\n"]
        # One pod stopped: its port goes, the other's stays.
        stop(cri, pods[0])
        assert fetch(lan.node, "127.0.0.1", ports[0], timeout=0) == ""
        assert fetch(lan.node, "127.0.0.1", ports[1]) == "pod 1\n"
        for pod_id in pods:
            remove(cri, pod_id)
        assert_only_shared_chains(before, rules(lan.node), [*pods, *ips, *map(str, ports)])
        assert bridge_ports(lan.node, network.bridge) == []
        assert_nothing_left(daemon, lan.node, network, pods, ips)
    finally:
        remove_all(daemon)
        daemon.stop()


def test_corrald_killed_with_a_host_port_pod_running_keeps_it_reachable_and_removes_it_cleanly(
    tmp_path: Path, lan: Lan
) -> None:
    network = write_network(tmp_path)
    daemon = start_daemon(tmp_path, lan.node, network)
    try:
        import_busybox(lambda *a: daemon.ctr(*a, namespace=NS), tmp_path)
        cri = CRIClient(daemon.socket)
        before = rules(lan.node)
        port = host_port()
        config = web_pod("survivor", port, tmp_path / "logs")
        pod_id = run(cri, config)
        web = start_web(cri, pod_id, config)
        ip = status(cri, pod_id).status.network.ip
        assert fetch(lan.node, "127.0.0.1", port) == PAGE
        pid = int(json.loads(status(cri, pod_id, verbose=True).info["info"])["pid"])
        cgroups = pod_cgroups(pid, pod_id)
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait()
        daemon.proc = None
        # The pod and its port outlive the daemon, and the daemon's next start keeps them.
        assert fetch(lan.node, "127.0.0.1", port) == PAGE
        daemon.start()
        cri = CRIClient(daemon.socket)
        [item] = listed(cri)
        assert (item.id, item.state) == (pod_id, pb.PodSandboxState.SANDBOX_READY)
        assert status(cri, pod_id).status.network.ip == ip
        assert fetch(lan.peer, lan.host_ip, port) == PAGE
        assert fetch_from_container(cri, web, lan.host_ip, port) == PAGE
        stop(cri, pod_id)
        assert fetch(lan.node, "127.0.0.1", port, timeout=0) == ""
        remove(cri, pod_id)
        assert listed(cri) == []
        assert_only_shared_chains(before, rules(lan.node), [pod_id, ip, str(port)])
        assert bridge_ports(lan.node, network.bridge) == []
        assert_nothing_left(daemon, lan.node, network, [pod_id, web], [ip], cgroups)
        assert shims_of(daemon) == []
    finally:
        remove_all(daemon)
        daemon.stop()


def test_corrald_killed_then_the_pod_stopped_before_the_restart_finds_everything_released(
    tmp_path: Path, lan: Lan
) -> None:
    """kill -9, and a restart that finds the pause process gone too (the node rebooted its pods,
    say): the restart itself releases the pod's network, and its stop and remove leave nothing."""
    network = write_network(tmp_path)
    daemon = start_daemon(tmp_path, lan.node, network)
    try:
        cri = CRIClient(daemon.socket)
        before = rules(lan.node)
        port = host_port()
        pod_id = run(cri, web_pod("orphan", port, tmp_path / "logs"))
        ip = status(cri, pod_id).status.network.ip
        pid = int(json.loads(status(cri, pod_id, verbose=True).info["info"])["pid"])
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait()
        daemon.proc = None
        os.kill(pid, signal.SIGKILL)
        daemon.start()
        cri = CRIClient(daemon.socket)
        [item] = listed(cri)
        assert (item.id, item.state) == (pod_id, pb.PodSandboxState.SANDBOX_NOTREADY)
        stop(cri, pod_id)
        remove(cri, pod_id)
        assert listed(cri) == []
        assert_only_shared_chains(before, rules(lan.node), [pod_id, ip, str(port)])
        assert bridge_ports(lan.node, network.bridge) == []
        assert_nothing_left(daemon, lan.node, network, [pod_id], [ip])
    finally:
        remove_all(daemon)
        daemon.stop()


FAILING_PLUGIN = """#!/bin/sh
cat >/dev/null
if [ "$CNI_COMMAND" = ADD ]; then
    echo '{"cniVersion":"1.0.0","code":999,"msg":"refused on purpose","details":"after bridge and portmap"}'
    exit 1
fi
exit 0
"""


def refusing_bin_dir(base: Path) -> Path:
    """The CNI plugins of the list, and ``refuse``, which fails every ADD after the others ran."""
    bin_dir = base / "cni-bin"
    bin_dir.mkdir(parents=True)
    for name in ("bridge", "host-local", "portmap", "loopback"):
        (bin_dir / name).symlink_to(CNI_BIN / name)
    (bin_dir / "refuse").write_text(FAILING_PLUGIN)
    (bin_dir / "refuse").chmod(0o755)
    return bin_dir


def refusing_network(base: Path) -> Network:
    return write_network(base, extra_plugins=[{"type": "refuse"}])


def test_a_pod_whose_network_setup_fails_halfway_is_rolled_back_leaving_nothing(
    tmp_path: Path, lan: Lan
) -> None:
    """bridge and portmap succeed, the third plugin of the list fails: the veth, the IP, the DNAT
    rules and the namespace they made go again, and the pod is not listed."""
    network = refusing_network(tmp_path)
    bin_dir = refusing_bin_dir(tmp_path)
    config = f"""
        version = 3
        [plugins."io.containerd.podsandbox.controller.v1.podsandbox"]
        cni_conf_dir = "{network.conf_dir}"
        cni_bin_dirs = ["{bin_dir}"]
        [plugins."io.containerd.cri.v1.runtime".cni]
        conf_dir = "{network.conf_dir}"
    """
    daemon = NodeDaemon(tmp_path / "corral", config, node_netns=lan.node.netns).start()
    try:
        cri = CRIClient(daemon.socket)
        before = rules(lan.node)
        port = host_port()
        with pytest.raises(GRPCError) as failed:
            run(cri, web_pod("half", port, tmp_path / "logs"))
        message = failed.value.message or ""
        assert failed.value.status != Status.OK
        # containerd's RunPodSandbox words it so (it sets up the network itself, before the
        # controller's start, in 1.6 and 2.x alike).
        assert re.fullmatch(
            r'failed to setup network for sandbox "[0-9a-f]{64}": '
            r'plugin type="refuse" name="containerd-net" failed \(add\): refused on purpose.*',
            message,
            re.DOTALL,
        ), message
        assert listed(cri) == []
        assert_only_shared_chains(before, rules(lan.node), [str(port), network.subnet_prefix + "."])
        assert bridge_ports(lan.node, network.bridge) == []
        assert_nothing_left(daemon, lan.node, network, [], [])
        # The name is free again, and a network that works gives the same pod its port.
        (bin_dir / "refuse").write_text("#!/bin/sh\ncat\n")
        ok = run(cri, web_pod("half", port, tmp_path / "logs"))
        assert status(cri, ok).status.state == pb.PodSandboxState.SANDBOX_READY
        remove(cri, ok)
        assert_nothing_left(daemon, lan.node, network, [ok], [])
    finally:
        remove_all(daemon)
        daemon.stop()


def test_a_network_setup_failure_reads_as_containerd_1_6s(tmp_path: Path) -> None:
    """The same pod on the same failing network list, against corrald and containerd 1.6's CRI:
    the same status and the same message, but for the sandbox id."""
    require_tool("containerd")

    def failure(cri: CRIClient) -> tuple[Status, str]:
        with pytest.raises(GRPCError) as failed:
            run(cri, web_pod("refused", host_port(), tmp_path / "logs"))
        sandbox = re.compile(r'sandbox "[0-9a-f]{64}"')
        return failed.value.status, sandbox.sub('sandbox "ID"', failed.value.message or "")

    with make_lan() as lan:
        network = refusing_network(tmp_path / "corral-net")
        config = f"""
            version = 3
            [plugins."io.containerd.podsandbox.controller.v1.podsandbox"]
            cni_conf_dir = "{network.conf_dir}"
            cni_bin_dirs = ["{refusing_bin_dir(tmp_path / "corral-net")}"]
            [plugins."io.containerd.cri.v1.runtime".cni]
            conf_dir = "{network.conf_dir}"
        """
        daemon = NodeDaemon(tmp_path / "corral", config, node_netns=lan.node.netns).start()
        try:
            ours = failure(CRIClient(daemon.socket))
        finally:
            remove_all(daemon)
            daemon.stop()
    with make_lan() as lan:
        base = tmp_path / "containerd"
        bin_dir = refusing_bin_dir(base)
        with containerd_16(base, lan.node.netns, network_list=refusing_network, bin_dir=bin_dir) as (
            cri,
            _,
            _,
        ):
            theirs = failure(cri)
    assert theirs[1].startswith('failed to setup network for sandbox "ID": '), theirs
    # containerd 1.6's CNI library names the plugin's type only; 2.x's (and corral) name the
    # network too. containerd answers Unknown (it wraps no kind); corral FailedPrecondition.
    assert ours[0] == Status.FAILED_PRECONDITION and theirs[0] == Status.UNKNOWN
    assert ours[1].replace(' name="containerd-net"', "") == theirs[1]


# -- the same hostPort scenario against Debian's containerd 1.6 CRI --------------------------------
def test_the_host_port_scenario_matches_containerd_1_6s_cri(tmp_path: Path) -> None:
    require_tool("containerd")
    with make_lan() as lan:
        network = write_network(tmp_path / "corral-net")
        daemon = start_daemon(tmp_path, lan.node, network)
        try:
            ours = hostport_scenario(
                CRIClient(daemon.socket),
                lambda *a: daemon.ctr(*a, namespace=NS),
                lan,
                network,
                tmp_path / "ours",
            )
        finally:
            remove_all(daemon)
            daemon.stop()
    assert_hostport_facts(ours, network)

    with make_lan() as lan:
        base = tmp_path / "containerd"
        with containerd_16(base, lan.node.netns, network_list=write_network) as (cri, their_ctr, theirs_net):
            theirs = hostport_scenario(cri, their_ctr, lan, theirs_net, base / "run")
    ours_links, theirs_links = ours.pop("links"), theirs.pop("links")
    assert ours_links == sorted([*EXPECTED_LINKS, network.bridge])
    assert theirs_links == sorted([*EXPECTED_LINKS, theirs_net.bridge])
    assert ours == theirs
