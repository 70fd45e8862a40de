"""io.containerd.grpc.v1.tasks — containerd.services.tasks.v1.Tasks over the tasks service."""

from __future__ import annotations

from datetime import UTC, datetime

from corral.api.grpc import GRPCServices
from corral.api.types.containerd import types as ctypes
from corral.api.types.containerd.services.tasks import v1 as pb
from corral.api.types.containerd.v1 import types as task_types
from corral.api.types.google import protobuf
from corral.api.wire import descriptor_from_wire, descriptor_to_wire, mounts_from_wire
from corral.kernel import InitContext, Registration
from corral.plugins import types
from corral.plugins.metadata import AnyValue
from corral.plugins.runtimes import ProcessState, TaskIO
from corral.plugins.services.tasks import TasksService

GO_ZERO_TIME = datetime(1, 1, 1, tzinfo=UTC)
"""What containerd sends for a time not set yet (protobuf.ToTimestamp of Go's zero time)."""


def _time(value: datetime | None) -> datetime:
    return value if value is not None else GO_ZERO_TIME


def _any(value: protobuf.Any | None) -> AnyValue | None:
    return None if value is None else AnyValue(value.type_url, value.value)


def _runc_path(value: protobuf.Any | None) -> str:
    """The images path in runc's create or checkpoint options (``criu_image_path``, ``image_path``)."""
    if value is None:
        return ""
    # runc's types load with the first task that has options, not at start-up.
    from corral.api.types.containerd.runc import v1 as runc_pb

    if value.type_url.endswith("containerd.runc.v1.Options"):
        return runc_pb.Options.parse(value.value).criu_image_path
    if value.type_url.endswith("containerd.runc.v1.CheckpointOptions"):
        return runc_pb.CheckpointOptions.parse(value.value).image_path
    return ""


def _to_any(value: AnyValue | None) -> protobuf.Any | None:
    return None if value is None else protobuf.Any(type_url=value.type_url, value=value.value)


def process(state: ProcessState) -> task_types.Process:
    return task_types.Process(
        id=state.id,
        pid=state.pid,
        status=task_types.Status(int(state.status)),
        stdin=state.io.stdin,
        stdout=state.io.stdout,
        stderr=state.io.stderr,
        terminal=state.io.terminal,
        exit_status=state.exit_status,
        exited_at=_time(state.exited_at),
    )


class TasksGRPC(pb.TasksBase):
    def __init__(self, local: TasksService) -> None:
        self._local = local

    async def create(self, message: pb.CreateTaskRequest) -> pb.CreateTaskResponse:
        container_id, pid = await self._local.create(
            message.container_id,
            rootfs=mounts_from_wire(message.rootfs),
            io=TaskIO(message.stdin, message.stdout, message.stderr, message.terminal),
            options=_any(message.options),
            runtime_path=message.runtime_path,
            checkpoint=descriptor_from_wire(message.checkpoint) if message.checkpoint else None,
            restore_path=_runc_path(message.options),
        )
        return pb.CreateTaskResponse(container_id=container_id, pid=pid)

    async def start(self, message: pb.StartRequest) -> pb.StartResponse:
        return pb.StartResponse(pid=await self._local.start(message.container_id, message.exec_id))

    async def delete(self, message: pb.DeleteTaskRequest) -> pb.DeleteResponse:
        exit = await self._local.delete(message.container_id)
        return pb.DeleteResponse(pid=exit.pid, exit_status=exit.status, exited_at=exit.timestamp)

    async def delete_process(self, message: pb.DeleteProcessRequest) -> pb.DeleteResponse:
        exit = await self._local.delete_process(message.container_id, message.exec_id)
        return pb.DeleteResponse(
            id=message.exec_id, pid=exit.pid, exit_status=exit.status, exited_at=exit.timestamp
        )

    async def get(self, message: pb.GetRequest) -> pb.GetResponse:
        return pb.GetResponse(process=process(await self._local.get(message.container_id, message.exec_id)))

    async def list(self, message: pb.ListTasksRequest) -> pb.ListTasksResponse:
        return pb.ListTasksResponse(tasks=[process(s) for s in await self._local.list()])

    async def kill(self, message: pb.KillRequest) -> protobuf.Empty:
        await self._local.kill(message.container_id, message.exec_id, message.signal, message.all)
        return protobuf.Empty()

    async def exec(self, message: pb.ExecProcessRequest) -> protobuf.Empty:
        io = TaskIO(message.stdin, message.stdout, message.stderr, message.terminal)
        await self._local.exec(message.container_id, message.exec_id, _any(message.spec), io)
        return protobuf.Empty()

    async def resize_pty(self, message: pb.ResizePtyRequest) -> protobuf.Empty:
        await self._local.resize_pty(message.container_id, message.exec_id, message.width, message.height)
        return protobuf.Empty()

    async def close_io(self, message: pb.CloseIoRequest) -> protobuf.Empty:
        await self._local.close_io(message.container_id, message.exec_id, message.stdin)
        return protobuf.Empty()

    async def pause(self, message: pb.PauseTaskRequest) -> protobuf.Empty:
        await self._local.pause(message.container_id)
        return protobuf.Empty()

    async def resume(self, message: pb.ResumeTaskRequest) -> protobuf.Empty:
        await self._local.resume(message.container_id)
        return protobuf.Empty()

    async def list_pids(self, message: pb.ListPidsRequest) -> pb.ListPidsResponse:
        pids = await self._local.list_pids(message.container_id)
        return pb.ListPidsResponse(
            processes=[task_types.ProcessInfo(pid=p.pid, info=_to_any(p.info)) for p in pids]
        )

    async def checkpoint(self, message: pb.CheckpointTaskRequest) -> pb.CheckpointTaskResponse:
        stored = await self._local.checkpoint(
            message.container_id, _any(message.options), image_path=_runc_path(message.options)
        )
        return pb.CheckpointTaskResponse(descriptors=[descriptor_to_wire(d) for d in stored])

    async def update(self, message: pb.UpdateTaskRequest) -> protobuf.Empty:
        await self._local.update(message.container_id, _any(message.resources), message.annotations)
        return protobuf.Empty()

    async def metrics(self, message: pb.MetricsRequest) -> pb.MetricsResponse:
        found = await self._local.metrics(list(message.filters))
        return pb.MetricsResponse(
            metrics=[ctypes.Metric(timestamp=m.timestamp, id=m.id, data=_to_any(m.data)) for m in found]
        )

    async def wait(self, message: pb.WaitRequest) -> pb.WaitResponse:
        exit = await self._local.wait(message.container_id, message.exec_id)
        return pb.WaitResponse(exit_status=exit.status, exited_at=exit.timestamp)


async def init(ic: InitContext) -> GRPCServices:
    local = ic.get_by_id(types.SERVICE, "tasks-service", TasksService)
    return GRPCServices((TasksGRPC(local),))


registration = Registration(type=types.GRPC, id="tasks", init=init, requires=(types.SERVICE,))
