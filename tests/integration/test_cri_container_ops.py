"""CRI calls on running containers: UpdateContainerResources, ReopenContainerLog, the stats calls
(ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats) and the stop signal,
through the CRI's stubs on the real socket, with runc's shim and the node's real cgroups.

The node and daemon are test_cri_pods' (corrald in a network namespace of its own, a temp CNI
configuration).
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from containerd16_cri import containerd_16
from cri_client import CRIClient
from cri_node import (
    NS,
    Node,
    NodeDaemon,
    assert_nothing_left,
    busybox_archive,
    code_of,
    container,
    create,
    cstatus,
    import_busybox,
    pod,
    remove,
    remove_all,
    run,
    start_daemon,
    stop,
    wait_for,
    write_network,
)
from grpclib.const import Status
from tooling import require_tool

from corral.api.types.runtime import v1 as pb
from corral.plugins.images.build import build_image, busybox_rootfs, layer_from_directory

pytestmark = pytest.mark.root

CGROUP = Path("/sys/fs/cgroup")
MiB = 1024 * 1024


def start(cri: CRIClient, cid: str) -> None:
    cri.runtime("start_container", pb.StartContainerRequest(container_id=cid))


def task_pid(daemon: NodeDaemon, cid: str) -> int:
    for line in daemon.ctr("tasks", "ls", namespace=NS).stdout.splitlines()[1:]:
        fields = line.split()
        if fields[0] == cid:
            return int(fields[1])
    raise AssertionError(f"no task {cid}")


def cgroup_value(pid: int, v1: tuple[str, str], v2: str) -> str:
    """A cgroup file of the process: v2's ``v2`` when the node is unified, else v1's (controller, file)."""
    lines = [line.split(":", 2) for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()]
    if (CGROUP / "cgroup.controllers").exists():
        path = next(p for _, c, p in lines if c == "")
        return (CGROUP / path.lstrip("/") / v2).read_text().strip()
    controller, name = v1
    path = next(p for _, c, p in lines if controller in c.split(","))
    return (CGROUP / controller / path.lstrip("/") / name).read_text().strip()


def memory_limit(pid: int) -> int:
    return int(cgroup_value(pid, ("memory", "memory.limit_in_bytes"), "memory.max"))


def cpu_quota(pid: int) -> int:
    if (CGROUP / "cgroup.controllers").exists():
        return int(cgroup_value(pid, ("cpu", ""), "cpu.max").split()[0])
    return int(cgroup_value(pid, ("cpu", "cpu.cfs_quota_us"), ""))


def spec_resources(daemon: NodeDaemon, cid: str) -> dict[str, object]:
    info = json.loads(daemon.ctr("containers", "info", cid, namespace=NS).stdout)
    return dict(info["Spec"]["linux"]["resources"])


def update(cri: CRIClient, cid: str, **resources: object) -> None:
    cri.runtime(
        "update_container_resources",
        pb.UpdateContainerResourcesRequest(
            container_id=cid,
            linux=pb.LinuxContainerResources(**resources),  # type: ignore[arg-type]
        ),
    )


def rate_of(old: pb.CpuUsage, new: pb.CpuUsage) -> tuple[bool, bool]:
    """Whether the second sample's usage_nano_cores is there, and is the CPU time between the two
    samples over the time between them (within 1%)."""
    used = new.usage_core_nano_seconds.value - old.usage_core_nano_seconds.value
    expected = used / (new.timestamp - old.timestamp) * 1_000_000_000
    rate = new.usage_nano_cores
    return rate is not None and rate.value > 0, rate is not None and abs(
        rate.value - expected
    ) <= expected / 100


def list_stats(cri: CRIClient, flt: pb.ContainerStatsFilter | None = None) -> list[pb.ContainerStats]:
    return list(cri.runtime("list_container_stats", pb.ListContainerStatsRequest(filter=flt)).stats)


def list_pod_stats(cri: CRIClient, flt: pb.PodSandboxStatsFilter | None = None) -> list[pb.PodSandboxStats]:
    return list(cri.runtime("list_pod_sandbox_stats", pb.ListPodSandboxStatsRequest(filter=flt)).stats)


def test_update_container_resources_changes_a_running_containers_cgroup_and_its_spec(
    tmp_path: Path, node: Node
) -> None:
    network = write_network(tmp_path)
    daemon = start_daemon(tmp_path, node, network)
    try:
        import_busybox(daemon, tmp_path)
        cri = CRIClient(daemon.socket)
        sandbox = pod("limits")
        pod_id = run(cri, sandbox)
        limited = pb.LinuxContainerConfig(
            resources=pb.LinuxContainerResources(memory_limit_in_bytes=64 * MiB)
        )
        cid = create(cri, pod_id, container("main", "exec sleep 1000", linux=limited), sandbox)
        start(cri, cid)
        pid = task_pid(daemon, cid)
        assert memory_limit(pid) == 64 * MiB

        update(
            cri, cid, memory_limit_in_bytes=128 * MiB, cpu_quota=50_000, cpu_period=100_000, cpu_shares=512
        )
        assert memory_limit(pid) == 128 * MiB
        assert cpu_quota(pid) == 50_000
        stored = spec_resources(daemon, cid)
        assert stored["memory"]["limit"] == 128 * MiB  # type: ignore[index]
        assert (stored["cpu"]["quota"], stored["cpu"]["period"], stored["cpu"]["shares"]) == (  # type: ignore[index]
            50_000, 100_000, 512,
        )  # fmt: skip
        linux = cstatus(cri, cid).resources.linux
        assert (linux.memory_limit_in_bytes, linux.cpu_quota, linux.cpu_period, linux.cpu_shares) == (
            128 * MiB, 50_000, 100_000, 512,
        )  # fmt: skip

        # Zero fields leave what is there; a second update changes only what it names.
        update(cri, cid, cpu_quota=20_000)
        assert (memory_limit(pid), cpu_quota(pid)) == (128 * MiB, 20_000)
        assert cstatus(cri, cid).resources.linux.memory_limit_in_bytes == 128 * MiB

        # A limit the kernel refuses (below what the process uses) fails and leaves the spec as it was.
        code, message = code_of(lambda: update(cri, cid, memory_limit_in_bytes=4096))
        assert code != Status.OK and message.startswith(
            "failed to update resources: failed to update resources:"
        )
        assert spec_resources(daemon, cid)["memory"]["limit"] == 128 * MiB  # type: ignore[index]
        assert memory_limit(pid) == 128 * MiB
        assert cstatus(cri, cid).resources.linux.memory_limit_in_bytes == 128 * MiB

        # A created container: only its spec changes, and its start applies it.
        later = create(cri, pod_id, container("later", "exec sleep 1000"), sandbox)
        update(cri, later, memory_limit_in_bytes=96 * MiB)
        assert spec_resources(daemon, later)["memory"]["limit"] == 96 * MiB  # type: ignore[index]
        start(cri, later)
        assert memory_limit(task_pid(daemon, later)) == 96 * MiB

        # An exited one: its spec still takes the update, as containerd's does.
        cri.runtime("stop_container", pb.StopContainerRequest(container_id=later, timeout=0))
        update(cri, later, memory_limit_in_bytes=80 * MiB)
        assert cstatus(cri, later).resources.linux.memory_limit_in_bytes == 80 * MiB

        code, message = code_of(lambda: update(cri, "f" * 64, memory_limit_in_bytes=MiB))
        assert (code, message) == (Status.NOT_FOUND, "failed to find container: not found")

        # The update outlives the daemon: a restarted corrald reports it.
        assert daemon.proc is not None
        daemon.stop()
        daemon.start()
        cri = CRIClient(daemon.socket)
        assert cstatus(cri, cid).resources.linux.cpu_quota == 20_000
        remove(cri, pod_id)
        assert_nothing_left(daemon, node, network, [pod_id, cid, later], [])
    finally:
        remove_all(daemon)
        daemon.stop()


def test_reopen_container_log_after_a_rename_sends_new_lines_to_a_new_file_losing_none(
    tmp_path: Path, node: Node
) -> None:
    network = write_network(tmp_path)
    daemon = start_daemon(tmp_path, node, network)
    try:
        import_busybox(daemon, tmp_path)
        cri = CRIClient(daemon.socket)
        sandbox = pod("rotating")
        sandbox.log_directory = str(tmp_path / "logs")
        pod_id = run(cri, sandbox)
        count = "i=0; while true; do i=$((i+1)); echo line $i; echo err $i >&2; sleep 0.02; done"
        cid = create(cri, pod_id, container("counter", count, log="counter.log"), sandbox)
        idle = create(cri, pod_id, container("idle", "true", log="idle.log"), sandbox)
        code, message = code_of(
            lambda: cri.runtime("reopen_container_log", pb.ReopenContainerLogRequest(container_id=idle))
        )
        assert (code, message) == (Status.FAILED_PRECONDITION, "container is not running")
        code, message = code_of(
            lambda: cri.runtime("reopen_container_log", pb.ReopenContainerLogRequest(container_id="f" * 64))
        )
        assert (code, message) == (
            Status.NOT_FOUND, f'an error occurred when try to find container "{"f" * 64}": not found',
        )  # fmt: skip
        start(cri, cid)
        log_file = tmp_path / "logs" / "counter.log"
        rotated = [tmp_path / "logs" / f"counter.log.{i}" for i in (1, 2)]
        for old in rotated:
            wait_for(lambda: log_file.exists() and log_file.read_text().count("\n") >= 20)
            log_file.rename(old)  # the kubelet renames, then asks for a reopen
            cri.runtime("reopen_container_log", pb.ReopenContainerLogRequest(container_id=cid))
            assert log_file.exists()
        wait_for(lambda: log_file.read_text().count("\n") >= 20)
        cri.runtime("stop_container", pb.StopContainerRequest(container_id=cid, timeout=0))
        files = [*rotated, log_file]
        texts = [f.read_text() for f in files]
        assert all(t.endswith("\n") for t in texts)  # every record whole, in one file
        for stream, word in (("stdout", "line"), ("stderr", "err")):
            numbers = [
                int(line.rsplit(" ", 1)[1])
                for text in texts
                for line in text.splitlines()
                if f" {stream} F {word} " in line
            ]
            assert numbers == list(range(1, len(numbers) + 1)), (stream, numbers[:5])  # none lost or doubled
        for text in texts:
            assert re.search(r" stdout F line \d+\n", text)
        code, message = code_of(
            lambda: cri.runtime("reopen_container_log", pb.ReopenContainerLogRequest(container_id=cid))
        )
        assert (code, message) == (Status.FAILED_PRECONDITION, "container is not running")
        remove(cri, pod_id)
        assert_nothing_left(daemon, node, network, [pod_id, cid, idle], [])
    finally:
        remove_all(daemon)
        daemon.stop()


def test_stats_show_a_busy_containers_cpu_rising_its_memory_layer_and_its_pods_network(
    tmp_path: Path, node: Node
) -> None:
    network = write_network(tmp_path)
    daemon = start_daemon(tmp_path, node, network)
    try:
        import_busybox(daemon, tmp_path)
        cri = CRIClient(daemon.socket)
        parent = f"/corral-test-{secrets.token_hex(4)}"
        sandbox = pod("busy", labels={"app": "busy"})
        sandbox.linux = pb.LinuxPodSandboxConfig(cgroup_parent=parent)
        pod_id = run(cri, sandbox)
        other_config = pod("quiet", labels={"app": "quiet"})
        other = run(cri, other_config)
        spin = "dd if=/dev/zero of=/big bs=1024 count=2048 2>/dev/null; while :; do :; done"
        busy = create(cri, pod_id, container("spin", spin), sandbox)
        waiting = create(cri, pod_id, container("waiting", "true"), sandbox)
        start(cri, busy)
        wait_for(
            lambda: (
                list_stats(cri, pb.ContainerStatsFilter(id=busy))[0].writable_layer.used_bytes.value
                >= 2 * MiB
            )
        )

        first = list_stats(cri, pb.ContainerStatsFilter(id=busy))
        time.sleep(1)
        second = list_stats(cri, pb.ContainerStatsFilter(id=busy[:12]))
        assert [s.attributes.id for s in first] == [busy] == [s.attributes.id for s in second]
        a, b = first[0], second[0]
        assert b.cpu.usage_core_nano_seconds.value > a.cpu.usage_core_nano_seconds.value + 10_000_000
        assert (
            b.cpu.timestamp > a.cpu.timestamp + 900_000_000
            and abs(b.cpu.timestamp - time.time_ns()) < 5 * 10**9
        )
        assert rate_of(a.cpu, b.cpu) == (True, True)
        memory = b.memory
        assert memory.usage_bytes.value > 0 and 0 < memory.working_set_bytes.value <= memory.usage_bytes.value
        assert memory.page_faults.value > 0 and memory.timestamp == b.cpu.timestamp
        layer = b.writable_layer
        assert layer.used_bytes.value >= 2 * MiB and layer.inodes_used.value >= 1
        assert layer.fs_id.mountpoint.endswith("io.containerd.snapshotter.v1.overlayfs")
        assert b.attributes.metadata.name == "spin" and b.attributes.labels == {"c": "spin"}

        # Filters: a pod (by prefix), labels; a created container answers its layer and no usage.
        in_pod = {
            s.attributes.id: s for s in list_stats(cri, pb.ContainerStatsFilter(pod_sandbox_id=pod_id[:10]))
        }
        assert set(in_pod) == {busy, waiting}
        assert in_pod[waiting].cpu is None and in_pod[waiting].memory is None
        assert in_pod[waiting].writable_layer is not None
        assert [
            s.attributes.id for s in list_stats(cri, pb.ContainerStatsFilter(label_selector={"c": "waiting"}))
        ] == [waiting]
        assert list_stats(cri, pb.ContainerStatsFilter(label_selector={"c": "nonesuch"})) == []
        assert list_stats(cri, pb.ContainerStatsFilter(id="f" * 64)) == []
        assert {s.attributes.id for s in list_stats(cri)} == {busy, waiting}

        single = cri.runtime("container_stats", pb.ContainerStatsRequest(container_id=busy)).stats
        assert single.attributes.id == busy and single.cpu.usage_core_nano_seconds.value > 0
        assert single.cpu.usage_nano_cores is None  # as containerd's ContainerStats
        code, message = code_of(
            lambda: cri.runtime("container_stats", pb.ContainerStatsRequest(container_id=waiting))
        )
        assert (code, message) == (Status.FAILED_PRECONDITION, "unexpected metrics response: []")
        code, message = code_of(
            lambda: cri.runtime("container_stats", pb.ContainerStatsRequest(container_id="f" * 64))
        )
        assert (code, message) == (Status.NOT_FOUND, "failed to find container: not found")

        # The pod: its cgroup parent's usage (at least its spinning container's), its network.
        bridge_ip = network.subnet_prefix + ".1"
        before = cri.runtime("pod_sandbox_stats", pb.PodSandboxStatsRequest(pod_sandbox_id=pod_id)).stats
        cri.runtime(
            "exec_sync",
            pb.ExecSyncRequest(
                container_id=busy, cmd=["sh", "-c", f"ping -c 2 -W 1 {bridge_ip}"], timeout=10
            ),
        )
        after = cri.runtime("pod_sandbox_stats", pb.PodSandboxStatsRequest(pod_sandbox_id=pod_id[:12])).stats
        assert after.attributes.id == pod_id and after.attributes.metadata.name == "busy"
        assert after.attributes.labels == {"app": "busy"}
        linux = after.linux
        container_cpu = {c.attributes.id: c for c in linux.containers}[busy].cpu.usage_core_nano_seconds.value
        assert linux.cpu.usage_core_nano_seconds.value >= container_cpu > 0
        assert linux.cpu.usage_nano_cores is not None and linux.cpu.usage_nano_cores.value > 0
        assert linux.memory.working_set_bytes.value > 0
        assert linux.process.process_count.value >= 1
        assert {c.attributes.id for c in linux.containers} == {busy, waiting}
        eth0 = linux.network.default_interface
        assert eth0.name == "eth0" and [i.name for i in linux.network.interfaces] == ["eth0"]
        old_eth0 = before.linux.network.default_interface
        assert eth0.tx_bytes.value > old_eth0.tx_bytes.value and eth0.rx_bytes.value > old_eth0.rx_bytes.value

        ready = {s.attributes.id for s in list_pod_stats(cri)}
        assert ready == {pod_id, other}
        assert [
            s.attributes.id
            for s in list_pod_stats(cri, pb.PodSandboxStatsFilter(label_selector={"app": "quiet"}))
        ] == [other]
        assert [s.attributes.id for s in list_pod_stats(cri, pb.PodSandboxStatsFilter(id=pod_id[:8]))] == [
            pod_id
        ]
        cri.runtime("stop_pod_sandbox", pb.StopPodSandboxRequest(pod_sandbox_id=other))
        assert [s.attributes.id for s in list_pod_stats(cri)] == [pod_id]  # only ready pods
        code, message = code_of(
            lambda: cri.runtime("pod_sandbox_stats", pb.PodSandboxStatsRequest(pod_sandbox_id=other))
        )
        assert code == Status.UNAVAILABLE and "is not in ready state" in message
        code, message = code_of(
            lambda: cri.runtime("pod_sandbox_stats", pb.PodSandboxStatsRequest(pod_sandbox_id="f" * 64))
        )
        assert (code, message) == (
            Status.NOT_FOUND, f"an error occurred when trying to find sandbox {'f' * 64}: not found",
        )  # fmt: skip
        remove(cri, pod_id)
        remove(cri, other)
        assert list_stats(cri) == [] and list_pod_stats(cri) == []
        assert_nothing_left(daemon, node, network, [pod_id, other, busy, waiting], [])
    finally:
        remove_all(daemon)
        daemon.stop()


def _image_with_stop_signal(base: Path, name: str, stop_signal: str) -> Path:
    rootfs = busybox_rootfs(base / f"rootfs-{stop_signal}")
    image = build_image([layer_from_directory(rootfs)], cmd=("sh",), stop_signal=stop_signal)
    archive = base / f"{stop_signal}.tar"
    image.write_oci_archive(archive, [name])
    return archive


def test_stop_container_sends_the_images_stop_signal_or_the_requests(tmp_path: Path, node: Node) -> None:
    network = write_network(tmp_path)
    daemon = start_daemon(tmp_path, node, network)
    try:
        import_busybox(daemon, tmp_path)
        quitting = "example.com/quits-on-usr1:1"
        daemon.ctr(
            "images", "import", str(_image_with_stop_signal(tmp_path, quitting, "SIGUSR1")), namespace=NS
        )
        cri = CRIClient(daemon.socket)
        sandbox = pod("signals")
        sandbox.log_directory = str(tmp_path / "logs")
        pod_id = run(cri, sandbox)
        catch = "trap 'echo got {0}; exit 7' {0}; trap '' TERM; while true; do sleep 0.1; done"

        by_image = container("image", catch.format("USR1"), log="image.log")
        by_image.image = pb.ImageSpec(image=quitting)
        by_request = container(
            "request", catch.format("QUIT"), log="request.log", stop_signal=pb.Signal.SIGQUIT
        )
        plain = container("plain", catch.format("USR2"), log="plain.log")
        ids = {name: create(cri, pod_id, config, sandbox) for name, config in
               (("image", by_image), ("request", by_request), ("plain", plain))}  # fmt: skip
        assert cstatus(cri, ids["image"]).stop_signal == pb.Signal.SIGUSR1
        assert cstatus(cri, ids["request"]).stop_signal == pb.Signal.SIGQUIT
        assert cstatus(cri, ids["plain"]).stop_signal == pb.Signal.SIGTERM
        for cid in ids.values():
            start(cri, cid)
        time.sleep(0.5)  # the traps are set
        for name in ("image", "request"):
            started = time.monotonic()
            cri.runtime("stop_container", pb.StopContainerRequest(container_id=ids[name], timeout=20))
            assert time.monotonic() - started < 10  # it exited on the signal, not on the SIGKILL after 20s
            done = cstatus(cri, ids[name])
            assert (done.state, done.exit_code) == (pb.ContainerState.CONTAINER_EXITED, 7)
            word = "USR1" if name == "image" else "QUIT"
            assert f"stdout F got {word}" in (tmp_path / "logs" / f"{name}.log").read_text()
        # SIGTERM by default: ignored here, so the SIGKILL after the timeout ends it.
        cri.runtime("stop_container", pb.StopContainerRequest(container_id=ids["plain"], timeout=1))
        assert cstatus(cri, ids["plain"]).exit_code == 137

        unknown = container("unknown", "true", stop_signal=999)
        code, message = code_of(lambda: create(cri, pod_id, unknown, sandbox))
        assert (code, message) == (Status.INVALID_ARGUMENT, "unknown CRI stop signal 999: invalid argument")
        assert len(cri.runtime("list_containers", pb.ListContainersRequest()).containers) == 3
        remove(cri, pod_id)
        assert_nothing_left(daemon, node, network, [pod_id, *ids.values()], [])
    finally:
        remove_all(daemon)
        daemon.stop()


def test_corral_cri_stats_statsp_and_update_show_and_change_what_the_cri_answers(
    tmp_path: Path, node: Node
) -> None:
    network = write_network(tmp_path)
    daemon = start_daemon(tmp_path, node, network)
    try:
        import_busybox(daemon, tmp_path)
        cri = CRIClient(daemon.socket)
        sandbox = pod("clistats")
        pod_id = run(cri, sandbox)
        busy = create(cri, pod_id, container("spin", "while :; do :; done"), sandbox)
        idle = create(cri, pod_id, container("idle", "exec sleep 1000"), sandbox)
        start(cri, busy)
        start(cri, idle)

        out = daemon.corral("cri", "stats").stdout
        print(out)
        header, *rows = out.splitlines()
        assert header.split() == ["CONTAINER", "NAME", "CPU", "%", "MEM", "DISK", "INODES"]
        by_name = {row.split()[1]: row.split() for row in rows}
        assert set(by_name) == {"spin", "idle"} and by_name["spin"][0] == busy[:13]
        assert float(by_name["spin"][2]) > max(1.0, float(by_name["idle"][2]))
        assert by_name["spin"][3].endswith("B")
        one = daemon.corral("cri", "stats", "--id", idle[:10]).stdout.splitlines()[1:]
        assert [row.split()[1] for row in one] == ["idle"]
        listed = json.loads(daemon.corral("cri", "stats", busy, "--format", "json").stdout)["stats"]
        assert [s["attributes"]["id"] for s in listed] == [busy]
        assert int(listed[0]["cpu"]["usageCoreNanoSeconds"]["value"]) > 0
        assert int(listed[0]["memory"]["workingSetBytes"]["value"]) > 0

        pods = daemon.corral("cri", "statsp").stdout
        print(pods)
        header, *rows = pods.splitlines()
        assert header.split() == ["POD", "POD", "ID", "CPU", "%", "MEM"]
        assert [row.split()[:2] for row in rows] == [["clistats", pod_id[:13]]]
        assert daemon.corral("cri", "stats", "--pods").stdout.splitlines()[1].split()[:2] == [
            "clistats",
            pod_id[:13],
        ]
        as_json = json.loads(daemon.corral("cri", "statsp", "--format", "json").stdout)["stats"]
        assert [s["attributes"]["id"] for s in as_json] == [pod_id]
        assert {c["attributes"]["id"] for c in as_json[0]["linux"]["containers"]} == {busy, idle}

        pid = task_pid(daemon, idle)
        assert (
            daemon.corral("cri", "update", "--memory", "96m", "--cpu-quota", "30000", idle).stdout
            == f"{idle}\n"
        )
        assert (memory_limit(pid), cpu_quota(pid)) == (96 * MiB, 30_000)
        updated = json.loads(
            daemon.corral(
                "cri", "update", "--memory", "100663296", "--cpu-period", "50000", idle, "--format", "json"
            ).stdout
        )
        print(json.dumps(updated, indent=2))
        linux = updated[0]["resources"]["linux"]
        assert (updated[0]["id"], linux["memoryLimitInBytes"], linux["cpuQuota"], linux["cpuPeriod"]) == (
            idle, "100663296", "30000", "50000",
        )  # fmt: skip
        bad = daemon.corral("cri", "update", "--memory", "lots", idle, check=False)
        assert bad.returncode == 2 and "--memory must be bytes or a size" in bad.stderr
        missing = daemon.corral("cri", "update", "--memory", "1g", "f" * 64, check=False)
        assert missing.returncode == 1 and "failed to find container: not found" in missing.stderr
        assert memory_limit(pid) == 96 * MiB
        remove(cri, pod_id)
        assert_nothing_left(daemon, node, network, [pod_id, busy, idle], [])
    finally:
        remove_all(daemon)
        daemon.stop()


# -- the same calls against Debian's containerd 1.6 CRI ---------------------------------------------
QUITS_ON_USR1 = "example.com/quits-on-usr1:1"


def ops_scenario(cri: CRIClient, ctr: Callable[..., str], base: Path) -> dict[str, object]:
    """Resource updates, a log rotation, stats and a stop signal: what a kubelet would observe."""
    facts: dict[str, object] = {}
    base.mkdir(parents=True, exist_ok=True)
    ctr("images", "import", str(busybox_archive(base)))
    ctr("images", "import", str(_image_with_stop_signal(base, QUITS_ON_USR1, "SIGUSR1")))
    config = pod("ops", labels={"app": "ops"})
    config.log_directory = str(base / "logs")
    config.linux = pb.LinuxPodSandboxConfig(cgroup_parent=f"/corral-cmp-{secrets.token_hex(4)}")
    pod_id = run(cri, config)
    limited = pb.LinuxContainerConfig(resources=pb.LinuxContainerResources(memory_limit_in_bytes=64 * MiB))
    count = "i=0; while true; do i=$((i+1)); echo line $i; sleep 0.02; done"
    main = create(cri, pod_id, container("main", count, log="main.log", linux=limited), config)
    spin = create(cri, pod_id, container("spin", "while :; do :; done"), config)
    later = create(cri, pod_id, container("later", "exec sleep 1000"), config)
    quitter = container("quitter", "trap 'exit 7' USR1; trap '' TERM; while true; do sleep 0.1; done")
    quitter.image = pb.ImageSpec(image=QUITS_ON_USR1)
    quits = create(cri, pod_id, quitter, config)
    reopen = "reopen_container_log"
    facts["reopen created"] = code_of(
        lambda: cri.runtime(reopen, pb.ReopenContainerLogRequest(container_id=later))
    )
    facts["update unknown"] = code_of(lambda: update(cri, "f" * 64, memory_limit_in_bytes=MiB))[0]
    for cid in (main, spin, quits):
        start(cri, cid)
    pid = _pid_of(ctr, main)
    facts["limit at start"] = memory_limit(pid)
    update(cri, main, memory_limit_in_bytes=128 * MiB, cpu_quota=50_000, cpu_period=100_000)
    update(cri, main, cpu_quota=40_000)
    facts["cgroup after update"] = (memory_limit(pid), cpu_quota(pid))
    refused_code, refused_words = code_of(lambda: update(cri, main, memory_limit_in_bytes=4096))
    facts["refused update"] = (refused_code, refused_words.partition(" (current usage")[0])
    info = json.loads(ctr("containers", "info", main))["Spec"]["linux"]["resources"]
    facts["spec after update"] = (info["memory"]["limit"], info["cpu"]["quota"], info["cpu"]["period"])
    update(cri, later, memory_limit_in_bytes=96 * MiB)
    facts["created spec"] = json.loads(ctr("containers", "info", later))["Spec"]["linux"]["resources"][
        "memory"
    ]
    start(cri, later)
    facts["created at start"] = memory_limit(_pid_of(ctr, later))

    log_file = base / "logs" / "main.log"
    wait_for(lambda: log_file.exists() and log_file.read_text().count("\n") >= 10)
    log_file.rename(base / "logs" / "main.log.1")
    cri.runtime(reopen, pb.ReopenContainerLogRequest(container_id=main))
    wait_for(lambda: log_file.exists() and log_file.read_text().count("\n") >= 10)

    def shape(s: pb.ContainerStats) -> tuple[object, ...]:
        return (
            s.attributes.metadata.name, s.attributes.labels, s.cpu is not None, s.memory is not None,
            s.memory is not None and 0 < s.memory.working_set_bytes.value <= s.memory.usage_bytes.value,
            s.writable_layer.fs_id.mountpoint.rsplit("/", 1)[-1], s.writable_layer.used_bytes is not None,
        )  # fmt: skip

    first = {s.attributes.metadata.name: s for s in list_stats(cri)}
    time.sleep(1)
    second = {s.attributes.metadata.name: s for s in list_stats(cri)}
    facts["stats shape"] = sorted(shape(s) for s in second.values())
    facts["busy rate"] = rate_of(first["spin"].cpu, second["spin"].cpu)
    facts["stats by pod"] = len(list_stats(cri, pb.ContainerStatsFilter(pod_sandbox_id=pod_id)))
    facts["stats by label"] = [
        s.attributes.metadata.name
        for s in list_stats(cri, pb.ContainerStatsFilter(label_selector={"c": "spin"}))
    ]
    single = cri.runtime("container_stats", pb.ContainerStatsRequest(container_id=spin)).stats
    facts["single"] = shape(single)
    pods = list_pod_stats(cri)
    linux = pods[0].linux
    facts["pod stats"] = (
        [p.attributes.metadata.name for p in pods], pods[0].attributes.labels,
        linux.cpu.usage_core_nano_seconds.value >= second["spin"].cpu.usage_core_nano_seconds.value,
        linux.memory.working_set_bytes.value > 0, linux.network.default_interface.name, len(linux.containers),
    )  # fmt: skip
    facts["pod interfaces"] = [i.name for i in linux.network.interfaces]
    facts["pod stats by label"] = len(
        list_pod_stats(cri, pb.PodSandboxStatsFilter(label_selector={"app": "x"}))
    )

    started = time.monotonic()
    cri.runtime("stop_container", pb.StopContainerRequest(container_id=quits, timeout=20))
    facts["stop signal"] = (time.monotonic() - started < 10, cstatus(cri, quits).exit_code)
    cri.runtime("stop_container", pb.StopContainerRequest(container_id=main, timeout=0))
    numbers = [
        int(line.rsplit(" ", 1)[1])
        for f in (base / "logs" / "main.log.1", log_file)
        for line in f.read_text().splitlines()
    ]
    facts["log continuous"] = numbers == list(range(1, len(numbers) + 1))
    facts["reopen exited"] = code_of(
        lambda: cri.runtime(reopen, pb.ReopenContainerLogRequest(container_id=main))
    )
    stop(cri, pod_id)
    remove(cri, pod_id)
    return facts


def _pid_of(ctr: Callable[..., str], cid: str) -> int:
    for line in ctr("tasks", "ls").splitlines()[1:]:
        fields = line.split()
        if fields[0] == cid:
            return int(fields[1])
    raise AssertionError(f"no task {cid}")


def test_updates_log_reopens_stats_and_stop_signals_match_containerd_1_6s_cri(
    tmp_path: Path, node: Node
) -> None:
    require_tool("containerd")
    network = write_network(tmp_path / "corral-net")
    daemon = start_daemon(tmp_path, node, network)
    try:
        ours = ops_scenario(
            CRIClient(daemon.socket), lambda *a: daemon.ctr(*a, namespace=NS).stdout, tmp_path / "corral-run"
        )
    finally:
        remove_all(daemon)
        daemon.stop()

    base = tmp_path / "containerd"
    with containerd_16(base, node.netns) as (cri, their_ctr, _network):
        theirs = ops_scenario(cri, their_ctr, base / "run")
    # Where containerd answers Unknown for a call the container's state refuses, corral answers
    # FailedPrecondition (never Unknown for a caller's mistake); the words are the same.
    for key in ("reopen created", "reopen exited"):
        our_code, our_words = ours.pop(key)  # type: ignore[misc]
        their_code, their_words = theirs.pop(key)  # type: ignore[misc]
        assert (our_code, their_code, our_words) == (Status.FAILED_PRECONDITION, Status.UNKNOWN, their_words)
    # containerd 2.x lists every interface of the pod's network namespace, 1.6 only the default one.
    assert (ours.pop("pod interfaces"), theirs.pop("pod interfaces")) == (["eth0"], [])
    assert ours == theirs


def test_streaming_calls_for_what_does_not_exist_answer_as_containerd_1_6s_cri(
    tmp_path: Path, node: Node
) -> None:
    """Exec, Attach and PortForward are not served yet, but like containerd's they look up what
    they name first: a missing container or pod is NotFound in containerd's words."""
    require_tool("containerd")
    missing = "0" * 64
    requests = [
        ("exec", pb.ExecRequest(container_id=missing, cmd=["true"], stdout=True)),
        ("attach", pb.AttachRequest(container_id=missing, stdout=True)),
        ("port_forward", pb.PortForwardRequest(pod_sandbox_id=missing, port=[80])),
    ]

    def answers(cri: CRIClient) -> list[tuple[Status, str]]:
        return [code_of(lambda m=method, r=request: cri.runtime(m, r)) for method, request in requests]

    daemon = start_daemon(tmp_path, node, write_network(tmp_path / "net"))
    try:
        ours = answers(CRIClient(daemon.socket))
    finally:
        daemon.stop()
    with containerd_16(tmp_path / "containerd", node.netns) as (cri, _, _):
        theirs = answers(cri)
    assert ours == theirs
    assert [code for code, _ in ours] == [Status.NOT_FOUND] * 3
