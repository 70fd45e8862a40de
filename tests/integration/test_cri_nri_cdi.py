"""NRI and CDI on the CRI path: a pod and its container made through the CRI, as the kubelet makes
them, go through an external NRI plugin (the test's own process on the NRI socket: it sees the pod's
lifecycle and adjusts the container) and get the CDI devices the ContainerConfig's ``CDIDevices``
and ``cdi.k8s.io/`` annotations ask for, from a spec naming a character device the test makes with
mknod."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cri_client import CRIClient
from cri_node import (
    Node,
    NodeDaemon,
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

from corral.api.types.runtime import v1 as pb

pytestmark = pytest.mark.root

PLUGIN = Path(__file__).parent.parent / "nri_test_plugin.py"
EVENTS = "run-pod,stop-pod,remove-pod,create,post-create,start,post-start,stop,remove"


def nri_and_cdi(tmp: Path) -> str:
    return f"""
        [plugins."io.containerd.nri.v1.nri"]
        socket_path = "{tmp}/nri/nri.sock"
        plugin_path = "{tmp}/nri-plugins"
        plugin_config_path = "{tmp}/nri-conf.d"
        plugin_registration_timeout = "5s"
        plugin_request_timeout = "2s"
        [plugins."io.corral.cdi.v1.cdi"]
        spec_dirs = ["{tmp}/cdi"]
    """


def entries(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def exec_sync(cri: CRIClient, container_id: str, script: str) -> pb.ExecSyncResponse:
    request = pb.ExecSyncRequest(container_id=container_id, cmd=["sh", "-c", script], timeout=10)
    reply: pb.ExecSyncResponse = cri.runtime("exec_sync", request)
    return reply


def cdi_spec(device: Path) -> str:
    return f"""\
cdiVersion: 0.6.0
kind: corral.test/fake
devices:
  - name: zero0
    containerEdits:
      deviceNodes:
        - path: /dev/fake-zero0
          hostPath: {device}
      env: [FAKE_DEVICE=zero0]
  - name: zero1
    containerEdits:
      deviceNodes:
        - path: /dev/fake-zero1
          hostPath: {device}
      env: [FAKE_SECOND=zero1]
containerEdits:
  env: [FAKE_VENDOR=corral]
"""


def test_a_cri_pod_and_container_go_through_an_nri_plugin_and_get_their_cdi_devices(
    tmp_path: Path, node: Node
) -> None:
    # The device: a character device of the test's own making (/dev/zero's numbers, so reading it
    # inside the container proves the node is the real thing), named by a CDI spec.
    device = tmp_path / "fake-zero"
    os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 5))
    (tmp_path / "cdi").mkdir()
    (tmp_path / "cdi" / "fake.yaml").write_text(cdi_spec(device))
    # A broken spec beside it is reported by name, and fails only the container that needs it.
    (tmp_path / "cdi" / "broken.json").write_text(
        '{"cdiVersion": "0.6.0", "kind": "corral.test/broken", "devices": []}'
    )
    network = write_network(tmp_path)
    daemon: NodeDaemon = start_daemon(tmp_path, node, network, nri_and_cdi(tmp_path))
    log = tmp_path / "plugin.log"
    plugin = subprocess.Popen(
        [
            sys.executable, str(PLUGIN), "--socket", f"{tmp_path}/nri/nri.sock", "--log", str(log),
            "--name", "adjuster", "--index", "40", "--events", EVENTS,
            "--env", "NRI_ADDED=by-external-plugin", "--annotation", "nri.corral.test/added=yes",
        ]
    )  # fmt: skip
    try:
        wait_for(lambda: any(e.get("method") == "Synchronize" for e in entries(log)))
        import_busybox(daemon, tmp_path)
        cri = CRIClient(daemon.socket)
        sandbox = pod("devices")
        pod_id = run(cri, sandbox)
        wait_for(lambda: any(e.get("method") == "RunPodSandbox" for e in entries(log)))
        [ran] = [e for e in entries(log) if e.get("method") == "RunPodSandbox"]
        assert (ran["pod"], ran["pod_name"], ran["pod_uid"]) == (pod_id, "devices", "uid-devices")

        config = container(
            "main", "sleep 300",
            CDI_devices=[pb.CdiDevice(name="corral.test/fake=zero0")],
            annotations={"cdi.k8s.io/second": "corral.test/fake=zero1"},
        )  # fmt: skip
        cid = create(cri, pod_id, config, sandbox)
        cri.runtime("start_container", pb.StartContainerRequest(container_id=cid))
        assert cstatus(cri, cid).state == pb.ContainerState.CONTAINER_RUNNING

        env = exec_sync(cri, cid, 'echo "$NRI_ADDED $FAKE_DEVICE $FAKE_SECOND $FAKE_VENDOR"')
        assert env.stdout == b"by-external-plugin zero0 zero1 corral\n"
        nodes = exec_sync(cri, cid, "ls -ln /dev/fake-zero0 /dev/fake-zero1")
        for line in nodes.stdout.decode().splitlines():
            fields = line.replace(",", " ").split()
            assert fields[0].startswith("c") and fields[4:6] == ["1", "5"], line
        zeros = exec_sync(cri, cid, "head -c 4 /dev/fake-zero0 | od -An -tx1")
        assert zeros.stdout.split() == [b"00", b"00", b"00", b"00"]
        # The plugin's annotation is on the spec the runtime got.
        [bundle] = (daemon.base / "state").glob(f"io.containerd.runtime.v2.task/k8s.io/{cid}/config.json")
        assert json.loads(bundle.read_text())["annotations"]["nri.corral.test/added"] == "yes"

        # A device nobody describes: CreateContainer fails naming it and the broken spec; nothing made.
        missing = container("gone", "true", CDI_devices=[pb.CdiDevice(name="corral.test/fake=gone")])
        status, message = code_of(lambda: create(cri, pod_id, missing, sandbox))
        assert "corral.test/fake=gone" in message and "broken.json" in message, (status, message)
        listed = cri.runtime("list_containers", pb.ListContainersRequest()).containers
        assert [c.id for c in listed] == [cid]

        cri.runtime("stop_container", pb.StopContainerRequest(container_id=cid, timeout=1))
        stop(cri, pod_id)
        remove(cri, pod_id)
        wait_for(lambda: any(e.get("method") == "RemovePodSandbox" for e in entries(log)))
    finally:
        plugin.kill()
        plugin.wait()
        remove_all(daemon)
        daemon.stop()
    seen = [(e["method"], e.get("container") or e.get("pod")) for e in entries(log) if "method" in e]
    mine = [(method, ident) for method, ident in seen if ident in (pod_id, cid)]
    # containerd's order of NRI events for a pod with one container, stopped then removed with it.
    assert mine == [
        ("RunPodSandbox", pod_id),
        ("CreateContainer", cid), ("PostCreateContainer", cid),
        ("StartContainer", cid), ("PostStartContainer", cid),
        ("StopContainer", cid),
        ("StopPodSandbox", pod_id),
        ("RemoveContainer", cid),
        ("RemovePodSandbox", pod_id),
    ], mine  # fmt: skip
    created = next(e for e in entries(log) if e.get("method") == "CreateContainer")
    assert created["pod"] == pod_id and created["pod_name"] == "devices"
