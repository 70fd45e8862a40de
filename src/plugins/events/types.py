"""containerd's events as Python records, and the envelope the exchange carries them in.

Plugins never import the wire types, so events inside the daemon are frozen dataclasses whose
fields are named as in containerd's protos; the api layer maps them to protobuf by ``TYPE_URL``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Protocol, runtime_checkable

from corral.plugins.core.mount import Mount

EVENT_TYPES: dict[str, type[TypedEvent]] = {}
"""Every TypedEvent subclass by its TYPE_URL, so an encoded event can find its record type."""


@dataclass(frozen=True)
class TypedEvent:
    """Base of the events the daemon builds: TYPE_URL names the proto message, TOPIC its usual topic."""

    TYPE_URL: ClassVar[str]
    TOPIC: ClassVar[str]
    DECODE: ClassVar[bool] = True
    """False for events that shims send: one that arrives encoded stays a RawEvent, byte for byte."""

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        if cls.TYPE_URL in EVENT_TYPES:
            raise TypeError(
                f"{cls.__qualname__}: type_url {cls.TYPE_URL} is taken by {EVENT_TYPES[cls.TYPE_URL]}"
            )
        EVENT_TYPES[cls.TYPE_URL] = cls


@dataclass(frozen=True)
class RawEvent:
    """An event that arrived encoded (Publish, Forward, shims): passed on byte for byte."""

    type_url: str
    value: bytes


Event = TypedEvent | RawEvent


@dataclass(frozen=True)
class NamespaceCreate(TypedEvent):
    """A namespace was created."""

    TYPE_URL: ClassVar[str] = "containerd.events.NamespaceCreate"
    TOPIC: ClassVar[str] = "/namespaces/create"

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NamespaceUpdate(TypedEvent):
    """A namespace's labels were changed."""

    TYPE_URL: ClassVar[str] = "containerd.events.NamespaceUpdate"
    TOPIC: ClassVar[str] = "/namespaces/update"

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NamespaceDelete(TypedEvent):
    """A namespace was removed."""

    TYPE_URL: ClassVar[str] = "containerd.events.NamespaceDelete"
    TOPIC: ClassVar[str] = "/namespaces/delete"

    name: str


@dataclass(frozen=True)
class ContentCreate(TypedEvent):
    """A blob was committed to the content store."""

    TYPE_URL: ClassVar[str] = "containerd.events.ContentCreate"
    TOPIC: ClassVar[str] = "/content/create"

    digest: str
    size: int


@dataclass(frozen=True)
class ContentDelete(TypedEvent):
    """A blob was removed from the content store."""

    TYPE_URL: ClassVar[str] = "containerd.events.ContentDelete"
    TOPIC: ClassVar[str] = "/content/delete"

    digest: str


@dataclass(frozen=True)
class SnapshotPrepare(TypedEvent):
    """An active snapshot was made on ``parent``."""

    TYPE_URL: ClassVar[str] = "containerd.events.SnapshotPrepare"
    TOPIC: ClassVar[str] = "/snapshot/prepare"

    key: str
    parent: str
    snapshotter: str


@dataclass(frozen=True)
class SnapshotCommit(TypedEvent):
    """An active snapshot was committed as ``name``."""

    TYPE_URL: ClassVar[str] = "containerd.events.SnapshotCommit"
    TOPIC: ClassVar[str] = "/snapshot/commit"

    key: str
    name: str
    snapshotter: str


@dataclass(frozen=True)
class SnapshotRemove(TypedEvent):
    """A snapshot was removed."""

    TYPE_URL: ClassVar[str] = "containerd.events.SnapshotRemove"
    TOPIC: ClassVar[str] = "/snapshot/remove"

    key: str
    snapshotter: str


class TypedValue(Protocol):
    """A protobuf Any as events carry it (a runtime's options): ``AnyValue`` is one."""

    @property
    def type_url(self) -> str: ...

    @property
    def value(self) -> bytes: ...


@dataclass(frozen=True)
class ImageCreate(TypedEvent):
    """An image record was created."""

    TYPE_URL: ClassVar[str] = "containerd.services.images.v1.ImageCreate"
    TOPIC: ClassVar[str] = "/images/create"

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageUpdate(TypedEvent):
    """An image record was changed."""

    TYPE_URL: ClassVar[str] = "containerd.services.images.v1.ImageUpdate"
    TOPIC: ClassVar[str] = "/images/update"

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageDelete(TypedEvent):
    """An image record was removed."""

    TYPE_URL: ClassVar[str] = "containerd.services.images.v1.ImageDelete"
    TOPIC: ClassVar[str] = "/images/delete"

    name: str


@dataclass(frozen=True)
class ContainerCreateRuntime:
    """The runtime a created container names, with its options."""

    name: str
    options: TypedValue | None = None


@dataclass(frozen=True)
class ContainerCreate(TypedEvent):
    """A container record was created."""

    TYPE_URL: ClassVar[str] = "containerd.events.ContainerCreate"
    TOPIC: ClassVar[str] = "/containers/create"

    id: str
    image: str
    runtime: ContainerCreateRuntime | None = None


@dataclass(frozen=True)
class ContainerUpdate(TypedEvent):
    """A container record was changed."""

    TYPE_URL: ClassVar[str] = "containerd.events.ContainerUpdate"
    TOPIC: ClassVar[str] = "/containers/update"

    id: str
    image: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    snapshot_key: str = ""


@dataclass(frozen=True)
class ContainerDelete(TypedEvent):
    """A container record was removed."""

    TYPE_URL: ClassVar[str] = "containerd.events.ContainerDelete"
    TOPIC: ClassVar[str] = "/containers/delete"

    id: str


@dataclass(frozen=True)
class TaskIO:
    """Where a process's stdio goes: FIFO paths (or file://, binary:// URIs) made by the client; as
    containerd's TaskIO, in a task's events and in the runtime contract (``corral.plugins.runtimes``)."""

    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False


@dataclass(frozen=True)
class TaskCreate(TypedEvent):
    """A task was created by its runtime (its init process not started yet)."""

    TYPE_URL: ClassVar[str] = "containerd.events.TaskCreate"
    DECODE: ClassVar[bool] = False  # a shim's, forwarded, is passed on byte for byte
    TOPIC: ClassVar[str] = "/tasks/create"

    container_id: str
    bundle: str
    rootfs: tuple[Mount, ...] = ()
    io: TaskIO | None = None
    checkpoint: str = ""
    pid: int = 0


@dataclass(frozen=True)
class TaskStart(TypedEvent):
    """A task's init process started."""

    TYPE_URL: ClassVar[str] = "containerd.events.TaskStart"
    DECODE: ClassVar[bool] = False  # a shim's, forwarded, is passed on byte for byte
    TOPIC: ClassVar[str] = "/tasks/start"

    container_id: str
    pid: int


@dataclass(frozen=True)
class Envelope:
    """One published event: when (aware, UTC), in which namespace, under which topic."""

    timestamp: datetime
    namespace: str
    topic: str
    event: Event


@runtime_checkable
class Publisher(Protocol):
    """What a plugin that emits events needs from the exchange."""

    async def publish(
        self, event: Event, *, topic: str | None = None, namespace: str | None = None
    ) -> Envelope: ...


def optional_publisher(plugins: Mapping[str, Any]) -> Publisher | None:
    """The exchange among ``ic.get_by_type(io.containerd.event.v1)``, or None: services that emit
    events keep working without one."""
    return next(iter(plugins.values()), None)


@runtime_checkable
class EventExchange(Publisher, Protocol):
    """An ``io.containerd.event.v1`` plugin's instance: publish, forward and subscribe."""

    async def forward(self, envelope: Envelope) -> None: ...

    def subscribe(
        self, filters: Sequence[str] = ()
    ) -> AbstractAsyncContextManager[AsyncIterator[Envelope]]: ...


# -- tasks: shims publish their own (forwarded byte for byte); the runtime publishes these when a
# shim is gone without saying so, as containerd's cleanupAfterDeadShim does.
@dataclass(frozen=True)
class TaskExit(TypedEvent):
    """A process of a task exited (its init process when ``id`` is the container's)."""

    TYPE_URL: ClassVar[str] = "containerd.events.TaskExit"
    DECODE: ClassVar[bool] = False  # a shim's, forwarded, is passed on byte for byte
    TOPIC: ClassVar[str] = "/tasks/exit"

    container_id: str
    id: str
    pid: int
    exit_status: int
    exited_at: datetime


@dataclass(frozen=True)
class TaskDelete(TypedEvent):
    """A task, or one of its exec processes, was deleted."""

    TYPE_URL: ClassVar[str] = "containerd.events.TaskDelete"
    DECODE: ClassVar[bool] = False  # a shim's, forwarded, is passed on byte for byte
    TOPIC: ClassVar[str] = "/tasks/delete"

    container_id: str
    pid: int
    exit_status: int
    exited_at: datetime
    id: str = ""


# -- sandboxes: published by the sandbox controller service, as containerd's.
@dataclass(frozen=True)
class SandboxCreate(TypedEvent):
    """A sandbox record was created."""

    TYPE_URL: ClassVar[str] = "containerd.events.SandboxCreate"
    TOPIC: ClassVar[str] = "/sandboxes/create"

    sandbox_id: str


@dataclass(frozen=True)
class SandboxStart(TypedEvent):
    """A sandbox was started by its controller."""

    TYPE_URL: ClassVar[str] = "containerd.events.SandboxStart"
    TOPIC: ClassVar[str] = "/sandboxes/start"

    sandbox_id: str


@dataclass(frozen=True)
class SandboxExit(TypedEvent):
    """A sandbox's process exited."""

    TYPE_URL: ClassVar[str] = "containerd.events.SandboxExit"
    TOPIC: ClassVar[str] = "/sandboxes/exit"

    sandbox_id: str
    exit_status: int
    exited_at: datetime
