"""CRI stats: ContainerStats, ListContainerStats, PodSandboxStats and ListPodSandboxStats, after
containerd 2.x's ``internal/cri/server/container_stats*.go`` and ``sandbox_stats*.go``.

A running container's CPU, memory and process counts come from its cgroup (found through its
init process), its writable layer's bytes and inodes from the snapshotter's Usage. A ready pod's
come from its cgroup parent (the pause process's cgroup when the pod names none) and, when it
has a network namespace of its own, its interfaces' counters. ``usage_nano_cores`` is the rate
between a container's (or pod's) previous sample and this one, as containerd computes it: the
first sample has none.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from corral.kernel import CorralError, FailedPrecondition, NotFound, Unavailable
from corral.plugins.core import namespace
from corral.plugins.cri.cgroups import (
    CGROUP_ROOT,
    CgroupStats,
    InterfaceStats,
    cgroup_paths_of,
    parse_net_dev,
    read_cgroup,
)
from corral.plugins.cri.containers import CONTAINER_RUNNING, CRIContainer, CRIContainers
from corral.plugins.cri.images import CRIImageService
from corral.plugins.cri.sandboxes import K8S, CRISandbox, PodSandboxes, find_by_prefix, worded
from corral.plugins.metadata import ContainerStore, Metadata, NamespacedSnapshots

__all__ = [
    "CRIStats",
    "ContainerStatsFilter",
    "ContainerUsage",
    "CpuSample",
    "LayerUsage",
    "PodStatsFilter",
    "PodUsage",
]

DEFAULT_INTERFACE = "eth0"


@dataclass(frozen=True)
class CpuSample:
    timestamp: int
    usage_core_nano_seconds: int
    usage_nano_cores: int | None = None


@dataclass(frozen=True)
class LayerUsage:
    timestamp: int
    mountpoint: str
    used_bytes: int
    inodes_used: int


@dataclass(frozen=True)
class ContainerUsage:
    container: CRIContainer
    writable_layer: LayerUsage
    timestamp: int = 0
    cgroup: CgroupStats | None = None
    """None when the container has no running process to measure."""
    cpu: CpuSample | None = None


@dataclass(frozen=True)
class PodUsage:
    pod: CRISandbox
    timestamp: int
    cgroup: CgroupStats | None
    cpu: CpuSample | None
    interfaces: tuple[InterfaceStats, ...] | None
    """None when the pod shares the node's network."""
    containers: tuple[ContainerUsage, ...]
    process_count: int

    @property
    def default_interface(self) -> InterfaceStats | None:
        found = self.interfaces or ()
        return next((i for i in found if i.name == DEFAULT_INTERFACE), found[0] if found else None)


@dataclass(frozen=True)
class ContainerStatsFilter:
    id: str = ""
    pod_sandbox_id: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PodStatsFilter:
    id: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)


class CRIStats:
    """The stats half of containerd's criService."""

    def __init__(
        self,
        *,
        containers: CRIContainers,
        pods: PodSandboxes,
        images: CRIImageService,
        metadata: Metadata,
        cgroup_root: Path = CGROUP_ROOT,
        proc: Path = Path("/proc"),
    ) -> None:
        self._containers = containers
        self._pods = pods
        self._images = images
        self._metadata = metadata
        self._cgroup_root = cgroup_root
        self._proc = proc
        self._last: dict[str, tuple[int, int]] = {}
        """id → (usage_core_nano_seconds, timestamp) of its last sample."""

    # -- containers -------------------------------------------------------------------------------
    async def container(self, container_id: str) -> ContainerUsage:
        """One container's stats (no usage_nano_cores, as containerd's ContainerStats); refused
        when it has no running task to measure."""
        try:
            c = await self._containers.get(container_id)
        except CorralError as exc:
            raise worded(type(exc), f"failed to find container: {exc}") from None
        usage = await self._measure(c)
        if usage.cgroup is None:
            raise worded(FailedPrecondition, "unexpected metrics response: []")
        return usage

    async def containers(self, wanted: ContainerStatsFilter | None = None) -> list[ContainerUsage]:
        """Every matching container (not only running ones: those answer attributes and their
        writable layer only), with usage_nano_cores from the previous list's sample."""
        found = []
        listed = await self._containers.list()
        self._prune({c.id for c in listed})
        for c in await self._matching(listed, wanted):
            usage = await self._measure(c)
            if usage.cpu is not None:
                cpu = self._rate(c.id, usage.cpu)
                usage = ContainerUsage(
                    usage.container, usage.writable_layer, usage.timestamp, usage.cgroup, cpu
                )
            found.append(usage)
        return found

    async def _matching(
        self, listed: list[CRIContainer], wanted: ContainerStatsFilter | None
    ) -> list[CRIContainer]:
        if wanted is None:
            return listed
        wanted_id, wanted_pod = wanted.id, wanted.pod_sandbox_id
        if wanted_id:
            with contextlib.suppress(CorralError):
                wanted_id = find_by_prefix([c.id for c in listed], wanted_id)
        if wanted_pod:
            with contextlib.suppress(CorralError):
                wanted_pod = (await self._pods.get(wanted_pod)).id
        return [
            c
            for c in listed
            if (not wanted_id or c.id == wanted_id)
            and (not wanted_pod or c.sandbox_id == wanted_pod)
            and all(k in c.spec.labels and c.spec.labels[k] == v for k, v in wanted.labels.items())
        ]

    async def _measure(self, c: CRIContainer) -> ContainerUsage:
        layer = await self._layer(c)
        if c.state != CONTAINER_RUNNING or c.pid <= 0:
            return ContainerUsage(c, layer)
        paths = cgroup_paths_of(c.pid, self._proc)
        now = time.time_ns()
        stats = read_cgroup(paths, self._cgroup_root) if paths else None
        if stats is None:
            return ContainerUsage(c, layer)
        cpu = None if stats.cpu_usage_ns is None else CpuSample(now, stats.cpu_usage_ns)
        return ContainerUsage(c, layer, now, stats, cpu)

    async def _layer(self, c: CRIContainer) -> LayerUsage:
        """The writable layer's usage; zero when the snapshot cannot be measured (as containerd
        answers when its snapshot store has no figure)."""
        used = inodes = 0
        snapshotter = ""
        with namespace(K8S):
            try:
                record = await self._metadata.view(ContainerStore).get(c.id)
                snapshotter = record.snapshotter
                usage = (
                    await self._metadata.view(NamespacedSnapshots)
                    .get(snapshotter)
                    .usage(record.snapshot_key or c.id)
                )
                used, inodes = usage.size, usage.inodes
            except CorralError:
                pass
        mountpoint = self._images.snapshotter_root(snapshotter) if snapshotter else ""
        return LayerUsage(time.time_ns(), mountpoint, used, inodes)

    def _rate(self, key: str, sample: CpuSample) -> CpuSample:
        """containerd's getUsageNanoCores: CPU ns per second since the last sample; none on the
        first, over no time, or when the counter went back."""
        last = self._last.get(key)
        self._last[key] = (sample.usage_core_nano_seconds, sample.timestamp)
        if last is None:
            return sample
        usage, at = last
        interval = sample.timestamp - at
        if interval <= 0 or sample.usage_core_nano_seconds < usage:
            return sample
        rate = int((sample.usage_core_nano_seconds - usage) / interval * 1_000_000_000)
        return CpuSample(sample.timestamp, sample.usage_core_nano_seconds, rate)

    def _prune(self, live: set[str]) -> None:
        """Drop the samples of containers and pods that are gone."""
        for key in [k for k in self._last if k not in live and self._pods.sandbox_of(k) is None]:
            del self._last[key]

    # -- pods -------------------------------------------------------------------------------------
    async def pod(self, sandbox_id: str) -> PodUsage:
        try:
            cri = await self._pods.get(sandbox_id)
        except CorralError as exc:
            raise worded(
                type(exc), f"an error occurred when trying to find sandbox {sandbox_id}: {exc}"
            ) from None
        try:
            return await self._pod(await self._pods.status(cri.id))
        except CorralError as exc:
            raise worded(type(exc), f"failed to decode pod sandbox metrics {sandbox_id}: {exc}") from None

    async def pods(self, wanted: PodStatsFilter | None = None) -> list[PodUsage]:
        """Every matching ready pod; one that went away meanwhile is left out."""
        wanted = wanted or PodStatsFilter()
        wanted_id = wanted.id
        if wanted_id:
            with contextlib.suppress(CorralError):
                wanted_id = (await self._pods.get(wanted_id)).id
        found = []
        for cri in await self._pods.list():
            if wanted_id and cri.id != wanted_id:
                continue
            if not all(k in cri.pod.labels and cri.pod.labels[k] == v for k, v in wanted.labels.items()):
                continue
            if cri.state != "SANDBOX_READY":
                continue
            try:
                found.append(await self._pod(cri))
            except (Unavailable, NotFound):
                continue
            except CorralError as exc:
                raise worded(
                    type(exc), f'failed to decode sandbox container metrics for sandbox "{cri.id}": {exc}'
                ) from None
        return found

    def _pod_cgroup(self, cri: CRISandbox) -> str | dict[str, str]:
        """The pod's cgroup parent (a systemd slice expanded to its path), else the pause
        process's own cgroup."""
        parent = cri.pod.cgroup_parent
        if parent and parent.endswith(".slice") and "/" not in parent:
            parts = parent.removesuffix(".slice").split("-")
            return "/" + "/".join("-".join(parts[: i + 1]) + ".slice" for i in range(len(parts)))
        if parent:
            return parent
        return cgroup_paths_of(cri.pid, self._proc) if cri.pid > 0 else {}

    async def _pod(self, cri: CRISandbox) -> PodUsage:
        if cri.state != "SANDBOX_READY":
            raise worded(
                Unavailable,
                f'failed to get pod sandbox stats since sandbox container "{cri.id}" is not in ready '
                "state: unavailable",
            )
        paths = self._pod_cgroup(cri)
        now = time.time_ns()
        stats = read_cgroup(paths, self._cgroup_root) if paths else None
        if stats is None:
            raise worded(NotFound, f'failed to load sandbox cgroup "{paths}": cgroup deleted')
        cpu = None
        if stats.cpu_usage_ns is not None:
            cpu = self._rate(cri.id, CpuSample(now, stats.cpu_usage_ns))
        interfaces = None
        if cri.netns_path and not cri.pod.host_network and cri.pid > 0:
            try:
                text = (self._proc / str(cri.pid) / "net" / "dev").read_text()
            except OSError as exc:
                raise worded(NotFound, f"failed to obtain network stats: {exc.strerror}") from None
            interfaces = tuple(parse_net_dev(text))
        members = await self.containers(ContainerStatsFilter(pod_sandbox_id=cri.id))
        count = sum(m.cgroup.pids for m in members if m.cgroup is not None)
        return PodUsage(cri, now, stats, cpu, interfaces, tuple(members), count)
