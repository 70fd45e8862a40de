"""NRI's contract for the code that creates containers: what CRI and the tasks service call as pods
and containers change, in plain records and OCI specs (dicts of their JSON).

The implementation, ``io.containerd.nri.v1.nri``, lives with the wire (``corral.api.nri``): NRI
plugins speak NRI's protobuf messages over ttrpc, and in-process ones implement ``corral.nri``
hooks on those messages. Code here only needs to hand over specs and get adjusted ones back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "ContainerInfo",
    "Domain",
    "NRIEvents",
    "NRIService",
    "PodInfo",
    "Spec",
    "TaskEvents",
]

Spec = dict[str, Any]
"""An OCI runtime spec as the JSON object it is."""


@dataclass(frozen=True)
class PodInfo:
    """A pod as NRI plugins are shown it."""

    id: str
    name: str = ""
    uid: str = ""
    namespace: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    runtime_handler: str = ""
    cgroup_parent: str = ""
    cgroups_path: str = ""
    pid: int = 0
    ips: tuple[str, ...] = ()


@dataclass(frozen=True)
class ContainerInfo:
    """What a container's spec does not say: its identity, labels, image and state."""

    id: str
    pod_sandbox_id: str = ""
    name: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    image: str = ""
    state: str = "created"
    """created, running, paused or stopped."""
    pid: int = 0
    created_at: int = 0
    """Unix nanoseconds, as the other times."""
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0


@runtime_checkable
class NRIEvents(Protocol):
    """Pod and container lifecycle events, sent to every NRI plugin subscribed to them in index
    order. A plugin's error fails the event; a plugin that times out or goes away is dropped."""

    async def run_pod_sandbox(self, pod: PodInfo) -> None: ...

    async def stop_pod_sandbox(self, pod: PodInfo) -> None: ...

    async def remove_pod_sandbox(self, pod: PodInfo) -> None: ...

    async def create_container(self, pod: PodInfo | None, container: ContainerInfo, spec: Spec) -> Spec:
        """``spec`` with every plugin's adjustment (CDI devices they name injected); a conflict
        between two plugins fails with FailedPrecondition naming both."""
        ...

    async def post_create_container(
        self, pod: PodInfo | None, container: ContainerInfo, spec: Spec
    ) -> None: ...

    async def start_container(self, pod: PodInfo | None, container: ContainerInfo, spec: Spec) -> None: ...

    async def post_start_container(
        self, pod: PodInfo | None, container: ContainerInfo, spec: Spec
    ) -> None: ...

    async def update_container(
        self, pod: PodInfo | None, container: ContainerInfo, spec: Spec, resources: Mapping[str, Any]
    ) -> Mapping[str, Any] | None:
        """The OCI LinuxResources plugins want instead of ``resources``; None to keep them."""
        ...

    async def stop_container(self, pod: PodInfo | None, container: ContainerInfo, spec: Spec) -> None:
        """Once per container: a stop and the exit it causes are one stop to plugins."""
        ...

    async def remove_container(self, pod: PodInfo | None, container: ContainerInfo, spec: Spec) -> None: ...

    def register_domain(self, domain: Domain) -> None:
        """Containers plugins may see (Synchronize), update and evict."""
        ...


@runtime_checkable
class Domain(Protocol):
    """A set of pods and containers and the way to change them (containerd's nri.Domain)."""

    @property
    def name(self) -> str: ...

    def list_pod_sandboxes(self) -> list[PodInfo]: ...

    def list_containers(self) -> list[tuple[ContainerInfo, Spec]]: ...

    def has_container(self, container_id: str) -> bool: ...

    async def update_container(self, container_id: str, resources: Mapping[str, Any]) -> None:
        """Apply OCI LinuxResources to a running container."""
        ...

    async def evict_container(self, container_id: str, reason: str) -> None: ...


@runtime_checkable
class TaskEvents(Protocol):
    """The NRI events of containers run through the tasks service (a corral extension)."""

    async def create(
        self, namespace: str, container_id: str, labels: Mapping[str, str], image: str, spec: Spec
    ) -> Spec:
        """The spec the shim is given: ``spec`` with every plugin's adjustment."""
        ...

    async def created(self, container_id: str, pid: int) -> None: ...

    async def create_failed(self, container_id: str) -> None: ...

    async def starting(self, container_id: str) -> None: ...

    async def started(self, container_id: str, pid: int) -> None: ...

    async def updating(self, container_id: str, resources: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """The OCI LinuxResources to apply instead of ``resources`` (None: as asked)."""
        ...

    async def updated(self, container_id: str) -> None: ...

    async def stopped(self, container_id: str, exit_status: int = 0) -> None: ...

    async def removed(self, container_id: str) -> None: ...


@runtime_checkable
class NRIService(Protocol):
    """The ``io.containerd.nri.v1`` plugin's instance."""

    @property
    def events(self) -> NRIEvents: ...

    @property
    def tasks(self) -> TaskEvents: ...
