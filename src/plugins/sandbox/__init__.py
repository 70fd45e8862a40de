"""The sandbox controller contract (containerd's ``core/sandbox.Controller``).

A sandbox is the environment a pod's containers share: a pause process holding the pod's
network, IPC and UTS namespaces, the pod's network (CNI) and its files. Its record is in the
metadata store (``corral.plugins.metadata.SandboxStore``); a controller — an
``io.containerd.podsandbox.controller.v1`` or ``io.containerd.sandbox.controller.v1`` plugin's
instance — makes the record real: ``create`` takes the record and options (for a pod, the CRI's
``PodSandboxConfig`` as a protobuf Any), ``start`` runs it, ``stop`` ends its processes,
``shutdown`` removes what is left. The controller service reaches controllers by name (the
record's ``sandboxer``) and publishes ``/sandboxes/create``, ``/sandboxes/start`` and
``/sandboxes/exit``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from corral.plugins.core import Mount
from corral.plugins.images.oci import Platform
from corral.plugins.metadata import AnyValue, Sandbox

__all__ = [
    "POD_SANDBOX_CONFIG_TYPE_URL",
    "STATE_NOT_READY",
    "STATE_READY",
    "STATE_UNKNOWN",
    "Controller",
    "ControllerInstance",
    "ControllerStatus",
    "CreateOptions",
    "ExitStatus",
    "Metric",
    "PodPortMapping",
    "PodSandboxSpec",
]

POD_SANDBOX_CONFIG_TYPE_URL = "runtime.v1.PodSandboxConfig"
"""The type_url the CRI gives a PodSandboxConfig in ``CreateOptions.options`` (typeurl's, unprefixed)."""

STATE_READY = "SANDBOX_READY"
STATE_NOT_READY = "SANDBOX_NOTREADY"
STATE_UNKNOWN = "SANDBOX_UNKNOWN"
"""containerd's sandbox states as its pod sandbox controller names them."""


_POD_NETWORK_NOTE = "corral_pod_network"


def note_pod_network(exc: BaseException, text: str) -> None:
    """Mark a controller's error as its pod network's: ``text`` is how containerd's CRI words it
    (``failed to setup network for sandbox "ID": …``; containerd makes the network in the CRI's
    RunPodSandbox itself, so its answer names the network rather than the controller's start)."""
    exc.__dict__[_POD_NETWORK_NOTE] = text


def pod_network_note(exc: BaseException) -> str | None:
    """The text ``note_pod_network`` left on ``exc``, if any."""
    found = exc.__dict__.get(_POD_NETWORK_NOTE)
    return found if isinstance(found, str) else None


@dataclass(frozen=True)
class PodPortMapping:
    """A CRI PortMapping: ``protocol`` is "TCP", "UDP" or "SCTP"."""

    container_port: int
    host_port: int = 0
    protocol: str = "TCP"
    host_ip: str = ""


@dataclass(frozen=True)
class PodSandboxSpec:
    """What a pod sandbox controller needs of a CRI ``PodSandboxConfig``, as a plain record
    (decoded at the wire's edge; namespace modes are "POD", "CONTAINER", "NODE" or "TARGET")."""

    name: str = ""
    uid: str = ""
    namespace: str = ""
    attempt: int = 0
    hostname: str = ""
    log_directory: str = ""
    dns_servers: tuple[str, ...] = ()
    dns_searches: tuple[str, ...] = ()
    dns_options: tuple[str, ...] = ()
    port_mappings: tuple[PodPortMapping, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    cgroup_parent: str = ""
    sysctls: Mapping[str, str] = field(default_factory=dict)
    network_mode: str = "POD"
    pid_mode: str = "POD"
    ipc_mode: str = "POD"
    privileged: bool = False
    run_as_user: int | None = None
    run_as_group: int | None = None
    supplemental_groups: tuple[int, ...] = ()
    has_dns_config: bool = False
    userns_mode: str = ""
    """The pod's user namespace (``userns_options.mode``): "" when none was asked (the node's),
    "NODE", or "POD" (its own, with ``uid_mappings``/``gid_mappings``)."""
    uid_mappings: tuple[tuple[int, int, int], ...] = ()
    """(container_id, host_id, length) ranges, as the CRI's IDMapping orders them in the wire."""
    gid_mappings: tuple[tuple[int, int, int], ...] = ()

    @property
    def host_network(self) -> bool:
        return self.network_mode == "NODE"

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["port_mappings"] = [dataclasses.asdict(p) for p in self.port_mappings]
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> PodSandboxSpec:
        values = dict(obj)
        values["port_mappings"] = tuple(PodPortMapping(**p) for p in values.get("port_mappings", ()))
        for key in ("dns_servers", "dns_searches", "dns_options", "supplemental_groups"):
            values[key] = tuple(values.get(key, ()))
        for key in ("uid_mappings", "gid_mappings"):
            values[key] = tuple(tuple(m) for m in values.get(key, ()))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass(frozen=True)
class CreateOptions:
    """containerd's ``sandbox.CreateOptions``: rootfs mounts, opaque options (CRI: the
    PodSandboxConfig), a network namespace made by the caller, annotations. ``pod`` is the
    PodSandboxConfig the options carry, decoded by the edge that received them."""

    rootfs: tuple[Mount, ...] = ()
    options: AnyValue | None = None
    netns_path: str = ""
    annotations: Mapping[str, str] = field(default_factory=dict)
    pod: PodSandboxSpec | None = None


@dataclass(frozen=True)
class ControllerInstance:
    """What a controller's Start reports of a sandbox it runs."""

    sandbox_id: str
    pid: int
    created_at: datetime
    address: str = ""
    version: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)
    spec: AnyValue | None = None


@dataclass(frozen=True)
class ExitStatus:
    """How a sandbox ended: its exit status and when."""

    exit_status: int
    exited_at: datetime


@dataclass(frozen=True)
class ControllerStatus:
    """What a controller's Status reports of a sandbox."""

    sandbox_id: str
    pid: int
    state: str
    info: Mapping[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    exited_at: datetime | None = None
    extra: AnyValue | None = None
    address: str = ""
    version: int = 0


@dataclass(frozen=True)
class Metric:
    """containerd.types.Metric: a sample of one sandbox's cgroup (``data``: cgroups Metrics Any)."""

    id: str
    timestamp: datetime
    data: AnyValue | None = None


@runtime_checkable
class Controller(Protocol):
    """A sandbox controller, called within the request's namespace."""

    async def create(self, sandbox: Sandbox, options: CreateOptions) -> None: ...

    async def start(self, sandbox_id: str) -> ControllerInstance: ...

    async def platform(self, sandbox_id: str) -> Platform: ...

    async def stop(self, sandbox_id: str, grace: float | None = None) -> None: ...

    async def wait(self, sandbox_id: str) -> ExitStatus: ...

    async def status(self, sandbox_id: str, verbose: bool = False) -> ControllerStatus: ...

    async def shutdown(self, sandbox_id: str) -> None: ...

    async def metrics(self, sandbox_id: str) -> Metric: ...

    async def update(self, sandbox_id: str, sandbox: Sandbox, fields: Sequence[str] = ()) -> None: ...
