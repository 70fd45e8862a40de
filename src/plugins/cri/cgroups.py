"""A cgroup's CPU, memory and process counts read from its files, and a network namespace's
interface counters from ``/proc/<pid>/net/dev``: what containerd's cgroups library (cgroup2 and
cgroup1 ``Stat``) and netlink give its CRI stats.

Pure readers over a root directory, so they can be tested against a tree of files.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CGROUP_ROOT",
    "CgroupStats",
    "InterfaceStats",
    "cgroup_paths_of",
    "parse_net_dev",
    "read_cgroup",
    "unlimited",
]

CGROUP_ROOT = Path("/sys/fs/cgroup")
UNLIMITED = 1 << 62
"""containerd's isMemoryUnlimited: past this a limit is "none" (the kernel rounds its maximum)."""


@dataclass(frozen=True)
class CgroupStats:
    cpu_usage_ns: int | None
    """Total CPU time (``cpu.stat`` usage_usec * 1000, or v1's ``cpuacct.usage``)."""
    memory_usage: int | None
    """``memory.current`` (v1: ``memory.usage_in_bytes``); None when the memory controller is absent."""
    memory_limit: int = 0
    inactive_file: int = 0
    rss: int = 0
    """v2: ``anon`` as cAdvisor counts it; v1: ``total_rss``."""
    page_faults: int = 0
    major_page_faults: int = 0
    pids: int = 0

    @property
    def working_set(self) -> int:
        """usage - inactive_file, never below zero."""
        usage = self.memory_usage or 0
        return usage - self.inactive_file if self.inactive_file < usage else 0

    @property
    def available(self) -> int:
        """limit - working set, 0 when the limit is none."""
        return 0 if unlimited(self.memory_limit) else max(self.memory_limit - self.working_set, 0)


@dataclass(frozen=True)
class InterfaceStats:
    name: str
    rx_bytes: int
    rx_errors: int
    tx_bytes: int
    tx_errors: int


def unlimited(limit: int) -> bool:
    return limit > UNLIMITED


def cgroup_paths_of(pid: int, proc: Path = Path("/proc")) -> dict[str, str]:
    """Controller → path from ``/proc/<pid>/cgroup`` ("" for the unified hierarchy); empty when
    the process is gone."""
    out: dict[str, str] = {}
    try:
        text = (proc / str(pid) / "cgroup").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        if not controllers:
            out[""] = path
        for name in controllers.split(","):
            if name:
                out[name.removeprefix("name=")] = path
    return out


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _int(path: Path) -> int | None:
    text = _read(path)
    if text is None:
        return None
    value = text.strip()
    if value == "max":
        return (1 << 64) - 1
    try:
        return int(value)
    except ValueError:
        return None


def _flat(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (_read(path) or "").splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[key] = int(value)
    return out


def read_cgroup(paths: str | Mapping[str, str], root: Path = CGROUP_ROOT) -> CgroupStats | None:
    """The cgroup's stats: one path for every controller, or a controller → path mapping from
    ``cgroup_paths_of``. None when no file of it can be read (the cgroup is gone)."""
    if (root / "cgroup.controllers").exists():
        path = paths if isinstance(paths, str) else paths.get("", "")
        return _read_v2(root / path.lstrip("/"))
    return _read_v1(root, paths)


def _read_v2(directory: Path) -> CgroupStats | None:
    cpu = _flat(directory / "cpu.stat")
    usage = _int(directory / "memory.current")
    if not cpu and usage is None:
        return None
    memory = _flat(directory / "memory.stat")
    return CgroupStats(
        cpu_usage_ns=cpu["usage_usec"] * 1000 if "usage_usec" in cpu else None,
        memory_usage=usage,
        memory_limit=_int(directory / "memory.max") or 0,
        inactive_file=memory.get("inactive_file", 0),
        rss=memory.get("anon", 0),
        page_faults=memory.get("pgfault", 0),
        major_page_faults=memory.get("pgmajfault", 0),
        pids=_int(directory / "pids.current") or 0,
    )


def _v1_dir(root: Path, paths: str | Mapping[str, str], controller: str) -> Path | None:
    path = paths if isinstance(paths, str) else paths.get(controller)
    if path is None:
        return None
    for mount in (controller, "cpu,cpuacct" if controller in ("cpu", "cpuacct") else controller):
        if (root / mount).is_dir():
            return root / mount / path.lstrip("/")
    return None


def _read_v1(root: Path, paths: str | Mapping[str, str]) -> CgroupStats | None:
    cpuacct = _v1_dir(root, paths, "cpuacct")
    memory_dir = _v1_dir(root, paths, "memory")
    pids_dir = _v1_dir(root, paths, "pids")
    cpu = _int(cpuacct / "cpuacct.usage") if cpuacct else None
    usage = _int(memory_dir / "memory.usage_in_bytes") if memory_dir else None
    if cpu is None and usage is None:
        return None
    memory = _flat(memory_dir / "memory.stat") if memory_dir else {}
    return CgroupStats(
        cpu_usage_ns=cpu,
        memory_usage=usage,
        memory_limit=(_int(memory_dir / "memory.limit_in_bytes") or 0) if memory_dir else 0,
        inactive_file=memory.get("total_inactive_file", 0),
        rss=memory.get("total_rss", 0),
        page_faults=memory.get("total_pgfault", 0),
        major_page_faults=memory.get("total_pgmajfault", 0),
        pids=(_int(pids_dir / "pids.current") or 0) if pids_dir else 0,
    )


def parse_net_dev(text: str) -> list[InterfaceStats]:
    """Every interface but ``lo`` in ``/proc/net/dev``'s table, in its order."""
    out = []
    for line in text.splitlines()[2:]:
        name, colon, counters = line.partition(":")
        if not colon or name.strip() == "lo":
            continue
        fields = [int(f) for f in counters.split()]
        if len(fields) < 16:
            continue
        out.append(InterfaceStats(name.strip(), fields[0], fields[2], fields[8], fields[10]))
    return out
