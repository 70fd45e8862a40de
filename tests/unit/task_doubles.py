"""An in-memory container store and a runtime that records its tasks: doubles for the tasks
service's unit tests (``test_tasks_service.py``, ``test_tasks_nri_cdi.py``)."""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from corral.kernel import NotFound
from corral.plugins.core import namespace_required
from corral.plugins.metadata import AnyValue, Container
from corral.plugins.runtimes import (
    SPEC_TYPE_URL,
    CreateOpts,
    ExecOpts,
    Exit,
    ProcessInfo,
    ProcessState,
    TaskStatus,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
CHECKPOINT_FILES = {
    "inventory.img": b"inventory",
    "pages-1.img": bytes(range(256)) * 4096,
    "criu-work/dump.log": b"dumped",
}


class MemoryContainers:
    def __init__(self) -> None:
        self.items: dict[tuple[str, str], Container] = {}

    async def get(self, container_id: str) -> Container:
        ns = namespace_required()
        try:
            return self.items[(ns, container_id)]
        except KeyError:
            raise NotFound(f'container "{container_id}" in namespace "{ns}"') from None

    async def list(self, filters: Sequence[str] = ()) -> builtins.list[Container]:
        return [c for (ns, _), c in self.items.items() if ns == namespace_required()]

    async def create(self, container: Container) -> Container:
        self.items[(namespace_required(), container.id)] = container
        return container

    async def update(self, container: Container, paths: Sequence[str] = ()) -> Container:
        return await self.create(container)

    async def delete(self, container_id: str) -> None:
        self.items.pop((namespace_required(), container_id))


@dataclass
class RecordedTask:
    id: str
    namespace: str
    opts: CreateOpts
    runtime: str = "io.containerd.runc.v2"
    status: TaskStatus = TaskStatus.CREATED
    execs: dict[str, ExecOpts] = field(default_factory=dict)
    killed: list[tuple[str, int, bool]] = field(default_factory=list)
    checkpoints: list[tuple[str, AnyValue | None]] = field(default_factory=list)
    restored: dict[str, bytes] = field(default_factory=dict)
    """The files in the checkpoint directory the task was created from, as it was created."""

    async def state(self) -> ProcessState:
        return ProcessState(self.id, 42, self.status, self.opts.io)

    async def start(self) -> None:
        self.status = TaskStatus.RUNNING

    async def kill(self, signal: int, all: bool = False) -> None:
        self.killed.append((self.id, signal, all))

    async def wait(self) -> Exit:
        return Exit(42, 3, NOW)

    async def delete(self) -> Exit:
        return Exit(42, 0, NOW)

    async def resize_pty(self, width: int, height: int) -> None: ...

    async def close_io(self) -> None: ...

    async def pids(self) -> builtins.list[ProcessInfo]:
        return [ProcessInfo(42)]

    async def pause(self) -> None:
        self.status = TaskStatus.PAUSED

    async def resume(self) -> None:
        self.status = TaskStatus.RUNNING

    async def checkpoint(self, path: str, options: AnyValue | None = None) -> None:
        """Write what CRIU would, in shape: image files, one in a directory of its own."""
        self.checkpoints.append((path, options))
        for name, data in CHECKPOINT_FILES.items():
            target = Path(path, name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)

    async def exec(self, exec_id: str, opts: ExecOpts) -> RecordedTask:
        self.execs[exec_id] = opts
        return self

    async def process(self, exec_id: str) -> RecordedTask:
        if exec_id not in self.execs:
            raise NotFound(f"process {exec_id}")
        return replace(self, id=exec_id)

    async def stats(self) -> AnyValue:
        return AnyValue("io.containerd.cgroups.v1.Metrics", b"\x01")

    async def update(self, resources: AnyValue | None, annotations: Mapping[str, str]) -> None: ...


class RecordingRuntime:
    def __init__(self) -> None:
        self.tasks_by_key: dict[tuple[str, str], RecordedTask] = {}

    async def create(self, task_id: str, opts: CreateOpts) -> RecordedTask:
        task = RecordedTask(task_id, namespace_required(), opts)
        if opts.checkpoint:
            root = Path(opts.checkpoint)
            task.restored = {
                str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()
            }
        self.tasks_by_key[(task.namespace, task_id)] = task
        return task

    async def get(self, task_id: str) -> RecordedTask:
        try:
            return self.tasks_by_key[(namespace_required(), task_id)]
        except KeyError:
            raise NotFound(f"task {task_id}") from None

    async def tasks(self, all_namespaces: bool = False) -> Sequence[RecordedTask]:
        return [
            t for t in self.tasks_by_key.values() if all_namespaces or t.namespace == namespace_required()
        ]

    async def delete(self, task_id: str) -> Exit:
        self.tasks_by_key.pop((namespace_required(), task_id))
        return Exit(42, 0, NOW)


SPEC = AnyValue(SPEC_TYPE_URL, b'{"ociVersion":"1.0.2"}')
OPTIONS = AnyValue("containerd.runc.v1.Options", b"")
