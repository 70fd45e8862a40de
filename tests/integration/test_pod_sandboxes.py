"""Pod sandboxes through containerd's sandbox API on the real socket: the pod sandbox controller runs
the pause process with runc's shim in a network namespace attached by Debian's CNI plugins.

corrald runs in a network namespace of its own (the node, for these tests), so the bridge, veths and
iptables rules the plugins make never touch the machine's; the CNI configuration is a temp dir.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from cri_node import (
    CNI_BIN,
    NS,
    Network,
    Node,
    NodeDaemon,
    assert_nothing_left,
    pod_cgroups,
    write_network,
)
from grpclib.client import Channel
from grpclib.exceptions import GRPCError
from harness import Daemon

from corral.api.types.containerd import types as ctypes
from corral.api.types.containerd.services.events import v1 as events_pb
from corral.api.types.containerd.services.sandbox import v1 as pb
from corral.api.types.google import protobuf
from corral.api.types.runtime import v1 as cri

CONTROLLER = "podsandbox"
RUN = secrets.token_hex(3)
"""Sandbox ids carry it: runc keeps its state per namespace machine-wide (/run/containerd/runc/k8s.io)."""


def sid(name: str) -> str:
    return f"{name}-{RUN}"


def start_daemon(base: Path, node: Node, network: Network) -> NodeDaemon:
    config = f"""
        version = 3
        [plugins."io.containerd.podsandbox.controller.v1.podsandbox"]
        cni_conf_dir = "{network.conf_dir}"
        cni_bin_dirs = ["{CNI_BIN}"]
    """
    return NodeDaemon(base / "corral", config, node_netns=node.netns).start()  # type: ignore[return-value]


def stop_all(daemon: Daemon) -> None:
    """Stop and remove whatever pods a failed test left (a stopped daemon leaves its pods running)."""
    if daemon.proc is None or daemon.proc.poll() is not None:
        return

    async def body(pods: Pods) -> None:
        listed = await pods.store.list(pb.StoreListRequest())
        for sandbox in listed.list:
            with contextlib.suppress(GRPCError):
                await pods.ctl.stop(
                    pb.ControllerStopRequest(sandbox_id=sandbox.sandbox_id, sandboxer=CONTROLLER)
                )
                await pods.ctl.shutdown(
                    pb.ControllerShutdownRequest(sandbox_id=sandbox.sandbox_id, sandboxer=CONTROLLER)
                )

    with contextlib.suppress(Exception):
        with_pods(daemon.socket, body)


def pod_config(name: str, *, ports: tuple[tuple[int, int], ...] = ()) -> cri.PodSandboxConfig:
    return cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace="default"),
        hostname=name,
        labels={"app": name},
        port_mappings=[cri.PortMapping(container_port=c, host_port=h) for h, c in ports],
    )


class Pods:
    """The sandbox Store and Controller over the daemon's socket, in k8s.io."""

    def __init__(self, socket: str) -> None:
        self.channel = Channel(path=socket)
        md = {"containerd-namespace": NS}
        self.store = pb.StoreStub(self.channel, metadata=md)
        self.ctl = pb.ControllerStub(self.channel, metadata=md)

    def close(self) -> None:
        self.channel.close()

    async def run(
        self, sid: str, config: cri.PodSandboxConfig, runtime: str = "io.containerd.runc.v2"
    ) -> None:
        sandbox = ctypes.Sandbox(
            sandbox_id=sid, runtime=ctypes.SandboxRuntime(name=runtime), sandboxer=CONTROLLER
        )
        await self.store.create(pb.StoreCreateRequest(sandbox=sandbox))
        options = protobuf.Any(
            type_url="type.googleapis.com/runtime.v1.PodSandboxConfig", value=bytes(config)
        )
        await self.ctl.create(
            pb.ControllerCreateRequest(sandbox_id=sid, sandbox=sandbox, options=options, sandboxer=CONTROLLER)
        )
        await self.ctl.start(pb.ControllerStartRequest(sandbox_id=sid, sandboxer=CONTROLLER))

    async def status(self, sid: str, verbose: bool = False) -> pb.ControllerStatusResponse:
        return await self.ctl.status(
            pb.ControllerStatusRequest(sandbox_id=sid, sandboxer=CONTROLLER, verbose=verbose)
        )

    async def remove(self, sid: str) -> None:
        await self.ctl.stop(pb.ControllerStopRequest(sandbox_id=sid, sandboxer=CONTROLLER))
        await self.ctl.shutdown(pb.ControllerShutdownRequest(sandbox_id=sid, sandboxer=CONTROLLER))
        await self.store.delete(pb.StoreDeleteRequest(sandbox_id=sid))


def with_pods(socket: str, body: Any) -> Any:
    async def main() -> Any:
        pods = Pods(socket)
        try:
            return await body(pods)
        finally:
            pods.close()

    return anyio.run(main)


def processes_running(path: Path) -> list[int]:
    """Live processes whose command line names ``path``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(path).encode() in (entry / "cmdline").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def serve_http(netns: str, port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        ["nsenter", f"--net={netns}", sys.executable, "-m", "http.server", str(port), "--bind", "0.0.0.0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd="/",
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        probe = subprocess.run(
            [
                "nsenter",
                f"--net={netns}",
                "busybox",
                "wget",
                "-q",
                "-O",
                "/dev/null",
                f"http://127.0.0.1:{port}/",
            ],
            capture_output=True,
        )
        if probe.returncode == 0:
            return server
        time.sleep(0.1)
    server.kill()
    raise AssertionError("the pod's server did not come up")


def test_two_pods_get_ips_reach_each_other_and_a_host_port_answers_on_localhost(
    tmp_path: Path, node: Node
) -> None:
    network = write_network(tmp_path)
    daemon = start_daemon(tmp_path, node, network)
    server: subprocess.Popen[bytes] | None = None
    try:
        topics: list[tuple[str, str]] = []

        async def start(pods: Pods) -> tuple[pb.ControllerStatusResponse, pb.ControllerStatusResponse]:
            events = events_pb.EventsStub(pods.channel)

            async def watch(task_status: anyio.abc.TaskStatus[None]) -> None:
                stream = events.subscribe(events_pb.SubscribeRequest(filters=['topic~="/sandboxes/"']))
                task_status.started()
                async for envelope in stream:
                    topics.append((envelope.namespace, envelope.topic))

            async with anyio.create_task_group() as tg:
                await tg.start(watch)
                await anyio.sleep(0.2)
                config_a = pod_config(sid("pod-a"))
                config_a.dns_config = cri.DnsConfig(
                    servers=["10.96.0.10"], searches=["svc.local"], options=["ndots:5"]
                )
                await pods.run(sid("pod-a"), config_a)
                await pods.run(sid("pod-b"), pod_config(sid("pod-b"), ports=((18080, 80),)))
                await anyio.sleep(0.3)
                tg.cancel_scope.cancel()
            return await pods.status(sid("pod-a"), verbose=True), await pods.status(sid("pod-b"))

        a, b = with_pods(daemon.socket, start)
        assert a.state == b.state == "SANDBOX_READY"
        assert topics == [(NS, "/sandboxes/create"), (NS, "/sandboxes/start")] * 2
        ip_a, ip_b = a.info["ip"], b.info["ip"]
        assert ip_a.startswith(network.subnet_prefix + ".") and ip_b.startswith(network.subnet_prefix + ".")
        assert ip_a != ip_b
        assert json.loads(a.info["info"])["ips"] == [ip_a]

        # The pause process holds the pod's namespaces: its network is the pod's file, its UTS
        # namespace carries the pod's hostname, its IPC namespace is not the node's.
        netns_a = Path(a.info["netns_path"])
        assert os.stat(f"/proc/{a.pid}/ns/net").st_ino == os.stat(netns_a).st_ino
        assert os.stat(f"/proc/{a.pid}/ns/ipc").st_ino != os.stat("/proc/self/ns/ipc").st_ino
        hostname = subprocess.run(
            ["nsenter", "-t", str(a.pid), "-u", "hostname"], capture_output=True, text=True
        )
        assert hostname.stdout.strip() == sid("pod-a")
        resolv = subprocess.run(
            ["nsenter", "-t", str(a.pid), "-m", "/bin/busybox", "cat", "/etc/resolv.conf"],
            capture_output=True,
            text=True,
        )
        assert resolv.stdout == "search svc.local\nnameserver 10.96.0.10\noptions ndots:5\n"
        cgroups = pod_cgroups(a.pid, sid("pod-a"))
        assert cgroups and all(d.is_dir() for d in cgroups)

        server = serve_http(b.info["netns_path"], 80)
        ping = subprocess.run(
            ["nsenter", f"--net={netns_a}", "busybox", "ping", "-c", "1", "-W", "5", ip_b],
            capture_output=True,
        )
        assert ping.returncode == 0, ping.stdout
        fetched = subprocess.run(
            ["nsenter", f"--net={netns_a}", "busybox", "wget", "-q", "-O", "-", f"http://{ip_b}:80/"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert fetched.returncode == 0 and "Directory listing" in fetched.stdout
        # The hostPort, from the node itself.
        local = node.run("busybox", "wget", "-q", "-O", "-", "http://127.0.0.1:18080/", check=False)
        assert local.returncode == 0 and "Directory listing" in local.stdout, local.stderr
        server.kill()
        server.wait()
        server = None

        async def measure(pods: Pods) -> tuple[pb.ControllerMetricsResponse, pb.ControllerPlatformResponse]:
            request = pb.ControllerMetricsRequest(sandbox_id=sid("pod-a"), sandboxer=CONTROLLER)
            platform = pb.ControllerPlatformRequest(sandbox_id=sid("pod-a"), sandboxer=CONTROLLER)
            return await pods.ctl.metrics(request), await pods.ctl.platform(platform)

        metrics, platform = with_pods(daemon.socket, measure)
        assert metrics.metrics is not None and metrics.metrics.id == sid("pod-a")
        assert metrics.metrics.data is not None and "io.containerd.cgroups" in metrics.metrics.data.type_url
        assert platform.platform is not None and platform.platform.os == "linux"
        images = daemon.ctr("images", "ls", namespace=NS).stdout
        assert "localhost/corral/pause:3.10" in images and "io.cri-containerd.pinned=pinned" in images

        async def remove(pods: Pods) -> pb.ControllerStatusResponse:
            await pods.ctl.stop(pb.ControllerStopRequest(sandbox_id=sid("pod-a"), sandboxer=CONTROLLER))
            stopped = await pods.status(sid("pod-a"))
            await pods.ctl.shutdown(
                pb.ControllerShutdownRequest(sandbox_id=sid("pod-a"), sandboxer=CONTROLLER)
            )
            await pods.store.delete(pb.StoreDeleteRequest(sandbox_id=sid("pod-a")))
            await pods.remove(sid("pod-b"))
            return stopped

        stopped = with_pods(daemon.socket, remove)
        assert stopped.state == "SANDBOX_NOTREADY" and stopped.info["ip"] == ""
        assert stopped.exited_at is not None
        assert_nothing_left(daemon, node, network, [sid("pod-a"), sid("pod-b")], [ip_a, ip_b], cgroups)
        assert (
            network.bridge in node.run("ip", "-o", "link").stdout
        )  # the bridge is shared, as with containerd
    finally:
        if server is not None:
            server.kill()
        stop_all(daemon)
        daemon.stop()


def test_corrald_killed_with_a_pod_running_finds_it_ready_after_a_restart_and_stops_it_cleanly(
    tmp_path: Path, node: Node
) -> None:
    network = write_network(tmp_path)
    daemon = start_daemon(tmp_path, node, network)
    try:

        async def start(pods: Pods) -> pb.ControllerStatusResponse:
            await pods.run(sid("survivor"), pod_config(sid("survivor"), ports=((18081, 80),)))
            return await pods.status(sid("survivor"))

        before = with_pods(daemon.socket, start)
        assert before.state == "SANDBOX_READY"
        cgroups = pod_cgroups(before.pid, sid("survivor"))
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait()
        daemon.proc = None
        os.kill(before.pid, 0)  # the pause process outlives the daemon
        daemon.start()

        async def after_restart(pods: Pods) -> tuple[pb.ControllerStatusResponse, pb.StoreGetResponse]:
            return await pods.status(sid("survivor")), await pods.store.get(
                pb.StoreGetRequest(sandbox_id=sid("survivor"))
            )

        again, record = with_pods(daemon.socket, after_restart)
        assert again.state == "SANDBOX_READY"
        assert (again.pid, again.info["ip"], again.created_at) == (
            before.pid,
            before.info["ip"],
            before.created_at,
        )
        assert record.sandbox is not None and record.sandbox.sandboxer == CONTROLLER
        # A clean stop leaves the pod running too, and the next start finds it again.
        daemon.restart()
        after_clean_stop, _ = with_pods(daemon.socket, after_restart)
        assert (after_clean_stop.state, after_clean_stop.pid) == ("SANDBOX_READY", before.pid)

        async def wait_and_stop(pods: Pods) -> pb.ControllerWaitResponse:
            async with anyio.create_task_group() as tg:
                result: list[pb.ControllerWaitResponse] = []

                async def wait() -> None:
                    result.append(
                        await pods.ctl.wait(
                            pb.ControllerWaitRequest(sandbox_id=sid("survivor"), sandboxer=CONTROLLER)
                        )
                    )

                tg.start_soon(wait)
                await anyio.sleep(0.2)
                await pods.remove(sid("survivor"))
            return result[0]

        waited = with_pods(daemon.socket, wait_and_stop)
        assert waited.exit_status == 128 + signal.SIGKILL
        with pytest.raises(ProcessLookupError):
            os.kill(before.pid, 0)
        assert_nothing_left(daemon, node, network, [sid("survivor")], [before.info["ip"]], cgroups)
    finally:
        stop_all(daemon)
        daemon.stop()


def test_a_daemon_killed_mid_start_leaves_what_the_next_start_removes(tmp_path: Path, node: Node) -> None:
    """kill -9 after the pod's network is made but before its pause process runs: the restart
    undoes the half-made start (netns, veth, IP, iptables rules, container, snapshot)."""
    network = write_network(tmp_path, extra_plugins=[{"type": "slow-plugin"}])
    bin_dir = tmp_path / "cni-bin"
    bin_dir.mkdir()
    for name in ("bridge", "host-local", "portmap", "loopback"):
        (bin_dir / name).symlink_to(CNI_BIN / name)
    slow = bin_dir / "slow-plugin"
    slow.write_text('#!/bin/sh\ncat >/dev/null\n[ "$CNI_COMMAND" = ADD ] && sleep 300\necho "{}"\n')
    slow.chmod(0o755)
    config = f"""
        version = 3
        [plugins."io.containerd.podsandbox.controller.v1.podsandbox"]
        cni_conf_dir = "{network.conf_dir}"
        cni_bin_dirs = ["{bin_dir}"]
    """
    daemon = NodeDaemon(tmp_path / "corral", config, node_netns=node.netns).start()
    try:

        async def start_then_kill(pods: Pods) -> None:
            async def run() -> None:
                with contextlib.suppress(Exception):  # the daemon dies under the call
                    await pods.run(sid("half"), pod_config(sid("half"), ports=((18082, 80),)))

            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                with anyio.fail_after(30):
                    while not processes_running(slow):  # noqa: ASYNC110 (a process, not a task)
                        await anyio.sleep(0.1)
                assert daemon.proc is not None
                daemon.proc.send_signal(signal.SIGKILL)
                await anyio.to_thread.run_sync(daemon.proc.wait)

        with_pods(daemon.socket, start_then_kill)
        daemon.proc = None
        assert "veth" in node.run("ip", "-o", "link").stdout  # the bridge plugin has run
        allocated = [p.name for p in network.ipam_dir.iterdir() if p.name.startswith(network.subnet_prefix)]
        assert len(allocated) == 1
        for pid in processes_running(slow):  # the plugin the killed daemon was running
            os.kill(pid, signal.SIGKILL)
        daemon.start()

        async def after(pods: Pods) -> pb.ControllerStatusResponse:
            status = await pods.status(sid("half"))
            await pods.ctl.shutdown(
                pb.ControllerShutdownRequest(sandbox_id=sid("half"), sandboxer=CONTROLLER)
            )
            await pods.store.delete(pb.StoreDeleteRequest(sandbox_id=sid("half")))
            return status

        status = with_pods(daemon.socket, after)
        assert status.state == "SANDBOX_UNKNOWN" and status.pid == 0
        assert_nothing_left(daemon, node, network, [sid("half")], allocated)
    finally:
        stop_all(daemon)
        daemon.stop()


def test_a_failed_start_is_rolled_back_completely(tmp_path: Path, node: Node) -> None:
    network = write_network(tmp_path)
    daemon = start_daemon(tmp_path, node, network)
    try:

        async def body(pods: Pods) -> tuple[GRPCError, pb.ControllerStatusResponse]:
            # The network comes up, then the runtime cannot be found: everything made goes again.
            with pytest.raises(GRPCError) as failed:
                await pods.run(
                    sid("broken"),
                    pod_config(sid("broken"), ports=((18083, 80),)),
                    runtime="io.containerd.nope.v1",
                )
            status = await pods.status(sid("broken"))
            await pods.ctl.shutdown(
                pb.ControllerShutdownRequest(sandbox_id=sid("broken"), sandboxer=CONTROLLER)
            )
            await pods.store.delete(pb.StoreDeleteRequest(sandbox_id=sid("broken")))
            return failed.value, status

        error, status = with_pods(daemon.socket, body)
        assert error.message is not None and error.message.startswith(
            f'failed to start sandbox "{sid("broken")}": '
        )
        assert status.state == "SANDBOX_UNKNOWN" and status.info["ip"] == ""
        assert_nothing_left(daemon, node, network, [sid("broken")], [f"{network.subnet_prefix}."])
    finally:
        stop_all(daemon)
        daemon.stop()


def test_four_pods_started_and_removed_at_once_get_distinct_ips_and_leave_nothing(
    tmp_path: Path, node: Node
) -> None:
    network = write_network(tmp_path)
    daemon = start_daemon(tmp_path, node, network)
    ids = [sid(f"many-{i}") for i in range(4)]
    try:

        async def start(pods: Pods) -> list[pb.ControllerStatusResponse]:
            async with anyio.create_task_group() as tg:
                for i in ids:
                    tg.start_soon(pods.run, i, pod_config(i, ports=((18090 + ids.index(i), 80),)))
            return [await pods.status(i) for i in ids]

        statuses = with_pods(daemon.socket, start)
        assert [s.state for s in statuses] == ["SANDBOX_READY"] * 4
        ips = [s.info["ip"] for s in statuses]
        assert len(set(ips)) == 4 and all(ip.startswith(network.subnet_prefix + ".") for ip in ips)
        cgroups = [c for s, i in zip(statuses, ids, strict=True) for c in pod_cgroups(s.pid, i)]

        async def remove(pods: Pods) -> None:
            async with anyio.create_task_group() as tg:
                for i in ids:
                    tg.start_soon(pods.remove, i)

        with_pods(daemon.socket, remove)
        assert_nothing_left(daemon, node, network, ids, ips, cgroups)
    finally:
        stop_all(daemon)
        daemon.stop()


def test_a_pod_on_the_nodes_network_gets_no_namespace_and_no_cni(tmp_path: Path, node: Node) -> None:
    network = write_network(tmp_path)
    daemon = start_daemon(tmp_path, node, network)
    try:
        config = pod_config(sid("hostnet"))
        config.linux = cri.LinuxPodSandboxConfig(
            security_context=cri.LinuxSandboxSecurityContext(
                namespace_options=cri.NamespaceOption(network=cri.NamespaceMode.NODE)
            )
        )

        async def start(pods: Pods) -> pb.ControllerStatusResponse:
            await pods.run(sid("hostnet"), config)
            return await pods.status(sid("hostnet"))

        status = with_pods(daemon.socket, start)
        assert status.state == "SANDBOX_READY"
        assert (status.info["ip"], status.info["netns_path"]) == ("", "")
        assert os.stat(f"/proc/{status.pid}/ns/net").st_ino == os.stat(node.netns).st_ino
        assert os.stat(f"/proc/{status.pid}/ns/uts").st_ino == os.stat("/proc/self/ns/uts").st_ino
        assert "veth" not in node.run("ip", "-o", "link").stdout
        cgroups = pod_cgroups(status.pid, sid("hostnet"))
        with_pods(daemon.socket, lambda pods: pods.remove(sid("hostnet")))
        assert_nothing_left(daemon, node, network, [sid("hostnet")], [], cgroups)
    finally:
        stop_all(daemon)
        daemon.stop()


def test_controller_requests_get_containerds_errors(tmp_path: Path, node: Node) -> None:
    network = write_network(tmp_path)
    daemon = start_daemon(tmp_path, node, network)
    try:

        async def body(pods: Pods) -> list[tuple[int, str]]:
            calls = [
                pods.ctl.status(pb.ControllerStatusRequest(sandbox_id="x", sandboxer="")),
                pods.ctl.status(pb.ControllerStatusRequest(sandbox_id="x", sandboxer="nope")),
                pods.ctl.start(pb.ControllerStartRequest(sandbox_id="x", sandboxer="nope")),
                pods.ctl.status(pb.ControllerStatusRequest(sandbox_id="x", sandboxer=CONTROLLER)),
                pods.ctl.start(pb.ControllerStartRequest(sandbox_id="x", sandboxer=CONTROLLER)),
                pods.ctl.create(pb.ControllerCreateRequest(sandbox_id="x", sandboxer=CONTROLLER)),
                pods.ctl.stop(pb.ControllerStopRequest(sandbox_id="x", sandboxer=CONTROLLER)),
            ]
            out = []
            for call in calls:
                try:
                    await call
                except GRPCError as exc:
                    out.append((exc.status.value, exc.message or ""))
                else:
                    out.append((0, ""))
            # Shutdown of an unknown sandbox is fine, as containerd's.
            await pods.ctl.shutdown(pb.ControllerShutdownRequest(sandbox_id="x", sandboxer=CONTROLLER))
            return out

        got = with_pods(daemon.socket, body)
        assert got[0] == (3, "invalid argument: sandbox controller name can not be empty")
        assert got[1] == (5, "not found: failed to get sandbox controller by nope")
        assert got[2] == (
            5,
            'failed to get sandbox controller for "nope": not found: failed to get sandbox controller by nope',
        )
        assert got[3] == (5, 'unable to find sandbox "x": not found')
        assert got[4] == (5, 'failed to start sandbox "x": unable to find pod sandbox with id "x": not found')
        assert got[5][0] == 3 and "PodSandboxConfig" in got[5][1]
        assert got[6] == (5, "not found")
    finally:
        stop_all(daemon)
        daemon.stop()
