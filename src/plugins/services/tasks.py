"""io.containerd.service.v1.tasks-service — containers' tasks, as containerd's services/tasks/local.go.

Thin: a task is found through its container (NotFound for either), created from the container's
spec and runtime, and driven through the ``io.containerd.runtime.v2`` runtime. Task events come
from the runtime's processes (a shim publishes its own), not from here.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import anyio
import structlog

from corral.kernel import (
    AlreadyExists,
    CorralError,
    DeadlineExceeded,
    InitContext,
    InvalidArgument,
    NotFound,
    Registration,
    Unavailable,
    Unimplemented,
    adapt_mapping,
    parse_filters,
)
from corral.plugins import types
from corral.plugins.cdi import DeviceInjector
from corral.plugins.core import Mount
from corral.plugins.core.namespaces import namespace_required
from corral.plugins.metadata import AnyValue, Container, ContainerStore, Metadata
from corral.plugins.nri import NRIService, TaskEvents
from corral.plugins.runtimes import (
    SPEC_TYPE_URL,
    CreateOpts,
    ExecOpts,
    Exit,
    PlatformRuntime,
    Process,
    ProcessInfo,
    ProcessState,
    Task,
    TaskIO,
    TaskStatus,
)

log = structlog.get_logger("corral.tasks")


def exactly(kind: type[CorralError], message: str) -> CorralError:
    """An error of ``kind`` whose message is ``message`` as is (containerd's status.Errorf ones)."""
    err = kind.__new__(kind)
    Exception.__init__(err, message)
    err.detail = message
    return err


@dataclass(frozen=True)
class TaskMetric:
    timestamp: datetime
    id: str
    data: AnyValue


class TasksService:
    """The tasks of the request's namespace, reached through their containers."""

    def __init__(
        self,
        containers: ContainerStore,
        runtime: PlatformRuntime,
        *,
        cdi: DeviceInjector | None = None,
        nri: TaskEvents | None = None,
    ) -> None:
        self._containers = containers
        self._runtime = runtime
        self._cdi = cdi
        self._nri = nri

    async def _final_spec(self, container: Container) -> AnyValue | None:
        """The spec the shim is given: the container's, with the CDI devices its annotations ask
        for and every NRI plugin's adjustment (containerd does both for CRI's containers only)."""
        spec = container.spec
        if (self._cdi is None and self._nri is None) or spec is None or spec.type_url != SPEC_TYPE_URL:
            return spec
        try:
            document = json.loads(spec.value)
        except ValueError:
            return spec
        if self._cdi is not None:
            self._cdi.inject_annotated(document)
        if self._nri is not None:
            document = await self._nri.create(
                namespace_required(), container.id, container.labels, container.image, document
            )
        return AnyValue(spec.type_url, json.dumps(document).encode())

    async def _container(self, container_id: str) -> Container:
        return await self._containers.get(container_id)

    async def _task(self, container_id: str) -> Task:
        container = await self._container(container_id)
        try:
            return await self._runtime.get(container.id)
        except NotFound:
            raise exactly(NotFound, f"task {container.id} not found") from None

    async def _process(self, container_id: str, exec_id: str) -> Process:
        task = await self._task(container_id)
        return await task.process(exec_id) if exec_id else task

    async def create(
        self,
        container_id: str,
        *,
        rootfs: Sequence[Mount] = (),
        io: TaskIO = TaskIO(),  # noqa: B008 -- frozen record
        options: AnyValue | None = None,
        runtime_path: str = "",
    ) -> tuple[str, int]:
        """(container id, pid of the created init process)."""
        container = await self._container(container_id)
        try:
            await self._runtime.get(container_id)
        except NotFound:
            pass
        else:
            raise AlreadyExists(f"task {container_id}")
        opts = CreateOpts(
            spec=await self._final_spec(container),
            rootfs=tuple(rootfs),
            io=io,
            runtime=runtime_path or container.runtime.name,
            runtime_options=container.runtime.options,
            task_options=options,
            labels={"runtime": container.runtime.name},
        )
        try:
            task = await self._runtime.create(container_id, opts)
        except BaseException:
            if self._nri is not None:
                with anyio.CancelScope(shield=True):
                    await self._nri.create_failed(container_id)
            raise
        state = await task.state()
        if self._nri is not None:
            await self._nri.created(container_id, state.pid)
        return container_id, state.pid

    async def start(self, container_id: str, exec_id: str = "") -> int:
        process = await self._process(container_id, exec_id)
        if self._nri is None or exec_id:
            await process.start()
            return (await process.state()).pid
        await self._nri.starting(container_id)
        try:
            await process.start()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._nri.stopped(container_id)
            raise
        pid = (await process.state()).pid
        await self._nri.started(container_id, pid)
        return pid

    async def delete(self, container_id: str) -> Exit:
        container = await self._container(container_id)
        try:
            await self._runtime.get(container.id)
        except NotFound:
            raise exactly(NotFound, f"task {container.id} not found") from None
        exit = await self._runtime.delete(container_id)
        if self._nri is not None:
            await self._nri.stopped(container_id, exit.status)
        return exit

    async def delete_process(self, container_id: str, exec_id: str) -> Exit:
        process = await self._process(container_id, exec_id)
        return await process.delete()

    async def get(self, container_id: str, exec_id: str = "") -> ProcessState:
        process = await self._process(container_id, exec_id)
        return await self._state(process)

    @staticmethod
    async def _state(process: Process) -> ProcessState:
        try:
            return await process.state()
        except (NotFound, Unavailable, DeadlineExceeded):
            raise
        except Exception as exc:
            log.error("task_state_failed", id=process.id, error=str(exc))
            return ProcessState(process.id, 0, TaskStatus.UNKNOWN)

    async def list(self) -> builtins.list[ProcessState]:
        states = []
        for task in await self._runtime.tasks():
            try:
                states.append(await self._state(task))
            except NotFound:
                continue  # deleted meanwhile
            except (Unavailable, DeadlineExceeded) as exc:
                log.error("task_state_failed", id=task.id, error=str(exc))
        return states

    async def pause(self, container_id: str) -> None:
        await (await self._task(container_id)).pause()

    async def resume(self, container_id: str) -> None:
        await (await self._task(container_id)).resume()

    async def kill(self, container_id: str, exec_id: str, signal: int, all: bool = False) -> None:
        process = await self._process(container_id, exec_id)
        await process.kill(signal, all)

    async def list_pids(self, container_id: str) -> builtins.list[ProcessInfo]:
        return await (await self._task(container_id)).pids()

    async def exec(
        self,
        container_id: str,
        exec_id: str,
        spec: AnyValue | None,
        io: TaskIO = TaskIO(),  # noqa: B008 -- frozen record
    ) -> None:
        if not exec_id:
            raise exactly(InvalidArgument, "exec id cannot be empty")
        task = await self._task(container_id)
        await task.exec(exec_id, ExecOpts(spec, io))

    async def resize_pty(self, container_id: str, exec_id: str, width: int, height: int) -> None:
        process = await self._process(container_id, exec_id)
        await process.resize_pty(width, height)

    async def close_io(self, container_id: str, exec_id: str, stdin: bool) -> None:
        process = await self._process(container_id, exec_id)
        if stdin:
            await process.close_io()

    async def checkpoint(self, container_id: str) -> None:
        await self._task(container_id)
        raise Unimplemented("checkpoint is not supported")

    async def update(
        self, container_id: str, resources: AnyValue | None, annotations: Mapping[str, str]
    ) -> None:
        task = await self._task(container_id)
        if self._nri is None or resources is None or not resources.type_url.endswith("/LinuxResources"):
            await task.update(resources, annotations)
            return
        # NRI plugins may change the resources asked for (UpdateContainer), and hear it is done.
        wanted = await self._nri.updating(container_id, json.loads(resources.value or b"{}"))
        if wanted is not None:
            resources = AnyValue(resources.type_url, json.dumps(wanted).encode())
        await task.update(resources, annotations)
        await self._nri.updated(container_id)

    async def metrics(self, filters: Sequence[str]) -> builtins.list[TaskMetric]:
        match = parse_filters(list(filters))
        found = []
        for task in await self._runtime.tasks():
            fields = {"id": task.id, "namespace": task.namespace}
            if not match.match(adapt_mapping(fields)):
                continue
            collected = datetime.now(UTC)
            try:
                stats = await task.stats()
            except NotFound:
                continue
            except Exception as exc:
                log.error("task_metrics_failed", id=task.id, error=str(exc))
                continue
            found.append(TaskMetric(collected, task.id, stats))
        return found

    async def wait(self, container_id: str, exec_id: str = "") -> Exit:
        process = await self._process(container_id, exec_id)
        return await process.wait()


class Runtimes:
    """The v2 runtime (shims), and runtimes that run tasks in-process for the names they serve: a
    task is created by the one its container's runtime name picks, and found in whichever has it."""

    def __init__(self, default: PlatformRuntime, by_name: Mapping[str, PlatformRuntime]) -> None:
        self._default = default
        self._by_name = dict(by_name)
        self._all = [default, *dict.fromkeys(self._by_name.values())]

    async def create(self, task_id: str, opts: CreateOpts) -> Task:
        return await self._by_name.get(opts.runtime, self._default).create(task_id, opts)

    async def _owner(self, task_id: str) -> PlatformRuntime:
        for runtime in self._all[1:]:
            try:
                await runtime.get(task_id)
            except NotFound:
                continue
            return runtime
        return self._default

    async def get(self, task_id: str) -> Task:
        return await (await self._owner(task_id)).get(task_id)

    async def tasks(self, all_namespaces: bool = False) -> Sequence[Task]:
        return [task for runtime in self._all for task in await runtime.tasks(all_namespaces)]

    async def delete(self, task_id: str) -> Exit:
        return await (await self._owner(task_id)).delete(task_id)


async def init(ic: InitContext) -> TasksService:
    containers = ic.get_single(types.METADATA, Metadata).view(ContainerStore)
    runtime = ic.get_by_id(types.RUNTIME_V2, "task", PlatformRuntime)
    in_process = {
        name: instance
        for instance in ic.get_by_type(types.RUNTIME_IN_PROCESS, PlatformRuntime).values()
        for name in getattr(instance, "runtime_names", ())
    }
    cdi = next(iter(ic.get_by_type(types.CDI, DeviceInjector).values()), None)
    nri = next(iter(ic.get_by_type(types.NRI, NRIService).values()), None)
    return TasksService(
        containers,
        Runtimes(runtime, in_process) if in_process else runtime,
        cdi=cdi,
        nri=nri.tasks if nri is not None else None,
    )


registration = Registration(
    type=types.SERVICE,
    id="tasks-service",
    init=init,
    requires=(types.METADATA, types.RUNTIME_V2),
    after=(types.RUNTIME_IN_PROCESS, types.CDI, types.NRI),
    description="containers' tasks through the v2 runtime and the in-process ones",
)
