"""What a task leaves on the host while it lives, and must not once it is removed: its shim
process, its mounts, its bundle directory and its cgroup."""

from __future__ import annotations

import time
from pathlib import Path

from harness import Daemon

SHIM = "containerd-shim-runc-v2"


def alive(pid: int, timeout: float = 5.0) -> bool:
    """Still running (a zombie waiting for whoever inherited it counts as gone) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return False
        if state == "Z":
            return False
        time.sleep(0.1)
    return True


def shim_pids(d: Daemon) -> list[int]:
    """Shim daemons started for this corrald (their -address is its socket)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(SHIM.encode()) and d.socket.encode() in argv:
            found.append(int(entry.name))
    return found


def mounts_of(d: Daemon) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(d.base) in line]


def bundles_of(d: Daemon) -> list[Path]:
    found: list[Path] = []
    for top in ("state", "root"):
        base = d.base / top / "io.containerd.runtime.v2.task"
        if base.is_dir():
            found += [p for ns in base.iterdir() if ns.is_dir() for p in ns.iterdir()]
    return found


def assert_nothing_left(d: Daemon) -> None:
    deadline = time.monotonic() + 5
    while shim_pids(d) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert shim_pids(d) == []
    assert mounts_of(d) == []
    assert bundles_of(d) == []
    # runc removes a container's cgroup once its last process is reaped, which a loaded machine
    # can delay past the delete that asked for it.
    deadline = time.monotonic() + 5
    while leftover_cgroups() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert leftover_cgroups() == []


def leftover_cgroups() -> list[Path]:
    """The cgroups ctr's specs name (``/<namespace>/<id>``), under v1 controllers or v2."""
    root = Path("/sys/fs/cgroup")
    parents = [root / ns for ns in ("default", "evns")]
    parents += [root / c / ns for c in ("memory", "pids", "cpu") for ns in ("default", "evns")]
    return [p for parent in parents if parent.is_dir() for p in parent.glob("t-*")]
