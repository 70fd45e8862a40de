"""A CRI runtime handler's ``options`` reach the runc shim, as containerd's GenerateRuntimeOptions
sends them: a handler whose ``BinaryName`` is a wrapper around runc and whose ``Root`` is a runc
state directory of the test's own runs its pods' pause containers and their containers through that
binary, with that root; a value of the wrong type is the config's error, naming the file and key."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cri_client import CRIClient
from cri_node import (
    Node,
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
    write_network,
)
from grpclib.const import Status
from harness import BIN, Daemon
from tooling import require_root, require_tool

from corral.api.types.runtime import v1 as pb

pytestmark = pytest.mark.root


def test_a_handlers_binary_name_and_root_run_its_pods_and_containers(tmp_path: Path, node: Node) -> None:
    runc = shutil.which(require_tool("runc"))
    calls = tmp_path / "runc-calls"
    wrapper = tmp_path / "runc-wrapper"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec {runc} "$@"\n')
    wrapper.chmod(0o755)
    root = tmp_path / "runc-root"
    network = write_network(tmp_path)
    extra = f"""
        [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.wrapped]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.wrapped.options]
        binaryname = "{wrapper}"
        Root = "{root}"
        NotARuncOption = "ignored, as containerd ignores it"
    """
    daemon = start_daemon(tmp_path, node, network, extra)
    try:
        import_busybox(daemon, tmp_path)
        cri = CRIClient(daemon.socket)
        sandbox = pod("wrapped")
        pod_id = run(cri, sandbox, handler="wrapped")
        cid = create(cri, pod_id, container("main", "sleep 300"), sandbox)
        cri.runtime("start_container", pb.StartContainerRequest(container_id=cid))
        assert cstatus(cri, cid).state == pb.ContainerState.CONTAINER_RUNNING
        # Both went through the wrapper, with the handler's root (the shim keeps a namespace per
        # directory under it).
        made = [line for line in calls.read_text().splitlines() if " create " in f" {line} "]
        assert any(pod_id in line for line in made) and any(cid in line for line in made), made
        assert all(f"--root {root / 'k8s.io'}" in line for line in made), made
        listed = subprocess.run(
            [runc, "--root", str(root / "k8s.io"), "list", "-q"], capture_output=True, text=True
        )
        assert {pod_id, cid} <= set(listed.stdout.split())
        # ContainerStatus's verbose info shows them, as containerd's ContainerInfo does.
        verbose = cri.runtime("container_status", pb.ContainerStatusRequest(container_id=cid, verbose=True))
        info = json.loads(verbose.info["info"])
        assert info["runtimeOptions"] == {"binary_name": str(wrapper), "root": str(root)}
        assert (info["sandboxID"], info["runtimeType"], info["snapshotKey"]) == (
            pod_id, "io.containerd.runc.v2", cid,
        )  # fmt: skip
        assert b"sleep" in Path(f"/proc/{info['pid']}/cmdline").read_bytes()
        assert info["config"]["metadata"] == {"name": "main"} and info["config"]["args"] == ["sleep 300"]
        assert info["runtimeSpec"]["annotations"]["io.kubernetes.cri.container-name"] == "main"
        assert cri.runtime("container_status", pb.ContainerStatusRequest(container_id=cid)).info == {}

        # A pod of the default handler does not use them.
        before = calls.read_text()
        plain = run(cri, pod("plain"))
        assert calls.read_text() == before
        stop(cri, plain)
        remove(cri, plain)

        stop(cri, pod_id)
        remove(cri, pod_id)
        listed = subprocess.run(
            [runc, "--root", str(root / "k8s.io"), "list", "-q"], capture_output=True, text=True
        )
        assert listed.stdout.split() == []
    finally:
        remove_all(daemon)
        daemon.stop()


def test_a_runc_option_of_the_wrong_type_is_a_config_error_naming_the_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        'version = 3\n[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.wrapped]\n'
        'runtime_type = "io.containerd.runc.v2"\n'
        '[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.wrapped.options]\n'
        'SystemdCgroup = "yes"\n'
    )
    checked = subprocess.run(
        [str(BIN / "corral"), "config", "validate", "--config", str(config)],
        capture_output=True,
        text=True,
    )
    assert checked.returncode != 0
    assert checked.stderr.strip() == (
        f'corral: config error: {config}: plugins."io.containerd.cri.v1.runtime".containerd.runtimes.'
        "wrapped: options.SystemdCgroup must be a boolean, not 'yes'"
    )


def test_the_pod_controller_takes_cni_from_the_cri_runtime_section_as_containerd_keeps_it(
    tmp_path: Path, ctr: str
) -> None:
    require_root()
    config = f"""
        version = 3
        [plugins."io.containerd.cri.v1.runtime".cni]
        conf_dir = "{tmp_path}/net.d"
        bin_dir = "{tmp_path}/cni-bin"
    """
    d = Daemon(tmp_path / "corral", config=config).start()
    try:
        info = d.corral("plugins", "info", "io.containerd.podsandbox.controller.v1.podsandbox").stdout
        assert f"cni_conf_dir={tmp_path}/net.d" in info and f"cni_bin_dirs={tmp_path}/cni-bin" in info
    finally:
        d.stop()
    both = tmp_path / "both.toml"
    both.write_text(
        f'version = 3\n[plugins."io.containerd.cri.v1.runtime".cni]\nbin_dir = "{tmp_path}/a"\n'
        f'bin_dirs = ["{tmp_path}/b"]\n'
    )
    checked = subprocess.run(
        [str(BIN / "corral"), "config", "validate", "--config", str(both)], capture_output=True, text=True
    )
    assert checked.returncode != 0
    assert checked.stderr.strip().endswith("`cni.bin_dir` and `cni.bin_dirs` cannot be set at the same time")


def test_update_runtime_config_writes_the_cni_config_from_the_template_and_the_network_turns_ready(
    tmp_path: Path,
) -> None:
    template = tmp_path / "cni.template"
    template.write_text(
        '{"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": [{"type": "bridge", "ipam": '
        '{"type": "host-local", "ranges": [{{range $i, $r := .PodCIDRRanges}}{{if $i}}, {{end}}'
        '[{"subnet": "{{$r}}"}]{{end}}]}}]}'
    )
    config = f"""
        version = 3
        [plugins."io.containerd.cri.v1.runtime".cni]
        conf_dir = "{tmp_path}/net.d"
        conf_template = "{template}"
    """
    d = Daemon(tmp_path / "corral", config=config).start()
    try:
        cri = CRIClient(d.socket)

        def network_ready() -> bool:
            status = cri.runtime("status", pb.StatusRequest())
            return any(c.type == "NetworkReady" and c.status for c in status.status.conditions)

        assert not network_ready()
        bad = pb.UpdateRuntimeConfigRequest(
            runtime_config=pb.RuntimeConfig(network_config=pb.NetworkConfig(pod_cidr="10.1.0.0/16,bogus"))
        )
        assert code_of(lambda: cri.runtime("update_runtime_config", bad)) == (
            Status.INVALID_ARGUMENT, "get routes: invalid CIDR address: bogus",
        )  # fmt: skip
        assert not (tmp_path / "net.d").exists()
        good = pb.UpdateRuntimeConfigRequest(
            runtime_config=pb.RuntimeConfig(network_config=pb.NetworkConfig(pod_cidr="10.1.0.0/16"))
        )
        cri.runtime("update_runtime_config", good)
        written = json.loads((tmp_path / "net.d" / "10-containerd-net.conflist").read_text())
        assert written["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.1.0.0/16"}]]
        assert network_ready()
    finally:
        d.stop()
