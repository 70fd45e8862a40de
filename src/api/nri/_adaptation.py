"""The runtime side of NRI, as containerd/nri's ``pkg/adaptation`` with containerd's ``internal/nri``
on top: plugins (external, pre-installed, in-process) in index order, one event at a time, their
replies combined, updates and evictions handed to the domain that owns the container.

A domain is a set of containers with a way to update and evict them: CRI's pods and containers,
or the tasks service's containers (a corral extension). Plugins see every domain's containers.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import anyio
import anyio.abc
import structlog

from corral.api.nri._plugins import (
    ExternalPlugin,
    HookPlugin,
    Plugin,
    PluginClosed,
    Timeouts,
    parse_plugin_name,
)
from corral.api.nri._result import CreateResult, UpdateResult, copy
from corral.kernel import CorralError, FailedPrecondition, Internal, InvalidArgument, OnFirstUse

if TYPE_CHECKING:
    from corral.api.types.nri.pkg.api import v1alpha1 as api
else:
    api = OnFirstUse("corral.api.types.nri.pkg.api.v1alpha1")  # NRI's messages: at the first plugin

log = structlog.get_logger("corral.nri")

DEFAULT_SOCKET_PATH = "/var/run/nri/nri.sock"
DEFAULT_PLUGIN_PATH = "/opt/nri/plugins"
DEFAULT_PLUGIN_CONFIG_PATH = "/etc/nri/conf.d"


@runtime_checkable
class Domain(Protocol):
    """Containers NRI plugins may see, update and evict (containerd's nri.Domain)."""

    @property
    def name(self) -> str: ...

    def list_pod_sandboxes(self) -> list[api.PodSandbox]: ...

    def list_containers(self) -> list[api.Container]: ...

    def has_container(self, container_id: str) -> bool: ...

    async def update_container(self, update: api.ContainerUpdate) -> None: ...

    async def evict_container(self, eviction: api.ContainerEviction) -> None: ...


class _State(Enum):
    CREATED = 1
    RUNNING = 2
    STOPPED = 3


@dataclass
class Settings:
    """How NRI runs: containerd's ``io.containerd.nri.v1.nri`` keys."""

    socket_path: str = DEFAULT_SOCKET_PATH
    plugin_path: str = DEFAULT_PLUGIN_PATH
    plugin_config_path: str = DEFAULT_PLUGIN_CONFIG_PATH
    timeouts: Timeouts = field(default_factory=Timeouts)
    disable_connections: bool = False
    runtime: tuple[str, str] = ("corral", "")


async def _answers(path: Path) -> bool:
    try:
        with anyio.fail_after(1):
            stream = await anyio.connect_unix(path)
    except (OSError, TimeoutError):
        return False
    await stream.aclose()
    return True


def _pod(pod: api.PodSandbox | None) -> api.PodSandbox:
    # Go plugins read pod fields without checking for nil: a container outside any pod gets an empty one.
    return pod if pod is not None else api.PodSandbox()


class NRI:
    """The NRI runtime: ``serve`` connects plugins; the event methods are what CRI and the tasks
    service call as pods and containers change."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._plugins: list[Plugin] = []
        self._lock = anyio.Lock()
        self._domains: list[Domain] = []
        self._state: dict[str, _State] = {}
        self._group: anyio.abc.TaskGroup | None = None
        self.listening = False
        self.not_listening = ""
        """Why external plugins cannot connect, when connections are wanted but there is no socket."""

    # -- plugins -----------------------------------------------------------------------------
    @property
    def plugins(self) -> list[Plugin]:
        """The plugins events go to, in invocation order."""
        return [p for p in self._plugins if not p.closed]

    def register_domain(self, domain: Domain) -> None:
        if any(d.name == domain.name for d in self._domains):
            raise InvalidArgument(f"NRI domain {domain.name!r} is already registered")
        self._domains.append(domain)

    async def register_hooks(self, hooks: object, name: str, index: str, config: str = "") -> Plugin:
        """Add an in-process plugin: configured, synchronized, then called on its events."""
        plugin = HookPlugin(hooks, name, index)
        await plugin.configure(config, self.settings.runtime, self.settings.timeouts)
        async with self._lock:
            await self._synchronize(plugin)
            self._add(plugin)
        return plugin

    def _add(self, plugin: Plugin) -> None:
        self._plugins = sorted([*self.plugins, plugin], key=lambda p: p.index)
        log.info("nri_plugin_order", plugins=[f"{p.name} ({p.kind})" for p in self._plugins])

    async def serve(self, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Launch pre-installed plugins, then accept connections until cancelled."""
        listener: socket.socket | None = None
        bound: tuple[int, int] | None = None
        try:
            async with anyio.create_task_group() as tg:
                self._group = tg
                await self._start_preinstalled(tg)
                if self.settings.disable_connections:
                    log.info("nri_connections_disabled")
                else:
                    listener = await self._listen()
                    if listener is not None:
                        st = os.stat(self.settings.socket_path)
                        bound = (st.st_dev, st.st_ino)
                        tg.start_soon(self._accept, listener, tg)
                self.listening = listener is not None
                task_status.started()
        finally:
            self._group = None
            if listener is not None:
                listener.close()
                # Only our own socket: another runtime may have taken the path since.
                with contextlib.suppress(OSError):
                    st = os.stat(self.settings.socket_path)
                    if (st.st_dev, st.st_ino) == bound:
                        os.unlink(self.settings.socket_path)

    async def _listen(self) -> socket.socket | None:
        """The listening socket; None (logged) when another runtime serves the path or it cannot
        be made: corrald never takes over a socket someone else answers on."""
        path = Path(self.settings.socket_path)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if path.exists() and stat.S_ISSOCK(path.lstat().st_mode):
                if await _answers(path):
                    log.warning("nri_socket_in_use", socket=str(path))
                    self.not_listening = (
                        f"NRI socket {path} is served by another runtime: external NRI plugins "
                        "connect to that one, not to this corrald"
                    )
                    return None
                path.unlink()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o177)
            try:
                sock.bind(str(path))
            finally:
                os.umask(old)
        except OSError as exc:
            log.warning("nri_listen_failed", socket=str(path), error=str(exc))
            self.not_listening = f"cannot listen on NRI socket {path}: {exc.strerror or exc}"
            return None
        sock.listen(16)
        sock.setblocking(False)
        log.info("nri_listening", socket=str(path))
        return sock

    async def _accept(self, listener: socket.socket, tg: anyio.abc.TaskGroup) -> None:
        while True:
            await anyio.wait_readable(listener)
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                continue
            except OSError as exc:
                log.warning("nri_accept_failed", error=str(exc))
                await anyio.sleep(0.1)
                continue
            plugin = ExternalPlugin(conn, self._updates_from_plugin)
            tg.start_soon(self._run_plugin, plugin, "")

    def _plugin_config(self, index: str, base: str) -> str:
        for name in (f"{index}-{base}.conf", f"{base}.conf"):
            path = Path(self.settings.plugin_config_path) / name
            try:
                return path.read_text()
            except FileNotFoundError:
                continue
        return ""

    async def _start_preinstalled(self, tg: anyio.abc.TaskGroup) -> None:
        directory = Path(self.settings.plugin_path)
        try:
            entries = sorted(directory.iterdir())
        except FileNotFoundError:
            return
        started = []
        for entry in entries:
            if entry.is_dir() or not entry.stat().st_mode & 0o111:
                continue
            try:
                index, base = parse_plugin_name(entry.name)
                config = self._plugin_config(index, base)
                plugin = await self._launch(entry, index, base)
            except (CorralError, OSError) as exc:
                log.warning("nri_plugin_launch_failed", plugin=entry.name, error=str(exc))
                continue
            log.info(
                "nri_plugin_launched", plugin=entry.name, pid=plugin.process.pid if plugin.process else 0
            )
            ready = anyio.Event()
            tg.start_soon(self._run_plugin, plugin, config, ready)
            started.append(ready)
        # The daemon is ready once each pre-installed plugin is in (or was dropped).
        for ready in started:
            await ready.wait()

    async def _launch(self, path: Path, index: str, base: str) -> ExternalPlugin:
        local, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            env = {"NRI_PLUGIN_NAME": base, "NRI_PLUGIN_IDX": index, "NRI_PLUGIN_SOCKET": str(peer.fileno())}
            process = await anyio.open_process(
                [str(path)], env=env, pass_fds=(peer.fileno(),), stdin=None, stdout=None, stderr=None
            )
        except BaseException:
            local.close()
            raise
        finally:
            peer.close()
        return ExternalPlugin(local, self._updates_from_plugin, launched=(index, base), process=process)

    async def _run_plugin(self, plugin: ExternalPlugin, config: str, done: anyio.Event | None = None) -> None:
        """One external plugin from connection to close: register, configure, synchronize, serve."""
        try:
            async with anyio.create_task_group() as tg:
                connected = anyio.Event()
                tg.start_soon(plugin.serve, connected.set)
                try:
                    await connected.wait()
                    await self._admit(plugin, config)
                finally:
                    if done is not None:
                        done.set()
        finally:
            plugin.close()
            if plugin.process is not None:
                with anyio.CancelScope(shield=True):
                    with contextlib.suppress(ProcessLookupError):
                        plugin.process.kill()
                    await plugin.process.wait()
            log.info("nri_plugin_gone", plugin=plugin.name)

    async def _admit(self, plugin: ExternalPlugin, config: str) -> None:
        timeouts = self.settings.timeouts
        with anyio.move_on_after(timeouts.registration) as waiting:
            await plugin.registered.wait()
        try:
            if waiting.cancelled_caught:
                raise InvalidArgument("plugin registration timed out")
            if plugin.closed:
                raise InvalidArgument("failed to register plugin, connection closed")
            if plugin.registration_error is not None:
                raise plugin.registration_error
            await plugin.configure(config, self.settings.runtime, timeouts)
            async with self._lock:
                await self._synchronize(plugin)
                self._add(plugin)
        except (CorralError, PluginClosed) as exc:
            log.error("nri_plugin_start_failed", plugin=plugin.name, kind=plugin.kind, error=str(exc))
            plugin.close()

    async def _synchronize(self, plugin: Plugin) -> None:
        pods = [p for d in self._domains for p in d.list_pod_sandboxes()]
        containers = [c for d in self._domains for c in d.list_containers()]
        updates = await plugin.synchronize(pods, containers, self.settings.timeouts.request)
        result = UpdateResult()
        result.update(updates, plugin.name)
        await self._apply_updates(result.replies())

    # -- updates and evictions ---------------------------------------------------------------
    def _domain_of(self, container_id: str) -> Domain | None:
        return next((d for d in self._domains if d.has_container(container_id)), None)

    async def _apply_updates(self, updates: Sequence[api.ContainerUpdate]) -> list[api.ContainerUpdate]:
        failed = []
        for u in updates:
            domain = self._domain_of(u.container_id)
            if domain is None:
                continue
            try:
                await domain.update_container(u)
            except Exception as exc:
                log.error("nri_update_failed", domain=domain.name, container=u.container_id, error=str(exc))
                if not u.ignore_failure:
                    failed.append(u)
        return failed

    async def _evict(self, evictions: Sequence[api.ContainerEviction]) -> None:
        for e in evictions:
            domain = self._domain_of(e.container_id)
            if domain is None:
                continue
            log.info("nri_evict", domain=domain.name, container=e.container_id, reason=e.reason)
            try:
                await domain.evict_container(e)
            except Exception as exc:
                log.error("nri_evict_failed", domain=domain.name, container=e.container_id, error=str(exc))

    async def _updates_from_plugin(self, updates: list[api.ContainerUpdate]) -> list[api.ContainerUpdate]:
        return await self._apply_updates(updates)

    async def evict(self, evictions: Sequence[api.ContainerEviction]) -> None:
        """Evict containers on a plugin's behalf (an in-process one, from outside any event)."""
        await self._evict(evictions)

    async def update_containers(self, updates: Sequence[api.ContainerUpdate]) -> list[api.ContainerUpdate]:
        """Unsolicited updates on a plugin's behalf; the ones that failed come back."""
        return await self._apply_updates(updates)

    # -- events ------------------------------------------------------------------------------
    async def _each(
        self, event: api.Event, request: Any, merge: Callable[[Any, str], None] | None = None
    ) -> None:
        timeout = self.settings.timeouts.request
        for plugin in self.plugins:
            if not plugin.subscribes(event):
                continue
            try:
                reply = await plugin.call(event, request, timeout)
            except PluginClosed:
                continue
            except CorralError:
                raise
            except Exception as exc:
                raise Internal(f"NRI plugin {plugin.name}: {exc}") from exc
            if merge is not None:
                merge(reply, plugin.name)

    async def _event(self, event: api.Event, request: Any) -> None:
        async with self._lock:
            await self._each(event, request)

    async def run_pod_sandbox(self, pod: api.PodSandbox) -> None:
        await self._event(api.Event.RUN_POD_SANDBOX, api.RunPodSandboxRequest(pod=pod))
        self._state[pod.id] = _State.RUNNING

    async def stop_pod_sandbox(self, pod: api.PodSandbox) -> None:
        if self._state.get(pod.id) not in (_State.CREATED, _State.RUNNING):
            return
        self._state[pod.id] = _State.STOPPED
        await self._event(api.Event.STOP_POD_SANDBOX, api.StopPodSandboxRequest(pod=pod))

    async def remove_pod_sandbox(self, pod: api.PodSandbox) -> None:
        if self._state.pop(pod.id, None) is None:
            return
        await self._event(api.Event.REMOVE_POD_SANDBOX, api.RemovePodSandboxRequest(pod=pod))

    async def create_container(
        self, pod: api.PodSandbox | None, container: api.Container
    ) -> api.ContainerAdjustment:
        """Every plugin's adjustment of ``container``, combined (a conflict fails the creation);
        updates and evictions the plugins asked for are carried out here, their failures logged."""
        request = api.CreateContainerRequest(pod=_pod(pod), container=container)
        pristine = copy(container)
        result = CreateResult(request)
        async with self._lock:
            self._state[container.id] = _State.CREATED
            await self._each(api.Event.CREATE_CONTAINER, request, result.apply)
            response = result.response()
            await self._validate(request.pod, pristine, response, result)
            await self._evict(response.evict)
            await self._apply_updates(response.update)
        assert response.adjust is not None
        return response.adjust

    async def _validate(
        self,
        pod: api.PodSandbox | None,
        container: api.Container,
        response: api.CreateContainerResponse,
        result: CreateResult,
    ) -> None:
        """Every validator plugin sees the combined adjustment; one rejection fails the creation."""
        validators = [p for p in self.plugins if p.subscribes(api.Event.VALIDATE_CONTAINER_ADJUSTMENT)]
        if not validators:
            return
        request = api.ValidateContainerAdjustmentRequest(
            pod=pod,
            container=container,
            adjust=response.adjust,
            update=list(response.update),
            owners=result.owners.to_proto(),
            plugins=[api.PluginInstance(name=p.base, index=p.index) for p in self.plugins],
        )
        for plugin in validators:
            try:
                reply = await plugin.call(
                    api.Event.VALIDATE_CONTAINER_ADJUSTMENT, request, self.settings.timeouts.request
                )
            except PluginClosed:
                raise FailedPrecondition(f"validator plugin {plugin.name} failed: it is gone") from None
            except CorralError as exc:
                raise FailedPrecondition(f"validator plugin {plugin.name} failed: {exc}") from None
            if reply is not None and reply.reject:
                reason = reply.reason or "unknown rejection reason"
                raise FailedPrecondition(
                    f'validator "{plugin.name}" rejected container adjustment, reason: {reason}'
                )

    async def post_create_container(self, pod: api.PodSandbox | None, container: api.Container) -> None:
        await self._event(
            api.Event.POST_CREATE_CONTAINER,
            api.PostCreateContainerRequest(pod=_pod(pod), container=container),
        )

    async def start_container(self, pod: api.PodSandbox | None, container: api.Container) -> None:
        self._state[container.id] = _State.RUNNING
        await self._event(
            api.Event.START_CONTAINER, api.StartContainerRequest(pod=_pod(pod), container=container)
        )

    async def post_start_container(self, pod: api.PodSandbox | None, container: api.Container) -> None:
        await self._event(
            api.Event.POST_START_CONTAINER, api.PostStartContainerRequest(pod=_pod(pod), container=container)
        )

    async def update_container(
        self, pod: api.PodSandbox | None, container: api.Container, resources: api.LinuxResources
    ) -> api.LinuxResources | None:
        """The resources plugins want ``container`` to have instead of ``resources`` (None: as asked)."""
        request = api.UpdateContainerRequest(pod=_pod(pod), container=container, linux_resources=resources)
        result = UpdateResult(updating=container.id)
        result.requested = resources

        def merge(reply: api.UpdateContainerResponse | None, plugin: str) -> None:
            if reply is not None:
                result.update(list(reply.update), plugin)
                evictions.extend(reply.evict)

        evictions: list[api.ContainerEviction] = []
        async with self._lock:
            await self._each(api.Event.UPDATE_CONTAINER, request, merge)
            await self._evict(evictions)
            await self._apply_updates(result.replies())
        return result.requested if result.requested is not resources else None

    async def post_update_container(self, pod: api.PodSandbox | None, container: api.Container) -> None:
        await self._event(
            api.Event.POST_UPDATE_CONTAINER,
            api.PostUpdateContainerRequest(pod=_pod(pod), container=container),
        )

    def recovered(self, container_id: str, running: bool) -> None:
        """A container that existed before this daemon started, so its stop and removal are sent."""
        self._state[container_id] = _State.RUNNING if running else _State.STOPPED

    async def stop_container(self, pod: api.PodSandbox | None, container: api.Container) -> None:
        """Once per container (a stop request and its exit are one stop to plugins)."""
        if self._state.get(container.id) not in (_State.CREATED, _State.RUNNING):
            return
        self._state[container.id] = _State.STOPPED
        result = UpdateResult()

        def merge(reply: api.StopContainerResponse | None, plugin: str) -> None:
            if reply is not None:
                result.update(list(reply.update), plugin)

        request = api.StopContainerRequest(pod=_pod(pod), container=container)
        async with self._lock:
            await self._each(api.Event.STOP_CONTAINER, request, merge)
            await self._apply_updates(result.replies())

    async def remove_container(self, pod: api.PodSandbox | None, container: api.Container) -> None:
        if container.id not in self._state:
            return
        await self.stop_container(pod, container)
        self._state.pop(container.id, None)
        await self._event(
            api.Event.REMOVE_CONTAINER, api.RemoveContainerRequest(pod=_pod(pod), container=container)
        )
