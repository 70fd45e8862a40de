"""An in-process WebAssembly runtime: WASI tasks run by wasmtime inside corrald, no process per task.

A container whose runtime is ``io.containerd.wasmtime.v1`` (runwasi's name) is run here rather
than by a shim. Its spec's process names the module as its first argument, a path inside the
rootfs (``/app.wasm``, as runwasi takes it); the rest are its arguments and ``process.env`` its
environment. The rootfs (mounted from the container's snapshot into the task's bundle) is preopened
as ``/``; stdio goes to the FIFOs the client made. States, errors and events (``/tasks/create``,
``/tasks/start``, ``/tasks/exit``, ``/tasks/delete``) are a shim's, so the tasks service, ``ctr``
and CRI drive a wasm task as they drive a runc one: this is a ``PlatformRuntime``.

What differs from a shim, and why: there is no process, so ``pid`` is the worker thread's id once
started (0 before); a task lives in corrald's memory, so a restart of corrald ends its wasm tasks
(at start, bundles left by a crash are unmounted and removed); there is no terminal, no exec, no
pause, no cgroup metrics.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import signal
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import structlog

from corral.kernel import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unimplemented
from corral.plugins.core import namespace_required, validate_identifier
from corral.plugins.core.mount import mount_all, unmount
from corral.plugins.core.trees import remove_tree
from corral.plugins.events.types import (
    Publisher,
    TaskCreate,
    TaskDelete,
    TaskExit,
    TaskStart,
)
from corral.plugins.metadata import AnyValue
from corral.plugins.runtimes import (
    CreateOpts,
    ExecOpts,
    Exit,
    Process,
    ProcessInfo,
    ProcessState,
    TaskIO,
    TaskStatus,
)

log = structlog.get_logger("corral.runtimes.wasm")

RUNTIME_NAME = "io.containerd.wasmtime.v1"
"""The runtime name clients ask for (``ctr run --runtime io.containerd.wasmtime.v1``), runwasi's."""

Spawner = Callable[[Callable[[], Coroutine[Any, Any, None]], str], None]


class WasmTask:
    """One container's guest; a ``Task`` of the runtime contract."""

    def __init__(self, runtime: WasmRuntime, namespace: str, task_id: str, bundle: Path, io: TaskIO) -> None:
        self._runtime = runtime
        self._namespace = namespace
        self._id = task_id
        self.bundle = bundle
        self.io = io
        self.status = TaskStatus.CREATED
        self.pid = 0
        self.exit_status = 0
        self.exited_at: datetime | None = None
        self.root: Path | None = None
        """The mounted rootfs, while mounted."""
        self.exited = anyio.Event()
        self.instance: Any = None

    # -- identity ------------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self._id

    @property
    def namespace(self) -> str:
        return self._namespace

    @property
    def runtime(self) -> str:
        return RUNTIME_NAME

    # -- Process -------------------------------------------------------------------------------
    async def state(self) -> ProcessState:
        return ProcessState(
            id=self._id,
            pid=self.pid,
            status=self.status,
            io=self.io,
            exit_status=self.exit_status,
            exited_at=self.exited_at,
            bundle=str(self.bundle),
        )

    async def start(self) -> None:
        await self._runtime._start(self)

    async def kill(self, signal: int, all: bool = False) -> None:
        await self._runtime._kill(self, signal)

    async def wait(self) -> Exit:
        await self.exited.wait()
        return Exit(self.pid, self.exit_status, self.exited_at or datetime.now(UTC))

    async def delete(self) -> Exit:
        return await self._runtime._delete(self)

    async def resize_pty(self, width: int, height: int) -> None:
        raise FailedPrecondition("a wasm task has no terminal")

    async def close_io(self) -> None:
        """The guest's stdin is its own open of the FIFO: it ends when the client closes its end."""

    # -- Task ----------------------------------------------------------------------------------
    async def pids(self) -> builtins.list[ProcessInfo]:
        return [ProcessInfo(self.pid)] if self.status is TaskStatus.RUNNING else []

    async def pause(self) -> None:
        raise Unimplemented("a wasm task cannot be paused")

    async def resume(self) -> None:
        raise Unimplemented("a wasm task cannot be resumed")

    async def checkpoint(self, path: str, options: AnyValue | None = None) -> None:
        raise Unimplemented("a wasm task cannot be checkpointed")

    async def exec(self, exec_id: str, opts: ExecOpts) -> Process:
        raise Unimplemented("a wasm task runs one module: exec is not supported")

    async def process(self, exec_id: str) -> Process:
        raise NotFound(f"process {exec_id}")

    async def stats(self) -> AnyValue:
        raise Unimplemented("a wasm task has no cgroup to measure")

    async def update(self, resources: AnyValue | None, annotations: Mapping[str, str]) -> None:
        raise Unimplemented("a wasm task has no resources to update")


class WasmRuntime:
    """The plugin's instance: every wasm task of every namespace, and the module cache they share.

    ``state`` holds one bundle per task (``<namespace>/<id>``: ``config.json`` and ``rootfs``)."""

    runtime_names: tuple[str, ...] = (RUNTIME_NAME,)

    def __init__(self, state: Path, spawn: Spawner, publisher: Publisher | None, cache: Any) -> None:
        self._state = state
        self._spawn = spawn
        self._publisher = publisher
        self._cache = cache
        self._tasks: dict[tuple[str, str], WasmTask] = {}
        self._limiter = anyio.CapacityLimiter(4096)

    # -- PlatformRuntime -------------------------------------------------------------------------
    async def create(self, task_id: str, opts: CreateOpts) -> WasmTask:
        """Write the bundle, mount the rootfs, compile (or find) the module: a bad one fails here."""
        namespace = namespace_required()
        validate_identifier(task_id)
        if (namespace, task_id) in self._tasks:
            raise AlreadyExists(f"task {task_id}")
        if opts.io.terminal:
            raise InvalidArgument("a wasm task has no terminal: run it without -t/--tty")
        from corral.plugins.runtimes.wasm._engine import stdio_file

        for uri in (opts.io.stdout, opts.io.stderr):
            try:
                stdio_file(uri)
            except ValueError as err:
                raise InvalidArgument(str(err)) from None
        if opts.io.stdin.startswith("file://"):
            raise InvalidArgument(f"{opts.io.stdin}: stdin cannot be a file:// log")
        spec = _parse_spec(opts.spec)
        process = spec.get("process") or {}
        args = [str(a) for a in process.get("args") or []]
        if not args:
            raise InvalidArgument("the container's spec has no process.args: no module to run")
        bundle = self._state / namespace / task_id
        task = WasmTask(self, namespace, task_id, bundle, opts.io)
        self._tasks[(namespace, task_id)] = task
        try:
            await anyio.to_thread.run_sync(_write_bundle, bundle, opts.spec)
            root = bundle / "rootfs"
            if opts.rootfs:
                await mount_all(opts.rootfs, root)
                task.root = root
            else:
                root = _spec_root(bundle, spec)
            module = _inside(root, args[0])
            if not module.is_file():
                raise FailedPrecondition(f"{args[0]}: no such module in the container's rootfs")
            if self._cache.cached(module) is None:
                await anyio.to_thread.run_sync(self._cache.artefact, module, limiter=self._limiter)
            from corral.plugins.runtimes.wasm._engine import Instance, Invocation

            env = [tuple(e.split("=", 1)) if "=" in e else (e, "") for e in process.get("env") or []]
            io = opts.io
            task.instance = Instance(
                self._cache, Invocation(module, root, args, env, io.stdin, io.stdout, io.stderr)
            )
        except BaseException:
            self._tasks.pop((namespace, task_id), None)
            with anyio.CancelScope(shield=True):
                await self._remove_bundle(task)
            raise
        await self._publish(
            TaskCreate(
                container_id=task_id,
                bundle=str(bundle),
                rootfs=tuple(opts.rootfs),
                io=opts.io,
                pid=0,
            ),
            namespace,
        )
        return task

    async def get(self, task_id: str) -> WasmTask:
        task = self._tasks.get((namespace_required(), task_id))
        if task is None:
            raise NotFound(f"task {task_id}")
        return task

    async def tasks(self, all_namespaces: bool = False) -> Sequence[WasmTask]:
        if all_namespaces:
            return list(self._tasks.values())
        namespace = namespace_required()
        return [t for (ns, _), t in self._tasks.items() if ns == namespace]

    async def delete(self, task_id: str) -> Exit:
        return await self._delete(await self.get(task_id))

    async def _delete(self, task: WasmTask) -> Exit:
        task_id = task.id
        if task.status is TaskStatus.RUNNING:
            raise FailedPrecondition(f"task {task_id}: cannot delete a running task")
        await self._remove_bundle(task)
        self._tasks.pop((task.namespace, task_id), None)
        exited_at = task.exited_at or datetime.now(UTC)
        await self._publish(
            TaskDelete(container_id=task_id, pid=task.pid, exit_status=task.exit_status, exited_at=exited_at),
            task.namespace,
        )
        return Exit(task.pid, task.exit_status, exited_at)

    # -- lifetime --------------------------------------------------------------------------------
    async def recover(self) -> None:
        """At start: wasm tasks did not survive the last daemon; unmount and remove their bundles."""
        for namespace_dir in sorted(self._state.iterdir()) if self._state.is_dir() else []:
            for bundle in sorted(namespace_dir.iterdir()):
                root = bundle / "rootfs"
                with contextlib.suppress(OSError):
                    while os.path.ismount(root):
                        await unmount(root)
                log.info("wasm_task_not_recovered", namespace=namespace_dir.name, id=bundle.name)
                try:
                    await anyio.to_thread.run_sync(_delete_bundle, bundle)
                except OSError as exc:  # its rootfs still mounted: left whole, for the next start
                    log.warning("bundle_delete_failed", path=str(bundle), error=str(exc))

    async def aclose(self) -> None:
        """corrald is stopping: every running guest is ended (they live in its memory)."""
        for task in self._tasks.values():
            if task.status is TaskStatus.RUNNING and task.instance is not None:
                task.instance.kill(signal.SIGKILL)
        for task in list(self._tasks.values()):
            with contextlib.suppress(Exception):
                await self._remove_bundle(task)

    # -- the lifecycle ---------------------------------------------------------------------------
    async def _start(self, task: WasmTask) -> None:
        if task.status is not TaskStatus.CREATED:
            raise FailedPrecondition(f"task {task.id}: cannot start a {task.status.name.lower()} task")
        task.status = TaskStatus.RUNNING
        started, announced = anyio.Event(), anyio.Event()

        def body() -> tuple[int, str]:
            task.pid = threading.get_native_id()
            anyio.from_thread.run_sync(started.set)
            result: tuple[int, str] = task.instance.run()
            return result

        async def run() -> None:
            from corral.plugins.runtimes.wasm._engine import write_diagnostic

            try:
                status, diagnostic = await anyio.to_thread.run_sync(
                    body, limiter=self._limiter, abandon_on_cancel=True
                )
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self._exit(task, 255)
                raise
            write_diagnostic(task.io.stderr, diagnostic)
            await announced.wait()  # /tasks/exit never before /tasks/start, as a shim orders them
            await self._exit(task, status)

        self._spawn(run, f"wasm:{task.namespace}/{task.id}")
        try:
            await started.wait()
            await self._publish(TaskStart(container_id=task.id, pid=task.pid), task.namespace)
        finally:
            announced.set()

    async def _kill(self, task: WasmTask, signum: int) -> None:
        from corral.plugins.runtimes.wasm._engine import SUPPORTED_SIGNALS

        if signum not in SUPPORTED_SIGNALS:
            names = ", ".join(sorted(signal.Signals(s).name for s in SUPPORTED_SIGNALS))
            raise InvalidArgument(f"signal {signum}: a wasm task can only be ended ({names})")
        if task.status is TaskStatus.STOPPED:
            raise NotFound("process already finished")
        task.instance.kill(signum)
        if task.status is TaskStatus.CREATED:
            await self._exit(task, 128 + signum)

    async def _exit(self, task: WasmTask, status: int) -> None:
        if task.exited.is_set():
            return
        task.status = TaskStatus.STOPPED
        task.exit_status = status
        task.exited_at = datetime.now(UTC)
        task.exited.set()
        await self._publish(
            TaskExit(
                container_id=task.id, id=task.id, pid=task.pid, exit_status=status, exited_at=task.exited_at
            ),
            task.namespace,
        )

    async def _remove_bundle(self, task: WasmTask) -> None:
        if task.root is not None:
            await unmount(task.root)
            task.root = None
        await anyio.to_thread.run_sync(_delete_bundle, task.bundle)

    async def _publish(self, event: Any, namespace: str) -> None:
        if self._publisher is not None:
            await self._publisher.publish(event, namespace=namespace)


def _parse_spec(spec: AnyValue | None) -> Mapping[str, Any]:
    if spec is None or not spec.value:
        raise InvalidArgument("the container has no spec")
    try:
        parsed = json.loads(spec.value)
    except ValueError as e:
        raise InvalidArgument(f"container spec is not JSON: {e}") from None
    if not isinstance(parsed, dict):
        raise InvalidArgument("container spec is not a JSON object")
    return parsed


def _write_bundle(bundle: Path, spec: AnyValue | None) -> None:
    bundle.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
    _delete_bundle(bundle)  # left by a task that failed half-way, or a crash
    bundle.mkdir(mode=0o700)
    (bundle / "rootfs").mkdir(mode=0o711)
    (bundle / "config.json").write_bytes(spec.value if spec is not None else b"{}")


def _spec_root(bundle: Path, spec: Mapping[str, Any]) -> Path:
    """Without rootfs mounts, the spec's ``root.path`` (absolute, or relative to the bundle)."""
    path = str((spec.get("root") or {}).get("path") or "rootfs")
    return Path(path) if path.startswith("/") else bundle / path


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


__all__ = ["RUNTIME_NAME", "WasmRuntime", "WasmTask"]


def _delete_bundle(bundle: Path) -> None:
    """Remove a task's bundle, whatever the depth of what it holds. Its rootfs is where the
    snapshot was mounted: it must be unmounted and empty first (``rmdir``), so the walk never
    enters a snapshot that is still mounted there; then the bundle goes, or stays whole."""
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(bundle / "rootfs")
    remove_tree(bundle)
