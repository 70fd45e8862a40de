"""The tasks service's own rules, over in-memory containers and a runtime that records tasks:
tasks are found through their containers, with containerd's errors and messages."""

from __future__ import annotations

import pytest
from task_doubles import OPTIONS, SPEC, MemoryContainers, RecordingRuntime

from corral.kernel import AlreadyExists, InvalidArgument, NotFound, Unimplemented
from corral.plugins.core import Mount, namespace
from corral.plugins.metadata import Container, ContainerRuntime
from corral.plugins.runtimes import (
    TaskIO,
    TaskStatus,
)
from corral.plugins.services.tasks import TasksService

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


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


async def test_checkpoint_needs_an_existing_task_and_a_content_store() -> None:
    service, _ = await service_with_container()
    with namespace("ns1"):
        with pytest.raises(NotFound):
            await service.checkpoint("c1")
        await service.create("c1")
        with pytest.raises(Unimplemented):
            await service.checkpoint("c1")
