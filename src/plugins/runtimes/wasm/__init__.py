"""An in-process WebAssembly runtime: WASI tasks run by wasmtime inside corrald, no process per task.

A task's container is an OCI bundle like any other (``config.json`` and the rootfs mounted from its
snapshot); its process's first argument is the module, a path inside the rootfs (``/app.wasm``, as
runwasi takes it), the rest are its arguments, and ``process.env`` its environment. The rootfs is
preopened as ``/``; stdio goes to the FIFOs the client made. The task lifecycle, the states, the
errors and the events (``/tasks/create``, ``/tasks/start``, ``/tasks/exit``, ``/tasks/delete``) are
a shim's, so the tasks service drives a wasm task as it drives a runc one.

What differs from a shim, and why: there is no process, so ``pid`` is the worker thread's id once
started (0 before); a task lives in corrald's memory, so a restart of corrald ends its wasm tasks
(the runtime that made their bundles calls ``cleanup`` for each, which unmounts what a crash left);
there is no terminal, no exec, no pause.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any

import anyio
import structlog

from corral.kernel import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from corral.plugins.core.mount import Mount, mount_all, unmount
from corral.plugins.events.types import (
    Publisher,
    TaskCreate,
    TaskDelete,
    TaskExit,
    TaskIO,
    TaskMount,
    TaskStart,
)

log = structlog.get_logger("corral.runtimes.wasm")

RUNTIME_NAME = "io.containerd.wasmtime.v1"
"""The runtime name clients ask for (``ctr run --runtime io.containerd.wasmtime.v1``), runwasi's."""


class Status(Enum):
    """containerd's task states (the values of ``containerd.v1.types.Status``)."""

    CREATED = 1
    RUNNING = 2
    STOPPED = 3


@dataclass
class WasmTask:
    """One task's record: what State answers, and what Wait waits for."""

    namespace: str
    id: str
    bundle: Path
    io: TaskIO
    status: Status = Status.CREATED
    pid: int = 0
    exit_status: int = 0
    exited_at: datetime | None = None
    root: Path | None = None
    """The mounted rootfs, while mounted."""
    exited: anyio.Event = field(default_factory=anyio.Event)
    instance: Any = None


@dataclass(frozen=True)
class Exited:
    pid: int
    exit_status: int
    exited_at: datetime | None


Spawner = Callable[[Callable[[], Coroutine[Any, Any, None]], str], None]


class WasmRuntime:
    """The plugin's instance: every wasm task of every namespace, and the module cache they share."""

    runtime_names: tuple[str, ...] = (RUNTIME_NAME,)

    def __init__(self, spawn: Spawner, publisher: Publisher | None, cache: Any) -> None:
        self._spawn = spawn
        self._publisher = publisher
        self._cache = cache
        self._tasks: dict[tuple[str, str], WasmTask] = {}
        self._limiter = anyio.CapacityLimiter(4096)

    # -- what the tasks service calls, in the Task API's order --------------------------------
    async def create(
        self,
        namespace: str,
        task_id: str,
        bundle: Path,
        rootfs: Sequence[Mount],
        io: TaskIO,
    ) -> WasmTask:
        """Mount the rootfs into the bundle, check the module, and make the task (not yet started)."""
        from corral.plugins.runtimes.wasm._engine import Instance, Invocation

        if (namespace, task_id) in self._tasks:
            raise AlreadyExists(f"task {task_id}")
        if io.terminal:
            raise InvalidArgument("a wasm task has no terminal: run it without -t/--tty")
        spec = _read_spec(bundle)
        process = spec.get("process") or {}
        args = [str(a) for a in process.get("args") or []]
        if not args:
            raise InvalidArgument(f"{bundle}/config.json: process.args is empty: nothing to run")
        root = bundle / str((spec.get("root") or {}).get("path") or "rootfs")
        task = WasmTask(namespace, task_id, bundle, io)
        self._tasks[(namespace, task_id)] = task
        try:
            if rootfs:
                root.mkdir(exist_ok=True)
                await mount_all(rootfs, root)
                task.root = root
            module = _inside(root, args[0])
            if not module.is_file():
                raise FailedPrecondition(f"{args[0]}: no such module in the container's rootfs")
            env = [tuple(e.split("=", 1)) if "=" in e else (e, "") for e in process.get("env") or []]
            invocation = Invocation(module, root, args, env, io.stdin, io.stdout, io.stderr)
            # compiling (once per module file) here makes a bad module fail Create, not Start
            if self._cache.cached(module) is None:
                await anyio.to_thread.run_sync(self._cache.artefact, module, limiter=self._limiter)
            task.instance = Instance(self._cache, invocation)
        except BaseException:
            self._tasks.pop((namespace, task_id), None)
            with anyio.CancelScope(shield=True):
                await self._unmount(task)
            raise
        await self._publish(
            TaskCreate(
                container_id=task_id,
                bundle=str(bundle),
                rootfs=tuple(TaskMount(m.type, m.source, m.target, tuple(m.options)) for m in rootfs),
                io=io,
                pid=0,
            ),
            namespace,
        )
        return task

    async def start(self, namespace: str, task_id: str) -> int:
        task = self.get(namespace, task_id)
        if task.status is not Status.CREATED:
            raise FailedPrecondition(f"task {task_id}: cannot start a {task.status.name.lower()} task")
        task.status = Status.RUNNING
        started, announced = anyio.Event(), anyio.Event()

        async def run() -> None:
            from corral.plugins.runtimes.wasm._engine import write_diagnostic

            def body() -> tuple[int, str]:
                task.pid = threading.get_native_id()
                anyio.from_thread.run_sync(started.set)
                result: tuple[int, str] = task.instance.run()
                return result

            try:
                status, diagnostic = await anyio.to_thread.run_sync(
                    body, limiter=self._limiter, abandon_on_cancel=True
                )
            except BaseException:
                status, diagnostic = 255, ""
                if not task.exited.is_set():
                    with anyio.CancelScope(shield=True):
                        await self._exit(task, status)
                raise
            write_diagnostic(task.io.stderr, diagnostic)
            await announced.wait()  # /tasks/exit never before /tasks/start, as a shim orders them
            await self._exit(task, status)

        self._spawn(run, f"wasm:{namespace}/{task_id}")
        try:
            await started.wait()
            await self._publish(TaskStart(container_id=task_id, pid=task.pid), namespace)
        finally:
            announced.set()
        return task.pid

    async def wait(self, namespace: str, task_id: str) -> Exited:
        task = self.get(namespace, task_id)
        await task.exited.wait()
        return Exited(task.pid, task.exit_status, task.exited_at)

    async def kill(self, namespace: str, task_id: str, signum: int) -> None:
        from corral.plugins.runtimes.wasm._engine import SUPPORTED_SIGNALS

        task = self.get(namespace, task_id)
        if signum not in SUPPORTED_SIGNALS:
            names = ", ".join(sorted(signal.Signals(s).name for s in SUPPORTED_SIGNALS))
            raise InvalidArgument(f"signal {signum}: a wasm task can only be ended ({names})")
        if task.status is Status.STOPPED:
            raise NotFound("process already finished")
        task.instance.kill(signum)
        if task.status is Status.CREATED:
            await self._exit(task, 128 + signum)

    async def delete(self, namespace: str, task_id: str) -> Exited:
        task = self.get(namespace, task_id)
        if task.status is Status.RUNNING:
            raise FailedPrecondition(f"task {task_id}: cannot delete a running task")
        await self._unmount(task)
        self._tasks.pop((namespace, task_id), None)
        exited_at = task.exited_at or datetime.now(UTC)
        await self._publish(
            TaskDelete(
                container_id=task_id,
                pid=task.pid,
                exit_status=task.exit_status,
                exited_at=exited_at,
            ),
            namespace,
        )
        return Exited(task.pid, task.exit_status, exited_at)

    def get(self, namespace: str, task_id: str) -> WasmTask:
        task = self._tasks.get((namespace, task_id))
        if task is None:
            raise NotFound(f"task {task_id}")
        return task

    def list(self, namespace: str) -> list[WasmTask]:
        return [t for (ns, _), t in self._tasks.items() if ns == namespace]

    async def aclose(self) -> None:
        """corrald is stopping: every running guest is ended (they live in its memory)."""
        for task in self._tasks.values():
            if task.status is Status.RUNNING:
                task.instance.kill(signal.SIGKILL)
        for task in list(self._tasks.values()):
            with contextlib.suppress(Exception):
                await self._unmount(task)

    # -- internals -----------------------------------------------------------------------------
    async def _exit(self, task: WasmTask, status: int) -> None:
        if task.exited.is_set():
            return
        task.status = Status.STOPPED
        task.exit_status = status
        task.exited_at = datetime.now(UTC)
        task.exited.set()
        await self._publish(
            TaskExit(
                container_id=task.id,
                id=task.id,
                pid=task.pid,
                exit_status=status,
                exited_at=task.exited_at,
            ),
            task.namespace,
        )

    async def _unmount(self, task: WasmTask) -> None:
        if task.root is not None:
            await unmount(task.root)
            task.root = None

    async def cleanup(self, namespace: str, task_id: str, bundle: Path) -> None:
        """A bundle whose task corrald no longer runs (after a restart): unmount what is mounted."""
        if (namespace, task_id) in self._tasks:
            raise FailedPrecondition(f"task {task_id} is still known: delete it instead")
        root = bundle / str((_read_spec(bundle).get("root") or {}).get("path") or "rootfs")
        if os.path.ismount(root):
            await unmount(root)

    async def _publish(self, event: Any, namespace: str) -> None:
        if self._publisher is not None:
            await self._publisher.publish(event, namespace=namespace)


def _read_spec(bundle: Path) -> Mapping[str, Any]:
    try:
        spec = json.loads((bundle / "config.json").read_text())
    except FileNotFoundError:
        raise InvalidArgument(f"{bundle}: no config.json in the bundle") from None
    except (OSError, ValueError) as e:
        raise InvalidArgument(f"{bundle}/config.json: {e}") from None
    if not isinstance(spec, dict):
        raise InvalidArgument(f"{bundle}/config.json: not a JSON object")
    return spec


def _inside(root: Path, path: str) -> Path:
    """``path`` as seen from inside ``root``: symlinks resolved within it, never above it."""
    current = root
    parts = [p for p in Path("/" + path).parts[1:] if p not in ("", ".")]
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            current = current.parent if current != root else root
            continue
        candidate = current / part
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                raise InvalidArgument(f"{path}: too many levels of symbolic links")
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = root
            parts = [p for p in Path(target).parts if p not in ("", ".", "/")] + parts
            continue
        current = candidate
    return current


__all__ = ["RUNTIME_NAME", "Exited", "Status", "WasmRuntime", "WasmTask"]
