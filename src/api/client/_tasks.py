"""Task calls: containerd.services.tasks.v1.Tasks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property

from corral.api.client._connection import Connection
from corral.api.types.containerd import types as containerd_types
from corral.api.types.containerd.services.tasks import v1 as tasks_pb
from corral.api.types.containerd.v1 import types as task_types
from corral.api.types.google import protobuf


class TaskCalls(Connection):
    """Task calls (a task is named by its container's id; ``exec_id`` picks an exec'd process)."""

    @cached_property
    def tasks(self) -> tasks_pb.TasksStub:
        return tasks_pb.TasksStub(self.channel, metadata=self._metadata())

    async def create_task(
        self,
        container_id: str,
        *,
        rootfs: Sequence[containerd_types.Mount] = (),
        stdin: str = "",
        stdout: str = "",
        stderr: str = "",
        terminal: bool = False,
        options: protobuf.Any | None = None,
    ) -> int:
        """Create the container's task; the pid of its (not yet started) init process."""
        request = tasks_pb.CreateTaskRequest(
            container_id=container_id,
            rootfs=list(rootfs),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            terminal=terminal,
            options=options,
        )
        return (await self.call(self.tasks.create(request))).pid

    async def start_task(self, container_id: str, exec_id: str = "") -> int:
        reply = await self.call(
            self.tasks.start(tasks_pb.StartRequest(container_id=container_id, exec_id=exec_id))
        )
        return reply.pid

    async def wait_task(self, container_id: str, exec_id: str = "") -> tasks_pb.WaitResponse:
        """Returns once the process has exited: its exit status and time."""
        request = tasks_pb.WaitRequest(container_id=container_id, exec_id=exec_id)
        return await self.call(self.tasks.wait(request, timeout=None))

    async def get_task(self, container_id: str, exec_id: str = "") -> task_types.Process:
        reply = await self.call(
            self.tasks.get(tasks_pb.GetRequest(container_id=container_id, exec_id=exec_id))
        )
        assert reply.process is not None
        return reply.process

    async def list_tasks(self) -> list[task_types.Process]:
        return list((await self.call(self.tasks.list(tasks_pb.ListTasksRequest()))).tasks)

    async def kill_task(
        self, container_id: str, signal: int, *, exec_id: str = "", all: bool = False
    ) -> None:
        request = tasks_pb.KillRequest(container_id=container_id, exec_id=exec_id, signal=signal, all=all)
        await self.call(self.tasks.kill(request))

    async def delete_task(self, container_id: str) -> tasks_pb.DeleteResponse:
        return await self.call(self.tasks.delete(tasks_pb.DeleteTaskRequest(container_id=container_id)))

    async def delete_process(self, container_id: str, exec_id: str) -> tasks_pb.DeleteResponse:
        request = tasks_pb.DeleteProcessRequest(container_id=container_id, exec_id=exec_id)
        return await self.call(self.tasks.delete_process(request))

    async def exec_process(
        self,
        container_id: str,
        exec_id: str,
        spec: protobuf.Any,
        *,
        stdin: str = "",
        stdout: str = "",
        stderr: str = "",
        terminal: bool = False,
    ) -> None:
        request = tasks_pb.ExecProcessRequest(
            container_id=container_id,
            exec_id=exec_id,
            spec=spec,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            terminal=terminal,
        )
        await self.call(self.tasks.exec(request))

    async def list_pids(self, container_id: str) -> list[task_types.ProcessInfo]:
        reply = await self.call(self.tasks.list_pids(tasks_pb.ListPidsRequest(container_id=container_id)))
        return list(reply.processes)

    async def pause_task(self, container_id: str) -> None:
        await self.call(self.tasks.pause(tasks_pb.PauseTaskRequest(container_id=container_id)))

    async def resume_task(self, container_id: str) -> None:
        await self.call(self.tasks.resume(tasks_pb.ResumeTaskRequest(container_id=container_id)))

    async def task_metrics(self, filters: Sequence[str] = ()) -> list[containerd_types.Metric]:
        reply = await self.call(self.tasks.metrics(tasks_pb.MetricsRequest(filters=list(filters))))
        return list(reply.metrics)

    async def resize_pty(self, container_id: str, width: int, height: int, exec_id: str = "") -> None:
        request = tasks_pb.ResizePtyRequest(
            container_id=container_id, exec_id=exec_id, width=width, height=height
        )
        await self.call(self.tasks.resize_pty(request))

    async def close_stdin(self, container_id: str, exec_id: str = "") -> None:
        request = tasks_pb.CloseIoRequest(container_id=container_id, exec_id=exec_id, stdin=True)
        await self.call(self.tasks.close_io(request))

    async def update_task(
        self, container_id: str, resources: protobuf.Any | None, annotations: Mapping[str, str] | None = None
    ) -> None:
        request = tasks_pb.UpdateTaskRequest(
            container_id=container_id, resources=resources, annotations=dict(annotations or {})
        )
        await self.call(self.tasks.update(request))
