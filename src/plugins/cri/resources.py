"""A CRI container's resource limits in its OCI spec, after containerd 2.x's
``internal/cri/opts/spec_linux_opts.go`` (WithResources) and ``internal/cri/server/helpers.go``
(copyResourcesToStatus): what UpdateContainerResources writes and ContainerStatus reports.

Pure functions over the spec's JSON; the task update and the record's write are the caller's.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.kernel import FailedPrecondition
from corral.plugins.cri.cgroups import CGROUP_ROOT
from corral.plugins.cri.sandboxes import worded

__all__ = [
    "RESOURCES_TYPE_URL",
    "HugepageLimit",
    "ResourceUpdate",
    "apply_resources",
    "hugetlb_controller_present",
    "resources_of",
    "swap_controller_available",
    "with_resources",
]

RESOURCES_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"


@dataclass(frozen=True)
class HugepageLimit:
    page_size: str
    limit: int


@dataclass(frozen=True)
class ResourceUpdate:
    """A CRI LinuxContainerResources: zero and empty mean "leave as it is", as in containerd."""

    cpu_period: int = 0
    cpu_quota: int = 0
    cpu_shares: int = 0
    memory_limit: int = 0
    memory_swap_limit: int = 0
    cpuset_cpus: str = ""
    cpuset_mems: str = ""
    hugepage_limits: tuple[HugepageLimit, ...] = ()
    unified: Mapping[str, str] = field(default_factory=dict)


def unified_mode(root: Path = CGROUP_ROOT) -> bool:
    return (root / "cgroup.controllers").exists()


def swap_controller_available(root: Path = CGROUP_ROOT, own: Path = Path("/proc/self/cgroup")) -> bool:
    """containerd's SwapControllerAvailable: ``memory.swap.max`` in the daemon's own cgroup (v2), or
    ``memory.memsw.limit_in_bytes`` (v1), exists."""
    if unified_mode(root):
        try:
            lines = own.read_text().splitlines()
        except OSError:
            return False
        unified = next((line.split(":", 2)[2] for line in lines if line.startswith("0::")), "/")
        return (root / unified.lstrip("/") / "memory.swap.max").exists()
    return (root / "memory" / "memory.memsw.limit_in_bytes").exists()


def hugetlb_controller_present(root: Path = CGROUP_ROOT) -> bool:
    if unified_mode(root):
        try:
            return "hugetlb" in (root / "cgroup.controllers").read_text().split()
        except OSError:
            return False
    return (root / "hugetlb").is_dir()


def with_resources(
    spec: Mapping[str, Any],
    update: ResourceUpdate,
    *,
    tolerate_missing_hugetlb: bool = True,
    disable_hugetlb: bool = True,
    swap: bool = True,
    hugetlb: bool = True,
) -> dict[str, Any]:
    """A copy of ``spec`` with ``update`` applied (``apply_resources``)."""
    out = copy.deepcopy(dict(spec))
    apply_resources(
        out, update, tolerate_missing_hugetlb=tolerate_missing_hugetlb, disable_hugetlb=disable_hugetlb,
        swap=swap, hugetlb=hugetlb,
    )  # fmt: skip
    return out


def apply_resources(
    spec: dict[str, Any],
    update: ResourceUpdate,
    *,
    tolerate_missing_hugetlb: bool = True,
    disable_hugetlb: bool = True,
    swap: bool = True,
    hugetlb: bool = True,
) -> None:
    """``update`` applied to ``spec`` as containerd's WithResources does, for CreateContainer and
    UpdateContainerResources alike: only the non-zero fields set; swap set to the memory limit when
    no swap limit is asked for (and ``swap`` is accounted); hugepage limits appended unless
    ``disable_hugetlb`` (refused without a ``hugetlb`` controller unless tolerated); unified keys
    merged."""
    linux = spec.setdefault("linux", {})
    resources = linux.get("resources")
    if resources is None:
        resources = linux["resources"] = {}
    cpu = resources.get("cpu")
    if cpu is None:
        cpu = resources["cpu"] = {}
    memory = resources.get("memory")
    if memory is None:
        memory = resources["memory"] = {}
    if update.cpu_period:
        cpu["period"] = update.cpu_period
    if update.cpu_quota:
        cpu["quota"] = update.cpu_quota
    if update.cpu_shares:
        cpu["shares"] = update.cpu_shares
    if update.cpuset_cpus:
        cpu["cpus"] = update.cpuset_cpus
    if update.cpuset_mems:
        cpu["mems"] = update.cpuset_mems
    if update.memory_limit:
        memory["limit"] = update.memory_limit
        if not update.memory_swap_limit and swap:
            memory["swap"] = update.memory_limit
    if update.memory_swap_limit and swap:
        memory["swap"] = update.memory_swap_limit
    if not disable_hugetlb:
        if hugetlb:
            limits = [{"pageSize": h.page_size, "limit": h.limit} for h in update.hugepage_limits]
            if limits:
                resources["hugepageLimits"] = [*(resources.get("hugepageLimits") or []), *limits]
        elif not tolerate_missing_hugetlb:
            raise worded(
                FailedPrecondition,
                "huge pages limits are specified but hugetlb cgroup controller is missing. "
                "Please set tolerate_missing_hugetlb_controller to `true` to ignore this error",
            )
    if update.unified:
        resources["unified"] = {**(resources.get("unified") or {}), **update.unified}


def resources_of(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The CRI LinuxContainerResources (proto3 JSON names) the spec holds: containerd's
    copyResourcesToStatus, which ContainerStatus answers with."""
    out: dict[str, Any] = {}
    adj = (spec.get("process") or {}).get("oomScoreAdj")
    if adj is not None:
        out["oomScoreAdj"] = int(adj)
    resources = (spec.get("linux") or {}).get("resources")
    if not resources:
        return out
    cpu = resources.get("cpu")
    if cpu is not None:
        for key, name in (("period", "cpuPeriod"), ("quota", "cpuQuota"), ("shares", "cpuShares")):
            if cpu.get(key) is not None:
                out[name] = int(cpu[key])
        out["cpusetCpus"], out["cpusetMems"] = cpu.get("cpus", ""), cpu.get("mems", "")
    memory = resources.get("memory")
    if memory is not None:
        if memory.get("limit") is not None:
            out["memoryLimitInBytes"] = int(memory["limit"])
        if memory.get("swap") is not None:
            out["memorySwapLimitInBytes"] = int(memory["swap"])
    if resources.get("hugepageLimits") is not None:
        out["hugepageLimits"] = [
            {"pageSize": h.get("pageSize", ""), "limit": int(h.get("limit", 0))}
            for h in resources["hugepageLimits"]
        ]
    if resources.get("unified") is not None:
        out["unified"] = dict(resources["unified"])
    return out
