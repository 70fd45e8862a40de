"""The tasks service hands the shim a spec with its CDI devices and every NRI plugin's adjustment,
and sends NRI the lifecycle of its tasks — without a daemon, over an in-memory runtime."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from task_doubles import OPTIONS, MemoryContainers, RecordingRuntime

from corral.api.nri import NRI, Settings, TaskLifecycle, api, hookimpl
from corral.kernel import FailedPrecondition, NotFound
from corral.plugins.cdi import Registry
from corral.plugins.core import namespace
from corral.plugins.metadata import AnyValue, Container, ContainerRuntime
from corral.plugins.runtimes import SPEC_TYPE_URL
from corral.plugins.services.tasks import TasksService

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []

    @hookimpl
    def nri_create_container(self, pod: api.PodSandbox, container: api.Container) -> api.ContainerAdjustment:
        self.events.append(f"create {container.id} {sorted(container.env)}")
        return api.ContainerAdjustment(
            env=[api.KeyValue(key="FROM_NRI", value="1")], CDI_devices=[api.CdiDevice(name="corral.test/x=b")]
        )

    @hookimpl
    def nri_post_create_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        self.events.append(f"post-create {container.id} pid={container.pid}")

    @hookimpl
    def nri_start_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        self.events.append(f"start {container.id}")

    @hookimpl
    def nri_post_start_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        self.events.append(f"post-start {container.id} state={container.state.name}")

    @hookimpl
    def nri_stop_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        self.events.append(f"stop {container.id} state={container.state.name}")

    @hookimpl
    def nri_remove_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        self.events.append(f"remove {container.id}")


CDI = {
    "cdiVersion": "0.6.0",
    "kind": "corral.test/x",
    "devices": [
        {"name": "a", "containerEdits": {"env": ["CDI_A=1"]}},
        {"name": "b", "containerEdits": {"env": ["CDI_B=1"]}},
    ],
}


@pytest.fixture
async def wired(
    tmp_path: Path,
) -> AsyncIterator[tuple[TasksService, RecordingRuntime, Recorder, TaskLifecycle]]:
    (tmp_path / "cdi").mkdir()
    (tmp_path / "cdi" / "x.json").write_text(json.dumps(CDI))
    registry = Registry([str(tmp_path / "cdi")])
    nri = NRI(
        Settings(
            socket_path=str(tmp_path / "nri.sock"),
            plugin_path=str(tmp_path / "none"),
            disable_connections=True,
        )
    )
    containers, runtime = MemoryContainers(), RecordingRuntime()
    lifecycle = TaskLifecycle(nri, runtime, registry.inject)
    nri.register_domain(lifecycle)
    recorder = Recorder()
    spec = {"process": {"env": ["PATH=/bin"]}, "annotations": {"cdi.k8s.io/test_0": "corral.test/x=a"}}
    with namespace("ns1"):
        await containers.create(
            Container("c1", ContainerRuntime("io.containerd.runc.v2", OPTIONS),
                      spec=AnyValue(SPEC_TYPE_URL, json.dumps(spec).encode()))
        )  # fmt: skip
    async with anyio.create_task_group() as tg:
        await tg.start(nri.serve)
        await nri.register_hooks(recorder, "recorder", "10")
        yield TasksService(containers, runtime, cdi=registry, nri=lifecycle), runtime, recorder, lifecycle
        tg.cancel_scope.cancel()


async def test_the_shim_gets_the_cdi_devices_and_nri_adjustments_and_nri_hears_the_lifecycle(
    wired: Any,
) -> None:
    service, runtime, recorder, lifecycle = wired
    with namespace("ns1"):
        await service.create("c1")
        sent = runtime.tasks_by_key[("ns1", "c1")].opts.spec
        assert json.loads(sent.value)["process"]["env"] == ["PATH=/bin", "CDI_A=1", "FROM_NRI=1", "CDI_B=1"]
        stored = await service._containers.get("c1")
        assert "CDI_A=1" not in stored.spec.value.decode()  # the record keeps its own spec
        await service.start("c1")
        await service.delete("c1")
    await lifecycle.removed("c1")
    assert recorder.events == [
        "create c1 ['CDI_A=1', 'PATH=/bin']",
        "post-create c1 pid=42",
        "start c1",
        "post-start c1 state=CONTAINER_RUNNING",
        "stop c1 state=CONTAINER_STOPPED",
        "remove c1",
    ]


async def test_an_unknown_cdi_device_fails_the_task_and_creates_nothing(wired: Any) -> None:
    service, runtime, recorder, _ = wired
    with namespace("ns1"):
        container = await service._containers.get("c1")
        spec = json.loads(container.spec.value)
        spec["annotations"]["cdi.k8s.io/test_0"] = "corral.test/x=zzz"
        await service._containers.update(
            Container("c1", container.runtime, spec=AnyValue(SPEC_TYPE_URL, json.dumps(spec).encode()))
        )
        with pytest.raises(NotFound, match=r"unresolvable CDI devices corral\.test/x=zzz"):
            await service.create("c1")
    assert runtime.tasks_by_key == {} and recorder.events == []


async def test_a_failed_shim_create_tells_nri_the_container_is_gone(wired: Any) -> None:
    service, runtime, recorder, _ = wired

    async def refuse(task_id: str, opts: Any) -> Any:
        raise FailedPrecondition("runc refused the spec")

    runtime.create = refuse
    with namespace("ns1"), pytest.raises(FailedPrecondition, match="runc refused"):
        await service.create("c1")
    assert recorder.events[0].startswith("create c1") and recorder.events[1:] == [
        "stop c1 state=CONTAINER_CREATED",
        "remove c1",
    ]
