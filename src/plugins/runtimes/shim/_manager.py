"""Tasks run by shims: start one per task, keep its connection, recover it after a restart.

After containerd's core/runtime/v2 (task_manager.go, shim_manager.go, shim.go, shim_load.go).
Every shim's connection is held by a task in the manager's task group; when the connection
ends — a Delete's Shutdown, or the shim dying — the ``delete`` binary cleans up after it and
the bundle is removed. A shim that died under a live task leaves that task STOPPED with the
exit the cleanup reported (or 255), its TaskExit published, until the task is deleted.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import structlog

from corral.kernel import (
    AlreadyExists,
    CorralError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    Unimplemented,
)
from corral.plugins.core import namespace_required, validate_identifier
from corral.plugins.core.idmap import resolve_idmapped
from corral.plugins.events.types import Publisher, TaskDelete, TaskExit
from corral.plugins.metadata import AnyValue
from corral.plugins.runtimes import (
    CreateOpts,
    ExecOpts,
    Exit,
    ProcessInfo,
    ProcessState,
    TaskIO,
    TaskStatus,
)
from corral.plugins.runtimes.shim import ShimConnection, ShimCreate, ShimProtocol
from corral.plugins.runtimes.shim._binary import ShimBinary, read_bootstrap, resolve_runtime
from corral.plugins.runtimes.shim._bundle import (
    BINARY_FILE,
    IDMAPPED_DIR,
    LOG_FIFO,
    Bundle,
    load_bundles,
    new_bundle,
    remove_orphan_work,
)

log = structlog.get_logger("corral.runtime.v2")

STATE_TIMEOUT = 2.0
SHUTDOWN_TIMEOUT = 3.0
LOAD_TIMEOUT = 5.0
CLOSE_TIMEOUT = 5.0
RUNTIME_FILE = "runtime-name"
DEAD_SHIM_EXIT = 255


@dataclass(frozen=True)
class ShimSettings:
    """What every shim is started with."""

    root: Path
    state: Path
    grpc_address: str
    ttrpc_address: str
    debug: bool = False
    env: Mapping[str, str] | None = None


class _Shim:
    """One task's shim: its bundle, binary, connection, and what became of it."""

    def __init__(self, bundle: Bundle, binary: ShimBinary, runtime: str) -> None:
        self.bundle = bundle
        self.binary = binary
        self.runtime = runtime
        self.conn: ShimConnection | None = None
        self.task_pid = 0
        self.deleting = False
        self.gone = anyio.Event()
        """Set once the connection has ended and the cleanup after it is done."""
        self.dead_exit: Exit | None = None
        """Set when the shim went away under a task that was not being deleted."""
        self.close_scope = anyio.CancelScope()
        self.address = ""
        self.io = TaskIO()
        """The init process's stdio, kept for a dead shim's STOPPED state (clients clean up by it)."""

    @property
    def id(self) -> str:
        return self.bundle.id

    def connection(self) -> ShimConnection:
        if self.conn is None or self.conn.closed:
            raise Unavailable("ttrpc: closed")
        return self.conn


def prefixed(exc: CorralError, prefix: str) -> CorralError:
    """The same kind of error with its message (as sent) after ``prefix``, as Go's %w wrapping."""
    err = type(exc).__new__(type(exc))
    message = prefix + str(exc)
    Exception.__init__(err, message)
    err.detail = message
    return err


def _remove_stale_socket(address: str) -> None:
    """A shim that died leaves its socket; nothing answers on it any more (start would reuse it)."""
    path = address.removeprefix("unix://")
    if not path.startswith("/"):
        return  # an abstract socket goes with its process
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except FileNotFoundError:
        return
    except OSError:
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
    finally:
        probe.close()


async def _state(shim: _Shim, exec_id: str) -> ProcessState:
    if shim.dead_exit is not None:
        if exec_id:
            raise NotFound(f"process {exec_id} not found")
        exit = shim.dead_exit
        return ProcessState(
            shim.id,
            exit.pid,
            TaskStatus.STOPPED,
            shim.io,
            exit.status,
            exit.timestamp,
            str(shim.bundle.path),
        )
    try:
        with anyio.fail_after(STATE_TIMEOUT):
            return await shim.connection().state(shim.id, exec_id)
    except TimeoutError:
        raise DeadlineExceeded(f"state of {shim.id}: context deadline exceeded") from None
    except Unavailable:
        if shim.dead_exit is not None and not exec_id:
            return await _state(shim, exec_id)
        # containerd: a closed connection means the task is gone.
        raise NotFound(f"task {shim.id}") from None


class ShimProcess:
    """A process exec'd into a shim's task."""

    def __init__(self, shim: _Shim, exec_id: str) -> None:
        self._shim = shim
        self._exec_id = exec_id

    @property
    def id(self) -> str:
        return self._exec_id or self._shim.id

    async def state(self) -> ProcessState:
        return await _state(self._shim, self._exec_id)

    async def start(self) -> None:
        await self._shim.connection().start(self._shim.id, self._exec_id)

    async def kill(self, signal: int, all: bool = False) -> None:
        if self._shim.dead_exit is not None:
            raise NotFound(f"process {self.id} not found")
        await self._shim.connection().kill(self._shim.id, self._exec_id, signal, all)

    async def wait(self) -> Exit:
        shim = self._shim
        if shim.dead_exit is not None:
            return shim.dead_exit
        try:
            return await shim.connection().wait(shim.id, self._exec_id)
        except Unavailable:
            # The shim went away mid-wait: the exit is what the cleanup after it reported.
            await shim.gone.wait()
            if shim.dead_exit is not None:
                return shim.dead_exit
            raise

    async def delete(self) -> Exit:
        return await self._shim.connection().delete(self._shim.id, self._exec_id)

    async def resize_pty(self, width: int, height: int) -> None:
        await self._shim.connection().resize_pty(self._shim.id, self._exec_id, width, height)

    async def close_io(self) -> None:
        await self._shim.connection().close_io(self._shim.id, self._exec_id, True)


class ShimTask(ShimProcess):
    """A task whose init process (and everything exec'd into it) a shim runs."""

    def __init__(self, shim: _Shim) -> None:
        super().__init__(shim, "")

    @property
    def namespace(self) -> str:
        return self._shim.bundle.namespace

    @property
    def runtime(self) -> str:
        return self._shim.runtime

    @property
    def bundle(self) -> str:
        return str(self._shim.bundle.path)

    @property
    def pid(self) -> int:
        return self._shim.task_pid

    async def wait(self) -> Exit:
        exit = await super().wait()
        # The shim's Wait carries no pid; containerd fills in the task's.
        return Exit(exit.pid or self._shim.task_pid, exit.status, exit.timestamp)

    async def delete(self) -> Exit:
        raise FailedPrecondition("a task is deleted through its runtime")

    async def pids(self) -> list[ProcessInfo]:
        return await self._shim.connection().pids(self._shim.id)

    async def pause(self) -> None:
        await self._shim.connection().pause(self._shim.id)

    async def resume(self) -> None:
        await self._shim.connection().resume(self._shim.id)

    async def checkpoint(self, path: str, options: AnyValue | None = None) -> None:
        await self._shim.connection().checkpoint(self._shim.id, path, options)

    async def exec(self, exec_id: str, opts: ExecOpts) -> ShimProcess:
        try:
            validate_identifier(exec_id)
        except InvalidArgument as exc:
            raise InvalidArgument(f"invalid exec id {exec_id}: {exc.detail}") from None
        await self._shim.connection().exec(self._shim.id, exec_id, opts.io, opts.spec)
        return ShimProcess(self._shim, exec_id)

    async def process(self, exec_id: str) -> ShimProcess:
        process = ShimProcess(self._shim, exec_id)
        await process.state()
        return process

    async def stats(self) -> AnyValue:
        return await self._shim.connection().stats(self._shim.id)

    async def update(self, resources: AnyValue | None, annotations: Mapping[str, str]) -> None:
        await self._shim.connection().update(self._shim.id, resources, annotations)


class TaskManager:
    """``io.containerd.runtime.v2.task``: tasks by namespace and id, each run by its own shim."""

    def __init__(
        self, settings: ShimSettings, protocols: Mapping[str, ShimProtocol], publisher: Publisher | None
    ) -> None:
        self._settings = settings
        self._protocols = dict(protocols)
        self._publisher = publisher
        self._shims: dict[tuple[str, str], _Shim] = {}
        self._reserved: set[tuple[str, str]] = set()
        self._tg: anyio.abc.TaskGroup | None = None

    # -- lifetime ---------------------------------------------------------------------------------
    def serve_in(self, tasks: anyio.abc.TaskGroup) -> None:
        """Own every shim connection in ``tasks`` until the daemon stops (shims keep running
        without it)."""
        self._tg = tasks

    def _group(self) -> anyio.abc.TaskGroup:
        if self._tg is None:
            raise Unavailable("the runtime is not serving")
        return self._tg

    # -- PlatformRuntime --------------------------------------------------------------------------
    async def create(self, task_id: str, opts: CreateOpts) -> ShimTask:
        namespace = namespace_required()
        key = (namespace, task_id)
        if key in self._shims or key in self._reserved:
            raise AlreadyExists(f"task {task_id}")
        self._reserved.add(key)
        try:
            return await self._create(namespace, task_id, opts)
        finally:
            self._reserved.discard(key)

    async def _create(self, namespace: str, task_id: str, opts: CreateOpts) -> ShimTask:
        settings = self._settings
        path = resolve_runtime(opts.runtime)
        try:
            bundle = new_bundle(settings.root, settings.state, namespace, task_id, opts.spec)
        except FileExistsError:
            raise AlreadyExists(f"bundle for task {task_id}") from None
        options = opts.task_options if opts.task_options and opts.task_options.value else opts.runtime_options
        shim = _Shim(bundle, self._binary(path, bundle), opts.runtime)
        shim.io = opts.io
        bundle.write(RUNTIME_FILE, opts.runtime)
        started = False
        try:
            await self._group().start(self._read_log, shim)
            try:
                protocol_name, address, _version = await shim.binary.start(
                    self._encode_options(options) if options else b""
                )
                started = True
                await self._group().start(self._supervise, shim, self._protocol(protocol_name), address)
            except CorralError as exc:
                raise prefixed(exc, "failed to start shim: ") from None
            conn = shim.connection()
            try:
                # A shim of containerd 1.6 knows no uidmap=/gidmap= options: resolved here.
                async with resolve_idmapped(opts.rootfs, bundle.path / IDMAPPED_DIR) as rootfs:
                    await conn.create(
                        ShimCreate(task_id, str(bundle.path), rootfs, opts.io, opts.checkpoint, options)
                    )
            except CorralError as exc:
                raise prefixed(exc, "failed to create shim task: ") from None
            shim.task_pid = (await conn.connect(task_id)).task_pid
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._discard(shim, started=started)
            raise
        self._shims[(namespace, task_id)] = shim
        log.info("task_created", namespace=namespace, id=task_id, runtime=opts.runtime, pid=shim.task_pid)
        return ShimTask(shim)

    async def get(self, task_id: str) -> ShimTask:
        shim = self._shims.get((namespace_required(), task_id))
        if shim is None:
            raise NotFound(f"task {task_id}")
        return ShimTask(shim)

    async def tasks(self, all_namespaces: bool = False) -> Sequence[ShimTask]:
        namespace = None if all_namespaces else namespace_required()
        return [
            ShimTask(shim)
            for (ns, _), shim in sorted(self._shims.items())
            if namespace is None or ns == namespace
        ]

    async def delete(self, task_id: str) -> Exit:
        key = (namespace_required(), task_id)
        shim = self._shims.get(key)
        if shim is None:
            raise NotFound(f"task {task_id}")
        dead = shim.dead_exit
        if dead is not None:
            self._shims.pop(key, None)
            await self._publish(
                TaskDelete(task_id, dead.pid, dead.status, dead.timestamp), shim.bundle.namespace
            )
            return dead
        exit: Exit | None = None
        try:
            exit = await shim.connection().delete(task_id)
        except Unavailable:
            # The shim went away: once the cleanup after it is done the task is a dead one.
            await shim.gone.wait()
            return await self.delete(task_id)
        except NotFound:
            pass  # the shim has no such task any more; it is stopped and removed all the same
        shim.deleting = True
        self._shims.pop(key, None)
        with anyio.CancelScope(shield=True):
            await self._shutdown(shim)
        if exit is None:
            raise NotFound(f"task {task_id}")
        return exit

    # -- shims ------------------------------------------------------------------------------------
    def _binary(self, path: str, bundle: Bundle) -> ShimBinary:
        s = self._settings
        return ShimBinary(path, bundle, s.grpc_address, s.ttrpc_address, s.debug, s.env)

    def _protocol(self, name: str) -> ShimProtocol:
        protocol = self._protocols.get(name.lower())
        if protocol is None:
            raise Unimplemented(f"unexpected protocol: {name!r}")
        return protocol

    def _encode_options(self, options: AnyValue) -> bytes:
        return next(iter(self._protocols.values())).encode_options(options)

    async def _supervise(
        self,
        shim: _Shim,
        protocol: ShimProtocol,
        address: str,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Hold the shim's connection; when it ends (not when the daemon stops), clean up after it."""
        connected = False
        shim.address = address
        try:
            with shim.close_scope:
                async with protocol.connect(address) as conn:
                    shim.conn = conn
                    connected = True
                    task_status.started()
                    await conn.wait_closed()
        except Unavailable:
            if not connected:
                raise
        with anyio.CancelScope(shield=True):
            await self._after_close(shim)

    async def _after_close(self, shim: _Shim) -> None:
        """containerd's cleanupAfterDeadShim: run ``delete``, remove the bundle, report the exit."""
        exit: Exit | None = None
        try:
            out = await shim.binary.delete()
            exit = next(iter(self._protocols.values())).decode_delete(out) if out else None
        except Exception as exc:
            log.warning("shim_cleanup_failed", namespace=shim.bundle.namespace, id=shim.id, error=str(exc))
        _remove_stale_socket(shim.address)
        try:
            # Unmounting and removing a tree is blocking work: off the loop, as every other call waits.
            await anyio.to_thread.run_sync(shim.bundle.delete)
        except OSError as exc:
            log.warning("bundle_delete_failed", path=str(shim.bundle.path), error=str(exc))
        key = (shim.bundle.namespace, shim.id)
        if not shim.deleting and self._shims.get(key) is shim:
            if exit is None or (exit.pid == 0 and exit.status == 0):
                exit = Exit(shim.task_pid, DEAD_SHIM_EXIT, datetime.now(UTC))
            shim.dead_exit = Exit(exit.pid or shim.task_pid, exit.status, exit.timestamp)
            log.warning(
                "shim_disconnected",
                namespace=shim.bundle.namespace,
                id=shim.id,
                exit_status=shim.dead_exit.status,
            )
            await self._publish(
                TaskExit(
                    shim.id, shim.id, shim.dead_exit.pid, shim.dead_exit.status, shim.dead_exit.timestamp
                ),
                shim.bundle.namespace,
            )
        shim.gone.set()

    async def _shutdown(self, shim: _Shim) -> None:
        """Shutdown, then wait for the shim to hang up (closing first if it does not)."""
        conn = shim.conn
        # A shim that still runs another task (the containers of a pod share their sandbox's
        # shim) stays up after Shutdown: close this connection at once, as containerd does.
        shared = bool(shim.address) and any(s.address == shim.address for s in self._shims.values())
        if conn is not None and not conn.closed:
            with contextlib.suppress(Exception), anyio.move_on_after(SHUTDOWN_TIMEOUT):
                await conn.shutdown(shim.id)
            if not shared:
                with anyio.move_on_after(CLOSE_TIMEOUT):
                    await conn.wait_closed()
        shim.close_scope.cancel()
        await shim.gone.wait()

    async def _discard(self, shim: _Shim, *, started: bool) -> None:
        """Undo a create that failed part way: the shim (if it started) and the bundle."""
        shim.deleting = True
        if shim.conn is not None:
            with contextlib.suppress(Exception), anyio.move_on_after(SHUTDOWN_TIMEOUT):
                await shim.conn.delete(shim.id)
            await self._shutdown(shim)
            return
        if started:
            with contextlib.suppress(Exception):
                await shim.binary.delete()
        shim.close_scope.cancel()
        with contextlib.suppress(OSError):
            await anyio.to_thread.run_sync(shim.bundle.delete)
        shim.gone.set()

    async def _read_log(
        self, shim: _Shim, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Drain the shim's log FIFO (opened before the shim starts: it blocks until a reader)."""
        path = shim.bundle.path / LOG_FIFO
        try:
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        except OSError as exc:
            log.warning("shim_log_unavailable", path=str(path), error=str(exc))
            task_status.started()
            return
        task_status.started()
        pending = b""
        try:
            with anyio.CancelScope() as scope:
                shim_gone = shim.gone

                async def stop_when_gone() -> None:
                    await shim_gone.wait()
                    scope.cancel()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(stop_when_gone)
                    while True:
                        await anyio.wait_readable(fd)
                        try:
                            chunk = os.read(fd, 65536)
                        except BlockingIOError:
                            continue
                        if not chunk:
                            break
                        pending += chunk
                        *lines, pending = pending.split(b"\n")
                        for line in lines:
                            if line.strip():
                                log.debug("shim_log", id=shim.id, line=line.decode(errors="replace"))
                    tg.cancel_scope.cancel()
        finally:
            os.close(fd)

    async def _publish(self, event: Any, namespace: str) -> None:
        if self._publisher is None:
            return
        try:
            await self._publisher.publish(event, namespace=namespace)
        except Exception as exc:
            log.warning("event_publish_failed", topic=event.TOPIC, error=str(exc))

    # -- restart recovery -------------------------------------------------------------------------
    async def load_existing(self) -> None:
        """Reconnect the shims of the bundles a previous daemon left; clean up after dead ones."""
        settings = self._settings
        bundles = load_bundles(settings.state)
        async with anyio.create_task_group() as tg:
            for bundle in bundles:
                tg.start_soon(self._load, bundle)
        remove_orphan_work(settings.root, set(self._shims))

    async def _load(self, bundle: Bundle) -> None:
        fields = {"namespace": bundle.namespace, "id": bundle.id}
        if not any(bundle.path.iterdir()):
            await anyio.to_thread.run_sync(bundle.delete)
            return
        path = (bundle.read(BINARY_FILE) or "").strip()
        runtime = (bundle.read(RUNTIME_FILE) or "").strip()
        bootstrap = read_bootstrap(bundle)
        if not path and runtime:
            # A daemon killed while ``start`` ran: the shim may be up (it wrote ``address``).
            with contextlib.suppress(CorralError):
                path = resolve_runtime(runtime)
        if not path:
            log.warning("shim_load_failed", reason="no shim binary recorded", **fields)
            with contextlib.suppress(OSError):
                bundle.delete()
            return
        shim = _Shim(bundle, self._binary(path, bundle), runtime or path)
        shim.deleting = True  # until it is registered: a failed load is cleaned up without events
        try:
            if bootstrap is None:
                raise Unavailable("no address recorded")
            protocol_name, address, _ = bootstrap
            await self._group().start(self._read_log, shim)
            with anyio.fail_after(LOAD_TIMEOUT):
                await self._group().start(self._supervise, shim, self._protocol(protocol_name), address)
                conn = shim.connection()
                shim.task_pid = (await conn.connect(bundle.id)).task_pid
                try:
                    try:
                        await conn.pids(bundle.id)
                    except NotFound:
                        raise
                    except CorralError as exc:
                        # A task created from a checkpoint has no runc container to list until
                        # it starts; as containerd, a shim that answers is a shim to keep.
                        log.info("task_pids_unavailable", error=str(exc), **fields)
                    shim.io = (await conn.state(bundle.id)).io
                except NotFound:
                    log.info("shim_leaked", **fields)
                    await self._shutdown(shim)
                    return
        except (Exception, TimeoutError) as exc:
            log.warning("shim_load_failed", error=str(exc), **fields)
            with anyio.CancelScope(shield=True):
                if shim.conn is not None:
                    await self._shutdown(shim)
                else:
                    await self._after_close(shim)
            return
        shim.deleting = False
        self._shims[(bundle.namespace, bundle.id)] = shim
        log.info("task_loaded", pid=shim.task_pid, **fields)
