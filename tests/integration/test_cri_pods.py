"""CRI pod sandboxes (RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus,
ListPodSandbox) through a client built from the CRI's stubs, on the real socket: the pause process
with runc's shim, a network namespace attached by Debian's CNI plugins.

As in test_pod_sandboxes, corrald runs in a network namespace of its own (the node) with a temp CNI
configuration, so nothing the plugins make touches the machine's network.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
from pathlib import Path

import pytest
from cri_client import CRIClient
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from test_pod_sandboxes import (
    CNI_BIN,
    NS,
    Network,
    Node,
    NodeDaemon,
    assert_nothing_left,
    node,
    pod_cgroups,
    shims_of,
    write_network,
)

from corral.api.types.runtime import v1 as pb

__all__ = ["node"]  # the fixture, shared with test_pod_sandboxes

pytestmark = pytest.mark.root


def start_daemon(base: Path, node: Node, network: Network, extra: str = "") -> NodeDaemon:
    config = f"""
        version = 3
        [plugins."io.containerd.podsandbox.controller.v1.podsandbox"]
        cni_conf_dir = "{network.conf_dir}"
        cni_bin_dirs = ["{CNI_BIN}"]
        [plugins."io.containerd.cri.v1.runtime".cni]
        conf_dir = "{network.conf_dir}"
        {extra}
    """
    return NodeDaemon(base / "corral", config, node_netns=node.netns).start()  # type: ignore[return-value]


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
        assert (code, message) == (Status.UNKNOWN, "sandbox config must include metadata")
        code, message = code_of(lambda: run(cri, pod("other"), handler="nonesuch"))
        assert code == Status.UNKNOWN and 'no runtime for "nonesuch" is configured' in message
        code, message = code_of(lambda: status(cri, "f" * 64))
        assert (code, message) == (Status.NOT_FOUND, "an error occurred when try to find sandbox: not found")
        assert len(listed(cri)) == 2

        # Stop: NOTREADY, no IP; again is fine; an unknown id is fine.
        cgroups = pod_cgroups(_pid(cri, first), first)
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


def _pid(cri: CRIClient, sandbox_id: str) -> int:
    return int(json.loads(status(cri, sandbox_id, verbose=True).info["info"])["pid"])


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
        pid = _pid(cri, survivor)
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
