"""io.containerd.service.v1.tasks-service — containers' tasks, as containerd's services/tasks/local.go.

Thin: a task is found through its container (NotFound for either), created from the container's
spec and runtime, and driven through the ``io.containerd.runtime.v2`` runtime. Task events come
from the runtime's processes (a shim publishes its own), not from here.
"""

from __future__ import annotations

import builtins
import json
import os
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import anyio
import anyio.to_thread
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
from corral.plugins.core import Descriptor, Mount
from corral.plugins.core.namespaces import namespace, namespace_required
from corral.plugins.core.trees import remove_tree
from corral.plugins.metadata import AnyValue, Container, ContainerStore, Metadata, NamespacedContent
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

MEDIA_TYPE_CHECKPOINT = "application/vnd.containerd.container.criu.checkpoint.criu.tar"
"""A task's checkpoint (CRIU's image files) as a tar in the content store."""
MEDIA_TYPE_CHECKPOINT_CONFIG = "application/vnd.containerd.container.checkpoint.config.v1+proto"
"""The checkpointed container's spec, a marshalled protobuf Any, beside it."""
RUNC_CHECKPOINT_OPTIONS = "containerd.runc.v1.CheckpointOptions"


def _runc(runtime: str) -> bool:
    """Whether containerd reads runc's options (image paths) for this runtime."""
    return runtime.startswith("io.containerd.runc")


@asynccontextmanager
async def _scratch(parent: Path) -> AsyncIterator[str]:
    """A private directory (0700) under ``parent`` for one checkpoint, removed after the block
    whatever its depth (and, after a crash, at the next start)."""

    def make() -> str:
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        return tempfile.mkdtemp(dir=parent)

    path = await anyio.to_thread.run_sync(make)
    try:
        yield path
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(remove_tree, path)


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
        content: NamespacedContent | None = None,
        state: Path | None = None,
        cdi: DeviceInjector | None = None,
        nri: TaskEvents | None = None,
    ) -> None:
        self._containers = containers
        self._runtime = runtime
        self._content = content
        self._state_dir = state
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
        return await self._task_of(await self._container(container_id))

    async def _task_of(self, container: Container) -> Task:
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
        checkpoint: Descriptor | None = None,
        restore_path: str = "",
    ) -> tuple[str, int]:
        """(container id, pid of the created init process).

        A task is restored from ``checkpoint`` (a checkpoint tar in the content store, unpacked
        for the runtime) or, for runc's runtimes, from the images already at ``restore_path``
        (runc's ``Options.criu_image_path``), as containerd does."""
        container = await self._container(container_id)
        restore_path = restore_path if _runc(container.runtime.name) else ""
        if restore_path or checkpoint is None:
            return await self._create(container, rootfs, io, options, runtime_path, restore_path)
        if checkpoint.media_type != MEDIA_TYPE_CHECKPOINT:
            raise InvalidArgument(f'unsupported checkpoint type "{checkpoint.media_type}"')
        content, state = self._checkpoints()
        await content.info(checkpoint.digest)  # NotFound in the content store's words
        await self._refuse_existing(container.id)  # before its restore images are touched
        await self.sweep_restores()
        # The shim restores when the task starts: the images stay until then (or its deletion).
        images = await anyio.to_thread.run_sync(
            self._restore_dir, state, namespace_required(), container.id, True
        )
        from corral.plugins.differs.archive import read_tree

        try:
            await read_tree(content, checkpoint.digest, images)
            return await self._create(container, rootfs, io, options, runtime_path, str(images))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(
                    self._restore_dir, state, namespace_required(), container.id, False
                )
            raise

    @staticmethod
    def _restore_dir(state: Path, namespace: str, container_id: str, make: bool) -> Path:
        """``<state>/restore/<namespace>/<container>``, emptied, and made again (0700) if ``make``."""
        path = state / "restore" / namespace / container_id
        if path.exists():
            remove_tree(path)
        if make:
            for directory in (path.parent.parent, path.parent, path):
                directory.mkdir(mode=0o700, exist_ok=True)
        return path

    async def sweep_restores(self) -> int:
        """Remove the restore images of tasks that are gone without the service deleting them (a
        shim that died, a crash before a start): at start-up and before each restore. How many."""
        root = self._state_dir / "restore" if self._state_dir is not None else None
        if root is None or not root.is_dir():
            return 0
        found = await anyio.to_thread.run_sync(
            lambda: [(ns.name, c.name) for ns in root.iterdir() for c in ns.iterdir()]
        )
        swept = 0
        for ns, container_id in found:
            with namespace(ns):
                try:
                    await self._runtime.get(container_id)
                    continue
                except NotFound:
                    await self._forget_restore(container_id)
                    swept += 1
        if swept:
            log.info("restore_images_swept", count=swept)
        return swept

    async def _forget_restore(self, container_id: str) -> None:
        """Remove the task's restore images, if it has any: a stat on the loop for every task
        started or deleted, a worker thread only for a restored one."""
        if self._state_dir is None:
            return
        ns = namespace_required()
        if (self._state_dir / "restore" / ns / container_id).exists():
            await anyio.to_thread.run_sync(self._restore_dir, self._state_dir, ns, container_id, False)

    async def _refuse_existing(self, container_id: str) -> None:
        try:
            await self._runtime.get(container_id)
        except NotFound:
            return
        raise AlreadyExists(f"task {container_id}")

    def _checkpoints(self) -> tuple[NamespacedContent, Path]:
        if self._content is None or self._state_dir is None:
            raise Unimplemented("checkpoints need a content store and a state directory")
        return self._content, self._state_dir

    async def _create(
        self,
        container: Container,
        rootfs: Sequence[Mount],
        io: TaskIO,
        options: AnyValue | None,
        runtime_path: str,
        checkpoint: str,
    ) -> tuple[str, int]:
        container_id = container.id
        await self._refuse_existing(container_id)
        opts = CreateOpts(
            spec=await self._final_spec(container),
            rootfs=tuple(rootfs),
            io=io,
            runtime=runtime_path or container.runtime.name,
            runtime_options=container.runtime.options,
            task_options=options,
            checkpoint=checkpoint,
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
        pid = await self._start(container_id, exec_id)
        if not exec_id:
            await self._forget_restore(container_id)  # a restore has read its images now
        return pid

    async def _start(self, container_id: str, exec_id: str) -> int:
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
        await self._task(container_id)  # NotFound for the container or its task, in containerd's words
        exit = await self._runtime.delete(container_id)
        await self._forget_restore(container_id)
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

    async def checkpoint(
        self, container_id: str, options: AnyValue | None = None, *, image_path: str = ""
    ) -> builtins.list[Descriptor]:
        """Checkpoint the task (the runtime writes it; runc's shim with CRIU) and store it: the
        checkpoint's tar and the container's spec, in that order. For runc's runtimes an
        ``image_path`` (``CheckpointOptions.image_path``) keeps the images there instead, and
        nothing is stored, as in containerd.

        The client pauses the task before and resumes it after (containerd's client does)."""
        container = await self._container(container_id)
        task = await self._task_of(container)
        runtime = container.runtime.name
        if _runc(runtime):
            if options is not None and not options.type_url.endswith(RUNC_CHECKPOINT_OPTIONS):
                raise InvalidArgument(f"invalid task checkpoint option for {runtime}")
            if image_path:
                await task.checkpoint(image_path, options)
                return []
        content, state = self._checkpoints()
        async with _scratch(state / "checkpoint") as images:
            await task.checkpoint(images, options)
            from corral.plugins.differs.archive import write_tree

            writer = await content.writer(images)
            try:
                digest, size = await write_tree(writer, images)
            finally:
                await writer.close()
            spec = container.spec.marshal() if container.spec is not None else b""
            config = await self._store_blob(content, os.path.join(images, "spec"), spec)
        return [
            Descriptor(MEDIA_TYPE_CHECKPOINT, digest, size),
            Descriptor(MEDIA_TYPE_CHECKPOINT_CONFIG, config, len(spec)),
        ]

    @staticmethod
    async def _store_blob(content: NamespacedContent, ref: str, data: bytes) -> str:
        """Store ``data``; its digest. A blob the namespace holds already is no error (containerd's
        second checkpoint of an unchanged container fails here)."""
        writer = await content.writer(ref)
        try:
            if data:
                await writer.write(data)
            try:
                return (await writer.commit(len(data), "")).digest
            except AlreadyExists:
                return writer.digest()
        finally:
            await writer.close()

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
    state = ic.state
    if (state / "checkpoint").exists():  # a checkpoint's scratch outlives its call only in a crash
        await anyio.to_thread.run_sync(remove_tree, state / "checkpoint")
    service = TasksService(
        containers,
        Runtimes(runtime, in_process) if in_process else runtime,
        content=ic.get_single(types.METADATA, Metadata).view(NamespacedContent),
        state=state,
        cdi=cdi,
        nri=nri.tasks if nri is not None else None,
    )
    await service.sweep_restores()
    return service


registration = Registration(
    type=types.SERVICE,
    id="tasks-service",
    init=init,
    requires=(types.METADATA, types.RUNTIME_V2),
    after=(types.RUNTIME_IN_PROCESS, types.CDI, types.NRI),
    description="containers' tasks through the v2 runtime and the in-process ones",
)
