"""Runtime v2 shims: containerd's shim protocol from the daemon's side.

A shim is a process per task (``containerd-shim-runc-v2`` and its kind) that the runtime starts
with ``start`` from the task's bundle, then drives over its socket with containerd's Task API.
The runtime (``corral.plugins.runtimes.v2``) owns bundles, processes and recovery; the wire (the
ttrpc client and the protobuf messages) is the api layer's, reached through ``ShimProtocol``, an
``io.corral.shim-client.v1`` plugin's instance.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from corral.plugins.core import Mount
from corral.plugins.metadata import AnyValue
from corral.plugins.runtimes import Exit, ProcessInfo, ProcessState, TaskIO

__all__ = [
    "Connected",
    "ShimConnection",
    "ShimCreate",
    "ShimProcess",
    "ShimProtocol",
    "ShimSettings",
    "ShimTask",
    "TaskManager",
    "binary_name",
    "resolve_runtime",
]


@dataclass(frozen=True)
class ShimCreate:
    """containerd.task.v2.CreateTaskRequest."""

    id: str
    bundle: str
    rootfs: tuple[Mount, ...] = ()
    io: TaskIO = field(default_factory=TaskIO)
    checkpoint: str = ""
    options: AnyValue | None = None


@dataclass(frozen=True)
class Connected:
    """containerd.task.v2.ConnectResponse."""

    shim_pid: int
    task_pid: int
    version: str = ""


@runtime_checkable
class ShimConnection(Protocol):
    """One connection to a shim: the Task API, errors as the kernel's kinds.

    A call on a connection the shim closed raises Unavailable; ``wait_closed`` returns then."""

    @property
    def closed(self) -> bool: ...

    async def wait_closed(self) -> None: ...

    async def create(self, request: ShimCreate) -> int: ...

    async def start(self, task_id: str, exec_id: str = "") -> int: ...

    async def delete(self, task_id: str, exec_id: str = "") -> Exit: ...

    async def state(self, task_id: str, exec_id: str = "") -> ProcessState: ...

    async def pids(self, task_id: str) -> builtins.list[ProcessInfo]: ...

    async def pause(self, task_id: str) -> None: ...

    async def resume(self, task_id: str) -> None: ...

    async def checkpoint(self, task_id: str, path: str, options: AnyValue | None) -> None:
        """Checkpoint the task into the directory ``path`` (runc and CRIU, for runc's shim)."""
        ...

    async def kill(self, task_id: str, exec_id: str, signal: int, all: bool) -> None: ...

    async def exec(self, task_id: str, exec_id: str, io: TaskIO, spec: AnyValue | None) -> None: ...

    async def resize_pty(self, task_id: str, exec_id: str, width: int, height: int) -> None: ...

    async def close_io(self, task_id: str, exec_id: str, stdin: bool) -> None: ...

    async def update(
        self, task_id: str, resources: AnyValue | None, annotations: Mapping[str, str]
    ) -> None: ...

    async def wait(self, task_id: str, exec_id: str = "") -> Exit: ...

    async def stats(self, task_id: str) -> AnyValue: ...

    async def connect(self, task_id: str) -> Connected: ...

    async def shutdown(self, task_id: str, now: bool = False) -> None: ...


@runtime_checkable
class ShimProtocol(Protocol):
    """What the runtime needs from the wire to speak to shims of one protocol (ttrpc)."""

    protocol: str
    """The bootstrap protocol name this speaks ("ttrpc")."""

    def connect(self, address: str) -> AbstractAsyncContextManager[ShimConnection]:
        """A connection to ``address`` (``unix://…`` or a path) for the block; Unavailable if none."""
        ...

    def encode_options(self, options: AnyValue) -> bytes:
        """A runtime-options Any as a marshalled protobuf Any (what a shim's ``start`` reads on stdin)."""
        ...

    def decode_delete(self, data: bytes) -> Exit:
        """The marshalled DeleteResponse the ``delete`` action prints on stdout."""
        ...


# The runtime itself, after the contract it is written against (its modules import the above).
from corral.plugins.runtimes.shim._binary import binary_name, resolve_runtime  # noqa: E402
from corral.plugins.runtimes.shim._manager import ShimProcess, ShimSettings, ShimTask, TaskManager  # noqa: E402
