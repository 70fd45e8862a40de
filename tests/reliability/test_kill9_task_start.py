"""corrald killed with SIGKILL while the real ctr creates and starts containers (`ctr run -d`), then
started again: every task listed is a live process, every container listed has its snapshot, the
runs can be repeated under the same ids once the leftovers are removed, and once every container
is gone no shim, mount, bundle or cgroup is left."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

from harness import Daemon
from task_leaks import SHIM, alive, assert_nothing_left
from tooling import require_root, require_tool

from corral.plugins.images.build import build_busybox_image

IMAGE = "docker.io/library/busybox:latest"
ROUNDS = 6
RUNS_PER_ROUND = 3


def rows(d: Daemon, *args: str) -> list[list[str]]:
    return [line.split() for line in d.ctr(*args).stdout.splitlines()[1:] if line.strip()]


def check_consistent(d: Daemon) -> dict[str, str]:
    """Every listed task is a live process (or stopped, with an exit) of a listed container whose
    snapshot exists; the tasks by id with their status."""
    containers = set(d.ctr("containers", "ls", "-q").stdout.split())
    snapshots = {row[0] for row in rows(d, "snapshots", "ls")}
    assert containers <= snapshots, f"containers without a snapshot: {containers - snapshots}"
    statuses: dict[str, str] = {}
    for task_id, pid, status in rows(d, "tasks", "ls"):
        assert task_id in containers, f"task {task_id} of no container"
        assert status in ("RUNNING", "STOPPED", "CREATED"), (task_id, status)
        if status == "RUNNING":
            assert alive(int(pid), timeout=0.2), f"{task_id} RUNNING but pid {pid} is gone"
        statuses[task_id] = status
    return statuses


def remove_all(d: Daemon) -> None:
    """Tasks, containers, and the leases killed runs left: ctr makes a container's snapshot under a
    lease (24 h, as containerd's client does), which holds a snapshot whose container was never made."""
    for task_id in d.ctr("tasks", "ls", "-q").stdout.split():
        d.ctr("tasks", "delete", "-f", task_id)
    for container_id in d.ctr("containers", "ls", "-q").stdout.split():
        d.ctr("containers", "rm", container_id)
    for lease in rows(d, "leases", "ls"):
        d.ctr("leases", "rm", "--sync", lease[0])


def test_ctr_run_killed_at_any_point_leaves_nothing_half_made_or_leaked(tmp_path: Path) -> None:
    require_root()
    require_tool("ctr")
    require_tool(SHIM)
    require_tool("runc")
    rng = random.Random(20261203)
    d = Daemon(tmp_path / "corral").start()
    archive = tmp_path / "busybox.tar"
    build_busybox_image(archive)
    d.ctr("images", "import", str(archive))
    ids = [f"t-k{n}" for n in range(RUNS_PER_ROUND)]
    try:
        for _ in range(ROUNDS):
            script = " && ".join(
                f"ctr -a {d.socket} run -d {IMAGE} {cid} sleep 1000 >/dev/null 2>&1" for cid in ids
            )
            runner = subprocess.Popen(["sh", "-c", script])
            try:
                time.sleep(rng.uniform(0.05, 1.5))
                assert d.proc is not None
                d.proc.send_signal(signal.SIGKILL)
                d.proc.wait()
                runner.wait(timeout=60)
            finally:
                if runner.poll() is None:
                    runner.kill()
                    runner.wait()
            d.proc = None
            d.start()
            check_consistent(d)
            # What survived runs; what was half made is removed by the operator and made again.
            remove_all(d)
            for cid in ids:
                d.ctr("run", "-d", IMAGE, cid, "sleep", "1000")
            assert check_consistent(d) == dict.fromkeys(ids, "RUNNING")
            remove_all(d)
        d.ctr("images", "rm", "--sync", IMAGE)
        assert rows(d, "snapshots", "ls") == []
        assert_nothing_left(d)
    finally:
        remove_all(d)
        d.stop()
