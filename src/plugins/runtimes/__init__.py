"""Runtimes: the task contract and its implementations.

An ``io.containerd.runtime.v2`` plugin's instance is a ``PlatformRuntime``: it creates, finds and
deletes the tasks of the request's namespace. A ``Task`` is a container's init process plus the
processes exec'd into it; each is a ``Process``. These are containerd's ``core/runtime``
interfaces as Protocols over plain records, so the tasks service, CRI and the client API speak
one contract whatever runs the processes (a shim over ttrpc, or an in-process runtime).
"""

from __future__ import annotations

import builtins
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

from corral.plugins.core import Mount
from corral.plugins.events.types import TaskIO
from corral.plugins.metadata import AnyValue

__all__ = [
    "SPEC_TYPE_URL",
    "CreateOpts",
    "ExecOpts",
    "Exit",
    "PlatformRuntime",
    "Process",
    "ProcessInfo",
    "ProcessState",
    "Task",
    "TaskIO",
    "TaskStatus",
]

SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
"""The type_url of a container's OCI spec (JSON), as containerd's clients store it."""


class TaskStatus(enum.IntEnum):
    """A process's lifecycle state, numbered as containerd.v1.types.Status."""

    UNKNOWN = 0
    CREATED = 1
    RUNNING = 2
    STOPPED = 3
    PAUSED = 4
    PAUSING = 5


@dataclass(frozen=True)
class Exit:
    """How a process ended: its pid, exit status and when."""

    pid: int
    status: int
    timestamp: datetime


@dataclass(frozen=True)
class ProcessState:
    """A process as its runtime reports it; ``exited_at`` is None until it has exited."""

    id: str
    pid: int
    status: TaskStatus
    io: TaskIO = field(default_factory=TaskIO)
    exit_status: int = 0
    exited_at: datetime | None = None
    bundle: str = ""
    exec_id: str = ""


@dataclass(frozen=True)
class ProcessInfo:
    """One process in a task's cgroup; ``info`` is runtime-specific detail (runc's ProcessDetails)."""

    pid: int
    info: AnyValue | None = None


@dataclass(frozen=True)
class CreateOpts:
    """What a task is created from: the container's spec and runtime, its rootfs mounts, its stdio."""

    spec: AnyValue | None = None
    rootfs: tuple[Mount, ...] = ()
    io: TaskIO = field(default_factory=TaskIO)
    runtime: str = ""
    """The runtime name (``io.containerd.runc.v2``) or an absolute path to a shim binary."""
    runtime_options: AnyValue | None = None
    task_options: AnyValue | None = None
    checkpoint: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ExecOpts:
    """An extra process: its OCI ``Process`` spec (JSON in an Any) and its stdio."""

    spec: AnyValue | None
    io: TaskIO = field(default_factory=TaskIO)


@runtime_checkable
class Process(Protocol):
    """A task's init process or one exec'd into it."""

    @property
    def id(self) -> str: ...

    async def state(self) -> ProcessState: ...

    async def start(self) -> None: ...

    async def kill(self, signal: int, all: bool = False) -> None: ...

    async def wait(self) -> Exit:
        """Returns once the process has exited (also when asked before it started)."""
        ...

    async def delete(self) -> Exit: ...

    async def resize_pty(self, width: int, height: int) -> None: ...

    async def close_io(self) -> None: ...


@runtime_checkable
class Task(Process, Protocol):
    """A container's init process and everything exec'd into it."""

    @property
    def namespace(self) -> str: ...

    @property
    def runtime(self) -> str: ...

    async def pids(self) -> builtins.list[ProcessInfo]: ...

    async def pause(self) -> None: ...

    async def resume(self) -> None: ...

    async def checkpoint(self, path: str, options: AnyValue | None = None) -> None:
        """Write the task's checkpoint into the directory ``path``; Unimplemented where the
        runtime cannot."""
        ...

    async def exec(self, exec_id: str, opts: ExecOpts) -> Process:
        """InvalidArgument for a bad exec id; AlreadyExists when one is taken."""
        ...

    async def process(self, exec_id: str) -> Process:
        """NotFound unless the runtime knows ``exec_id``."""
        ...

    async def stats(self) -> AnyValue:
        """The runtime's metrics (``io.containerd.cgroups.v1.Metrics`` or ``.v2.``)."""
        ...

    async def update(self, resources: AnyValue | None, annotations: Mapping[str, str]) -> None: ...


@runtime_checkable
class PlatformRuntime(Protocol):
    """An ``io.containerd.runtime.v2`` plugin's instance: the tasks of the request's namespace."""

    async def create(self, task_id: str, opts: CreateOpts) -> Task:
        """AlreadyExists when the namespace has a task of that id."""
        ...

    async def get(self, task_id: str) -> Task:
        """NotFound when the namespace has no such task."""
        ...

    async def tasks(self, all_namespaces: bool = False) -> Sequence[Task]: ...

    async def delete(self, task_id: str) -> Exit:
        """Delete the task's init process, stop its runtime and remove its bundle."""
        ...
