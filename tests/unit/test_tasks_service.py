"""The tasks service's own rules, over in-memory containers and a runtime that records tasks:
tasks are found through their containers, with containerd's errors and messages."""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import pytest

from corral.kernel import AlreadyExists, InvalidArgument, NotFound, Unimplemented
from corral.plugins.core import Mount, namespace, namespace_required
from corral.plugins.metadata import AnyValue, Container, ContainerRuntime
from corral.plugins.runtimes import (
    SPEC_TYPE_URL,
    CreateOpts,
    ExecOpts,
    Exit,
    ProcessInfo,
    ProcessState,
    TaskIO,
    TaskStatus,
)
from corral.plugins.services.tasks import TasksService

pytestmark = pytest.mark.anyio

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


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


async def service_with_container() -> tuple[TasksService, RecordingRuntime]:
    containers, runtime = MemoryContainers(), RecordingRuntime()
    with namespace("ns1"):
        await containers.create(
            Container("c1", ContainerRuntime("io.containerd.runc.v2", OPTIONS), spec=SPEC)
        )
    return TasksService(containers, runtime), runtime


async def test_a_task_is_created_from_its_containers_spec_and_runtime() -> None:
    service, runtime = await service_with_container()
    rootfs = [Mount("overlay", "overlay", ("lowerdir=/a",))]
    with namespace("ns1"):
        assert await service.create("c1", rootfs=rootfs, io=TaskIO(stdout="/f/out")) == ("c1", 42)
        with pytest.raises(AlreadyExists, match="task c1: already exists"):
            await service.create("c1")
    opts = runtime.tasks_by_key[("ns1", "c1")].opts
    assert opts.spec == SPEC and opts.runtime == "io.containerd.runc.v2"
    assert opts.runtime_options == OPTIONS and opts.rootfs == tuple(rootfs)
    assert opts.io.stdout == "/f/out"


async def test_a_task_is_reached_only_through_its_container_and_namespace() -> None:
    service, _ = await service_with_container()
    with namespace("ns1"):
        with pytest.raises(NotFound) as missing_task:
            await service.get("c1")
        assert str(missing_task.value) == "task c1 not found"
        await service.create("c1")
        with pytest.raises(NotFound, match='container "nope"'):
            await service.kill("nope", "", 9)
    with namespace("ns2"), pytest.raises(NotFound, match='container "c1" in namespace "ns2"'):
        await service.get("c1")


async def test_the_lifecycle_passes_through_to_the_runtime() -> None:
    service, runtime = await service_with_container()
    with namespace("ns1"):
        await service.create("c1")
        assert (await service.wait("c1")).status == 3  # asked before the start, as ctr run does
        assert await service.start("c1") == 42
        assert [s.status for s in await service.list()] == [TaskStatus.RUNNING]
        await service.pause("c1")
        assert (await service.get("c1")).status is TaskStatus.PAUSED
        await service.resume("c1")
        await service.kill("c1", "", 15, all=True)
        assert runtime.tasks_by_key[("ns1", "c1")].killed == [("c1", 15, True)]
        assert [p.pid for p in await service.list_pids("c1")] == [42]
        [metric] = await service.metrics(["id==c1"])
        assert metric.id == "c1" and metric.data.type_url.endswith("Metrics")
        assert await service.metrics(["id==other"]) == []
        assert (await service.delete("c1")).pid == 42
        assert await service.list() == []


async def test_exec_needs_an_id_and_finds_its_process_afterwards() -> None:
    service, _ = await service_with_container()
    with namespace("ns1"):
        await service.create("c1")
        with pytest.raises(InvalidArgument) as empty:
            await service.exec("c1", "", SPEC)
        assert str(empty.value) == "exec id cannot be empty"
        with pytest.raises(NotFound):
            await service.get("c1", "e1")
        await service.exec("c1", "e1", SPEC, TaskIO(stdout="/f/e1"))
        assert (await service.get("c1", "e1")).id == "e1"


async def test_checkpoint_is_unimplemented_for_an_existing_task_only() -> None:
    service, _ = await service_with_container()
    with namespace("ns1"):
        with pytest.raises(NotFound):
            await service.checkpoint("c1")
        await service.create("c1")
        with pytest.raises(Unimplemented):
            await service.checkpoint("c1")
