"""CRI pod sandboxes (RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus,
ListPodSandbox) through a client built from the CRI's stubs, on the real socket: the pause process
with runc's shim, a network namespace attached by Debian's CNI plugins.

As in test_pod_sandboxes, corrald runs in a network namespace of its own (the node) with a temp CNI
configuration, so nothing the plugins make touches the machine's network.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from containerd16_cri import containerd_16
from cri_client import CRIClient
from cri_node import (
    BUSYBOX,
    NS,
    Node,
    assert_nothing_left,
    busybox_archive,
    code_of,
    container,
    containers,
    create,
    cstatus,
    import_busybox,
    listed,
    pod,
    pod_cgroups,
    remove,
    remove_all,
    run,
    sandbox_pid,
    shims_of,
    start_daemon,
    status,
    stop,
    wait_for,
    write_network,
)
from grpclib.const import Status
from tooling import require_tool

from corral.api.types.runtime import v1 as pb

pytestmark = pytest.mark.root


def test_a_pod_runs_is_listed_with_its_ip_stops_idempotently_and_is_removed_leaving_nothing(
    tmp_path: Path, node: Node
) -> None:
    network = write_network(tmp_path)
    daemon = start_daemon(tmp_path, node, network)
    try:
        cri = CRIClient(daemon.socket)
        first = run(cri, pod("web", labels={"app": "web", "tier": "front"}))
        second = run(cri, pod("db", labels={"app": "db"}))
        assert re.fullmatch(r"[0-9a-f]{64}", first) and first != second

        got = status(cri, first, verbose=True)
        s = got.status
        assert s.id == first and s.state == pb.PodSandboxState.SANDBOX_READY
        assert (s.metadata.name, s.metadata.uid, s.metadata.namespace, s.metadata.attempt) == (
            "web", "uid-web", "default", 0,
        )  # fmt: skip
        assert s.labels == {"app": "web", "tier": "front"} and s.annotations == {"note": "about web"}
        assert s.network.ip.startswith(network.subnet_prefix + "."), s.network
        assert s.linux.namespaces.options.network == pb.NamespaceMode.POD
        assert s.created_at > 0 and "info" in got.info
        ip_first = s.network.ip
        assert status(cri, second).status.network.ip not in ("", ip_first)

        # The sandbox record in k8s.io, with containerd's "name" label.
        records = daemon.ctr("containers", "ls", namespace=NS).stdout
        assert first in records and second in records  # the pause containers

        # List: all, by id prefix, by state, by labels (all of them must match).
        assert sorted(p.id for p in listed(cri)) == sorted([first, second])
        assert [p.id for p in listed(cri, pb.PodSandboxFilter(id=first[:12]))] == [first]
        assert [p.id for p in listed(cri, pb.PodSandboxFilter(label_selector={"tier": "front"}))] == [first]
        assert listed(cri, pb.PodSandboxFilter(label_selector={"app": "web", "tier": "back"})) == []
        assert listed(cri, pb.PodSandboxFilter(id="f" * 64)) == []
        item = listed(cri, pb.PodSandboxFilter(id=first))[0]
        assert item.metadata.name == "web" and item.annotations == {"note": "about web"}
        assert item.created_at == s.created_at

        # The same name again is refused while the pod exists; bad input changes nothing.
        code, message = code_of(lambda: run(cri, pod("web")))
        assert code == Status.FAILED_PRECONDITION
        assert message == f'failed to reserve sandbox name "web_default_uid-web_0": name ' \
            f'"web_default_uid-web_0" is reserved for "{first}"'  # fmt: skip
        code, message = code_of(
            lambda: cri.runtime("run_pod_sandbox", pb.RunPodSandboxRequest(config=pb.PodSandboxConfig()))
        )
        assert (code, message) == (Status.INVALID_ARGUMENT, "sandbox config must include metadata")
        code, message = code_of(lambda: run(cri, pod("other"), handler="nonesuch"))
        assert code == Status.INVALID_ARGUMENT and 'no runtime for "nonesuch" is configured' in message
        code, message = code_of(lambda: status(cri, "f" * 64))
        assert (code, message) == (Status.NOT_FOUND, "an error occurred when try to find sandbox: not found")
        assert len(listed(cri)) == 2

        # Stop: NOTREADY, no IP; again is fine; an unknown id is fine.
        cgroups = pod_cgroups(sandbox_pid(cri, first), first)
        stop(cri, first)
        stopped = status(cri, first).status
        assert stopped.state == pb.PodSandboxState.SANDBOX_NOTREADY and stopped.network.ip == ""
        stop(cri, first)
        stop(cri, "f" * 64)
        ready = listed(
            cri, pb.PodSandboxFilter(state=pb.PodSandboxStateValue(pb.PodSandboxState.SANDBOX_READY))
        )
        assert [p.id for p in ready] == [second]
        not_ready = pb.PodSandboxStateValue(pb.PodSandboxState.SANDBOX_NOTREADY)
        assert [p.id for p in listed(cri, pb.PodSandboxFilter(state=not_ready))] == [first]

        # Remove (the second without a stop first): gone, twice is fine, the name is free again.
        remove(cri, first)
        remove(cri, second)
        remove(cri, first)
        assert listed(cri) == []
        assert code_of(lambda: status(cri, first))[0] == Status.NOT_FOUND
        assert_nothing_left(daemon, node, network, [first, second], [ip_first], cgroups)
        again = run(cri, pod("web"))
        remove(cri, again)
        assert listed(cri) == []
    finally:
        remove_all(daemon)
        daemon.stop()


def test_a_pod_whose_start_fails_is_rolled_back_and_its_name_freed(tmp_path: Path, node: Node) -> None:
    network = write_network(tmp_path)
    extra = """
        [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.broken]
        runtime_type = "io.containerd.nonesuch.v1"
    """
    daemon = start_daemon(tmp_path, node, network, extra)
    try:
        cri = CRIClient(daemon.socket)
        code, message = code_of(lambda: run(cri, pod("flaky"), handler="broken"))
        assert code != Status.OK and message.startswith('failed to start sandbox "'), message
        assert listed(cri) == []
        assert_nothing_left(daemon, node, network, [], [])
        ok = run(cri, pod("flaky"))
        assert status(cri, ok).status.state == pb.PodSandboxState.SANDBOX_READY
        remove(cri, ok)
        assert_nothing_left(daemon, node, network, [ok], [])
    finally:
        remove_all(daemon)
        daemon.stop()


def test_corrald_killed_with_a_pod_running_lists_it_ready_after_restart_and_removes_it(
    tmp_path: Path, node: Node
) -> None:
    network = write_network(tmp_path)
    daemon = start_daemon(tmp_path, node, network)
    try:
        cri = CRIClient(daemon.socket)
        survivor = run(cri, pod("survivor"))
        before = status(cri, survivor).status
        pid = sandbox_pid(cri, survivor)
        cgroups = pod_cgroups(pid, survivor)
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait()
        daemon.proc = None
        os.kill(pid, 0)  # the pause process outlives the daemon
        daemon.start()

        cri = CRIClient(daemon.socket)
        [item] = listed(cri)
        assert (item.id, item.state, item.metadata.name) == (
            survivor, pb.PodSandboxState.SANDBOX_READY, "survivor",
        )  # fmt: skip
        after = status(cri, survivor).status
        assert (after.network.ip, after.created_at, after.labels) == (
            before.network.ip, before.created_at, before.labels,
        )  # fmt: skip
        code, _ = code_of(lambda: run(cri, pod("survivor")))
        assert code == Status.FAILED_PRECONDITION  # the name is still the survivor's
        remove(cri, survivor)
        assert listed(cri) == []
        assert_nothing_left(daemon, node, network, [survivor], [before.network.ip], cgroups)
        assert shims_of(daemon) == []
    finally:
        remove_all(daemon)
        daemon.stop()


def test_corral_cri_runs_lists_inspects_stops_and_removes_a_pod(tmp_path: Path, node: Node) -> None:
    network = write_network(tmp_path)
    daemon = start_daemon(tmp_path, node, network)
    try:
        config = tmp_path / "pod.json"
        config.write_text(
            json.dumps(
                {
                    "metadata": {"name": "cli", "uid": "uid-cli", "namespace": "tools", "attempt": 2},
                    "hostname": "cli",
                    "labels": {"app": "cli"},
                }
            )
        )
        pod_id = daemon.corral("cri", "runp", str(config)).stdout.strip()
        assert re.fullmatch(r"[0-9a-f]{64}", pod_id)
        assert daemon.corral("cri", "pods", "-q").stdout.split() == [pod_id]
        assert daemon.corral("cri", "pods", "-q", "--state", "notready").stdout.split() == []
        assert daemon.corral("cri", "pods", "-q", "--label", "app=other").stdout.split() == []
        assert daemon.corral("cri", "pods", "-q", "--namespace", "^too").stdout.split() == [pod_id]
        row = daemon.corral("cri", "pods").stdout.splitlines()[1].split()
        assert row[0] == pod_id[:13] and row[-5:] == ["Ready", "cli", "tools", "2", "(default)"]
        inspected = json.loads(daemon.corral("cri", "inspectp", pod_id[:10]).stdout)
        assert inspected["status"]["id"] == pod_id and inspected["status"]["state"] == "SANDBOX_READY"
        assert inspected["status"]["network"]["ip"].startswith(network.subnet_prefix + ".")
        assert inspected["info"]["info"]["pid"] > 0
        assert daemon.corral("cri", "stopp", pod_id).stdout == f"Stopped sandbox {pod_id}\n"
        assert daemon.corral("cri", "pods", "-q", "--state", "notready").stdout.split() == [pod_id]
        assert daemon.corral("cri", "rmp", pod_id).stdout == f"Removed sandbox {pod_id}\n"
        assert daemon.corral("cri", "pods", "-q").stdout == ""
        missing = daemon.corral("cri", "inspectp", pod_id, check=False)
        assert missing.returncode == 1
        assert missing.stderr.strip() == "corral: an error occurred when try to find sandbox: not found"
        bad = daemon.corral("cri", "runp", str(tmp_path / "nonesuch.json"), check=False)
        assert bad.returncode == 2 and bad.stderr.startswith("corral: cannot read")
        assert_nothing_left(daemon, node, network, [pod_id], [])
    finally:
        remove_all(daemon)
        daemon.stop()


def test_a_busybox_container_in_a_pod_logs_in_the_kubelet_format_execs_and_stops(
    tmp_path: Path, node: Node
) -> None:
    network = write_network(tmp_path)
    daemon = start_daemon(tmp_path, node, network)
    try:
        import_busybox(daemon, tmp_path)
        cri = CRIClient(daemon.socket)
        logs = tmp_path / "logs"
        sandbox = pod("app")
        sandbox.log_directory = str(logs)
        pod_id = run(cri, sandbox)
        pod_pid = sandbox_pid(cri, pod_id)
        env = [pb.KeyValue(key="GREETING", value="hello")]
        cid = create(
            cri, pod_id,
            container("main", 'echo "$GREETING from $(hostname)"; echo oops >&2; printf partial; '
                      "trap '' TERM; while true; do sleep 1; done", log="main/0.log", envs=env),
            sandbox,
        )  # fmt: skip
        created = cstatus(cri, cid)
        assert created.state == pb.ContainerState.CONTAINER_CREATED and created.created_at > 0
        assert created.started_at == 0 and created.log_path == str(logs / "main/0.log")
        cri.runtime("start_container", pb.StartContainerRequest(container_id=cid))
        running = cstatus(cri, cid)
        assert (
            running.state == pb.ContainerState.CONTAINER_RUNNING and running.started_at >= created.created_at
        )

        log_file = logs / "main" / "0.log"
        wait_for(lambda: log_file.exists() and log_file.read_text().count("\n") >= 2)
        lines = log_file.read_text().splitlines()
        pattern = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z (stdout|stderr) [FP] .*"
        assert all(re.fullmatch(pattern, line) for line in lines), lines
        assert sorted(line.split(" ", 1)[1] for line in lines) == ["stderr F oops", "stdout F hello from app"]

        execed = cri.runtime(
            "exec_sync",
            pb.ExecSyncRequest(
                container_id=cid, cmd=["/bin/sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10
            ),
        )
        assert (execed.stdout, execed.stderr, execed.exit_code) == (b"out\n", b"err\n", 3)
        netns = cri.runtime(
            "exec_sync",
            pb.ExecSyncRequest(container_id=cid, cmd=["readlink", "/proc/self/ns/net"], timeout=10),
        )
        assert netns.stdout.decode().strip() == os.readlink(f"/proc/{pod_pid}/ns/net")
        for kind in ("ipc", "uts"):
            seen = cri.runtime(
                "exec_sync",
                pb.ExecSyncRequest(container_id=cid, cmd=["readlink", f"/proc/self/ns/{kind}"], timeout=10),
            )
            assert seen.stdout.decode().strip() == os.readlink(f"/proc/{pod_pid}/ns/{kind}")
        resolv = cri.runtime(
            "exec_sync", pb.ExecSyncRequest(container_id=cid, cmd=["cat", "/etc/resolv.conf"], timeout=10)
        )
        assert resolv.stdout == Path(f"/proc/{pod_pid}/root/etc/resolv.conf").read_bytes()
        shm = cri.runtime(
            "exec_sync",
            pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", "echo hi > /dev/shm/x"], timeout=10),
        )
        assert shm.exit_code == 0 and Path(f"/proc/{pod_pid}/root/dev/shm/x").read_text() == "hi\n"
        code, message = code_of(
            lambda: cri.runtime(
                "exec_sync", pb.ExecSyncRequest(container_id=cid, cmd=["sleep", "30"], timeout=1)
            )
        )
        assert (code, message) == (
            Status.DEADLINE_EXCEEDED,
            "failed to exec in container: timeout 1s exceeded: context deadline exceeded",
        )

        assert [c.id for c in containers(cri)] == [cid]

        # Bad input: the right status, nothing made.
        code, message = code_of(lambda: create(cri, "f" * 64, container("x", "true"), sandbox))
        assert (code, message) == (Status.NOT_FOUND, f'failed to find sandbox id "{"f" * 64}": not found')
        code, message = code_of(lambda: create(cri, pod_id, container("main", "true"), sandbox))
        assert code == Status.FAILED_PRECONDITION and message.startswith(
            'failed to reserve container name "main_app_'
        )
        nameless = pb.ContainerConfig(image=pb.ImageSpec(image=BUSYBOX))
        code, message = code_of(lambda: create(cri, pod_id, nameless, sandbox))
        assert (code, message) == (Status.INVALID_ARGUMENT, "container config must include metadata")
        code, message = code_of(
            lambda: create(cri, pod_id, container("main2", "true"), pb.PodSandboxConfig())
        )
        assert (code, message) == (Status.INVALID_ARGUMENT, "pod sandbox config must include metadata")
        missing_image = container("y", "true")
        missing_image.image = pb.ImageSpec(image="example.com/nonesuch:1")
        code, message = code_of(lambda: create(cri, pod_id, missing_image, sandbox))
        assert code == Status.NOT_FOUND and message.startswith(
            'failed to resolve image "example.com/nonesuch:1"'
        )
        code, message = code_of(
            lambda: cri.runtime("start_container", pb.StartContainerRequest(container_id=cid))
        )
        assert (code, message) == (
            Status.FAILED_PRECONDITION,
            f'failed to set starting state for container "{cid}": container is in CONTAINER_RUNNING state',
        )
        assert [c.id for c in containers(cri)] == [cid]
        assert [c.id for c in containers(cri, pb.ContainerFilter(pod_sandbox_id=pod_id[:8]))] == [cid]
        assert containers(cri, pb.ContainerFilter(label_selector={"c": "other"})) == []
        exited = pb.ContainerStateValue(pb.ContainerState.CONTAINER_EXITED)
        assert containers(cri, pb.ContainerFilter(state=exited)) == []

        # It ignores SIGTERM: the stop ends it with SIGKILL after the timeout.
        started = time.monotonic()
        cri.runtime("stop_container", pb.StopContainerRequest(container_id=cid, timeout=2))
        took = time.monotonic() - started
        assert took >= 2, took
        done = cstatus(cri, cid)
        assert done.state == pb.ContainerState.CONTAINER_EXITED
        assert (done.exit_code, done.reason) == (137, "Error")
        assert done.finished_at >= done.started_at > 0
        assert log_file.read_text().splitlines()[-1].endswith(" stdout P partial")
        cri.runtime("stop_container", pb.StopContainerRequest(container_id=cid, timeout=2))  # again: fine
        code, message = code_of(
            lambda: cri.runtime("exec_sync", pb.ExecSyncRequest(container_id=cid, cmd=["true"], timeout=5))
        )
        assert (code, message) == (
            Status.FAILED_PRECONDITION,
            "failed to exec in container: container is in CONTAINER_EXITED state",
        )

        # A container that completes on its own.
        quick = create(cri, pod_id, container("quick", "exit 0"), sandbox)
        cri.runtime("start_container", pb.StartContainerRequest(container_id=quick))
        wait_for(lambda: cstatus(cri, quick).state == pb.ContainerState.CONTAINER_EXITED)
        assert (cstatus(cri, quick).exit_code, cstatus(cri, quick).reason) == (0, "Completed")

        cri.runtime("remove_container", pb.RemoveContainerRequest(container_id=cid))
        cri.runtime("remove_container", pb.RemoveContainerRequest(container_id=cid))  # again: fine
        assert [c.id for c in containers(cri)] == [quick]
        code, _ = code_of(lambda: cstatus(cri, cid))
        assert code == Status.NOT_FOUND
        remove(cri, pod_id)  # removes the quick container too
        assert containers(cri) == []
        assert_nothing_left(daemon, node, network, [pod_id, cid, quick], [])
        assert log_file.exists()  # the kubelet's, left in place
    finally:
        remove_all(daemon)
        daemon.stop()


def test_a_container_over_its_memory_limit_reports_oomkilled(tmp_path: Path, node: Node) -> None:
    network = write_network(tmp_path)
    daemon = start_daemon(tmp_path, node, network)
    try:
        import_busybox(daemon, tmp_path)
        cri = CRIClient(daemon.socket)
        sandbox = pod("hungry")
        pod_id = run(cri, sandbox)
        limit = 32 * 1024 * 1024
        resources = pb.LinuxContainerResources(memory_limit_in_bytes=limit, memory_swap_limit_in_bytes=limit)
        cid = create(
            cri, pod_id, container("eat", "tail /dev/zero", linux=pb.LinuxContainerConfig(resources=resources)),
            sandbox,
        )  # fmt: skip
        cri.runtime("start_container", pb.StartContainerRequest(container_id=cid))
        wait_for(lambda: cstatus(cri, cid).state == pb.ContainerState.CONTAINER_EXITED, timeout=60)
        done = cstatus(cri, cid)
        assert (done.reason, done.exit_code) == ("OOMKilled", 137)
        remove(cri, pod_id)
        assert_nothing_left(daemon, node, network, [pod_id, cid], [])
    finally:
        remove_all(daemon)
        daemon.stop()


def test_corrald_killed_with_a_pod_and_container_running_lists_them_after_restart_and_removes_them(
    tmp_path: Path, node: Node
) -> None:
    network = write_network(tmp_path)
    daemon = start_daemon(tmp_path, node, network)
    try:
        import_busybox(daemon, tmp_path)
        cri = CRIClient(daemon.socket)
        sandbox = pod("durable")
        sandbox.log_directory = str(tmp_path / "logs")
        pod_id = run(cri, sandbox)
        ticks = "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.3; done"
        cid = create(cri, pod_id, container("ticker", ticks, log="ticker.log"), sandbox)
        cri.runtime("start_container", pb.StartContainerRequest(container_id=cid))
        log_file = tmp_path / "logs" / "ticker.log"
        wait_for(lambda: log_file.exists() and "tick 2" in log_file.read_text())
        # What a create killed before its status was written leaves: a record and its snapshot.
        half = "half-made-" + cid[:8]
        daemon.ctr(
            "containers", "create", "--label", "io.cri-containerd.kind=container", BUSYBOX, half, namespace=NS
        )
        assert half in daemon.ctr("containers", "ls", "-q", namespace=NS).stdout.split()
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait()
        daemon.proc = None
        time.sleep(1)  # ticks go to the FIFO while nobody reads it
        daemon.start()

        cri = CRIClient(daemon.socket)
        wait_for(lambda: half not in daemon.ctr("containers", "ls", "-q", namespace=NS).stdout.split())
        assert half not in daemon.ctr("snapshots", "ls", namespace=NS).stdout
        assert [(p.id, p.state) for p in listed(cri)] == [(pod_id, pb.PodSandboxState.SANDBOX_READY)]
        assert [(c.id, c.state) for c in containers(cri)] == [(cid, pb.ContainerState.CONTAINER_RUNNING)]
        seen = log_file.read_text().count("\n")
        wait_for(lambda: log_file.read_text().count("\n") >= seen + 3)  # the log goes on
        numbers = [int(line.rsplit(" ", 1)[1]) for line in log_file.read_text().splitlines()]
        assert numbers == list(range(1, len(numbers) + 1))  # nothing lost or doubled over the restart
        execed = cri.runtime(
            "exec_sync", pb.ExecSyncRequest(container_id=cid, cmd=["echo", "alive"], timeout=10)
        )
        assert (execed.stdout, execed.exit_code) == (b"alive\n", 0)
        cri.runtime("stop_container", pb.StopContainerRequest(container_id=cid, timeout=5))
        done = cstatus(cri, cid)
        assert done.state == pb.ContainerState.CONTAINER_EXITED and done.exit_code == 143
        remove(cri, pod_id)
        assert listed(cri) == [] and containers(cri) == []
        assert_nothing_left(daemon, node, network, [pod_id, cid], [])
    finally:
        remove_all(daemon)
        daemon.stop()


def test_corral_cri_drives_a_container_create_start_ps_logs_exec_stop_inspect_rm(
    tmp_path: Path, node: Node
) -> None:
    network = write_network(tmp_path)
    daemon = start_daemon(tmp_path, node, network)
    try:
        import_busybox(daemon, tmp_path)
        pod_file, container_file = tmp_path / "pod.json", tmp_path / "container.json"
        pod_file.write_text(json.dumps({
            "metadata": {"name": "clipod", "uid": "u1", "namespace": "tools"},
            "logDirectory": str(tmp_path / "logs"),
        }))  # fmt: skip
        container_file.write_text(json.dumps({
            "metadata": {"name": "echoer"},
            "image": {"image": BUSYBOX},
            "command": ["/bin/sh", "-c", "echo one; echo two >&2; exec sleep 1000"],
            "logPath": "echoer.log",
        }))  # fmt: skip
        pod_id = daemon.corral("cri", "runp", str(pod_file)).stdout.strip()
        cid = daemon.corral("cri", "create", pod_id, str(container_file), str(pod_file)).stdout.strip()
        assert re.fullmatch(r"[0-9a-f]{64}", cid)
        assert daemon.corral("cri", "ps", "-q").stdout == ""  # only running ones by default
        assert daemon.corral("cri", "ps", "-aq").stdout.split() == [cid]
        assert daemon.corral("cri", "start", cid[:12]).stdout.strip() == cid[:12]
        row = daemon.corral("cri", "ps").stdout.splitlines()[1].split()
        assert row[0] == cid[:13] and row[-4:] == ["Running", "echoer", "0", pod_id[:13]]
        log_file = tmp_path / "logs" / "echoer.log"
        wait_for(lambda: log_file.exists() and log_file.read_text().count("\n") >= 2)
        logs = daemon.corral("cri", "logs", cid)
        assert (logs.stdout, logs.stderr) == ("one\n", "two\n")
        stamped = daemon.corral("cri", "logs", "-t", "--tail", "2", cid)
        assert re.fullmatch(r"\S+Z one\n", stamped.stdout) and re.fullmatch(r"\S+Z two\n", stamped.stderr)
        assert daemon.corral("cri", "logs", "--tail", "0", cid).stdout == ""
        execed = daemon.corral("cri", "exec", cid, "sh", "-c", "echo in; exit 4", check=False)
        assert (execed.returncode, execed.stdout) == (4, "in\n")
        assert daemon.corral("cri", "stop", "-t", "1", cid).stdout.strip() == cid
        inspected = json.loads(daemon.corral("cri", "inspect", cid).stdout)["status"]
        assert (inspected["state"], inspected["reason"]) == ("CONTAINER_EXITED", "Error")
        assert inspected["logPath"] == str(log_file)
        assert daemon.corral("cri", "rm", cid).stdout.strip() == cid
        assert daemon.corral("cri", "ps", "-aq").stdout == ""
        missing = daemon.corral("cri", "inspect", cid, check=False)
        assert missing.returncode == 1 and "not found" in missing.stderr
        daemon.corral("cri", "rmp", pod_id)
        assert_nothing_left(daemon, node, network, [pod_id, cid], [])
    finally:
        remove_all(daemon)
        daemon.stop()


def test_a_container_in_one_pod_reaches_a_server_in_another_by_its_pod_ip(tmp_path: Path, node: Node) -> None:
    network = write_network(tmp_path)
    daemon = start_daemon(tmp_path, node, network)
    try:
        import_busybox(daemon, tmp_path)
        cri = CRIClient(daemon.socket)
        config_a, config_b = pod("client"), pod("server")
        pod_a, pod_b = run(cri, config_a), run(cri, config_b)
        ip_b = status(cri, pod_b).status.network.ip
        serve = "mkdir -p /www && echo hello from b > /www/index.html && exec httpd -f -p 8080 -h /www"
        server = create(cri, pod_b, container("web", serve), config_b)
        client = create(cri, pod_a, container("shell", "exec sleep 1000"), config_a)
        for cid in (server, client):
            cri.runtime("start_container", pb.StartContainerRequest(container_id=cid))
        # busybox nc, not wget: static glibc wget needs NSS files the image lacks
        fetch = ["sh", "-c", f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {ip_b} 8080"]
        reply = pb.ExecSyncResponse()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            reply = cri.runtime("exec_sync", pb.ExecSyncRequest(container_id=client, cmd=fetch, timeout=10))
            if reply.exit_code == 0:
                break
            time.sleep(0.2)
        assert reply.exit_code == 0 and reply.stdout.endswith(b"\r\n\r\nhello from b\n"), reply
        remove(cri, pod_a)
        remove(cri, pod_b)
        assert listed(cri) == [] and containers(cri) == []
        assert_nothing_left(daemon, node, network, [pod_a, pod_b, server, client], [ip_b])
    finally:
        remove_all(daemon)
        daemon.stop()


# -- the same scenario against Debian's containerd 1.6 CRI ------------------------------------------
def scenario(cri: CRIClient, ctr: Any, base: Path) -> dict[str, object]:
    """A pod and a busybox container through the CRI: what a kubelet would observe."""
    facts: dict[str, object] = {}
    base.mkdir(parents=True, exist_ok=True)
    ctr("images", "import", str(busybox_archive(base)))
    config = pod("cmp")
    config.log_directory = str(base / "logs")
    pod_id = run(cri, config)
    s = status(cri, pod_id).status
    facts["pod"] = (s.state, bool(s.network.ip), s.metadata.name, s.metadata.attempt, s.labels, s.annotations)
    _, message = code_of(lambda: run(cri, pod("cmp")))
    facts["same name"] = message.startswith('failed to reserve sandbox name "cmp_default_uid-cmp_0": name ')
    facts["unknown pod"] = code_of(lambda: status(cri, "f" * 64))
    facts["listed"] = [
        len(listed(cri)),
        len(listed(cri, pb.PodSandboxFilter(label_selector={"app": "cmp"}))),
        len(listed(cri, pb.PodSandboxFilter(label_selector={"app": "other"}))),
        len(listed(cri, pb.PodSandboxFilter(id=pod_id[:10]))),
    ]
    script = "echo out; echo err >&2; trap '' TERM; while true; do sleep 1; done"
    cid = create(cri, pod_id, container("main", script, log="main.log"), config)
    facts["created"] = cstatus(cri, cid).state
    cri.runtime("start_container", pb.StartContainerRequest(container_id=cid))
    facts["running"] = cstatus(cri, cid).state
    log_file = base / "logs" / "main.log"
    wait_for(lambda: log_file.exists() and log_file.read_text().count("\n") >= 2)
    facts["log"] = sorted(line.split(" ", 1)[1] for line in log_file.read_text().splitlines())
    execed = cri.runtime(
        "exec_sync", pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", "echo a; exit 2"], timeout=10)
    )
    facts["exec"] = (execed.stdout, execed.stderr, execed.exit_code)
    facts["exec timeout"] = code_of(
        lambda: cri.runtime("exec_sync", pb.ExecSyncRequest(container_id=cid, cmd=["sleep", "20"], timeout=1))
    )
    started = time.monotonic()
    cri.runtime("stop_container", pb.StopContainerRequest(container_id=cid, timeout=2))
    done = cstatus(cri, cid)
    facts["stopped"] = (time.monotonic() - started >= 2, done.state, done.exit_code, done.reason)
    facts["exec exited"] = code_of(
        lambda: cri.runtime("exec_sync", pb.ExecSyncRequest(container_id=cid, cmd=["true"], timeout=5))
    )
    cri.runtime("remove_container", pb.RemoveContainerRequest(container_id=cid))
    cri.runtime("remove_container", pb.RemoveContainerRequest(container_id=cid))
    facts["removed container"] = code_of(lambda: cstatus(cri, cid))[0]
    stop(cri, pod_id)
    s = status(cri, pod_id).status
    facts["stopped pod"] = (s.state, s.network.ip)
    stop(cri, pod_id)
    remove(cri, pod_id)
    remove(cri, pod_id)
    facts["after"] = (listed(cri), containers(cri))
    return facts


def test_the_pod_and_container_scenario_matches_containerd_1_6s_cri(tmp_path: Path, node: Node) -> None:
    require_tool("containerd")
    network = write_network(tmp_path / "corral-net")
    daemon = start_daemon(tmp_path, node, network)
    try:
        ours = scenario(
            CRIClient(daemon.socket), lambda *a: daemon.ctr(*a, namespace=NS), tmp_path / "corral-run"
        )
    finally:
        remove_all(daemon)
        daemon.stop()

    base = tmp_path / "containerd"
    with containerd_16(base, node.netns) as (cri, their_ctr, _network):
        theirs = scenario(cri, their_ctr, base / "run")
    # Where containerd answers Unknown for a call the container's state refuses, corral answers
    # FailedPrecondition (never Unknown for a caller's mistake); the words are the same.
    our_code, our_words = ours.pop("exec exited")  # type: ignore[misc]
    their_code, their_words = theirs.pop("exec exited")  # type: ignore[misc]
    assert (our_code, their_code, our_words) == (Status.FAILED_PRECONDITION, Status.UNKNOWN, their_words)
    assert ours == theirs
