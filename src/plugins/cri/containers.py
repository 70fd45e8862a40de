"""CRI containers in pods: CreateContainer, StartContainer, StopContainer, RemoveContainer,
ContainerStatus, ListContainers, ExecSync, UpdateContainerResources and ReopenContainerLog, after
containerd 2.x's ``internal/cri/server/container_*.go``.

A container is a record in the metadata store (labels ``io.cri-containerd.kind=container``), a
snapshot of its image, and a status file here (state, pid, times, exit code, reason) so a restarted
daemon finds it again. It joins its pod's network, IPC and UTS namespaces (and PID when the pod
shares one) through the pause process. Its stdout and stderr go through FIFOs to the log file the
kubelet names, one line per record as ``<RFC3339Nano> stdout|stderr F|P <line>``. When its process
exits the task is deleted (no shim stays) and the exit is recorded: reason ``Completed``, ``Error``,
or ``OOMKilled`` when the container's cgroup saw an OOM kill. StopContainer sends the stop signal
the request or the image's config names (SIGTERM when neither does).
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
from corral.plugins.cdi import DeviceInjector, SpecError, devices_from_annotations
from corral.plugins.core import GC_EXPIRE, bound_lease, namespace
from corral.plugins.core.idmap import without_idmap
from corral.plugins.core.mount import Mount, temporary_mount, unmount
from corral.plugins.core.private import fsync_dir
from corral.plugins.cri.container_log import MAX_LOG_LINE, ContainerLog, kubelet_log_lines, rfc3339_nano
from corral.plugins.cri.images import CRIImage, CRIImageService
from corral.plugins.cri.resources import (
    RESOURCES_TYPE_URL,
    ResourceUpdate,
    hugetlb_controller_present,
    resources_of,
    swap_controller_available,
    with_resources,
)
from corral.plugins.cri.sandboxes import (
    K8S,
    CRISandbox,
    PodSandboxes,
    find_by_prefix,
    invalid,
    precondition,
    worded,
)
from corral.plugins.cri.signals import oci_stop_signal, parse_signal
from corral.plugins.cri.spec import (
    ContainerSpec,
    HostMount,
    apply_rootfs_spec_opts,
    handler_options,
    oci_spec,
    rootfs_spec_opts,
)
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
    "MAX_LOG_LINE",
    "CRIContainer",
    "CRIContainers",
    "ContainerFilter",
    "ContainerLog",
    "ContainerSpec",
    "ExecResult",
    "HostMount",
    "ResourceUpdate",
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
EXEC_OUTPUT_LIMIT = 16 * 1024 * 1024
SNAPSHOT_LEASE = timedelta(minutes=10)
ROOTFS_MOUNTS = "rootfs-mounts"
"""Where a new container's image root is mounted while its user and groups are read."""


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
    config: Mapping[str, Any] = field(default_factory=dict)
    """The request's ContainerConfig as JSON, for ContainerStatus's verbose info."""
    stop_signal: str = ""
    """The request's stop signal, else the image config's StopSignal ("" for neither: SIGTERM)."""
    resources: Mapping[str, Any] = field(default_factory=dict)
    """The CRI LinuxContainerResources its spec holds (proto3 JSON names), as ContainerStatus tells."""
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
            "runtime_type": self.runtime_type, "cgroup": self.cgroup, "config": dict(self.config),
            "stop_signal": self.stop_signal, "resources": dict(self.resources),
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
            config=obj.get("config") or {},
            stop_signal=obj.get("stop_signal", ""), resources=obj.get("resources", {}),
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
        self._logs: dict[str, ContainerLog] = {}
        self._names: dict[str, str] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._loaded = False
        self._load_lock = anyio.Lock()
        pods.containers = self

    # -- lifetime and files -----------------------------------------------------------------------
    def serve_in(self, tasks: anyio.abc.TaskGroup) -> None:
        """Run the containers' background work in ``tasks``, starting with finding a previous
        daemon's containers."""
        self._tg = tasks
        tasks.start_soon(self._load_at_start)

    async def _load_at_start(self) -> None:
        """Find a previous daemon's containers at once (not at the first call): exits that came
        while it was down are recorded and their shims go."""
        try:
            await self._unmount_stale_rootfs()
            await self._load()
        except Exception as exc:
            log.warning("cri_containers_load_failed", error=str(exc))

    async def _unmount_stale_rootfs(self) -> None:
        """The image roots a killed daemon had mounted to read a new container's users from."""
        base = self._state / ROOTFS_MOUNTS
        for path in sorted(base.iterdir()) if base.is_dir() else []:
            while os.path.ismount(path):
                await unmount(path)
            with contextlib.suppress(OSError):
                path.rmdir()
            log.info("cri_stale_rootfs_mount_removed", path=str(path))

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
        self,
        sandbox_id: str,
        spec: ContainerSpec | None,
        *,
        pod_config_has_metadata: bool = True,
        config: Mapping[str, Any] | None = None,
        stop_signal: str = "",
    ) -> str:
        """A container in the ready pod ``sandbox_id``; ``spec`` None when the request's config has
        no metadata (refused after the pod is found, as containerd checks). ``stop_signal`` is the
        request's by its CRI enum name ("" for the image's)."""
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
        try:
            stop_signal = oci_stop_signal(stop_signal)
        except ValueError as exc:
            raise invalid(str(exc)) from None
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
            return await self._create(container_id, name, pod, spec, config or {}, stop_signal)
        except BaseException:
            if self._names.get(name) == container_id:
                del self._names[name]
            raise

    async def _create(
        self,
        container_id: str,
        name: str,
        pod: CRISandbox,
        spec: ContainerSpec,
        config: Mapping[str, Any],
        stop_signal: str,
    ) -> str:
        try:
            image = await self._images.resolve(spec.image)
        except CorralError as exc:
            raise worded(type(exc), f'failed to resolve image "{spec.image}": {exc}') from None
        runtime_type, _ = self._pods.handler_of(pod.runtime_handler)
        spec = await self._mount_image_volumes(pod, spec)
        log_path = os.path.join(pod.pod.log_directory, spec.log_path) if spec.log_path else ""
        cgroup = f"{pod.pod.cgroup_parent.rstrip('/')}/{container_id}" if pod.pod.cgroup_parent else ""
        oci = oci_spec(
            container_id, pod, spec, image.spec, image.references[0] if image.references else image.id, cgroup,
            handler_options(self._pods.config, pod.runtime_handler),
            target_pid=self._target_pid(container_id, pod.id, spec) if spec.pid_mode == "TARGET" else 0,
        )  # fmt: skip
        c = CRIContainer(
            container_id, name, pod.id, spec, image.id, spec.image, log_path, datetime.now(UTC),
            runtime_type=runtime_type, cgroup=oci["linux"].get("cgroupsPath", ""), config=config,
            stop_signal=stop_signal or str((image.spec.get("config") or {}).get("StopSignal") or ""),
        )  # fmt: skip
        # The spec NRI plugins adjusted, once they have: a create failing after that is taken back.
        adjusted: list[specs.Spec] = []
        try:
            await self._store_created(c, container_id, pod, spec, image, oci, adjusted)
        except BaseException:
            # containerd's UndoCreateContainer: plugins that saw the create see it go.
            if adjusted:
                with anyio.CancelScope(shield=True):
                    await self._tell_nri("remove_container", c, adjusted[0])
            raise
        self._containers[container_id] = c
        log.info("cri_container_created", id=container_id, name=name, sandbox=pod.id)
        await self._tell_nri("post_create_container", c, adjusted[0] if adjusted else None)
        return container_id

    async def _store_created(
        self, c: CRIContainer, container_id: str, pod: CRISandbox, spec: ContainerSpec, image: CRIImage,
        oci: specs.Spec, adjusted: list[specs.Spec],
    ) -> None:  # fmt: skip
        """The container's snapshot, metadata record and status file, or none of them."""
        snapshotter_name = self._images.snapshotter_for(pod.runtime_handler)
        with namespace(K8S):
            snapshots = self._metadata.view(NamespacedSnapshots)
            snapshotter = snapshots.get(snapshotter_name)
            leases = self._metadata.view(LeaseStore)
            expiry = (datetime.now(UTC) + SNAPSHOT_LEASE).strftime("%Y-%m-%dT%H:%M:%SZ")
            lease = await leases.create(labels={GC_EXPIRE: expiry})
            try:
                with bound_lease(lease.id):
                    mounts = await prepare_rootfs(
                        snapshotter, snapshotter_name, container_id, image.chain_id, pod, spec
                    )
                    try:
                        oci = await self._finish_spec(c, pod, spec, image.spec, oci, mounts)
                        adjusted.append(oci)
                        c.resources = resources_of(oci)
                        await self._metadata.view(ContainerStore).create(
                            Container(
                                id=container_id,
                                runtime=ContainerRuntime(
                                    c.runtime_type, self._pods.runtime_options(pod.runtime_handler)
                                ),
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

    async def _tell_nri(self, event: str, c: CRIContainer, spec: Mapping[str, Any] | None = None) -> None:
        """A container's lifecycle event to NRI plugins, with its pod and OCI spec. As in containerd's
        CRI, a plugin's failure here is logged, not the call's (StartContainer's is the exception)."""
        if self._nri is None:
            return
        pod = self._pods.sandbox_of(c.sandbox_id)
        try:
            await getattr(self._nri, event)(
                self._pods.pod_info(pod) if pod is not None else None,
                self._info(c),
                spec if spec is not None else await self._oci_of(c),
            )
        except CorralError as exc:
            log.warning("cri_nri_event_failed", event=event, id=c.id, error=str(exc))

    async def _oci_of(self, c: CRIContainer) -> Mapping[str, Any]:
        """The OCI spec the container was created with (empty once its record is gone)."""
        with namespace(K8S), contextlib.suppress(CorralError, ValueError):
            record = await self._metadata.view(ContainerStore).get(c.id)
            if record.spec is not None:
                spec: dict[str, Any] = json.loads(record.spec.value)
                return spec
        return {}

    def _target_pid(self, container_id: str, sandbox_id: str, spec: ContainerSpec) -> int:
        """The pid of the running container of the same pod whose PID namespace ``spec`` targets
        (containerd's validateTargetContainer)."""
        target = self._containers.get(spec.target_id)
        problem = ""
        if target is None:
            problem = f'container "{spec.target_id}" does not exist: not found'
        elif target.sandbox_id != sandbox_id:
            owner = f"(sandbox {target.sandbox_id})"
            problem = f'container "{spec.target_id}" {owner} does not belong to sandbox {sandbox_id}'
        elif target.state != CONTAINER_RUNNING:
            problem = f'container "{spec.target_id}" is not running - in state {target.state}'
        if target is None or problem:
            raise invalid(
                f'failed to generate container "{container_id}" spec: failed to generate spec opts: '
                f"invalid target container: {problem}"
            )
        return target.pid

    async def _finish_spec(
        self, c: CRIContainer, pod: CRISandbox, spec: ContainerSpec, image: Mapping[str, Any],
        oci: dict[str, Any], mounts: Sequence[Mount],
    ) -> dict[str, Any]:  # fmt: skip
        """What containerd applies with the snapshot made: the user and groups read in the image's
        files, AppArmor and seccomp, then CDI devices and NRI's adjustments."""
        base = self._state / ROOTFS_MOUNTS
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Read as the files are on the host: an idmapped rootfs is the runtime's to mount.
        async with temporary_mount(without_idmap(mounts), base=base) as rootfs:
            apply_rootfs_spec_opts(oci, rootfs_spec_opts(c.id, spec, image, rootfs))
        # containerd's WithCDI: the request's devices, then those its annotations name, once each.
        devices = list(spec.cdi_devices)
        if devices or any(k.startswith("cdi.k8s.io/") for k in spec.annotations):
            if self._cdi is None:
                raise worded(FailedPrecondition, "CDI devices were asked for but CDI is not enabled")
            try:
                try:
                    devices += devices_from_annotations(dict(spec.annotations))
                except SpecError as exc:
                    raise InvalidArgument(f"failed to parse CDI device annotations: {exc}") from None
                self._cdi.inject(oci, list(dict.fromkeys(devices)))
            except CorralError as exc:
                raise worded(type(exc), f"failed to inject CDI devices: {exc}") from None
        if self._nri is not None:
            oci = dict(await self._nri.create_container(self._pods.pod_info(pod), self._info(c), oci))
        return oci

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

    def _log_of(self, c: CRIContainer) -> ContainerLog:
        return self._logs.setdefault(c.id, ContainerLog(c.log_path))

    async def _pump(self, c: CRIContainer, stream: str, fd: int) -> None:
        out = self._log_of(c)
        out.acquire()
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
                if records:
                    out.write(records)
            if tail:  # the output ended mid-line: a partial record, as containerd's
                stamp = rfc3339_nano(datetime.now(UTC)).encode()
                out.write(stamp + b" " + stream.encode() + b" P " + tail + b"\n")
        finally:
            os.close(fd)
            out.release()

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
                    await self._tell_nri("stop_container", c)
                raise
        await self._tell_nri("post_start_container", c)

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
                    oci = json.loads(record.spec.value) if record.spec is not None else {}
                    await self._nri.start_container(self._pods.pod_info(pod), self._info(c), oci)
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
        # containerd's WithContainerExit: the exit is the container's stop to NRI plugins (once).
        await self._tell_nri("stop_container", c)
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
                sig = _stop_signal(c)
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
            oci = await self._oci_of(c)
            await self._remove_parts(c)
            self._containers.pop(c.id, None)
            if self._names.get(c.name) == c.id:
                del self._names[c.name]
            await self._tell_nri("remove_container", c, oci)
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
        self._logs.pop(c.id, None)
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

    async def verbose_info(self, c: CRIContainer) -> dict[str, str]:
        """ContainerStatus's ``info`` with ``verbose``: containerd's ContainerInfo as JSON."""
        snapshotter, snapshot_key, options = "", "", None
        with namespace(K8S), contextlib.suppress(CorralError):
            record = await self._metadata.view(ContainerStore).get(c.id)
            snapshotter, snapshot_key = record.snapshotter, record.snapshot_key
        pod = self._pods.sandbox_of(c.sandbox_id)
        if pod is not None:
            options = self._pods.runtime_options_json(pod.runtime_handler)
        info = {
            "sandboxID": c.sandbox_id, "pid": c.pid, "removing": False, "snapshotKey": snapshot_key,
            "snapshotter": snapshotter, "runtimeType": c.runtime_type, "runtimeOptions": options,
            "config": dict(c.config), "runtimeSpec": dict(await self._oci_of(c)) or None,
        }  # fmt: skip
        return {"info": json.dumps(info, separators=(",", ":"))}

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

    # -- UpdateContainerResources / ReopenContainerLog --------------------------------------------
    async def update_resources(self, container_id: str, update: ResourceUpdate) -> None:
        """Write ``update`` into the container's spec (so a restart keeps it) and, while it runs,
        apply it through its task's Update; the spec is put back when that fails."""
        try:
            c = await self.get(container_id)
        except CorralError as exc:
            raise worded(type(exc), f"failed to find container: {exc}") from None
        pod = self._pods.sandbox_of(c.sandbox_id)
        if pod is None:
            raise worded(NotFound, f"sandbox {c.sandbox_id}: not found")
        async with c.lock:
            try:
                await self._update_resources(c, pod, update)
            except CorralError as exc:
                raise worded(type(exc), f"failed to update resources: {exc}") from None

    async def _update_resources(self, c: CRIContainer, pod: CRISandbox, update: ResourceUpdate) -> None:
        if c.id not in self._containers:
            raise precondition(f'container "{c.id}" is in removing state')
        config = self._pods.config
        with namespace(K8S):
            store = self._metadata.view(ContainerStore)
            try:
                record = await store.get(c.id)
            except CorralError as exc:
                raise worded(type(exc), f"failed to get container spec: {exc}") from None
            old = json.loads(record.spec.value) if record.spec else {}
            try:
                new = with_resources(
                    old, update,
                    tolerate_missing_hugetlb=config.tolerate_missing_hugetlb_controller,
                    disable_hugetlb=config.disable_hugetlb_controller,
                    swap=swap_controller_available(),
                    hugetlb=hugetlb_controller_present(),
                )  # fmt: skip
            except CorralError as exc:
                raise worded(
                    type(exc),
                    f"failed to update resource in spec: unable to set linux container resources: {exc}",
                ) from None
            if self._nri is not None:
                wanted = await self._nri.update_container(
                    self._pods.pod_info(pod), self._info(c), new, new["linux"]["resources"]
                )
                if wanted is not None:
                    new["linux"]["resources"] = dict(wanted)
            await store.update(replace(record, spec=AnyValue(SPEC_TYPE_URL, specs.spec_json(new))), ["spec"])
            try:
                await self._apply_resources(c, new["linux"]["resources"])
            except BaseException:
                with anyio.CancelScope(shield=True), contextlib.suppress(CorralError):
                    await store.update(record, ["spec"])
                raise
        c.resources = resources_of(new)
        self._save(c)
        log.info("cri_container_resources_updated", id=c.id, running=c.state == CONTAINER_RUNNING)

    async def _apply_resources(self, c: CRIContainer, resources: Mapping[str, Any]) -> None:
        """A running container's task is updated; a created or exited one only has its spec."""
        if c.state != CONTAINER_RUNNING:
            return
        try:
            task = await self._runtime.get(c.id)
            await task.update(AnyValue(RESOURCES_TYPE_URL, json.dumps(resources).encode()), {})
        except NotFound:
            return  # the task exited meanwhile
        except CorralError as exc:
            raise worded(type(exc), f"failed to update resources: {exc}") from None

    async def reopen_log(self, container_id: str) -> None:
        """Open the container's log path anew (the kubelet renamed the file to rotate it)."""
        try:
            c = await self.get(container_id)
        except CorralError as exc:
            raise worded(
                type(exc), f'an error occurred when try to find container "{container_id}": {exc}'
            ) from None
        if c.state != CONTAINER_RUNNING:
            raise precondition("container is not running")
        try:
            self._log_of(c).reopen()
        except OSError as exc:
            raise worded(
                FailedPrecondition, f'failed to create and open log file "{c.log_path}": {exc.strerror}'
            ) from None
        log.info("cri_container_log_reopened", id=c.id, path=c.log_path)

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


def _stop_signal(c: CRIContainer) -> int:
    """The signal StopContainer sends first: the container's stop signal, else SIGTERM."""
    try:
        return parse_signal(c.stop_signal) if c.stop_signal else int(signal.SIGTERM)
    except ValueError as exc:
        raise precondition(f'failed to parse stop signal "{c.stop_signal}": {exc}') from None
