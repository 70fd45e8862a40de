"""`corral run` and `corral tasks` as a person uses them, against corrald with the real runc shim:
output and exit status, stdin, a real pseudo-terminal that follows its size, and task management."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import BIN, Daemon
from tooling import require_root, require_tool

from corral.plugins.images.build import build_busybox_image

pytestmark = pytest.mark.root

IMAGE = "docker.io/library/busybox:latest"


@pytest.fixture
def runtime(tmp_path: Path, ctr: str) -> Iterator[Daemon]:
    require_root()
    require_tool("containerd-shim-runc-v2")
    d = Daemon(tmp_path / "corral").start()
    try:
        archive = tmp_path / "busybox.tar"
        build_busybox_image(archive)
        d.ctr("images", "import", str(archive))
        yield d
    finally:
        for line in d.ctr("tasks", "ls", check=False).stdout.splitlines()[1:]:
            d.ctr("tasks", "kill", "-s", "SIGKILL", line.split()[0], check=False)
            time.sleep(0.2)
            d.ctr("tasks", "delete", line.split()[0], check=False)
        for line in d.ctr("containers", "ls", "-q", check=False).stdout.split():
            d.ctr("containers", "rm", line, check=False)
        d.stop()


def corral(d: Daemon, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "corral"), "-a", d.socket, *args],
        input=stdin, capture_output=True, text=True, timeout=60, env=d.environ(),
        stdin=subprocess.DEVNULL if stdin is None else None,
    )  # fmt: skip


def test_run_prints_output_and_exits_with_the_process_status(runtime: Daemon) -> None:
    hello = corral(runtime, "run", "--rm", IMAGE, "r1", "echo", "hello", "from", "corral")
    assert (hello.returncode, hello.stdout) == (0, "hello from corral\n")
    failed = corral(runtime, "run", "--rm", IMAGE, "r2", "sh", "-c", "echo to-stderr >&2; exit 4")
    assert (failed.returncode, failed.stdout, failed.stderr) == (4, "", "to-stderr\n")
    piped = corral(runtime, "run", "--rm", IMAGE, "r3", "sh", "-c", "tr a-z A-Z", stdin="piped in\n")
    assert (piped.returncode, piped.stdout) == (0, "PIPED IN\n")
    assert runtime.ctr("containers", "ls", "-q").stdout.split() == []
    assert runtime.ctr("tasks", "ls").stdout.splitlines()[1:] == []


def test_tasks_are_managed_as_ctr_manages_them(runtime: Daemon) -> None:
    assert corral(runtime, "run", "-d", IMAGE, "r-d", "sleep", "1000").returncode == 0
    [row] = json.loads(corral(runtime, "tasks", "ls", "--format", "json").stdout)
    assert (row["id"], row["status"]) == ("r-d", "RUNNING")
    ps = corral(runtime, "tasks", "ps", "r-d").stdout
    assert str(row["pid"]) in ps
    execd = corral(runtime, "tasks", "exec", "--exec-id", "x1", "r-d", "sh", "-c", "echo inside; exit 6")
    assert (execd.returncode, execd.stdout) == (6, "inside\n")
    assert corral(runtime, "tasks", "pause", "r-d").returncode == 0
    assert "PAUSED" in corral(runtime, "tasks", "ls").stdout
    assert corral(runtime, "tasks", "resume", "r-d").returncode == 0
    [metric] = json.loads(corral(runtime, "tasks", "metrics", "--format", "json", "r-d").stdout)
    assert metric["id"] == "r-d" and metric["type_url"].startswith("io.containerd.cgroups.")

    refused = corral(runtime, "tasks", "rm", "r-d")
    assert refused.returncode == 1 and "is running" in refused.stderr
    assert "RUNNING" in corral(runtime, "tasks", "ls").stdout
    removed = corral(runtime, "tasks", "rm", "-f", "r-d")
    assert (removed.returncode, removed.stdout) == (0, "r-d 137\n")
    assert corral(runtime, "containers", "rm", "r-d").returncode == 0
    assert json.loads(corral(runtime, "tasks", "ls", "--format", "json").stdout) == []


def test_bad_input_is_one_line_and_changes_nothing(runtime: Daemon) -> None:
    for args in (("tasks", "kill", "nope"), ("tasks", "rm", "nope"), ("tasks", "pause", "nope")):
        result = corral(runtime, *args)
        assert result.returncode == 1
        assert result.stderr == 'corral: container "nope" in namespace "default": not found\n'
    bad_signal = corral(runtime, "run", "-d", IMAGE, "r-s", "sleep", "100")
    assert bad_signal.returncode == 0
    result = corral(runtime, "tasks", "kill", "-s", "SIGNOPE", "r-s")
    assert result.returncode == 1 and "unknown signal" in result.stderr
    assert "RUNNING" in corral(runtime, "tasks", "ls").stdout


def read_pty(fd: int, until: bytes, timeout: float = 20.0) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while until not in out and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    return out


def set_size(fd: int, rows: int, columns: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


def test_run_t_gives_the_process_this_terminal_and_follows_its_size(runtime: Daemon) -> None:
    leader, follower = pty.openpty()
    set_size(follower, 33, 91)
    script = "tty; stty size; read line; echo got:$line; stty size; exit 3"
    proc = subprocess.Popen(
        [str(BIN / "corral"), "-a", runtime.socket, "run", "--rm", "-t", IMAGE, "r-t", "sh", "-c", script],
        stdin=follower, stdout=follower, stderr=follower, env=runtime.environ(), start_new_session=True,
    )  # fmt: skip
    os.close(follower)
    try:
        first = read_pty(leader, b"33 91")
        assert b"/dev/pts/" in first and b"33 91" in first
        set_size(leader, 40, 120)
        proc.send_signal(28)  # SIGWINCH, as the terminal sends it to its foreground group
        time.sleep(1.0)
        os.write(leader, b"typed\r")
        rest = read_pty(leader, b"40 120")
        assert b"got:typed" in rest and b"40 120" in rest
        assert proc.wait(timeout=20) == 3
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(leader)
    assert runtime.ctr("containers", "ls", "-q").stdout.split() == []


def test_run_with_a_non_contiguous_uid_map_runs_in_that_user_namespace(runtime: Daemon) -> None:
    # The container's root (host uid 666) must reach its bundle, as under containerd: pytest's
    # private temporary directories are opened for traversal (corrald's /run/corral already is).
    for parent in runtime.base.parents:
        if parent == Path("/tmp"):
            break
        parent.chmod(parent.stat().st_mode | 0o111)
    maps = ("--uidmap", "0:666:1000", "--uidmap", "1000:6666:64536")
    maps += ("--gidmap", "0:666:1000", "--gidmap", "1000:6666:64536")
    script = "cat /proc/self/uid_map; id -u; touch /written && echo wrote"
    result = corral(runtime, "run", "--rm", *maps, IMAGE, "r-u", "sh", "-c", script)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[:2]]
    assert rows == [["0", "666", "1000"], ["1000", "6666", "64536"]]
    assert result.stdout.splitlines()[2:] == ["0", "wrote"]  # root inside owns the remapped rootfs


def test_a_recursive_read_only_mount_is_read_only_in_its_sub_mounts(runtime: Daemon, tmp_path: Path) -> None:
    source = tmp_path / "shared"
    (source / "sub").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(source / "sub")], check=True)
    try:
        script = "touch /mnt/top || echo top-ro; touch /mnt/sub/f || echo sub-ro"
        rro = corral(runtime, "run", "--rm", "--mount", f"type=bind,src={source},dst=/mnt,options=rbind:rro",
                     IMAGE, "r-rro", "sh", "-c", script)  # fmt: skip
        ro = corral(runtime, "run", "--rm", "--mount", f"type=bind,src={source},dst=/mnt,options=rbind:ro",
                    IMAGE, "r-ro", "sh", "-c", script)  # fmt: skip
    finally:
        subprocess.run(["umount", str(source / "sub")], check=True)
    assert rro.stdout.split() == ["top-ro", "sub-ro"]
    assert ro.stdout.split() == ["top-ro"]  # plain ro leaves the sub-mount writable


def test_run_log_file_gets_the_output_detached_or_not(runtime: Daemon, tmp_path: Path) -> None:
    log = tmp_path / "logs" / "r-log.log"
    ran = corral(
        runtime,
        "run",
        "--rm",
        "--log-file",
        str(log),
        IMAGE,
        "r-log",
        "sh",
        "-c",
        "echo out; echo err >&2; sleep 0.5; exit 3",
    )
    assert (ran.returncode, ran.stdout, ran.stderr) == (3, "", "")
    # The shim copies stdout and stderr into the file on their own, and --rm's delete closes its
    # copies: the script gives both lines time to be copied before it exits (on a loaded machine a
    # line written just before the exit was seen lost, by containerd's shim as it would be).
    deadline = time.monotonic() + 10
    while sorted(log.read_text().splitlines()) != ["err", "out"]:
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    detached = tmp_path / "d.log"
    started = corral(
        runtime, "run", "-d", "--log-file", str(detached), IMAGE, "r-dlog", "sh", "-c", "echo bg; sleep 1000"
    )
    assert started.returncode == 0, started.stderr
    deadline = time.monotonic() + 10
    while not (detached.exists() and detached.read_text() == "bg\n"):
        assert time.monotonic() < deadline, detached.read_text() if detached.exists() else "no log"
        time.sleep(0.1)
    assert corral(runtime, "tasks", "rm", "--force", "r-dlog").returncode == 0
    # the same for a task started on its own, appended to the same file
    assert corral(runtime, "containers", "create", IMAGE, "r-tlog", "echo", "again").returncode == 0
    assert corral(runtime, "tasks", "start", "--log-file", str(detached), "r-tlog").returncode == 0
    deadline = time.monotonic() + 10
    while detached.read_text() != "bg\nagain\n":
        assert time.monotonic() < deadline, detached.read_text()
        time.sleep(0.1)
    refused = corral(runtime, "run", "-t", "--log-file", str(log), IMAGE, "r-tty", "true")
    assert refused.returncode != 0 and refused.stderr.count("\n") == 1
    assert "--log-file and --tty" in refused.stderr
    assert "r-tty" not in runtime.ctr("containers", "ls", "-q").stdout.split()
