"""The pod sandbox controller: a pause container per pod, run by the shim runtime, in a network
namespace this controller makes and attaches through CNI.

After containerd 2.0's ``internal/cri/server/podsandbox`` (Create records, Start runs, Stop kills
the pause process and releases the network, Shutdown removes the rest), with the pod network that
containerd's CRI sets up folded in. Each sandbox's state is a JSON file in the plugin's state
directory, written before each step that makes something, so a daemon killed at any point is
followed by a start that finds its ready pods again and undoes a start that did not finish.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import signal
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import structlog

from corral.kernel import (
    AlreadyExists,
    CorralError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from corral.plugins.cni import CNI, PortMapping, create_netns, netns_name, pod_args, remove_netns
from corral.plugins.core import GC_EXPIRE, bound_lease, namespace, namespace_required, validate_identifier
from corral.plugins.core.private import fsync_dir
from corral.plugins.images import oci
from corral.plugins.metadata import (
    AnyValue,
    Container,
    ContainerRuntime,
    ContainerStore,
    ImageStore,
    LeaseStore,
    Metadata,
    NamespacedContent,
    NamespacedSnapshots,
    Sandbox,
    SandboxRuntime,
)
from corral.plugins.runtimes import SPEC_TYPE_URL, CreateOpts, PlatformRuntime, Task, TaskStatus
from corral.plugins.sandbox import (
    STATE_NOT_READY,
    STATE_READY,
    STATE_UNKNOWN,
    ControllerInstance,
    ControllerStatus,
    CreateOptions,
    ExitStatus,
    Metric,
    PodSandboxSpec,
    note_pod_network,
)
from corral.plugins.transfer import Transferrer

log = structlog.get_logger("corral.podsandbox")

_Undo = tuple[str, Callable[[], Awaitable[None]]]
"""A step that undoes one made part of a sandbox, by name (for the log when it fails)."""

UNKNOWN_EXIT = 255
KIND_LABEL = "io.cri-containerd.kind"
ROOTFS_LEASE = timedelta(minutes=10)
STOP_TIMEOUT = 30.0
"""How long a stop waits for the killed pause process's exit before deleting its task itself."""
SHM_SIZE = 64 * 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """How the controller runs pods: the pause image, snapshotter, runtime and its directories."""

    sandbox_image: str
    build_sandbox_image: bool
    busybox: str
    snapshotter: str
    runtime_type: str
    root: Path
    state: Path
    netns_dir: Path


@dataclass
class _Pod:
    namespace: str
    id: str
    pod: PodSandboxSpec
    runtime: SandboxRuntime
    netns_path: str = ""
    owns_netns: bool = False
    owns_network: bool = False
    phase: str = "created"
    """created → starting → ready → stopped; what a restart finds decides what it undoes."""
    pid: int = 0
    created_at: datetime | None = None
    exited_at: datetime | None = None
    exit_status: int = 0
    ips: list[str] = field(default_factory=list)
    container_created: bool = False
    exited: anyio.Event = field(default_factory=anyio.Event)
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    save_lock: anyio.Lock = field(default_factory=anyio.Lock)
    task: Task | None = None

    @property
    def state(self) -> str:
        if self.phase == "ready":
            return STATE_READY
        if self.phase in ("stopped",):
            return STATE_NOT_READY
        return STATE_UNKNOWN

    def to_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "id": self.id,
            "pod": self.pod.to_json(),
            "runtime": {
                "name": self.runtime.name,
                "options": None
                if self.runtime.options is None
                else [self.runtime.options.type_url, self.runtime.options.value.hex()],
            },
            "netns_path": self.netns_path,
            "owns_netns": self.owns_netns,
            "owns_network": self.owns_network,
            "phase": self.phase,
            "pid": self.pid,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "exited_at": self.exited_at.isoformat() if self.exited_at else None,
            "exit_status": self.exit_status,
            "ips": self.ips,
            "container_created": self.container_created,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> _Pod:
        options = obj["runtime"].get("options")
        pod = cls(
            namespace=obj["namespace"],
            id=obj["id"],
            pod=PodSandboxSpec.from_json(obj["pod"]),
            runtime=SandboxRuntime(
                obj["runtime"]["name"],
                None if options is None else AnyValue(options[0], bytes.fromhex(options[1])),
            ),
            netns_path=obj.get("netns_path", ""),
            owns_netns=obj.get("owns_netns", False),
            owns_network=obj.get("owns_network", False),
            phase=obj.get("phase", "created"),
            pid=obj.get("pid", 0),
            exit_status=obj.get("exit_status", 0),
            ips=list(obj.get("ips", [])),
            container_created=obj.get("container_created", False),
        )
        for key in ("created_at", "exited_at"):
            if obj.get(key):
                setattr(pod, key, datetime.fromisoformat(obj[key]))
        return pod


class PodSandboxController:
    """``io.containerd.podsandbox.controller.v1.podsandbox``: implements ``Controller``."""

    def __init__(
        self,
        settings: Settings,
        *,
        metadata: Metadata,
        runtime: PlatformRuntime,
        cni: CNI,
        transferrer: Transferrer | None,
    ) -> None:
        self.settings = settings
        self.cni = cni
        self._metadata = metadata
        self._runtime = runtime
        self._transferrer = transferrer
        self._pods: dict[tuple[str, str], _Pod] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._image_lock = anyio.Lock()

    # -- lifetime ---------------------------------------------------------------------------------
    def serve_in(self, tasks: anyio.abc.TaskGroup) -> None:
        """Run each pod's background work (its exit watcher, its network's teardown) in ``tasks``."""
        self._tg = tasks

    def _group(self) -> anyio.abc.TaskGroup:
        if self._tg is None:
            raise Unavailable("the pod sandbox controller is not serving")
        return self._tg

    # -- files ------------------------------------------------------------------------------------
    def _state_file(self, p: _Pod) -> Path:
        return self.settings.state / "sandboxes" / p.namespace / f"{p.id}.json"

    def _root_dir(self, p: _Pod) -> Path:
        return self.settings.root / "sandboxes" / p.namespace / p.id

    def _pinned_userns(self, p: _Pod) -> Path:
        return self.settings.state / "pinned-namespaces" / p.namespace / p.id / "user"

    def _shm_dir(self, p: _Pod) -> Path:
        return self.settings.state / "shm" / p.namespace / p.id

    async def _save(self, p: _Pod) -> None:
        """Write the pod's state durably, in a worker thread (the fsyncs would stall every other
        pod's calls); one pod's saves are kept in order by its own lock."""
        async with p.save_lock:
            state = json.dumps(p.to_json())
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_write_durably, self._state_file(p), state)

    def _pod(self, sandbox_id: str, missing: str) -> _Pod:
        found = self._pods.get((namespace_required(), sandbox_id))
        if found is None:
            raise NotFound(missing)
        return found

    # -- Controller -------------------------------------------------------------------------------
    async def create(self, sandbox: Sandbox, options: CreateOptions) -> None:
        ns = namespace_required()
        try:
            validate_identifier(sandbox.id)
        except InvalidArgument as exc:
            raise InvalidArgument(f"invalid sandbox id: {exc.detail}") from None
        pod = options.pod
        if pod is None:
            raise InvalidArgument(
                f'failed to get sandbox "{sandbox.id}" metadata: no PodSandboxConfig in options'
            )
        key = (ns, sandbox.id)
        if key in self._pods:
            raise AlreadyExists(f'sandbox "{sandbox.id}"')
        p = _Pod(ns, sandbox.id, pod, sandbox.runtime, netns_path=options.netns_path)
        self._pods[key] = p
        try:
            await self._save(p)
        except BaseException:
            self._pods.pop(key, None)
            raise
        log.info("sandbox_created", namespace=ns, id=sandbox.id, pod=pod.name)

    async def start(self, sandbox_id: str) -> ControllerInstance:
        p = self._pod(sandbox_id, f'unable to find pod sandbox with id "{sandbox_id}"')
        async with p.lock:
            if p.phase != "created":
                raise FailedPrecondition(f'sandbox "{sandbox_id}" is {p.state}, it can be started only once')
            undo: list[_Undo] = []
            try:
                return await self._start(p, undo)
            except BaseException as exc:
                with anyio.CancelScope(shield=True):
                    await self._rollback(p, undo, exc)
                raise

    async def _rollback(self, p: _Pod, undo: list[_Undo], exc: BaseException) -> None:
        for what, step in reversed(undo):
            try:
                await step()
            except Exception as err:
                log.warning("sandbox_rollback_failed", id=p.id, step=what, error=str(err))
        p.phase, p.pid, p.ips = "created", 0, []
        if p.owns_netns:
            p.netns_path = ""
        p.owns_netns = p.owns_network = p.container_created = False
        p.task = None
        with contextlib.suppress(OSError):
            await self._save(p)
        log.warning("sandbox_start_failed", namespace=p.namespace, id=p.id, error=str(exc))

    async def _start(self, p: _Pod, undo: list[_Undo]) -> ControllerInstance:
        # A pod's first start imports what starting one takes (the pause image's builder, the
        # OCI spec generator, user namespaces), not the daemon's start-up.
        from corral.plugins.runtimes import spec as specs
        from corral.plugins.sandbox.podsandbox._pause import ensure_pause_image
        from corral.plugins.sandbox.podsandbox._spec import copy_host_hosts, pause_spec, resolv_conf
        from corral.plugins.sandbox.userns import (
            netns_within_userns,
            pin_user_namespace,
            pod_idmap,
            prepare_remapped,
        )

        s = self.settings
        pod = p.pod
        idmap = pod_idmap(pod)
        p.phase = "starting"
        await self._save(p)
        undo.append(("dirs", lambda: self._remove_dirs(p)))
        root = self._root_dir(p)
        root.mkdir(parents=True, exist_ok=True, mode=0o755)
        (root / "hostname").write_text((pod.hostname or os.uname().nodename) + "\n")
        (root / "resolv.conf").write_text(resolv_conf(pod))
        copy_host_hosts(root / "hosts")
        shm = self._shm_dir(p)
        if pod.ipc_mode != "NODE":
            shm.mkdir(parents=True, exist_ok=True, mode=0o700)
            _mount_shm(shm)
            undo.append(("shm", lambda: _unmount(shm)))

        # The pod's network: its own namespace unless it shares the node's, attached through CNI
        # when this controller made it (a caller that brings one also brings its network).
        if not pod.host_network and not p.netns_path:
            path = s.netns_dir / netns_name()
            p.netns_path, p.owns_netns = str(path), True
            await self._save(p)  # before it exists: a restart then knows to remove it
            try:
                if idmap is None:
                    await create_netns(s.netns_dir, path.name)
                else:
                    await netns_within_userns(path, idmap)
            except CorralError as exc:
                # The inner error's own text, without its kind's words: containerd's wraps a plain error.
                note_pod_network(
                    exc, f'failed to create network namespace for sandbox "{p.id}": {exc.detail}'
                )
                raise
            undo.append(("netns", lambda: _remove_netns(path)))
        userns_path = ""
        if idmap is not None and p.netns_path:
            pinned = self._pinned_userns(p)
            pin_user_namespace(Path(p.netns_path), pinned)
            undo.append(("userns", lambda: _unpin(pinned)))
            userns_path = str(pinned)
        if p.owns_netns:
            p.owns_network = True
            await self._save(p)
            undo.append(("network", lambda: self.cni.teardown(p.id, p.netns_path)))
            ports = [
                PortMapping(m.host_port, m.container_port, m.protocol.lower(), m.host_ip)
                for m in pod.port_mappings
                if m.host_port > 0
            ]
            try:
                result = await self.cni.setup(
                    p.id,
                    p.netns_path,
                    args=pod_args(pod.namespace, pod.name, pod.uid, p.id),
                    port_mappings=ports,
                )
            except CorralError as exc:
                note_pod_network(exc, f'failed to setup network for sandbox "{p.id}": {exc.detail}')
                raise
            p.ips = [ip.ip for ip in result.ips]

        # The pause container: image, snapshot, record, task.
        ns = p.namespace
        images = self._metadata.view(ImageStore)
        content = self._metadata.view(NamespacedContent)
        snapshots = self._metadata.view(NamespacedSnapshots)
        async with self._image_lock:
            image = await ensure_pause_image(
                s.sandbox_image,
                images=images,
                content=content,
                snapshots=snapshots,
                snapshotter=s.snapshotter,
                transferrer=self._transferrer,
                build=s.build_sandbox_image,
                busybox=s.busybox,
            )
        snapshotter = snapshots.get(s.snapshotter)
        spec = pause_spec(
            ns, p.id, pod, image.config, image.name,
            netns_path=p.netns_path, shm_path=shm, resolv_path=root / "resolv.conf",
            idmap=idmap, userns_path=userns_path,
        )  # fmt: skip
        labels = {**pod.labels, KIND_LABEL: "sandbox"}
        leases = self._metadata.view(LeaseStore)
        expiry = (datetime.now(UTC) + ROOTFS_LEASE).strftime("%Y-%m-%dT%H:%M:%SZ")
        lease = await leases.create(labels={GC_EXPIRE: expiry})
        try:
            with bound_lease(lease.id):
                p.container_created = True
                await self._save(p)
                if idmap is None:
                    mounts = await snapshotter.prepare(p.id, image.chain_id)
                else:
                    mounts = await prepare_remapped(
                        snapshotter,
                        s.snapshotter,
                        p.id,
                        image.chain_id,
                        idmap,
                        chown=s.snapshotter != "overlayfs",
                    )
                undo.append(("snapshot", lambda: _ignore_missing(snapshotter.remove(p.id))))
                container = Container(
                    id=p.id,
                    runtime=ContainerRuntime(p.runtime.name or s.runtime_type, p.runtime.options),
                    labels=labels,
                    image=image.name,
                    spec=AnyValue(SPEC_TYPE_URL, specs.spec_json(spec)),
                    snapshotter=s.snapshotter,
                    snapshot_key=p.id,
                    sandbox=p.id,
                )
                created = await self._metadata.view(ContainerStore).create(container)
                undo.append(
                    ("container", lambda: _ignore_missing(self._metadata.view(ContainerStore).delete(p.id)))
                )
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(CorralError):
                await leases.delete(lease.id)
        task = await self._runtime.create(
            p.id,
            CreateOpts(
                spec=container.spec,
                rootfs=tuple(mounts),
                runtime=container.runtime.name,
                runtime_options=container.runtime.options,
            ),
        )
        undo.append(("task", lambda: self._delete_task(p)))
        p.task = task
        await task.start()
        state = await task.state()
        p.pid = state.pid
        p.created_at = created.created_at
        p.phase = "ready"
        p.exited = anyio.Event()
        await self._save(p)
        self._group().start_soon(self._watch, p, task)
        log.info("sandbox_started", namespace=ns, id=p.id, pid=p.pid, ips=p.ips)
        return ControllerInstance(
            sandbox_id=p.id,
            pid=p.pid,
            created_at=created.created_at or datetime.now(UTC),
            labels={"oci_runtime_type": container.runtime.name, **labels},
            spec=container.spec,
        )

    async def _watch(self, p: _Pod, task: Task) -> None:
        """Wait for the pause process to exit, then delete its task (handleSandboxTaskExit)."""
        with namespace(p.namespace):
            try:
                exit = await task.wait()
                status, exited_at = exit.status, exit.timestamp
            except Exception as exc:
                log.warning("sandbox_wait_failed", id=p.id, error=str(exc))
                status, exited_at = UNKNOWN_EXIT, datetime.now(UTC)
            with anyio.CancelScope(shield=True):
                await self._delete_task(p)
                if p.task is task:
                    p.task = None
                    p.exit_status, p.exited_at = status, exited_at
                    if p.phase == "ready":
                        p.phase = "stopped"
                    with contextlib.suppress(OSError):
                        await self._save(p)
                    p.exited.set()
                    log.info("sandbox_exited", namespace=p.namespace, id=p.id, exit_status=status)

    async def _delete_task(self, p: _Pod) -> None:
        try:
            task = await self._runtime.get(p.id)
        except NotFound:
            return
        with contextlib.suppress(CorralError):
            await task.kill(signal.SIGKILL, all=True)
        with contextlib.suppress(NotFound):
            await self._runtime.delete(p.id)

    async def platform(self, sandbox_id: str) -> oci.Platform:
        return oci.Platform.host().normalized()

    async def stop(self, sandbox_id: str, grace: float | None = None) -> None:
        p = self._pod(sandbox_id, "")  # containerd answers a bare ErrNotFound
        async with p.lock:
            await self._stop(p)

    async def _stop(self, p: _Pod) -> None:
        task = p.task
        if task is not None:
            with contextlib.suppress(NotFound):
                await task.kill(signal.SIGKILL)
            with anyio.move_on_after(STOP_TIMEOUT):
                await p.exited.wait()
        if not p.exited.is_set() and p.phase == "ready":
            # No watcher saw the exit (a shim gone silent): delete the task here.
            p.task = None
            await self._delete_task(p)
            p.phase, p.exit_status, p.exited_at = "stopped", UNKNOWN_EXIT, datetime.now(UTC)
            p.exited.set()
        await self._release(p)
        await self._save(p)
        log.info("sandbox_stopped", namespace=p.namespace, id=p.id)

    async def _release(self, p: _Pod) -> None:
        """The network, the namespace and /dev/shm go at stop (the container and its snapshot at
        shutdown), as containerd's CRI releases them on StopPodSandbox."""
        if p.owns_network:
            await self.cni.teardown(p.id, p.netns_path)
            p.owns_network = False
            p.ips = []
            await self._save(p)
        if p.owns_netns and p.netns_path:
            remove_netns(Path(p.netns_path))
            p.owns_netns = False
            p.netns_path = ""
            await self._save(p)
        await _unmount(self._shm_dir(p))
        await _unpin(self._pinned_userns(p))

    async def wait(self, sandbox_id: str) -> ExitStatus:
        p = self._pod(sandbox_id, f'failed to get exit channel. "{sandbox_id}"')
        await p.exited.wait()
        return ExitStatus(p.exit_status, p.exited_at or datetime.now(UTC))

    async def status(self, sandbox_id: str, verbose: bool = False) -> ControllerStatus:
        p = self._pod(sandbox_id, f'unable to find sandbox "{sandbox_id}"')
        info = {
            "ip": p.ips[0] if p.ips else "",
            "additional_ips": ",".join(p.ips[1:]),
            "netns_path": p.netns_path if p.owns_netns or p.netns_path else "",
        }
        # The files a pod's containers bind (containerd's CRI binds its sandbox's resolv.conf and shm).
        resolv, shm = self._root_dir(p) / "resolv.conf", self._shm_dir(p)
        if p.phase == "ready":
            from corral.plugins.sandbox.podsandbox._spec import pod_files

            info.update(pod_files(self._root_dir(p)))
            info["resolv_path"] = str(resolv) if resolv.exists() else ""
            info["shm_path"] = str(shm) if os.path.ismount(shm) else ""
        if verbose:
            info["info"] = json.dumps(
                {
                    "pid": p.pid,
                    "processStatus": await self._task_status(p),
                    "netNamespacePath": p.netns_path,
                    "netNamespaceClosed": not (p.netns_path and os.path.exists(p.netns_path)),
                    "image": self.settings.sandbox_image,
                    "snapshotter": self.settings.snapshotter,
                    "snapshotKey": p.id,
                    "runtimeType": p.runtime.name or self.settings.runtime_type,
                    "config": p.pod.to_json(),
                    "ips": p.ips,
                }
            )
        return ControllerStatus(
            sandbox_id=p.id,
            pid=p.pid,
            state=p.state,
            info=info,
            created_at=p.created_at,
            exited_at=p.exited_at,
        )

    async def _task_status(self, p: _Pod) -> str:
        if p.task is None:
            return "deleted"
        try:
            state = await p.task.state()
        except NotFound:
            return "unknown"
        return {TaskStatus.RUNNING: "running", TaskStatus.CREATED: "created", TaskStatus.STOPPED: "stopped",
                TaskStatus.PAUSED: "paused", TaskStatus.PAUSING: "pausing"}.get(state.status, "unknown")  # fmt: skip

    async def shutdown(self, sandbox_id: str) -> None:
        p = self._pods.get((namespace_required(), sandbox_id))
        if p is None:
            return  # as containerd: nothing to do for an unknown sandbox
        async with p.lock:
            await self._stop(p)
            await self._remove_container(p)
            await self._remove_dirs(p)
            with contextlib.suppress(FileNotFoundError):
                self._state_file(p).unlink()
            self._pods.pop((p.namespace, p.id), None)
        log.info("sandbox_shutdown", namespace=p.namespace, id=p.id)

    async def _remove_container(self, p: _Pod) -> None:
        await self._delete_task(p)
        with contextlib.suppress(NotFound):
            await self._metadata.view(ContainerStore).delete(p.id)
        with contextlib.suppress(NotFound):
            await self._metadata.view(NamespacedSnapshots).get(self.settings.snapshotter).remove(p.id)
        p.container_created = False

    async def _remove_dirs(self, p: _Pod) -> None:
        await _unmount(self._shm_dir(p))
        pinned = self._pinned_userns(p)
        await _unpin(pinned)
        for directory in (pinned.parent, pinned.parent.parent):
            with contextlib.suppress(OSError):
                directory.rmdir()
        for path in (self._shm_dir(p), self._root_dir(p)):
            with contextlib.suppress(FileNotFoundError):
                if path.is_dir():
                    for child in path.iterdir():
                        child.unlink()
                    path.rmdir()

    async def metrics(self, sandbox_id: str) -> Metric:
        p = self._pod(sandbox_id, f'unable to find sandbox "{sandbox_id}"')
        if p.task is None:
            raise NotFound(f'sandbox "{sandbox_id}" has no running pause process')
        data = await p.task.stats()
        return Metric(p.id, datetime.now(UTC), data)

    async def update(self, sandbox_id: str, sandbox: Sandbox, fields: Sequence[str] = ()) -> None:
        self._pod(sandbox_id, f'unable to find sandbox "{sandbox_id}"')

    # -- restart ----------------------------------------------------------------------------------
    async def recover(self) -> None:
        """Find the pods a previous daemon ran: ready ones whose pause process still runs are
        ready again; a start that did not finish is undone; then every network namespace and
        CNI attachment no pod owns is removed."""
        base = self.settings.state / "sandboxes"
        for path in sorted(base.glob("*/*.json")) if base.is_dir() else []:
            try:
                p = _Pod.from_json(json.loads(path.read_text()))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("sandbox_state_unreadable", path=str(path), error=str(exc))
                continue
            self._pods[(p.namespace, p.id)] = p
            with namespace(p.namespace):
                try:
                    await self._recover(p)
                except Exception as exc:
                    log.warning("sandbox_recover_failed", namespace=p.namespace, id=p.id, error=str(exc))
        keep_netns = {Path(p.netns_path).name for p in self._pods.values() if p.owns_netns and p.netns_path}
        if self.settings.netns_dir.is_dir():
            for leftover in self.settings.netns_dir.iterdir():
                if leftover.name not in keep_netns:
                    with contextlib.suppress(CorralError, OSError):
                        remove_netns(leftover)
                        log.info("netns_leftover_removed", path=str(leftover))
        await self.cni.cleanup({p.id for p in self._pods.values() if p.owns_network})

    async def _recover(self, p: _Pod) -> None:
        if p.phase == "starting":
            await self._remove_container(p)
            await self._rollback_network(p)
            await self._remove_dirs(p)
            p.phase, p.pid, p.ips = "created", 0, []
            await self._save(p)
            log.info("sandbox_start_undone", namespace=p.namespace, id=p.id)
            return
        if p.phase != "ready":
            if p.phase == "stopped":
                p.exited.set()
            return
        try:
            task = await self._runtime.get(p.id)
            state = await task.state()
        except NotFound:
            task, state = None, None
        if task is not None and state is not None and state.status == TaskStatus.RUNNING:
            p.task, p.pid = task, state.pid
            self._group().start_soon(self._watch, p, task)
            log.info("sandbox_recovered", namespace=p.namespace, id=p.id, pid=p.pid)
            return
        await self._delete_task(p)
        p.phase, p.exit_status, p.exited_at = "stopped", UNKNOWN_EXIT, datetime.now(UTC)
        p.exited.set()
        await self._save(p)
        log.info("sandbox_recovered_not_ready", namespace=p.namespace, id=p.id)

    async def _rollback_network(self, p: _Pod) -> None:
        if p.owns_network:
            with contextlib.suppress(CorralError):
                await self.cni.teardown(p.id, p.netns_path)
        if p.owns_netns and p.netns_path:
            remove_netns(Path(p.netns_path))
            p.netns_path = ""
        p.owns_network = p.owns_netns = False


def _write_durably(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


async def _unpin(pinned: Path) -> None:
    from corral.plugins.sandbox.userns import unpin

    unpin(pinned)


async def _remove_netns(path: Path) -> None:
    remove_netns(path)


async def _ignore_missing(call: Awaitable[None]) -> None:
    with contextlib.suppress(NotFound):
        await call


_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _mount_shm(path: Path) -> None:
    """The pod's /dev/shm: a tmpfs (nosuid, nodev, noexec, mode 1777, SHM_SIZE), by the mount
    system call (a process per mount would cost more than the mount)."""
    data = f"mode=1777,size={SHM_SIZE}".encode()
    flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    if _libc().mount(b"shm", str(path).encode(), b"tmpfs", flags, data) != 0:
        raise FailedPrecondition(f"mount shm on {path}: {os.strerror(ctypes.get_errno())}")


async def _unmount(path: Path) -> None:
    """Unmount ``path`` if something is mounted there."""
    if not path.exists() or not os.path.ismount(path):
        return
    if _libc().umount2(str(path).encode(), 0) != 0:
        raise FailedPrecondition(f"umount {path}: {os.strerror(ctypes.get_errno())}")
