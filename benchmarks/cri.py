"""CRI pods: what a kubelet waits for, through the CRI (``runtime.v1``) on each daemon's socket.

Both daemons run their CRI with the same CNI network (containerd's default list: bridge,
host-local, portmap, from Debian's containernetworking-plugins), each in a network namespace of its
own so the bridges, veths and iptables rules never touch the machine's, and both are driven by
the same client: corral's generated ``runtime.v1`` stubs over one grpclib connection, as the
kubelet keeps one. A pod is RunPodSandbox, CreateContainer and StartContainer of a busybox
``sleep``; its start is timed to StartContainer's return (the container running, checked after),
its end is StopPodSandbox then RemovePodSandbox. containerd's CRI is Debian's containerd 1.6 with
the same pause image (corral builds it; containerd is given it by ``ctr images import``) and the
same busybox image, so neither pulls anything.

The CRI daemons are started on first use, per kind, and stopped after the scenario's last run
(pods a failed run left are removed first); they need root, as pods do.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
from grpclib.client import Channel

from benchmarks.daemons import (
    CONTAINERD,
    CORRAL,
    ContainerdDaemon,
    CorralDaemon,
    Daemon,
    DaemonError,
    _toml_str,
)
from benchmarks.registry import Metric, Sample, Target, scenario
from corral.api.types.runtime import v1 as pb

MS = 1000.0
IMAGE = "docker.io/library/busybox:latest"
K8S = "k8s.io"
CNI_BIN = "/usr/lib/cni"
BURST_PODS = 20
BURST_PARALLEL = 4
CALL_TIMEOUT = 120.0

_serial = itertools.count(1)


class _Node:
    """A network namespace standing in for the node, held by a sleeping process."""

    def __init__(self) -> None:
        self.holder = subprocess.Popen(["unshare", "--net", "sleep", "infinity"])
        deadline = time.monotonic() + 10
        while os.stat(self.netns).st_ino == os.stat("/proc/self/ns/net").st_ino:
            if time.monotonic() > deadline:
                self.close()
                raise DaemonError("the node's network namespace did not come up")
            time.sleep(0.02)
        subprocess.run(["nsenter", f"--net={self.netns}", "ip", "link", "set", "lo", "up"], check=True)

    @property
    def netns(self) -> str:
        return f"/proc/{self.holder.pid}/ns/net"

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait()


def _write_network(base: Path) -> Path:
    """containerd's default network list on a bridge and subnet of this daemon's own."""
    conf = base / "net.d"
    conf.mkdir(parents=True)
    doc = {
        "cniVersion": "1.0.0",
        "name": "bench-net",
        "plugins": [
            {
                "type": "bridge",
                "bridge": f"crb{secrets.token_hex(3)}",
                "isGateway": True,
                "ipMasq": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "10.88.0.0/16"}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(base / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    (conf / "10-bench-net.conflist").write_text(json.dumps(doc))
    return conf


class _InNode:
    """A daemon run in a node namespace of its own, with a CNI configuration."""

    node: _Node | None = None
    cni_conf: Path

    def node_argv(self, argv: list[str]) -> list[str]:
        if self.node is None:
            self.node = _Node()
        return ["nsenter", f"--net={self.node.netns}", *argv]

    def close_node(self) -> None:
        if self.node is not None:
            self.node.close()
            self.node = None


class CorralCRIDaemon(_InNode, CorralDaemon):
    def write_config(self) -> None:
        self.cni_conf = _write_network(self.workdir)
        self.config_path.write_text(
            "\n".join(
                [
                    "version = 3",
                    '[plugins."io.containerd.podsandbox.controller.v1.podsandbox"]',
                    f"cni_conf_dir = {_toml_str(self.cni_conf)}",
                    f"cni_bin_dirs = [{_toml_str(CNI_BIN)}]",
                    '[plugins."io.containerd.cri.v1.runtime".cni]',
                    f"conf_dir = {_toml_str(self.cni_conf)}",
                    "",
                ]
            )
        )

    def argv(self) -> list[str]:
        return self.node_argv(super().argv())

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self.close_node()


class ContainerdCRIDaemon(_InNode, ContainerdDaemon):
    def write_config(self) -> None:
        from corral.plugins.sandbox.podsandbox import PAUSE_IMAGE

        self.cni_conf = _write_network(self.workdir)
        self.config_path.write_text(
            "\n".join(
                [
                    "version = 2",
                    "[grpc]",
                    f"  address = {_toml_str(self.socket)}",
                    "[ttrpc]",
                    f"  address = {_toml_str(self.state / (self.socket_name + '.ttrpc'))}",
                    "[debug]",
                    '  address = ""',
                    "[metrics]",
                    '  address = ""',
                    '[plugins."io.containerd.internal.v1.opt"]',
                    f"  path = {_toml_str(self.root / 'opt')}",
                    '[plugins."io.containerd.grpc.v1.cri"]',
                    f"  sandbox_image = {_toml_str(PAUSE_IMAGE)}",
                    "  restrict_oom_score_adj = true",
                    '  [plugins."io.containerd.grpc.v1.cri".cni]',
                    f"    conf_dir = {_toml_str(self.cni_conf)}",
                    f"    bin_dir = {_toml_str(CNI_BIN)}",
                    "",
                ]
            )
        )

    def argv(self) -> list[str]:
        return self.node_argv(super().argv())

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self.close_node()


_daemons: dict[str, Daemon] = {}


def _images(target: Target, daemon: Daemon) -> None:
    """busybox for both; the pause image for containerd (corral builds its own on first use)."""
    from corral.plugins.images.build import build_busybox_image
    from corral.plugins.sandbox.podsandbox import PAUSE_IMAGE, build_pause_image

    busybox = target.workdir / "cri-busybox.tar"
    if not busybox.exists():
        build_busybox_image(busybox, names=(IMAGE,))
    target.ctr.check(daemon.socket, "-n", K8S, "images", "import", str(busybox))
    if target.kind == CONTAINERD:
        pause = target.workdir / "cri-pause.tar"
        if not pause.exists():
            pause.write_bytes(build_pause_image().oci_archive([PAUSE_IMAGE]))
        target.ctr.check(daemon.socket, "-n", K8S, "images", "import", str(pause))


def _daemon(target: Target) -> Daemon:
    """This kind's CRI daemon, started (and given its images) on first use."""
    found = _daemons.get(target.kind)
    if found is not None:
        return found
    if os.geteuid() != 0:
        raise DaemonError("the CRI scenario needs root (pods: network namespaces, mounts, runc)")
    kinds: dict[str, type[Daemon]] = {CORRAL: CorralCRIDaemon, CONTAINERD: ContainerdCRIDaemon}
    probe = target.spawn()  # the binary and work dir this kind's factory would use
    daemon = kinds[target.kind](
        probe.binary, probe.workdir.with_name(probe.workdir.name + "-cri"), target.ctr
    )
    daemon.start()
    _daemons[target.kind] = daemon
    try:
        _images(target, daemon)
    except BaseException:
        _stop(target)
        raise
    return daemon


def _stop(target: Target) -> None:
    """After the scenario's last run: remove whatever pods are left, then stop the daemon."""
    daemon = _daemons.pop(target.kind, None)
    if daemon is None:
        return
    try:
        anyio.run(_remove_all, daemon.socket)
    finally:
        daemon.stop()


# -- the client ------------------------------------------------------------------------------------
async def _with_runtime(socket: Path, body: Callable[[pb.RuntimeServiceStub], Awaitable[Sample]]) -> Sample:
    channel = Channel(path=str(socket))
    try:
        return await body(pb.RuntimeServiceStub(channel))
    finally:
        channel.close()


async def _remove_all(socket: Path) -> Sample:
    async def body(rt: pb.RuntimeServiceStub) -> Sample:
        pods = await rt.list_pod_sandbox(pb.ListPodSandboxRequest(), timeout=CALL_TIMEOUT)
        for item in pods.items:
            await rt.remove_pod_sandbox(
                pb.RemovePodSandboxRequest(pod_sandbox_id=item.id), timeout=CALL_TIMEOUT
            )
        return {}

    return await _with_runtime(socket, body)


def _configs(logs: Path) -> tuple[pb.PodSandboxConfig, pb.ContainerConfig]:
    n = next(_serial)
    name = f"bench-{os.getpid()}-{n}"
    (logs / name).mkdir(parents=True, exist_ok=True)  # as the kubelet makes it
    pod = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace="bench"),
        hostname=name,
        log_directory=str(logs / name),
        labels={"app": "bench"},
    )
    box = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="sleeper"),
        image=pb.ImageSpec(image=IMAGE),
        command=["sleep", "3600"],
        log_path="sleeper.log",
    )
    return pod, box


async def _start_pod(rt: pb.RuntimeServiceStub, logs: Path) -> str:
    """RunPodSandbox, CreateContainer, StartContainer: the pod's id once its container runs."""
    pod, box = _configs(logs)
    sandbox = (
        await rt.run_pod_sandbox(pb.RunPodSandboxRequest(config=pod), timeout=CALL_TIMEOUT)
    ).pod_sandbox_id
    request = pb.CreateContainerRequest(pod_sandbox_id=sandbox, config=box, sandbox_config=pod)
    cid = (await rt.create_container(request, timeout=CALL_TIMEOUT)).container_id
    await rt.start_container(pb.StartContainerRequest(container_id=cid), timeout=CALL_TIMEOUT)
    return str(sandbox)


async def _check_running(rt: pb.RuntimeServiceStub, sandbox: str) -> None:
    found = await rt.list_containers(
        pb.ListContainersRequest(filter=pb.ContainerFilter(pod_sandbox_id=sandbox)), timeout=CALL_TIMEOUT
    )
    states = [c.state for c in found.containers]
    if states != [pb.ContainerState.CONTAINER_RUNNING]:
        raise RuntimeError(f"pod {sandbox}: its container is not running ({states})")


async def _end_pod(rt: pb.RuntimeServiceStub, sandbox: str) -> None:
    await rt.stop_pod_sandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox), timeout=CALL_TIMEOUT)
    await rt.remove_pod_sandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox), timeout=CALL_TIMEOUT)


async def _parallel(jobs: list[Callable[[], Awaitable[object]]], width: int) -> float:
    """Wall seconds to run every job, ``width`` at a time."""
    pending = iter(jobs)

    async def worker() -> None:
        for job in pending:
            await job()

    began = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(width):
            tg.start_soon(worker)
    return time.perf_counter() - began


async def _measure(rt: pb.RuntimeServiceStub, logs: Path) -> Sample:
    began = time.perf_counter()
    sandbox = await _start_pod(rt, logs)
    start = time.perf_counter() - began
    await _check_running(rt, sandbox)
    began = time.perf_counter()
    await _end_pod(rt, sandbox)
    end = time.perf_counter() - began

    started: list[str] = []

    async def one() -> None:
        started.append(await _start_pod(rt, logs))

    burst = await _parallel([one] * BURST_PODS, BURST_PARALLEL)
    for sandbox in started:
        await _check_running(rt, sandbox)
    ending = [lambda s=s: _end_pod(rt, s) for s in started]  # type: ignore[misc]
    teardown = await _parallel(ending, BURST_PARALLEL)
    left = await rt.list_pod_sandbox(pb.ListPodSandboxRequest(), timeout=CALL_TIMEOUT)
    if left.items:
        raise RuntimeError(f"{len(left.items)} pods left after the burst's removal")
    return {
        "pod-start": start * MS,
        "pod-end": end * MS,
        "pods-burst": BURST_PODS / burst,
        "pods-burst-end": BURST_PODS / teardown,
    }


@scenario(
    "cri-pods",
    needs="fresh",
    runs_divisor=2,
    warmup=1,
    cleanup=_stop,
    metrics=(
        Metric(
            "pod-start",
            "CRI pod start: RunPodSandbox → CreateContainer → StartContainer (busybox), running",
            "ms",
        ),
        Metric("pod-end", "CRI pod end: StopPodSandbox → RemovePodSandbox of that pod", "ms"),
        Metric(
            "pods-burst",
            f"{BURST_PODS} CRI pods started {BURST_PARALLEL} at a time: pods per second",
            "pods/s",
            higher_is_better=True,
        ),
        Metric(
            "pods-burst-end",
            f"The {BURST_PODS} pods stopped and removed {BURST_PARALLEL} at a time: pods per second",
            "pods/s",
            higher_is_better=True,
        ),
    ),
)
def cri_pods(target: Target) -> Sample:
    """Pods through the CRI (one, then twenty four at a time), each with a busybox container."""
    daemon = _daemon(target)
    logs = target.workdir / f"cri-logs-{target.kind}"
    return anyio.run(_with_runtime, daemon.socket, lambda rt: _measure(rt, logs))
