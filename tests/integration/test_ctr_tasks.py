"""The real `ctr run` and `ctr tasks` against corrald: Debian's runc shim started from its bundle,
driven over ttrpc, its events forwarded on corrald's ttrpc socket, its tasks found again after a
restart, and nothing left behind once they are removed."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import pytest
from harness import Daemon
from task_leaks import SHIM, alive, assert_nothing_left, shim_pids
from tooling import require_root, require_tool

from corral.api.client import connect
from corral.plugins.images.build import build_busybox_image

pytestmark = pytest.mark.root

IMAGE = "docker.io/library/busybox:latest"


@pytest.fixture
def runtime(tmp_path: Path, ctr: str) -> Iterator[Daemon]:
    """corrald with the busybox image imported, as `ctr images import` does it."""
    require_root()
    require_tool(SHIM)
    require_tool("runc")
    d = Daemon(tmp_path / "corral").start()
    try:
        archive = tmp_path / "busybox.tar"
        build_busybox_image(archive)
        d.ctr("images", "import", str(archive))
        yield d
    finally:
        for task in tasks(d):
            d.ctr("tasks", "kill", "-s", "SIGKILL", task["TASK"], check=False)
        time.sleep(0.2)
        for task in tasks(d):
            d.ctr("tasks", "delete", "-f", task["TASK"], check=False)
        for line in d.ctr("containers", "ls", "-q", check=False).stdout.split():
            d.ctr("containers", "rm", line, check=False)
        d.stop()


def tasks(d: Daemon) -> list[dict[str, str]]:
    """`ctr tasks ls` as rows keyed by its header (TASK, PID, STATUS)."""
    lines = d.ctr("tasks", "ls", check=False).stdout.splitlines()
    if not lines:
        return []
    header = lines[0].split()
    return [dict(zip(header, line.split(), strict=True)) for line in lines[1:] if line.strip()]


def status_of(d: Daemon, task_id: str) -> str:
    return next((t["STATUS"] for t in tasks(d) if t["TASK"] == task_id), "")


def wait_for_status(d: Daemon, task_id: str, status: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while status_of(d, task_id) != status:
        assert time.monotonic() < deadline, f"{task_id} is {status_of(d, task_id)!r}, not {status}"
        time.sleep(0.1)


def test_run_rm_prints_the_output_and_returns_the_exit_status(runtime: Daemon) -> None:
    hello = runtime.ctr("run", "--rm", IMAGE, "t-hello", "/bin/echo", "hello")
    assert hello.stdout == "hello\n"
    failed = runtime.ctr("run", "--rm", IMAGE, "t-exit", "sh", "-c", "echo oops >&2; exit 3", check=False)
    assert failed.returncode == 3
    assert "oops" in failed.stderr
    assert runtime.ctr("containers", "ls", "-q").stdout.split() == []
    assert_nothing_left(runtime)


def test_a_detached_task_is_listed_inspected_exec_paused_measured_killed_and_deleted(
    runtime: Daemon,
) -> None:
    runtime.ctr("run", "-d", IMAGE, "t-d", "sleep", "1000")
    [row] = tasks(runtime)
    assert row["TASK"] == "t-d" and row["STATUS"] == "RUNNING"
    pid = int(row["PID"])
    assert Path(f"/proc/{pid}").exists()

    ps = runtime.ctr("tasks", "ps", "t-d").stdout.splitlines()
    assert ps[0].split() == ["PID", "INFO"]
    assert [int(line.split()[0]) for line in ps[1:]] == [pid]

    assert runtime.ctr("tasks", "exec", "--exec-id", "e1", "t-d", "echo", "hi").stdout == "hi\n"
    code = runtime.ctr("tasks", "exec", "--exec-id", "e2", "t-d", "sh", "-c", "exit 7", check=False)
    assert code.returncode == 7

    runtime.ctr("tasks", "pause", "t-d")
    assert status_of(runtime, "t-d") == "PAUSED"
    runtime.ctr("tasks", "resume", "t-d")
    assert status_of(runtime, "t-d") == "RUNNING"

    metrics = runtime.ctr("tasks", "metrics", "--format", "json", "t-d").stdout
    assert "memory" in metrics.lower() or "pids" in metrics.lower()

    # Deleting a running task is refused (by ctr, on the status corrald reports).
    refused = runtime.ctr("tasks", "delete", "t-d", check=False)
    assert refused.returncode != 0 and "running" in refused.stderr

    runtime.ctr("tasks", "kill", "-s", "SIGKILL", "t-d")
    wait_for_status(runtime, "t-d", "STOPPED")
    runtime.ctr("tasks", "delete", "t-d")
    assert tasks(runtime) == []
    runtime.ctr("containers", "rm", "t-d")
    assert not alive(pid)
    assert_nothing_left(runtime)


def test_errors_are_containerds(runtime: Daemon) -> None:
    missing = runtime.ctr("tasks", "kill", "nope", check=False)
    assert missing.returncode != 0 and "not found" in missing.stderr
    runtime.ctr("containers", "create", IMAGE, "t-twice", "sleep", "100")
    runtime.ctr("tasks", "start", "-d", "t-twice")
    again = runtime.ctr("tasks", "start", "-d", "t-twice", check=False)
    assert again.returncode != 0 and "already exists" in again.stderr
    assert [t["TASK"] for t in tasks(runtime)] == ["t-twice"]
    assert "not found" in runtime.ctr("tasks", "ps", "nope", check=False).stderr


class Events:
    """`ctr events` in the background, its lines parsed as ``ts ns topic json``."""

    def __init__(self, d: Daemon) -> None:
        self.proc = subprocess.Popen(
            ["ctr", "-a", d.socket, "events"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self.lines: queue.Queue[tuple[str, str, dict[str, object]]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        time.sleep(0.5)  # subscribed before anything happens

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            parts = line.rstrip("\n").split(" ", 6)
            if len(parts) == 7:
                self.lines.put((parts[4], parts[5], json.loads(parts[6])))

    def until(self, topic: str, timeout: float = 10.0) -> list[tuple[str, str, dict[str, object]]]:
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            item = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            seen.append(item)
            if item[1] == topic:
                return seen

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def test_ctr_events_shows_the_tasks_events_with_their_namespace(runtime: Daemon, tmp_path: Path) -> None:
    runtime.ctr("images", "import", str(tmp_path / "busybox.tar"), namespace="evns")
    events = Events(runtime)
    try:
        runtime.ctr("run", "--rm", IMAGE, "t-ev", "sh", "-c", "exit 5", check=False, namespace="evns")
        seen = events.until("/containers/delete")
    finally:
        events.close()
    tasks_seen = [(ns, topic, payload) for ns, topic, payload in seen if topic.startswith("/tasks/")]
    assert [topic for _, topic, _ in tasks_seen] == [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exit",
        "/tasks/delete",
    ]
    assert {ns for ns, _, _ in tasks_seen} == {"evns"}
    exit_event = tasks_seen[2][2]
    assert exit_event["container_id"] == "t-ev" and exit_event["exit_status"] == 5


def test_running_tasks_are_found_again_after_a_restart_and_a_kill_9(runtime: Daemon) -> None:
    runtime.ctr("run", "-d", IMAGE, "t-r", "sleep", "1000")
    pid = int(tasks(runtime)[0]["PID"])
    runtime.restart()
    assert tasks(runtime) == [{"TASK": "t-r", "PID": str(pid), "STATUS": "RUNNING"}]
    assert runtime.ctr("tasks", "exec", "--exec-id", "a", "t-r", "echo", "back").stdout == "back\n"

    assert runtime.proc is not None
    runtime.proc.send_signal(signal.SIGKILL)
    runtime.proc.wait()
    runtime.proc = None
    runtime.start()
    assert tasks(runtime) == [{"TASK": "t-r", "PID": str(pid), "STATUS": "RUNNING"}]
    events = Events(runtime)
    try:
        runtime.ctr("tasks", "kill", "-s", "SIGKILL", "t-r")
        seen = events.until("/tasks/exit")  # the shim found the new corrald's ttrpc socket
    finally:
        events.close()
    assert seen[-1][2]["container_id"] == "t-r" and seen[-1][2]["exit_status"] == 137
    wait_for_status(runtime, "t-r", "STOPPED")
    runtime.ctr("tasks", "delete", "t-r")
    runtime.ctr("containers", "rm", "t-r")
    assert_nothing_left(runtime)


def fifo_dirs_of(task_id: str) -> list[Path]:
    """The directories ctr made for a task's stdio FIFOs (``/run/containerd/fifo/<n>/<id>-stdout``)."""
    return [p.parent for p in Path("/run/containerd/fifo").glob(f"*/{task_id}-stdout")]


def test_a_shim_that_dies_leaves_its_task_stopped_with_an_exit_event(runtime: Daemon) -> None:
    for stale in fifo_dirs_of("t-dead"):
        shutil.rmtree(stale)
    runtime.ctr("run", "-d", IMAGE, "t-dead", "sleep", "1000")
    pid = int(tasks(runtime)[0]["PID"])
    assert len(fifo_dirs_of("t-dead")) == 1
    events = Events(runtime)
    try:
        [shim] = shim_pids(runtime)
        os.kill(shim, signal.SIGKILL)
        seen = events.until("/tasks/exit")
    finally:
        events.close()
    assert seen[-1][2]["container_id"] == "t-dead"
    wait_for_status(runtime, "t-dead", "STOPPED")
    assert not alive(pid)  # the cleanup after the shim killed the container
    runtime.ctr("tasks", "delete", "t-dead")
    assert fifo_dirs_of("t-dead") == []  # ctr found its FIFOs in the STOPPED task and removed them
    runtime.ctr("containers", "rm", "t-dead")
    assert_nothing_left(runtime)


def test_a_dead_shim_found_at_start_up_is_cleaned_up(runtime: Daemon) -> None:
    runtime.ctr("run", "-d", IMAGE, "t-gone", "sleep", "1000")
    runtime.stop()
    for pid in shim_pids(runtime):
        os.kill(pid, signal.SIGKILL)
    runtime.start()
    assert tasks(runtime) == []
    runtime.ctr("containers", "rm", "t-gone")
    for leftover in fifo_dirs_of("t-gone"):  # ctr's, for a task that no longer exists (as with containerd)
        shutil.rmtree(leftover)
    assert_nothing_left(runtime)


def test_a_hundred_runs_in_a_row_and_forty_four_at_a_time_leave_nothing_behind(runtime: Daemon) -> None:
    for i in range(100):
        assert runtime.ctr("run", "--rm", IMAGE, f"t-{i}", "/bin/echo", str(i)).stdout == f"{i}\n"
        assert fifo_dirs_of(f"t-{i}") == []
    assert runtime.ctr("containers", "ls", "-q").stdout.split() == []
    assert_nothing_left(runtime)

    def run(i: int) -> str:
        return runtime.ctr("run", "--rm", IMAGE, f"t-p{i}", "/bin/echo", f"p{i}").stdout

    with ThreadPoolExecutor(4) as pool:
        outputs = list(pool.map(run, range(40)))
    assert outputs == [f"p{i}\n" for i in range(40)]
    assert [p for i in range(40) for p in fifo_dirs_of(f"t-p{i}")] == []
    assert runtime.ctr("containers", "ls", "-q").stdout.split() == []
    assert runtime.ctr("snapshots", "ls").stdout.count("Active") == 0
    assert_nothing_left(runtime)


def read_fifo_until(path: str, text: bytes, timeout: float = 10.0) -> bytes:
    """Open a task's stdout FIFO as a new reader and read until ``text`` shows up."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while text not in data and time.monotonic() < deadline:
            try:
                data += os.read(fd, 65536)
            except BlockingIOError:
                time.sleep(0.05)
    finally:
        os.close(fd)
    return data


def test_ten_tasks_outlive_a_kill_9_with_their_output_fifos_working(runtime: Daemon) -> None:
    ticker = "i=0; while true; do echo tick$i; i=$((i+1)); sleep 0.2; done"
    ids = [f"t-k{i}" for i in range(10)]
    for task_id in ids:
        runtime.ctr("run", "-d", IMAGE, task_id, "sh", "-c", ticker)
    before = {t["TASK"]: t["PID"] for t in tasks(runtime)}
    assert sorted(before) == sorted(ids)

    async def stdout_paths() -> dict[str, str]:
        async with connect(runtime.socket) as client:
            return {t.id: t.stdout for t in await client.list_tasks()}

    paths = anyio.run(stdout_paths)
    assert runtime.proc is not None
    runtime.proc.send_signal(signal.SIGKILL)
    runtime.proc.wait()
    runtime.proc = None
    runtime.start()

    after = {t["TASK"]: (t["PID"], t["STATUS"]) for t in tasks(runtime)}
    assert after == {task_id: (pid, "RUNNING") for task_id, pid in before.items()}
    assert anyio.run(stdout_paths) == paths
    for task_id in ids:
        assert b"tick" in read_fifo_until(paths[task_id], b"tick")
    for task_id in ids:
        runtime.ctr("tasks", "kill", "-s", "SIGKILL", task_id)
    for task_id in ids:
        wait_for_status(runtime, task_id, "STOPPED")
        runtime.ctr("tasks", "delete", task_id)
        runtime.ctr("containers", "rm", task_id)
    assert tasks(runtime) == []
    assert_nothing_left(runtime)
