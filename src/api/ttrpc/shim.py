"""io.corral.shim-client.v1.ttrpc — containerd.task.v2.Task over ttrpc, for the v2 runtime.

The runtime owns shims as processes; this is how it speaks to them: the generated task v2
messages on corral's ttrpc client, replies as the runtime contract's records, errors as the
kernel's kinds (an Unknown status keeps its message, as "OCI runtime create failed: …").
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

import betterproto2

from corral.api.ttrpc.client import TTRPCClient
from corral.api.types.containerd import types as ctypes
from corral.api.types.google import protobuf
from corral.kernel import CorralError, InitContext, OnFirstUse, Registration
from corral.plugins import types
from corral.plugins.metadata import AnyValue
from corral.plugins.runtimes import Exit, ProcessInfo, ProcessState, TaskIO, TaskStatus
from corral.plugins.runtimes.shim import Connected, ShimCreate

if TYPE_CHECKING:
    from corral.api.types.containerd.task import v2 as pb
else:
    pb = OnFirstUse("corral.api.types.containerd.task.v2")  # the Task API's messages: at the first task

SERVICE = "containerd.task.v2.Task"

M = TypeVar("M", bound=betterproto2.Message)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def unknown_error(message: str) -> CorralError:
    """An Unknown status (code 2) as an error whose message is exactly what the shim said."""
    err = CorralError.__new__(CorralError)
    Exception.__init__(err, message)
    err.detail = message
    return err


def timestamp(value: datetime | None) -> datetime:
    """A reply's time: absent and Go's zero time both mean "not yet"; kept aware, in UTC."""
    if value is None:
        return _EPOCH
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def exited_at(value: datetime | None) -> datetime | None:
    if value is None or value.year <= 1:
        return None
    return timestamp(value)


def any_value(value: protobuf.Any | None) -> AnyValue | None:
    return None if value is None else AnyValue(value.type_url, value.value)


def to_any(value: AnyValue | None) -> protobuf.Any | None:
    return None if value is None else protobuf.Any(type_url=value.type_url, value=value.value)


class TTRPCShimConnection:
    """One shim's Task service on a ttrpc connection."""

    def __init__(self, client: TTRPCClient) -> None:
        self._client = client

    @property
    def closed(self) -> bool:
        return self._client.closed

    async def wait_closed(self) -> None:
        await self._client.wait_closed()

    async def _call(self, method: str, request: betterproto2.Message, reply: type[M]) -> M:
        try:
            return await self._client.call_message(SERVICE, method, request, reply)
        except RuntimeError as exc:
            raise unknown_error(str(exc)) from None

    async def _empty(self, method: str, request: betterproto2.Message) -> None:
        await self._call(method, request, protobuf.Empty)

    async def create(self, request: ShimCreate) -> int:
        message = pb.CreateTaskRequest(
            id=request.id,
            bundle=request.bundle,
            rootfs=[
                ctypes.Mount(type=m.type, source=m.source, target=m.target, options=list(m.options))
                for m in request.rootfs
            ],
            terminal=request.io.terminal,
            stdin=request.io.stdin,
            stdout=request.io.stdout,
            stderr=request.io.stderr,
            checkpoint=request.checkpoint,
            options=to_any(request.options),
        )
        return (await self._call("Create", message, pb.CreateTaskResponse)).pid

    async def start(self, task_id: str, exec_id: str = "") -> int:
        reply = await self._call("Start", pb.StartRequest(id=task_id, exec_id=exec_id), pb.StartResponse)
        return reply.pid

    async def delete(self, task_id: str, exec_id: str = "") -> Exit:
        reply = await self._call("Delete", pb.DeleteRequest(id=task_id, exec_id=exec_id), pb.DeleteResponse)
        return Exit(reply.pid, reply.exit_status, timestamp(reply.exited_at))

    async def state(self, task_id: str, exec_id: str = "") -> ProcessState:
        r = await self._call("State", pb.StateRequest(id=task_id, exec_id=exec_id), pb.StateResponse)
        return ProcessState(
            id=r.exec_id or r.id or task_id,
            pid=r.pid,
            status=TaskStatus(int(r.status)),
            io=TaskIO(r.stdin, r.stdout, r.stderr, r.terminal),
            exit_status=r.exit_status,
            exited_at=exited_at(r.exited_at),
            bundle=r.bundle,
            exec_id=r.exec_id,
        )

    async def pids(self, task_id: str) -> list[ProcessInfo]:
        reply = await self._call("Pids", pb.PidsRequest(id=task_id), pb.PidsResponse)
        return [ProcessInfo(p.pid, any_value(p.info)) for p in reply.processes]

    async def pause(self, task_id: str) -> None:
        await self._empty("Pause", pb.PauseRequest(id=task_id))

    async def resume(self, task_id: str) -> None:
        await self._empty("Resume", pb.ResumeRequest(id=task_id))

    async def checkpoint(self, task_id: str, path: str, options: AnyValue | None) -> None:
        await self._empty(
            "Checkpoint", pb.CheckpointTaskRequest(id=task_id, path=path, options=to_any(options))
        )

    async def kill(self, task_id: str, exec_id: str, signal: int, all: bool) -> None:
        await self._empty("Kill", pb.KillRequest(id=task_id, exec_id=exec_id, signal=signal, all=all))

    async def exec(self, task_id: str, exec_id: str, io: TaskIO, spec: AnyValue | None) -> None:
        message = pb.ExecProcessRequest(
            id=task_id,
            exec_id=exec_id,
            terminal=io.terminal,
            stdin=io.stdin,
            stdout=io.stdout,
            stderr=io.stderr,
            spec=to_any(spec),
        )
        await self._empty("Exec", message)

    async def resize_pty(self, task_id: str, exec_id: str, width: int, height: int) -> None:
        message = pb.ResizePtyRequest(id=task_id, exec_id=exec_id, width=width, height=height)
        await self._empty("ResizePty", message)

    async def close_io(self, task_id: str, exec_id: str, stdin: bool) -> None:
        await self._empty("CloseIO", pb.CloseIoRequest(id=task_id, exec_id=exec_id, stdin=stdin))

    async def update(self, task_id: str, resources: AnyValue | None, annotations: Mapping[str, str]) -> None:
        message = pb.UpdateTaskRequest(id=task_id, resources=to_any(resources), annotations=dict(annotations))
        await self._empty("Update", message)

    async def wait(self, task_id: str, exec_id: str = "") -> Exit:
        reply = await self._call("Wait", pb.WaitRequest(id=task_id, exec_id=exec_id), pb.WaitResponse)
        return Exit(0, reply.exit_status, timestamp(reply.exited_at))

    async def stats(self, task_id: str) -> AnyValue:
        reply = await self._call("Stats", pb.StatsRequest(id=task_id), pb.StatsResponse)
        return any_value(reply.stats) or AnyValue("")

    async def connect(self, task_id: str) -> Connected:
        reply = await self._call("Connect", pb.ConnectRequest(id=task_id), pb.ConnectResponse)
        return Connected(reply.shim_pid, reply.task_pid, reply.version)

    async def shutdown(self, task_id: str, now: bool = False) -> None:
        await self._empty("Shutdown", pb.ShutdownRequest(id=task_id, now=now))


class TTRPCShimProtocol:
    """The ``ttrpc`` shim protocol (bootstrap version 2): connections and the binary's messages."""

    protocol = "ttrpc"

    @asynccontextmanager
    async def connect(self, address: str) -> AsyncIterator[TTRPCShimConnection]:
        path = address.removeprefix("unix://")
        async with TTRPCClient.connect(path, connect_timeout=5.0) as client:
            yield TTRPCShimConnection(client)

    def encode_options(self, options: AnyValue) -> bytes:
        return bytes(protobuf.Any(type_url=options.type_url, value=options.value))

    def decode_delete(self, data: bytes) -> Exit:
        reply = pb.DeleteResponse.parse(data)
        return Exit(reply.pid, reply.exit_status, timestamp(reply.exited_at))


async def init(ic: InitContext) -> TTRPCShimProtocol:
    return TTRPCShimProtocol()


registration = Registration(
    type=types.SHIM_CLIENT,
    id="ttrpc",
    init=init,
    description="containerd.task.v2.Task over ttrpc: how the v2 runtime speaks to its shims",
)
