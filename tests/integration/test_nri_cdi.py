"""NRI and CDI on the tasks path: containers run by the real ctr (and corral run) against corrald
with the real runc shim go through NRI plugins — an external process on the NRI socket, a
pre-installed one corrald launches, an in-process Python package — and get the CDI devices their
annotations or ``--device`` ask for."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Daemon, pip_install, write_plugin_project
from tooling import require_root, require_tool

from corral.plugins.images.build import build_busybox_image

pytestmark = pytest.mark.root

IMAGE = "docker.io/library/busybox:latest"
PLUGIN = Path(__file__).parent.parent / "nri_test_plugin.py"


def nri_config(tmp: Path, extra: str = "") -> str:
    return f"""\
        version = 3
        {extra}
        [plugins."io.containerd.nri.v1.nri"]
          socket_path = "{tmp}/nri/nri.sock"
          plugin_path = "{tmp}/nri-plugins"
          plugin_config_path = "{tmp}/nri-conf.d"
          plugin_registration_timeout = "5s"
          plugin_request_timeout = "1s"
        [plugins."io.corral.cdi.v1.cdi"]
          spec_dirs = ["{tmp}/cdi"]
        """


def started(d: Daemon) -> Daemon:
    d.start()
    archive = d.base / "busybox.tar"
    build_busybox_image(archive)
    d.ctr("images", "import", str(archive))
    return d


def cleanup(d: Daemon) -> None:
    for line in d.ctr("tasks", "ls", check=False).stdout.splitlines()[1:]:
        d.ctr("tasks", "kill", "-s", "SIGKILL", line.split()[0], check=False)
        time.sleep(0.2)
        d.ctr("tasks", "delete", line.split()[0], check=False)
    for line in d.ctr("containers", "ls", "-q", check=False).stdout.split():
        d.ctr("containers", "rm", line, check=False)
    d.stop()


@pytest.fixture
def daemon(tmp_path: Path, ctr: str) -> Iterator[Daemon]:
    require_root()
    require_tool("containerd-shim-runc-v2")
    d = started(Daemon(tmp_path / "corral", nri_config(tmp_path)))
    try:
        yield d
    finally:
        cleanup(d)


def plugin_process(tmp: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, str(PLUGIN), "--socket", f"{tmp}/nri/nri.sock", "--log", str(log), *args]
    )
    wait_for(lambda: any(e.get("method") == "Synchronize" for e in entries(log)), what="plugin sync")
    return proc


def entries(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def wait_for(predicate: Any, what: str, limit: float = 15.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def task_pid(d: Daemon, container_id: str) -> int:
    for line in d.ctr("tasks", "ls").stdout.splitlines()[1:]:
        fields = line.split()
        if fields[0] == container_id:
            return int(fields[1])
    raise AssertionError(f"no task {container_id}")


def environ(pid: int) -> list[str]:
    return [v.decode() for v in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if v]


def bundle_spec(d: Daemon, container_id: str) -> dict[str, Any]:
    [config] = (d.base / "state").glob(f"io.containerd.runtime.v2.task/default/{container_id}/config.json")
    spec: dict[str, Any] = json.loads(config.read_text())
    return spec


def test_an_external_plugin_adjusts_env_annotations_and_mounts_of_a_container_ctr_runs(
    daemon: Daemon, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "marker").write_text("from the host\n")
    log = tmp_path / "plugin.log"
    proc = plugin_process(
        tmp_path, log, "--name", "adjuster", "--index", "50", "--env", "NRI_ADDED=by-external-plugin",
        "--annotation", "nri.corral.test/added=yes", "--mount", f"{shared}:/nri-shared",
    )  # fmt: skip
    try:
        daemon.ctr("run", "-d", IMAGE, "n1", "sleep", "300")
        pid = task_pid(daemon, "n1")
        assert "NRI_ADDED=by-external-plugin" in environ(pid)
        assert bundle_spec(daemon, "n1")["annotations"]["nri.corral.test/added"] == "yes"
        shown = daemon.ctr("tasks", "exec", "--exec-id", "e1", "n1", "cat", "/nri-shared/marker")
        assert shown.stdout == "from the host\n"
        # The container record keeps the spec it was created with; only the task's is adjusted (so a
        # process ctr execs, whose spec ctr builds from the record, does not get the plugin's env).
        info = json.loads(daemon.ctr("containers", "info", "n1").stdout)
        assert "NRI_ADDED=by-external-plugin" not in info["Spec"]["process"]["env"]
        daemon.ctr("tasks", "kill", "-s", "SIGKILL", "n1")
        wait_for(lambda: "STOPPED" in daemon.ctr("tasks", "ls").stdout, what="task exit")
        # The exit itself is the stop, before anyone deletes the task.
        wait_for(lambda: any(e.get("method") == "StopContainer" for e in entries(log)), what="stop event")
        daemon.ctr("tasks", "delete", "n1")
        daemon.ctr("containers", "rm", "n1")
        wait_for(lambda: any(e.get("method") == "RemoveContainer" for e in entries(log)), what="remove event")
    finally:
        proc.kill()
        proc.wait()
    events = [(e["method"], e.get("container")) for e in entries(log) if e.get("container") == "n1"]
    assert events == [
        ("CreateContainer", "n1"), ("PostCreateContainer", "n1"), ("StartContainer", "n1"),
        ("PostStartContainer", "n1"), ("StopContainer", "n1"), ("RemoveContainer", "n1"),
    ]  # fmt: skip


def test_plugins_that_hang_or_crash_do_not_block_the_container(daemon: Daemon, tmp_path: Path) -> None:
    hang = plugin_process(
        tmp_path, tmp_path / "hang.log", "--name", "hang", "--index", "10", "--behaviour", "hang"
    )
    crash = plugin_process(
        tmp_path, tmp_path / "crash.log", "--name", "crash", "--index", "20", "--behaviour", "crash"
    )
    good = plugin_process(
        tmp_path, tmp_path / "good.log", "--name", "good", "--index", "30", "--env", "GOOD=1"
    )
    try:
        run = daemon.ctr("run", "--rm", IMAGE, "n2", "env")
        assert "GOOD=1" in run.stdout.split()
        # Both were dropped: the next container does not wait for them again.
        again = daemon.ctr("run", "--rm", IMAGE, "n3", "env")
        assert "GOOD=1" in again.stdout.split()
        assert [
            e.get("container") for e in entries(tmp_path / "hang.log") if e.get("method") == "CreateContainer"
        ] == ["n2"]
        assert crash.wait(timeout=10) == 3
    finally:
        for proc in (hang, crash, good):
            proc.kill()
            proc.wait()
    assert "nri_plugin_failed" in daemon.log()


def test_a_preinstalled_plugin_is_launched_and_adjusts_containers(tmp_path: Path, ctr: str) -> None:
    require_root()
    require_tool("containerd-shim-runc-v2")
    log = tmp_path / "launched.log"
    plugins = tmp_path / "nri-plugins"
    plugins.mkdir()
    wrapper = plugins / "40-launched"
    wrapper.write_text(
        f"#!/bin/sh\nexec {sys.executable} {PLUGIN} --log {log} --env LAUNCHED=$NRI_PLUGIN_IDX-$NRI_PLUGIN_NAME\n"
    )
    wrapper.chmod(0o755)
    d = started(Daemon(tmp_path / "corral", nri_config(tmp_path)))
    try:
        run = d.ctr("run", "--rm", IMAGE, "n4", "env")
        assert "LAUNCHED=40-launched" in run.stdout.split()
    finally:
        cleanup(d)
    # Stopping corrald stops the plugins it launched.
    wait_for(lambda: not any(PLUGIN.name in c for c in _cmdlines()), what="launched plugin to exit")


def _cmdlines() -> list[str]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                out.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue
    return [c for c in out if "launched.log" in c]


HOOK_PACKAGE = """\
    from corral.api.nri import api, hookimpl
    from corral.kernel import Registration


    class EnvHook:
        nri_index = "60"

        @hookimpl
        def nri_create_container(self, pod, container):
            reply = api.CreateContainerResponse(
                adjust=api.ContainerAdjustment(
                    env=[api.KeyValue(key="IN_PROCESS", value="hook-" + container.id)],
                    annotations={"nri.corral.test/in-process": "yes"},
                )
            )
            victim = container.annotations.get("nri.corral.test/evict")
            if victim:
                reply.evict.append(api.ContainerEviction(container_id=victim, reason="make room"))
            limit = container.annotations.get("nri.corral.test/limit")
            if limit:
                target, value = limit.split(":")
                memory = api.LinuxMemory(limit=api.OptionalInt64(value=int(value)))
                resources = api.LinuxResources(memory=memory)
                reply.update.append(
                    api.ContainerUpdate(container_id=target, linux=api.LinuxContainerUpdate(resources=resources))
                )
            return reply


    async def init(ic):
        return EnvHook()


    registration = Registration(type="io.corral.nri-plugin.v1", id="envhook", init=init)
    """


def cgroup_file(pid: int, name: str) -> str:
    [line] = [x for x in Path(f"/proc/{pid}/cgroup").read_text().splitlines() if x.startswith("0::")]
    return (Path("/sys/fs/cgroup") / line[3:].lstrip("/") / name).read_text().strip()


def test_an_in_process_python_package_adjusts_updates_and_evicts_containers_through_nri_hooks(
    tmp_path: Path, ctr: str
) -> None:
    require_root()
    require_tool("containerd-shim-runc-v2")
    project = write_plugin_project(
        tmp_path / "project", "corral-envhook", "corral_envhook", HOOK_PACKAGE,
        {"io.corral.nri-plugin.v1.envhook": "corral_envhook:registration"},
    )  # fmt: skip
    target = pip_install(project, tmp_path / "site")
    config = nri_config(tmp_path, 'enabled_plugins = ["io.corral.nri-plugin.v1.envhook"]')
    d = started(Daemon(tmp_path / "corral", config, pythonpath=[target]))
    try:
        d.ctr("run", "-d", IMAGE, "n5", "sleep", "300")
        assert "IN_PROCESS=hook-n5" in environ(task_pid(d, "n5"))
        assert bundle_spec(d, "n5")["annotations"]["nri.corral.test/in-process"] == "yes"
        plugins = d.ctr("plugins", "ls").stdout
        assert any(
            line.split()[:3] == ["io.corral.nri-plugin.v1", "envhook", "-"] for line in plugins.splitlines()
        )
        pid = task_pid(d, "n5")
        assert memory_limit(pid) != 64 << 20
        # Creating another container makes the plugin ask for n5's update, then its eviction.
        d.ctr("run", "--rm", "--annotation", "nri.corral.test/limit=n5:67108864", IMAGE, "n6", "true")
        assert memory_limit(pid) == 64 << 20
        d.ctr("run", "--rm", "--annotation", "nri.corral.test/evict=n5", IMAGE, "n7", "true")
        wait_for(lambda: "STOPPED" in d.ctr("tasks", "ls").stdout, what="the evicted task's exit")
    finally:
        cleanup(d)


def memory_limit(pid: int) -> int:
    """The memory limit of the process's cgroup (v2's memory.max or v1's memory.limit_in_bytes)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            value = (Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.max").read_text().strip()
            return -1 if value == "max" else int(value)
        if "memory" in controllers.split(","):
            return int(
                (Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.limit_in_bytes").read_text()
            )
    raise AssertionError("no memory cgroup")


CDI_SPEC = """\
cdiVersion: 0.6.0
kind: corral.test/fake
devices:
  - name: null0
    containerEdits:
      deviceNodes:
        - path: /dev/corral-null0
          hostPath: /dev/null
      env: [FAKE_DEVICE=null0]
containerEdits:
  env: [FAKE_VENDOR=corral]
"""


def test_cdi_devices_requested_by_annotation_or_device_flag_appear_in_the_container(
    daemon: Daemon, tmp_path: Path
) -> None:
    cdi = tmp_path / "cdi"
    cdi.mkdir()
    (cdi / "fake.yaml").write_text(CDI_SPEC)
    (cdi / "broken.json").write_text('{"cdiVersion": "0.6.0", "kind": "corral.test/broken", "devices": []}')
    null = os.stat("/dev/null")
    script = "ls -ln /dev/corral-null0; echo $FAKE_DEVICE $FAKE_VENDOR; echo written > /dev/corral-null0 && echo ok"
    run = daemon.ctr(
        "run",
        "--rm",
        "--annotation",
        "cdi.k8s.io/test_0=corral.test/fake=null0",
        IMAGE,
        "c1",
        "sh",
        "-c",
        script,
    )
    lines = run.stdout.splitlines()
    listing = lines[0].replace(",", " ").split()
    assert listing[0] == "crw-rw-rw-" and listing[-1] == "/dev/corral-null0"
    assert listing[4:6] == [str(os.major(null.st_rdev)), str(os.minor(null.st_rdev))]
    assert lines[1:] == ["null0 corral", "ok"]
    via_corral = daemon.corral(
        "run", "--rm", "--device", "corral.test/fake=null0", IMAGE, "c2", "sh", "-c", "echo $FAKE_DEVICE"
    )
    assert via_corral.stdout == "null0\n"
    missing = daemon.corral(
        "run", "--rm", "--device", "corral.test/fake=gone", IMAGE, "c3", "true", check=False
    )
    assert missing.returncode != 0
    assert "unresolvable CDI devices corral.test/fake=gone" in missing.stderr
    assert f"{cdi}/broken.json" in missing.stderr
    assert daemon.ctr("tasks", "ls").stdout.splitlines()[1:] == []
    listed = daemon.corral("cdi", "list", "--spec-dir", str(cdi), "--format", "json")
    assert json.loads(listed.stdout) == [{"name": "corral.test/fake=null0", "spec": f"{cdi}/fake.yaml"}]
    assert "invalid spec, no devices" in listed.stderr
    checked = daemon.corral("cdi", "validate", str(cdi / "fake.yaml"), str(cdi / "broken.json"), check=False)
    assert checked.returncode == 1
    assert checked.stdout.splitlines() == [
        f"{cdi}/fake.yaml: ok (corral.test/fake, 1 devices)",
        f"{cdi}/broken.json: invalid: invalid spec, no devices",
    ]


def test_containers_that_outlive_a_restart_are_synchronized_and_still_stopped_and_removed(
    daemon: Daemon, tmp_path: Path
) -> None:
    daemon.ctr("run", "-d", IMAGE, "r1", "sleep", "300")
    daemon.restart()
    log = tmp_path / "after.log"
    proc = plugin_process(tmp_path, log)
    try:
        synced = next(e for e in entries(log) if e.get("method") == "Synchronize")
        assert synced["containers"] == ["r1"]
        daemon.ctr("tasks", "kill", "-s", "SIGKILL", "r1")
        wait_for(lambda: "STOPPED" in daemon.ctr("tasks", "ls").stdout, what="task exit")
        daemon.ctr("tasks", "delete", "r1")
        daemon.ctr("containers", "rm", "r1")
        wait_for(lambda: any(e.get("method") == "RemoveContainer" for e in entries(log)), what="remove event")
    finally:
        proc.kill()
        proc.wait()
    assert [e["method"] for e in entries(log) if e.get("container") == "r1"] == [
        "StopContainer",
        "RemoveContainer",
    ]


def test_a_socket_another_runtime_serves_is_left_alone_and_plugins_why_says_so(tmp_path: Path) -> None:
    require_root()
    (tmp_path / "nri").mkdir()
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(tmp_path / "nri" / "nri.sock"))
    other.listen(1)
    d = Daemon(tmp_path / "corral", nri_config(tmp_path)).start()
    try:
        why = d.corral("plugins", "why", "io.containerd.nri.v1.nri").stdout
        assert why.startswith("io.containerd.nri.v1.nri is ok, but NRI socket "), why
        assert "served by another runtime" in why
        assert (tmp_path / "nri" / "nri.sock").exists()  # not taken over
    finally:
        d.stop()
        other.close()
    assert (tmp_path / "nri" / "nri.sock").exists()  # nor removed at stop
    d = Daemon(tmp_path / "corral2", nri_config(tmp_path / "free")).start()
    try:
        assert d.corral("plugins", "why", "io.containerd.nri.v1.nri").stdout.endswith("is ok\n")
    finally:
        d.stop()
