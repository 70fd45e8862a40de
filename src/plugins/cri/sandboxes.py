"""CRI pod sandboxes: RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus and
ListPodSandbox over the sandbox store and the pod sandbox controller, in ``k8s.io``.

After containerd 2.0's ``internal/cri/server/sandbox_*.go``: a pod's id is 64 random hex digits,
its name ``<name>_<namespace>_<uid>_<attempt>`` is reserved while the pod exists, the record in the
sandbox store carries the label ``name`` and the CRI's metadata as the extension ``metadata`` (so a
restarted daemon finds its pods again), and the controller named by the runtime handler's
``sandboxer`` runs the pod. A pod that fails to start is rolled back entirely (controller, record,
name). Stop and Remove of an unknown pod succeed; ids may be given as unique prefixes.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import anyio
import structlog

from corral.kernel import CorralError, FailedPrecondition, InvalidArgument, NotFound
from corral.plugins.core import namespace
from corral.plugins.cri.config import (
    RUNC_RUNTIME_TYPES,
    RuntimeConfig,
    RuntimeHandler,
    proto_field_name,
    runc_options,
)
from corral.plugins.cri.errors import invalid, precondition, worded
from corral.plugins.metadata import AnyValue, Sandbox, SandboxRuntime, SandboxStore
from corral.plugins.nri import NRIEvents, PodInfo
from corral.plugins.sandbox import (
    POD_SANDBOX_CONFIG_TYPE_URL,
    STATE_NOT_READY,
    STATE_READY,
    STATE_UNKNOWN,
    ControllerStatus,
    CreateOptions,
    PodSandboxSpec,
    pod_network_note,
)
from corral.plugins.sandbox.controllers import SandboxControllers

__all__ = [
    "METADATA_EXTENSION",
    "METADATA_TYPE_URL",
    "NAME_LABEL",
    "CRISandbox",
    "PodSandboxes",
    "SandboxFilter",
    "find_by_prefix",
    "invalid",
    "precondition",
    "sandbox_name",
    "worded",
]

log = structlog.get_logger("corral.cri.sandboxes")

K8S = "k8s.io"
NAME_LABEL = "name"
METADATA_EXTENSION = "metadata"
METADATA_TYPE_URL = "github.com/containerd/containerd/v2/internal/cri/store/sandbox/Metadata"


def sandbox_name(pod: PodSandboxSpec) -> str:
    """containerd's makeSandboxName."""
    return "_".join((pod.name, pod.namespace, pod.uid, str(pod.attempt)))


def find_by_prefix(ids: Sequence[str], prefix: str) -> str:
    """containerd's truncindex: the one id ``prefix`` starts; an error for an empty or ambiguous
    prefix (InvalidArgument), NotFound for none."""
    if not prefix:
        raise invalid("prefix can't be empty")
    if prefix in ids:
        return prefix
    found = [i for i in ids if i.startswith(prefix)]
    if len(found) > 1:
        raise invalid(f"multiple IDs found with provided prefix: {prefix}")
    if not found:
        raise NotFound()
    return found[0]


@dataclass
class CRISandbox:
    """A pod as the CRI answers for it (containerd's sandboxstore.Sandbox)."""

    id: str
    name: str
    pod: PodSandboxSpec
    runtime_handler: str
    sandboxer: str
    created_at: datetime
    state: str = STATE_UNKNOWN
    """SANDBOX_READY or SANDBOX_NOTREADY (containerd's UNKNOWN lists as NOTREADY)."""
    ip: str = ""
    additional_ips: tuple[str, ...] = ()
    netns_path: str = ""
    resolv_path: str = ""
    shm_path: str = ""
    hostname_path: str = ""
    hosts_path: str = ""
    pid: int = 0
    info: Mapping[str, str] = field(default_factory=dict)

    def metadata_json(self) -> bytes:
        return json.dumps(
            {
                "ID": self.id,
                "Name": self.name,
                "Config": self.pod.to_json(),
                "RuntimeHandler": self.runtime_handler,
                "Sandboxer": self.sandboxer,
                "CreatedAt": self.created_at.isoformat(),
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_record(cls, record: Sandbox) -> CRISandbox | None:
        ext = record.extensions.get(METADATA_EXTENSION)
        if ext is None:
            return None
        meta: dict[str, Any] = json.loads(ext.value)
        return cls(
            id=record.id,
            name=meta["Name"],
            pod=PodSandboxSpec.from_json(meta["Config"]),
            runtime_handler=meta.get("RuntimeHandler", ""),
            sandboxer=record.sandboxer or meta.get("Sandboxer", ""),
            created_at=datetime.fromisoformat(meta["CreatedAt"]),
        )


@dataclass(frozen=True)
class SandboxFilter:
    """ListPodSandbox's filter: every given field must match."""

    id: str = ""
    state: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


class PodContainers(Protocol):
    """What a pod's stop and removal do to its containers (``corral.plugins.cri.containers``)."""

    async def stop_in(self, sandbox_id: str) -> None: ...

    async def remove_in(self, sandbox_id: str) -> None: ...


class PodSandboxes:
    """The pod half of containerd's criService, for sandboxes."""

    containers: PodContainers | None = None

    def __init__(
        self,
        config: RuntimeConfig,
        *,
        store: SandboxStore | None,
        controllers: SandboxControllers,
        nri: NRIEvents | None = None,
        encode_runc_options: Callable[[Mapping[str, bool | int | str]], AnyValue] | None = None,
    ) -> None:
        self.config = config
        self._store = store
        self._controllers = controllers
        self._nri = nri
        self._encode_runc_options = encode_runc_options
        self._pods: dict[str, CRISandbox] = {}
        self._names: dict[str, str] = {}
        self._loaded = False
        self._load_lock = anyio.Lock()
        self._locks: dict[str, anyio.Lock] = {}

    # -- the index --------------------------------------------------------------------------------
    def _require_store(self) -> SandboxStore:
        if self._store is None:
            raise worded(FailedPrecondition, "no sandbox store: pod sandboxes are not available")
        return self._store

    async def _load(self) -> None:
        """The pods a previous daemon made, found again in the sandbox store (once)."""
        if self._loaded:
            return
        async with self._load_lock:
            if self._loaded or self._store is None:
                self._loaded = True
                return
            with namespace(K8S):
                try:
                    records = await self._store.list()
                except NotFound:  # no sandbox bucket yet
                    records = []
            for record in records:
                try:
                    pod = CRISandbox.from_record(record)
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("cri_sandbox_unreadable", id=record.id, error=str(exc))
                    continue
                if pod is not None:
                    self._pods[pod.id] = pod
                    self._names[pod.name] = pod.id
            self._loaded = True

    def _lock(self, sandbox_id: str) -> anyio.Lock:
        return self._locks.setdefault(sandbox_id, anyio.Lock())

    async def get(self, sandbox_id: str) -> CRISandbox:
        """The pod ``sandbox_id`` names (a unique prefix will do)."""
        await self._load()
        return self._pods[find_by_prefix(list(self._pods), sandbox_id)]

    async def _refresh(self, pod: CRISandbox, verbose: bool = False) -> CRISandbox:
        """The pod's state, IPs and process from its controller; NOTREADY when it knows none."""
        try:
            with namespace(K8S):
                status: ControllerStatus = await self._controllers.status(pod.sandboxer, pod.id, verbose)
        except NotFound:
            pod.state, pod.ip, pod.additional_ips, pod.pid, pod.info = STATE_NOT_READY, "", (), 0, {}
            return pod
        pod.state = STATE_READY if status.state == STATE_READY else STATE_NOT_READY
        info = dict(status.info)
        pod.netns_path = info.pop("netns_path", "")
        pod.resolv_path = info.pop("resolv_path", "")
        pod.shm_path = info.pop("shm_path", "")
        pod.hostname_path = info.pop("hostname_path", "")
        pod.hosts_path = info.pop("hosts_path", "")
        pod.ip = info.pop("ip", "")
        extra = info.pop("additional_ips", "")
        pod.additional_ips = tuple(i for i in extra.split(",") if i)
        pod.pid = status.pid
        pod.info = info
        if pod.pod.host_network:
            pod.ip, pod.additional_ips = "", ()
        return pod

    # -- RunPodSandbox ----------------------------------------------------------------------------
    def handler_of(self, runtime_handler: str) -> tuple[str, str]:
        """The handler's runtime type and sandboxer (containerd's GetSandboxRuntime)."""
        name = runtime_handler or self.config.containerd.default_runtime_name
        handler = self.config.containerd.runtimes.get(name)
        if handler is None:
            raise invalid(f'no runtime for "{name}" is configured')
        return handler.runtime_type, handler.sandboxer or "podsandbox"

    def runtime_options_json(self, runtime_handler: str) -> dict[str, Any] | None:
        """The handler's runc Options as containerd's verbose info shows them (Go's JSON of the
        Options message: snake_case names, zero values left out); None without options."""
        handler = self._handler(runtime_handler)
        if handler is None or handler.runtime_type not in RUNC_RUNTIME_TYPES or not handler.options:
            return None
        return {proto_field_name(k): v for k, v in runc_options(handler).items() if v}

    def _handler(self, runtime_handler: str) -> RuntimeHandler | None:
        return self.config.containerd.runtimes.get(
            runtime_handler or self.config.containerd.default_runtime_name
        )

    def runtime_options(self, runtime_handler: str) -> AnyValue | None:
        """What the handler's ``options`` tell its shim (containerd's GenerateRuntimeOptions): the
        runc shim's Options for a runc handler with options, else nothing."""
        handler = self._handler(runtime_handler)
        if handler is None or handler.runtime_type not in RUNC_RUNTIME_TYPES or not handler.options:
            return None
        if self._encode_runc_options is None:
            return None
        return self._encode_runc_options(runc_options(handler))

    async def run(self, pod: PodSandboxSpec, config: bytes, runtime_handler: str = "") -> str:
        await self._load()
        store = self._require_store()
        sandbox_id = secrets.token_hex(32)
        name = sandbox_name(pod)
        owner = self._names.get(name)
        if owner is not None:
            raise worded(
                FailedPrecondition,
                f'failed to reserve sandbox name "{name}": name "{name}" is reserved for "{owner}"',
            )
        self._names[name] = sandbox_id
        try:
            try:
                runtime_type, sandboxer = self.handler_of(runtime_handler)
            except InvalidArgument as exc:
                raise invalid(f'unable to get OCI runtime for sandbox "{sandbox_id}": {exc}') from None
            cri = CRISandbox(
                sandbox_id, name, pod, runtime_handler, sandboxer, datetime.now(UTC), STATE_UNKNOWN
            )
            record = Sandbox(
                id=sandbox_id,
                runtime=SandboxRuntime(runtime_type, self.runtime_options(runtime_handler)),
                labels={NAME_LABEL: name},
                sandboxer=sandboxer,
                extensions={METADATA_EXTENSION: AnyValue(METADATA_TYPE_URL, cri.metadata_json())},
            )
            with namespace(K8S):
                try:
                    await store.create(record)
                except CorralError as exc:
                    raise worded(type(exc), f"failed to save sandbox metadata: {exc}") from None
                try:
                    await self._start(cri, record, config)
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await self._undo_run(cri, store)
                    raise
        except BaseException:
            if self._names.get(name) == sandbox_id:
                del self._names[name]
            raise
        self._pods[sandbox_id] = cri
        log.info("cri_sandbox_ready", id=sandbox_id, name=name)
        return sandbox_id

    async def _start(self, cri: CRISandbox, record: Sandbox, config: bytes) -> None:
        options = CreateOptions(
            options=AnyValue(POD_SANDBOX_CONFIG_TYPE_URL, config),
            annotations=dict(cri.pod.annotations),
            pod=cri.pod,
        )
        try:
            await self._controllers.create(cri.sandboxer, record, options)
        except CorralError as exc:
            raise worded(type(exc), f'failed to create sandbox "{cri.id}": {exc}') from None
        try:
            instance = await self._controllers.start(cri.sandboxer, cri.id)
        except CorralError as exc:
            # Worded by the controller service ('failed to start sandbox "ID": …'), as containerd's
            # CRI words it, or, where the pod's network failed, as its RunPodSandbox words that.
            network = pod_network_note(exc)
            if network is not None:
                raise worded(type(exc), network) from None
            raise
        cri.pid = instance.pid
        await self._refresh(cri)
        if self._nri is not None:
            try:
                await self._nri.run_pod_sandbox(self.pod_info(cri))
            except CorralError as exc:
                raise worded(type(exc), f"NRI RunPodSandbox failed: {exc}") from None

    async def _undo_run(self, cri: CRISandbox, store: SandboxStore) -> None:
        steps: tuple[tuple[str, Callable[[], Awaitable[None]]], ...] = (
            ("controller", lambda: self._controllers.shutdown(cri.sandboxer, cri.id)),
            ("record", lambda: store.delete(cri.id)),
        )
        for what, step in steps:
            try:
                await step()
            except NotFound:
                pass
            except Exception as exc:
                log.warning("cri_sandbox_rollback_failed", id=cri.id, step=what, error=str(exc))

    def pod_info(self, cri: CRISandbox) -> PodInfo:
        return PodInfo(
            id=cri.id,
            name=cri.pod.name,
            uid=cri.pod.uid,
            namespace=cri.pod.namespace,
            labels=dict(cri.pod.labels),
            annotations=dict(cri.pod.annotations),
            runtime_handler=cri.runtime_handler,
            cgroup_parent=cri.pod.cgroup_parent,
            pid=cri.pid,
            ips=tuple(i for i in (cri.ip, *cri.additional_ips) if i),
        )

    # -- StopPodSandbox / RemovePodSandbox --------------------------------------------------------
    async def _find_for_cleanup(self, sandbox_id: str) -> CRISandbox | None:
        try:
            return await self.get(sandbox_id)
        except NotFound:
            return None
        except InvalidArgument as exc:
            raise invalid(f'an error occurred when try to find sandbox "{sandbox_id}": {exc}') from None

    async def stop(self, sandbox_id: str) -> None:
        """Idempotent: an unknown pod is already stopped."""
        cri = await self._find_for_cleanup(sandbox_id)
        if cri is not None:
            async with self._lock(cri.id):
                await self._stop(cri)

    async def _stop(self, cri: CRISandbox) -> None:
        if self.containers is not None:
            try:
                await self.containers.stop_in(cri.id)
            except CorralError as exc:
                raise worded(type(exc), f"failed to stop containers of sandbox {cri.id!r}: {exc}") from None
        await self._refresh(cri)
        with namespace(K8S):
            try:
                await self._controllers.stop(cri.sandboxer, cri.id, None)
            except NotFound:
                log.warning("cri_sandbox_not_found_on_stop", id=cri.id)
            except CorralError as exc:
                raise worded(type(exc), f'failed to stop sandbox "{cri.id}": {exc}') from None
        if self._nri is not None:
            with contextlib.suppress(CorralError):
                await self._nri.stop_pod_sandbox(self.pod_info(cri))
        cri.state, cri.ip, cri.additional_ips = STATE_NOT_READY, "", ()

    async def remove(self, sandbox_id: str) -> None:
        """Stops the pod if it is not stopped, then removes it; an unknown pod is already removed."""
        cri = await self._find_for_cleanup(sandbox_id)
        if cri is None:
            return
        async with self._lock(cri.id):
            if cri.id not in self._pods:
                return
            try:
                await self._stop(cri)
            except CorralError as exc:
                raise worded(type(exc), f'failed to forcibly stop sandbox "{cri.id}": {exc}') from None
            if self.containers is not None:
                await self.containers.remove_in(cri.id)
            with namespace(K8S):
                try:
                    await self._controllers.shutdown(cri.sandboxer, cri.id)
                except NotFound:
                    pass
                except CorralError as exc:
                    raise worded(type(exc), f'failed to delete sandbox "{cri.id}": {exc}') from None
                if self._nri is not None:
                    with contextlib.suppress(CorralError):
                        await self._nri.remove_pod_sandbox(self.pod_info(cri))
                self._pods.pop(cri.id, None)
                if self._names.get(cri.name) == cri.id:
                    del self._names[cri.name]
                try:
                    await self._require_store().delete(cri.id)
                except NotFound:
                    pass
                except CorralError as exc:
                    raise worded(type(exc), f"failed to remove sandbox metadata from store: {exc}") from None
        self._locks.pop(cri.id, None)
        log.info("cri_sandbox_removed", id=cri.id)

    # -- PodSandboxStatus / ListPodSandbox --------------------------------------------------------
    async def status(self, sandbox_id: str, verbose: bool = False) -> CRISandbox:
        try:
            cri = await self.get(sandbox_id)
        except CorralError as exc:
            raise worded(type(exc), f"an error occurred when try to find sandbox: {exc}") from None
        return await self._refresh(cri, verbose)

    async def list(self, wanted: SandboxFilter | None = None) -> list[CRISandbox]:
        await self._load()
        wanted = wanted or SandboxFilter()
        wanted_id = wanted.id
        if wanted_id:
            with contextlib.suppress(CorralError):
                wanted_id = find_by_prefix(list(self._pods), wanted_id)
        out = []
        for cri in sorted(self._pods.values(), key=lambda p: p.created_at):
            if wanted_id and cri.id != wanted_id:
                continue
            await self._refresh(cri)
            if wanted.state is not None and cri.state != wanted.state:
                continue
            if any(cri.pod.labels.get(k) != v for k, v in wanted.labels.items()):
                continue
            out.append(cri)
        return out

    def sandbox_of(self, sandbox_id: str) -> CRISandbox | None:
        """The pod with exactly this id, for containers joining it."""
        return self._pods.get(sandbox_id)
