"""CRI containers in pods: CreateContainer, StartContainer, StopContainer, RemoveContainer,
ContainerStatus, ListContainers and ExecSync, after containerd 2.0's
``internal/cri/server/container_*.go``.

A container is a record in the metadata store (labels ``io.cri-containerd.kind=container``), a
snapshot of its image, and a status file here (state, pid, times, exit code, reason) so a restarted
daemon finds it again. It joins its pod's network, IPC and UTS namespaces (and PID when the pod
shares one) through the pause process. Its stdout and stderr go through FIFOs to the log file the
kubelet names, one line per record as ``<RFC3339Nano> stdout|stderr F|P <line>``. When its process
exits the task is deleted (no shim stays) and the exit is recorded: reason ``Completed``, ``Error``,
or ``OOMKilled`` when the container's cgroup saw an OOM kill.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import signal
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import structlog

from corral.kernel import (
    CorralError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from corral.plugins.cdi import DeviceInjector
from corral.plugins.core import GC_EXPIRE, bound_lease, namespace
from corral.plugins.core.private import fsync_dir
from corral.plugins.cri.images import CRIImageService
from corral.plugins.cri.sandboxes import (
    K8S,
    CRISandbox,
    PodSandboxes,
    find_by_prefix,
    invalid,
    precondition,
    worded,
)
from corral.plugins.cri.spec import ContainerSpec, HostMount, oci_spec
from corral.plugins.cri.userns import container_idmap, prepare_rootfs, userns_of
from corral.plugins.cri.volumes import ImageVolumes
from corral.plugins.events.types import TaskIO
from corral.plugins.metadata import (
    AnyValue,
    Container,
    ContainerRuntime,
    ContainerStore,
    LeaseStore,
    Metadata,
    NamespacedSnapshots,
)
from corral.plugins.nri import ContainerInfo, NRIEvents
from corral.plugins.runtimes import SPEC_TYPE_URL, CreateOpts, ExecOpts, PlatformRuntime, Task
from corral.plugins.runtimes import spec as specs

__all__ = [
    "CONTAINER_CREATED",
    "CONTAINER_EXITED",
    "CONTAINER_RUNNING",
    "CONTAINER_UNKNOWN",
    "CRIContainer",
    "CRIContainers",
    "ContainerFilter",
    "ContainerSpec",
    "ExecResult",
    "HostMount",
    "kubelet_log_lines",
]

log = structlog.get_logger("corral.cri.containers")

CONTAINER_CREATED = "CONTAINER_CREATED"
CONTAINER_RUNNING = "CONTAINER_RUNNING"
CONTAINER_EXITED = "CONTAINER_EXITED"
CONTAINER_UNKNOWN = "CONTAINER_UNKNOWN"
KIND_LABEL = "io.cri-containerd.kind"
PROCESS_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
UNKNOWN_EXIT = 255
MAX_LOG_LINE = 16 * 1024
"""containerd's default max_container_log_line_size: longer lines are split into P records."""
EXEC_OUTPUT_LIMIT = 16 * 1024 * 1024
SNAPSHOT_LEASE = timedelta(minutes=10)


@dataclass
class CRIContainer:
    id: str
    name: str
    sandbox_id: str
    spec: ContainerSpec
    image_id: str
    image_ref: str
    log_path: str
    created_at: datetime
    state: str = CONTAINER_CREATED
    pid: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    runtime_type: str = ""
    cgroup: str = ""
    exited: anyio.Event = field(default_factory=anyio.Event)
    lock: anyio.Lock = field(default_factory=anyio.Lock)

    def to_json(self) -> dict[str, Any]:
        def t(v: datetime | None) -> str | None:
            return v.isoformat() if v else None

        return {
            "id": self.id, "name": self.name, "sandbox_id": self.sandbox_id, "spec": self.spec.to_json(),
            "image_id": self.image_id, "image_ref": self.image_ref, "log_path": self.log_path,
            "created_at": t(self.created_at), "state": self.state, "pid": self.pid,
            "started_at": t(self.started_at), "finished_at": t(self.finished_at),
            "exit_code": self.exit_code, "reason": self.reason, "message": self.message,
            "runtime_type": self.runtime_type, "cgroup": self.cgroup,
        }  # fmt: skip

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> CRIContainer:
        def t(v: str | None) -> datetime | None:
            return datetime.fromisoformat(v) if v else None

        return cls(
            id=obj["id"], name=obj["name"], sandbox_id=obj["sandbox_id"],
            spec=ContainerSpec.from_json(obj["spec"]), image_id=obj["image_id"],
            image_ref=obj["image_ref"], log_path=obj["log_path"],
            created_at=t(obj["created_at"]) or datetime.now(UTC), state=obj["state"], pid=obj["pid"],
            started_at=t(obj["started_at"]), finished_at=t(obj["finished_at"]),
            exit_code=obj["exit_code"], reason=obj["reason"], message=obj["message"],
            runtime_type=obj.get("runtime_type", ""), cgroup=obj.get("cgroup", ""),
        )  # fmt: skip


@dataclass(frozen=True)
class ContainerFilter:
    id: str = ""
    state: str | None = None
    pod_sandbox_id: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ExecResult:
    stdout: bytes
    stderr: bytes
    exit_code: int


def kubelet_log_lines(stream: str, data: bytes, now: datetime | None = None) -> tuple[bytes, bytes]:
    """The complete records in ``data`` (``<RFC3339Nano> <stream> F <line>\\n``, lines longer than
    MAX_LOG_LINE split into P records) and the unfinished tail to keep for the next read."""
    out = bytearray()
    stamp = _rfc3339_nano(now or datetime.now(UTC)).encode()
    while True:
        nl = data.find(b"\n")
        if nl < 0 and len(data) < MAX_LOG_LINE:
            return bytes(out), data
        if 0 <= nl < MAX_LOG_LINE:
            line, data, tag = data[:nl], data[nl + 1 :], b"F"
        else:
            line, data, tag = data[:MAX_LOG_LINE], data[MAX_LOG_LINE:], b"P"
        out += stamp + b" " + stream.encode() + b" " + tag + b" " + line + b"\n"


def _rfc3339_nano(at: datetime) -> str:
    """Go's time.RFC3339Nano in UTC: trailing zeros of the fraction dropped."""
    at = at.astimezone(UTC)
    fraction = f"{at.microsecond:06d}000".rstrip("0")
    return at.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"


def _nanos(at: datetime | None) -> int:
    return int(at.timestamp() * 1_000_000_000) if at else 0


class CRIContainers:
    """The container half of containerd's criService."""

    def __init__(
        self,
        *,
        pods: PodSandboxes,
        images: CRIImageService,
        metadata: Metadata,
        runtime: PlatformRuntime,
        state: Path,
        nri: NRIEvents | None = None,
        cdi: DeviceInjector | None = None,
    ) -> None:
        self._cdi = cdi
        self._pods = pods
        self._images = images
        self._metadata = metadata
        self._runtime = runtime
        self._state = state
        self._nri = nri
        self._volumes = ImageVolumes(images=images, metadata=metadata, state=state)
        self._containers: dict[str, CRIContainer] = {}
        self._names: dict[str, str] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._loaded = False
        self._load_lock = anyio.Lock()
        pods.containers = self

    # -- lifetime and files -----------------------------------------------------------------------
    async def serve(self, ready: anyio.Event) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            ready.set()
            tg.start_soon(self._load_at_start)
            await anyio.sleep_forever()

    async def _load_at_start(self) -> None:
        """Find a previous daemon's containers at once (not at the first call): exits that came
        while it was down are recorded and their shims go."""
        try:
            await self._load()
        except Exception as exc:
            log.warning("cri_containers_load_failed", error=str(exc))

    def _group(self) -> anyio.abc.TaskGroup:
        if self._tg is None:
            raise worded(FailedPrecondition, "the CRI container service is not serving")
        return self._tg

    def _dir(self, container_id: str) -> Path:
        return self._state / "containers" / container_id

    def _save(self, c: CRIContainer) -> None:
        path = self._dir(c.id) / "status.json"
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            json.dump(c.to_json(), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)

    async def _load(self) -> None:
        """The containers a previous daemon made: running ones are watched again (their output
        FIFOs reopened); those whose task is gone are recorded as exited with an unknown status."""
        if self._loaded:
            return
        async with self._load_lock:
            if self._loaded:
                return
            base = self._state / "containers"
            for path in sorted(base.glob("*/status.json")) if base.is_dir() else []:
                try:
                    c = CRIContainer.from_json(json.loads(path.read_text()))
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    log.warning("cri_container_unreadable", path=str(path), error=str(exc))
                    continue
                self._containers[c.id] = c
                self._names[c.name] = c.id
                if c.state == CONTAINER_EXITED:
                    c.exited.set()
                elif c.state == CONTAINER_RUNNING:
                    with namespace(K8S):
                        await self._recover(c)
            await self._remove_half_made()
            self._loaded = True

    async def _remove_half_made(self) -> None:
        """Container records (and snapshots) of a create that a killed daemon did not finish: its
        status file is written last, so a record without one was never answered for."""
        with namespace(K8S):
            try:
                records = await self._metadata.view(ContainerStore).list(
                    [f'labels."{KIND_LABEL}"==container']
                )
            except NotFound:
                return
            for record in records:
                if record.id in self._containers:
                    continue
                with contextlib.suppress(NotFound):
                    await self._metadata.view(ContainerStore).delete(record.id)
                if record.snapshotter:
                    with contextlib.suppress(NotFound):
                        await (
                            self._metadata.view(NamespacedSnapshots).get(record.snapshotter).remove(record.id)
                        )
                log.info("cri_container_half_made_removed", id=record.id)

    async def _recover(self, c: CRIContainer) -> None:
        try:
            task = await self._runtime.get(c.id)
            state = await task.state()
        except NotFound:
            task = None
        if task is not None and state.exit_status == 0 and state.pid > 0 and state.status.name == "RUNNING":
            self._attach_io(c, reopen=True)
            self._group().start_soon(self._watch, c, task)
            log.info("cri_container_recovered", id=c.id, pid=c.pid)
            return
        await self._exited(c, task, UNKNOWN_EXIT if task is None else state.exit_status, None)

    def _find(self, container_id: str) -> CRIContainer:
        return self._containers[find_by_prefix(list(self._containers), container_id)]

    async def get(self, container_id: str) -> CRIContainer:
        await self._load()
        return self._find(container_id)

    # -- CreateContainer --------------------------------------------------------------------------
    async def create(
        self, sandbox_id: str, spec: ContainerSpec | None, *, pod_config_has_metadata: bool = True
    ) -> str:
        """A container in the ready pod ``sandbox_id``; ``spec`` None when the request's config has
        no metadata (refused after the pod is found, as containerd checks)."""
        await self._load()
        try:
            pod = await self._pods.get(sandbox_id)
        except CorralError as exc:
            raise worded(type(exc), f'failed to find sandbox id "{sandbox_id}": {exc}') from None
        pod = await self._pods.status(pod.id)
        if pod.state != "SANDBOX_READY":
            raise precondition(f'sandbox container "{pod.id}" is not running')
        if spec is None:
            raise invalid("container config must include metadata")
        if not pod_config_has_metadata:
            raise invalid("pod sandbox config must include metadata")
        container_id = secrets.token_hex(32)
        name = "_".join((spec.name, pod.pod.name, pod.pod.namespace, pod.pod.uid, str(spec.attempt)))
        owner = self._names.get(name)
        if owner is not None:
            raise worded(
                FailedPrecondition,
                f'failed to reserve container name "{name}": name "{name}" is reserved for "{owner}"',
            )
        self._names[name] = container_id
        try:
            return await self._create(container_id, name, pod, spec)
        except BaseException:
            if self._names.get(name) == container_id:
                del self._names[name]
            raise

    async def _create(self, container_id: str, name: str, pod: CRISandbox, spec: ContainerSpec) -> str:
        try:
            image = await self._images.resolve(spec.image)
        except CorralError as exc:
            raise worded(type(exc), f'failed to resolve image "{spec.image}": {exc}') from None
        runtime_type, _ = self._pods.handler_of(pod.runtime_handler)
        spec = await self._mount_image_volumes(pod, spec)
        log_path = os.path.join(pod.pod.log_directory, spec.log_path) if spec.log_path else ""
        cgroup = f"{pod.pod.cgroup_parent.rstrip('/')}/{container_id}" if pod.pod.cgroup_parent else ""
        oci = oci_spec(
            container_id, pod, spec, image.spec, image.references[0] if image.references else image.id, cgroup
        )
        c = CRIContainer(
            container_id, name, pod.id, spec, image.id, spec.image, log_path, datetime.now(UTC),
            runtime_type=runtime_type, cgroup=oci["linux"].get("cgroupsPath", ""),
        )  # fmt: skip
        devices = list(spec.cdi_devices)
        if devices or any(k.startswith("cdi.k8s.io/") for k in spec.annotations):
            if self._cdi is None:
                raise worded(FailedPrecondition, "CDI devices were asked for but CDI is not enabled")
            try:
                self._cdi.inject_annotated(oci)
                if devices:
                    self._cdi.inject(oci, devices)
            except CorralError as exc:
                raise worded(type(exc), f"failed to inject CDI devices: {exc}") from None
        if self._nri is not None:
            oci = dict(await self._nri.create_container(self._pods.pod_info(pod), self._info(c), oci))
        snapshotter_name = self._images.snapshotter_for(pod.runtime_handler)
        with namespace(K8S):
            snapshots = self._metadata.view(NamespacedSnapshots)
            snapshotter = snapshots.get(snapshotter_name)
            leases = self._metadata.view(LeaseStore)
            expiry = (datetime.now(UTC) + SNAPSHOT_LEASE).strftime("%Y-%m-%dT%H:%M:%SZ")
            lease = await leases.create(labels={GC_EXPIRE: expiry})
            try:
                with bound_lease(lease.id):
                    await prepare_rootfs(
                        snapshotter, snapshotter_name, container_id, image.chain_id, pod, spec
                    )
                    try:
                        await self._metadata.view(ContainerStore).create(
                            Container(
                                id=container_id,
                                runtime=ContainerRuntime(runtime_type),
                                labels={**spec.labels, KIND_LABEL: "container"},
                                image=image.references[0] if image.references else image.id,
                                spec=AnyValue(SPEC_TYPE_URL, specs.spec_json(oci)),
                                snapshotter=snapshotter_name,
                                snapshot_key=container_id,
                                sandbox=pod.id,
                            )
                        )
                    except BaseException:
                        with anyio.CancelScope(shield=True), contextlib.suppress(CorralError):
                            await snapshotter.remove(container_id)
                        raise
            finally:
                with anyio.CancelScope(shield=True), contextlib.suppress(CorralError):
                    await leases.delete(lease.id)
        try:
            self._save(c)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._remove_parts(c)
            raise
        self._containers[container_id] = c
        log.info("cri_container_created", id=container_id, name=name, sandbox=pod.id)
        return container_id

    async def _mount_image_volumes(self, pod: CRISandbox, spec: ContainerSpec) -> ContainerSpec:
        """The spec with its image mounts' host paths filled in (``corral.plugins.cri.volumes``)."""
        try:  # checked before anything is mounted: a pod's volumes are idmapped for its namespace
            idmap = container_idmap(userns_of(pod.pod), userns_of(spec))
        except InvalidArgument as exc:
            raise worded(InvalidArgument, f"failed to generate container spec: {exc.detail}") from None
        snapshotter = self._images.snapshotter_for(pod.runtime_handler)
        paths = await self._volumes.mount(pod.id, spec.mounts, snapshotter, idmap)
        if not paths:
            return spec
        mounts = tuple(replace(m, host_path=paths[i]) if i in paths else m for i, m in enumerate(spec.mounts))
        return replace(spec, mounts=mounts)

    def _info(self, c: CRIContainer) -> ContainerInfo:
        state = {CONTAINER_RUNNING: "running", CONTAINER_EXITED: "stopped"}.get(c.state, "created")
        return ContainerInfo(
            id=c.id, pod_sandbox_id=c.sandbox_id, name=c.spec.name, labels=dict(c.spec.labels),
            image=c.image_ref, state=state, pid=c.pid, created_at=_nanos(c.created_at),
            started_at=_nanos(c.started_at), finished_at=_nanos(c.finished_at), exit_code=c.exit_code,
        )  # fmt: skip

    # -- StartContainer ---------------------------------------------------------------------------
    def _fifos(self, c: CRIContainer) -> tuple[Path, Path]:
        io = self._dir(c.id) / "io"
        return io / "stdout", io / "stderr"

    def _attach_io(self, c: CRIContainer, reopen: bool = False) -> None:
        """Pump the container's output FIFOs into its log file (reopened after a restart)."""
        for stream, path in zip(("stdout", "stderr"), self._fifos(c), strict=True):
            if not path.exists():
                continue
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            self._group().start_soon(self._pump, c, stream, fd)

    async def _pump(self, c: CRIContainer, stream: str, fd: int) -> None:
        out = None
        if c.log_path:
            Path(c.log_path).parent.mkdir(parents=True, exist_ok=True)
            out = open(c.log_path, "ab")  # noqa: SIM115, ASYNC230 - held for the container's life; appends are quick
        tail = b""
        try:
            while True:
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    await anyio.wait_readable(fd)
                    continue
                except OSError as exc:
                    if exc.errno == errno.EINTR:
                        continue
                    raise
                if not chunk:  # every writer closed: the process (and its children) ended
                    break
                records, tail = kubelet_log_lines(stream, tail + chunk)
                if records and out is not None:
                    out.write(records)
                    out.flush()
            if tail and out is not None:  # the output ended mid-line: a partial record, as containerd's
                stamp = _rfc3339_nano(datetime.now(UTC)).encode()
                out.write(stamp + b" " + stream.encode() + b" P " + tail + b"\n")
        finally:
            os.close(fd)
            if out is not None:
                out.close()

    async def start(self, container_id: str) -> None:
        try:
            c = await self.get(container_id)
        except CorralError as exc:
            raise worded(
                type(exc), f'an error occurred when try to find container "{container_id}": {exc}'
            ) from None
        async with c.lock:
            if c.state != CONTAINER_CREATED:
                raise precondition(
                    f'failed to set starting state for container "{c.id}": container is in {c.state} state'
                )
            pod = self._pods.sandbox_of(c.sandbox_id)
            if pod is None or (await self._pods.status(pod.id)).state != "SANDBOX_READY":
                raise precondition(f'sandbox container "{c.sandbox_id}" is not running')
            try:
                await self._start(c)
            except BaseException as exc:
                with anyio.CancelScope(shield=True):
                    with contextlib.suppress(CorralError), namespace(K8S):
                        await self._delete_task(c.id)
                    c.state, c.finished_at, c.exit_code = CONTAINER_EXITED, datetime.now(UTC), UNKNOWN_EXIT
                    c.reason, c.message = "StartError", str(exc)
                    c.exited.set()
                    with contextlib.suppress(OSError):
                        self._save(c)
                raise

    async def _start(self, c: CRIContainer) -> None:
        stdout, stderr = self._fifos(c)
        stdout.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        for path in (stdout, stderr):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            os.mkfifo(path, 0o600)
        readers = [os.open(p, os.O_RDONLY | os.O_NONBLOCK) for p in (stdout, stderr)]
        try:
            with namespace(K8S):
                record = await self._metadata.view(ContainerStore).get(c.id)
                snapshots = self._metadata.view(NamespacedSnapshots).get(record.snapshotter)
                mounts = await snapshots.mounts(c.id)
                task = await self._runtime.create(
                    c.id,
                    CreateOpts(
                        spec=record.spec,
                        rootfs=tuple(mounts),
                        io=TaskIO(stdout=str(stdout), stderr=str(stderr)),
                        runtime=record.runtime.name,
                        runtime_options=record.runtime.options,
                    ),
                )
                for stream, fd in zip(("stdout", "stderr"), readers, strict=True):
                    self._group().start_soon(self._pump, c, stream, fd)
                readers = []
                pod = self._pods.sandbox_of(c.sandbox_id)
                if self._nri is not None and pod is not None:
                    await self._nri.start_container(self._pods.pod_info(pod), self._info(c), {})
                await task.start()
                c.pid = (await task.state()).pid
        finally:
            for fd in readers:
                os.close(fd)
        c.state, c.started_at = CONTAINER_RUNNING, datetime.now(UTC)
        c.exited = anyio.Event()
        self._save(c)
        self._group().start_soon(self._watch, c, task)
        log.info("cri_container_started", id=c.id, pid=c.pid)

    async def _watch(self, c: CRIContainer, task: Task) -> None:
        with namespace(K8S):
            try:
                exit = await task.wait()
                status, at = exit.status, exit.timestamp
            except Exception as exc:
                log.warning("cri_container_wait_failed", id=c.id, error=str(exc))
                status, at = UNKNOWN_EXIT, datetime.now(UTC)
            with anyio.CancelScope(shield=True):
                await self._exited(c, task, status, at)

    def _oom_killed(self, c: CRIContainer) -> bool:
        """Whether the container's memory cgroup saw an OOM kill: ``oom_kill`` in cgroup v2's
        ``memory.events``, or in v1's ``memory.oom_control``."""
        if not c.cgroup:
            return False
        relative = c.cgroup.lstrip("/")
        root = Path("/sys/fs/cgroup")
        for path in (root / relative / "memory.events", root / "memory" / relative / "memory.oom_control"):
            with contextlib.suppress(OSError, ValueError):
                for line in path.read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "oom_kill" and int(value) > 0:
                        return True
        return False

    async def _exited(self, c: CRIContainer, task: Task | None, status: int, at: datetime | None) -> None:
        oom = self._oom_killed(c)
        if task is not None:
            with contextlib.suppress(CorralError):
                await self._delete_task(c.id)
        c.state, c.exit_code, c.finished_at = CONTAINER_EXITED, status, at or datetime.now(UTC)
        c.reason = "OOMKilled" if oom else ("Completed" if status == 0 else "Error")
        c.pid = 0
        with contextlib.suppress(OSError):
            self._save(c)
        c.exited.set()
        log.info("cri_container_exited", id=c.id, exit_code=status, reason=c.reason)

    async def _delete_task(self, container_id: str) -> None:
        try:
            task = await self._runtime.get(container_id)
        except NotFound:
            return
        with contextlib.suppress(CorralError):
            await task.kill(signal.SIGKILL, all=True)
        with contextlib.suppress(NotFound):
            await self._runtime.delete(container_id)

    # -- StopContainer / RemoveContainer ----------------------------------------------------------
    async def stop(self, container_id: str, grace: float) -> None:
        try:
            c = await self.get(container_id)
        except CorralError as exc:
            raise worded(
                type(exc), f'an error occurred when try to find container "{container_id}": {exc}'
            ) from None
        await self._stop(c, grace)

    async def _stop(self, c: CRIContainer, grace: float) -> None:
        if c.state != CONTAINER_RUNNING:
            return
        with namespace(K8S):
            try:
                task = await self._runtime.get(c.id)
            except NotFound:
                return
            if grace > 0:
                sig = _stop_signal(c.spec)
                with contextlib.suppress(NotFound):
                    await task.kill(sig)
                with anyio.move_on_after(grace):
                    await c.exited.wait()
                if c.exited.is_set():
                    return
            with contextlib.suppress(NotFound):
                await task.kill(signal.SIGKILL, all=True)
            with anyio.move_on_after(30):
                await c.exited.wait()
            if not c.exited.is_set():
                raise worded(
                    DeadlineExceeded,
                    f'an error occurs during waiting for container "{c.id}" to be killed: '
                    f'wait container "{c.id}": context deadline exceeded',
                )

    async def remove(self, container_id: str) -> None:
        try:
            c = await self.get(container_id)
        except NotFound:
            return  # as containerd: removing an unknown container succeeds
        except CorralError as exc:
            raise worded(
                type(exc), f'an error occurred when try to find container "{container_id}": {exc}'
            ) from None
        async with c.lock:
            if c.id not in self._containers:
                return
            try:
                await self._stop(c, 0)
            except CorralError as exc:
                raise worded(type(exc), f'failed to forcibly stop container "{c.id}": {exc}') from None
            await self._remove_parts(c)
            self._containers.pop(c.id, None)
            if self._names.get(c.name) == c.id:
                del self._names[c.name]
            pod = self._pods.sandbox_of(c.sandbox_id)
            if self._nri is not None and pod is not None:
                with contextlib.suppress(CorralError):
                    await self._nri.remove_container(self._pods.pod_info(pod), self._info(c), {})
        log.info("cri_container_removed", id=c.id)

    async def _remove_parts(self, c: CRIContainer) -> None:
        with namespace(K8S):
            await self._delete_task(c.id)
            store = self._metadata.view(ContainerStore)
            snapshotter = ""
            with contextlib.suppress(NotFound):
                snapshotter = (await store.get(c.id)).snapshotter
                await store.delete(c.id)
            if snapshotter:
                with contextlib.suppress(NotFound):
                    await self._metadata.view(NamespacedSnapshots).get(snapshotter).remove(c.id)
        directory = self._dir(c.id)
        for path in sorted(directory.rglob("*"), reverse=True) if directory.exists() else []:
            with contextlib.suppress(FileNotFoundError):
                path.rmdir() if path.is_dir() else path.unlink()
        with contextlib.suppress(FileNotFoundError):
            directory.rmdir()

    async def stop_in(self, sandbox_id: str) -> None:
        """Every container of the pod, killed at once (StopPodSandbox)."""
        await self._load()
        for c in [c for c in self._containers.values() if c.sandbox_id == sandbox_id]:
            await self._stop(c, 0)
        pod = self._pods.sandbox_of(sandbox_id)
        handler = pod.runtime_handler if pod is not None else ""
        await self._volumes.unmount_all(sandbox_id, self._images.snapshotter_for(handler))

    async def remove_in(self, sandbox_id: str) -> None:
        """Every container of the pod removed (RemovePodSandbox)."""
        await self._load()
        for c in [c for c in self._containers.values() if c.sandbox_id == sandbox_id]:
            await self.remove(c.id)
        await self._volumes.release(sandbox_id)

    # -- ContainerStatus / ListContainers ---------------------------------------------------------
    async def status(self, container_id: str) -> CRIContainer:
        try:
            return await self.get(container_id)
        except CorralError as exc:
            raise worded(
                type(exc), f'an error occurred when try to find container "{container_id}": {exc}'
            ) from None

    async def list(self, wanted: ContainerFilter | None = None) -> list[CRIContainer]:
        await self._load()
        wanted = wanted or ContainerFilter()
        wanted_id, wanted_pod = wanted.id, wanted.pod_sandbox_id
        if wanted_id:
            with contextlib.suppress(CorralError):
                wanted_id = find_by_prefix(list(self._containers), wanted_id)
        if wanted_pod:
            with contextlib.suppress(CorralError):
                wanted_pod = (await self._pods.get(wanted_pod)).id
        out = []
        for c in sorted(self._containers.values(), key=lambda c: c.created_at):
            if wanted_id and c.id != wanted_id:
                continue
            if wanted_pod and c.sandbox_id != wanted_pod:
                continue
            if wanted.state is not None and c.state != wanted.state:
                continue
            if any(c.spec.labels.get(k) != v for k, v in wanted.labels.items()):
                continue
            out.append(c)
        return out

    # -- ExecSync ---------------------------------------------------------------------------------
    async def exec_sync(self, container_id: str, cmd: Sequence[str], limit: float) -> ExecResult:
        """Run ``cmd`` in the running container, its output captured; ``limit`` seconds (0: none)
        before it is killed and DeadlineExceeded answered."""
        try:
            return await self._exec_sync(container_id, cmd, limit)
        except CorralError as exc:
            raise worded(type(exc), f"failed to exec in container: {exc}") from None

    async def _exec_sync(self, container_id: str, cmd: Sequence[str], limit: float) -> ExecResult:
        try:
            c = await self.get(container_id)
        except CorralError as exc:
            raise worded(type(exc), f'failed to find container "{container_id}" in store: {exc}') from None
        if c.state != CONTAINER_RUNNING:
            raise precondition(f"container is in {c.state} state")
        if not cmd:
            raise worded(InvalidArgument, "invalid argument: no command given")
        exec_id = secrets.token_hex(8)
        io = self._dir(c.id) / f"exec-{exec_id}"
        io.mkdir(parents=True, mode=0o700)
        outs = [io / "stdout", io / "stderr"]
        fds: list[int] = []
        try:
            for p in outs:
                os.mkfifo(p, 0o600)
                fds.append(os.open(p, os.O_RDONLY | os.O_NONBLOCK))
            with namespace(K8S):
                task = await self._runtime.get(c.id)
                record = await self._metadata.view(ContainerStore).get(c.id)
                spec = json.loads(record.spec.value) if record.spec else {}
                process = dict(spec.get("process") or {})
                process["args"], process["terminal"] = list(cmd), False
                proc = await task.exec(
                    exec_id,
                    ExecOpts(
                        spec=AnyValue(PROCESS_TYPE_URL, json.dumps(process).encode()),
                        io=TaskIO(stdout=str(outs[0]), stderr=str(outs[1])),
                    ),
                )
                buffers = [bytearray(), bytearray()]
                done = anyio.Event()
                try:
                    async with anyio.create_task_group() as tg:
                        for fd, buf in zip(fds, buffers, strict=True):
                            tg.start_soon(_drain, fd, buf, done)
                        await proc.start()
                        exit_status = UNKNOWN_EXIT
                        with anyio.move_on_after(limit if limit > 0 else None) as scope:
                            exit_status = (await proc.wait()).status
                        done.set()
                        if scope.cancelled_caught:
                            with contextlib.suppress(CorralError):
                                await proc.kill(signal.SIGKILL)
                            with anyio.move_on_after(10):
                                await proc.wait()
                            tg.cancel_scope.cancel()
                finally:
                    with anyio.CancelScope(shield=True), contextlib.suppress(CorralError):
                        await proc.delete()
                if scope.cancelled_caught:
                    raise worded(
                        DeadlineExceeded, f"timeout {_go_duration(limit)} exceeded: context deadline exceeded"
                    )
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            for p in outs:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            with contextlib.suppress(OSError):
                io.rmdir()
        return ExecResult(bytes(buffers[0]), bytes(buffers[1]), exit_status)


async def _drain(fd: int, buf: bytearray, exited: anyio.Event) -> None:
    """Read a FIFO until its writers close; before a writer opens it reads as closed too, so that
    counts only once the process has exited."""
    opened = False
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            opened = True
            with anyio.move_on_after(0.05):
                await anyio.wait_readable(fd)
            continue
        if not chunk:
            if opened or exited.is_set():
                return
            await anyio.sleep(0.01)
            continue
        opened = True
        if len(buf) < EXEC_OUTPUT_LIMIT:
            buf += chunk[: EXEC_OUTPUT_LIMIT - len(buf)]


def _go_duration(seconds: float) -> str:
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds}s"


def _stop_signal(spec: ContainerSpec) -> int:
    return int(signal.SIGTERM)
