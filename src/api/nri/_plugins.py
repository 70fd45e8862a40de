"""NRI plugins as the runtime sees them: an external process over a multiplexed ttrpc socket, or a
Python object with ``corral.nri`` hooks. Both are called the same way, one event at a time.

External plugins follow containerd/nri's ``adaptation/plugin.go``: the runtime calls the plugin on
logical connection 1 and serves ``RegisterPlugin`` and ``UpdateContainers`` on connection 2; a
plugin must register within the registration timeout, then is configured (the events it
subscribes to come back as a bit mask) and synchronized. A call that times out or finds the
connection closed is fatal: the plugin is closed and left out, the event goes on without it.
"""

from __future__ import annotations

import functools
import inspect
import re
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import structlog

from corral.api.nri._mux import PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN, Mux
from corral.api.nri.hookspecs import hook_events
from corral.api.ttrpc import TTRPCClient, TTRPCContext, TTRPCServer
from corral.kernel import DeadlineExceeded, InvalidArgument, OnFirstUse, ResourceExhausted, Unavailable

if TYPE_CHECKING:
    from corral.api.types.nri.pkg.api import v1alpha1 as api
else:
    api = OnFirstUse("corral.api.types.nri.pkg.api.v1alpha1")  # NRI's messages: at the first plugin

log = structlog.get_logger("corral.nri")

PLUGIN_SERVICE = "nri.pkg.api.v1alpha1.Plugin"
RUNTIME_SERVICE = "nri.pkg.api.v1alpha1.Runtime"


@functools.cache
def valid_events() -> int:
    """Every event's bit (event e is bit e-1): what a plugin that names none subscribes to."""
    return (1 << (api.Event.LAST - 1)) - 1


_NAME = re.compile(r"^[a-zA-Z0-9_.+-]+$")


def check_plugin_name(name: str) -> None:
    if not name:
        raise InvalidArgument("invalid plugin name: name is empty")
    if not _NAME.match(name):
        raise InvalidArgument(f"invalid plugin name {name!r}: contains invalid characters")


def check_plugin_index(index: str) -> None:
    if len(index) != 2 or not index.isdigit() or not index.isascii():
        raise InvalidArgument(f"invalid plugin index {index!r}, must be 2 digits")


def parse_plugin_name(filename: str) -> tuple[str, str]:
    """``10-logger`` → ("10", "logger"), as NRI names pre-installed plugins."""
    index, sep, base = filename.partition("-")
    if not sep:
        raise InvalidArgument(f"invalid plugin name {filename!r}, idx-pluginname expected")
    check_plugin_index(index)
    return index, base


def mask_of(*events: api.Event) -> int:
    mask = 0
    for event in events:
        mask |= 1 << (event - 1)
    return mask


@dataclass(frozen=True)
class EventCall:
    """How one event is sent: the Plugin service's method and its reply type."""

    event: api.Event
    method: str
    response: type[Any]


@functools.cache
def event_calls() -> dict[api.Event, EventCall]:
    return {
        e.event: e
        for e in (
            EventCall(api.Event.RUN_POD_SANDBOX, "RunPodSandbox", api.RunPodSandboxResponse),
            EventCall(api.Event.STOP_POD_SANDBOX, "StopPodSandbox", api.StopPodSandboxResponse),
            EventCall(api.Event.REMOVE_POD_SANDBOX, "RemovePodSandbox", api.RemovePodSandboxResponse),
            EventCall(api.Event.CREATE_CONTAINER, "CreateContainer", api.CreateContainerResponse),
            EventCall(
                api.Event.POST_CREATE_CONTAINER, "PostCreateContainer", api.PostCreateContainerResponse
            ),
            EventCall(api.Event.START_CONTAINER, "StartContainer", api.StartContainerResponse),
            EventCall(api.Event.POST_START_CONTAINER, "PostStartContainer", api.PostStartContainerResponse),
            EventCall(api.Event.UPDATE_CONTAINER, "UpdateContainer", api.UpdateContainerResponse),
            EventCall(
                api.Event.POST_UPDATE_CONTAINER, "PostUpdateContainer", api.PostUpdateContainerResponse
            ),
            EventCall(api.Event.STOP_CONTAINER, "StopContainer", api.StopContainerResponse),
            EventCall(api.Event.REMOVE_CONTAINER, "RemoveContainer", api.RemoveContainerResponse),
            EventCall(
                api.Event.VALIDATE_CONTAINER_ADJUSTMENT,
                "ValidateContainerAdjustment",
                api.ValidateContainerAdjustmentResponse,
            ),
        )
    }


@dataclass(frozen=True)
class Timeouts:
    registration: float = 5.0
    request: float = 2.0


class PluginClosed(Exception):
    """The plugin is gone (its connection closed, or it was closed after a fatal error)."""


class Plugin:
    """What the runtime holds of one plugin, whatever kind."""

    kind = "plugin"
    index = ""
    base = ""
    events = 0
    closed = False

    @property
    def name(self) -> str:
        return f"{self.index}-{self.base}"

    def subscribes(self, event: api.Event) -> bool:
        return bool(self.events & (1 << (event - 1)))

    async def configure(self, config: str, runtime: tuple[str, str], timeouts: Timeouts) -> None:
        raise NotImplementedError

    async def synchronize(
        self, pods: list[api.PodSandbox], containers: list[api.Container], limit: float
    ) -> list[api.ContainerUpdate]:
        raise NotImplementedError

    async def call(self, event: api.Event, request: Any, limit: float) -> Any:
        """The plugin's reply to ``event``; PluginClosed once it is gone or after a fatal error."""
        raise NotImplementedError

    def close(self) -> None:
        self.closed = True


class ExternalPlugin(Plugin):
    """A plugin process on the other end of a socket: connected to the NRI socket, or launched by
    corrald from the plugin path with a socketpair (``NRI_PLUGIN_SOCKET=3``)."""

    def __init__(
        self,
        trunk: socket.socket,
        update_containers: Callable[[list[api.ContainerUpdate]], Awaitable[list[api.ContainerUpdate]]],
        *,
        launched: tuple[str, str] | None = None,
        process: anyio.abc.Process | None = None,
    ) -> None:
        self.kind = "pre-connected" if launched else "external"
        if launched:
            self.index, self.base = launched
        self._trunk = trunk
        self._update_containers = update_containers
        self.process = process
        self.registered = anyio.Event()
        self.registration_error: Exception | None = None
        self._client: TTRPCClient | None = None
        self._scope = anyio.CancelScope()
        try:
            self.pid = struct.unpack("3i", trunk.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
        except OSError:
            self.pid = 0

    async def serve(self, ready: Callable[[], None]) -> None:
        """The connection's life: multiplex the socket, serve Runtime, call Plugin; ``ready`` once
        the client side is up. Returns when the plugin's connection has ended or it was closed."""
        mux = Mux(self._trunk, (PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN))
        server = TTRPCServer()
        server.register_unary(RUNTIME_SERVICE, "RegisterPlugin", api.RegisterPluginRequest, self._register)
        server.register_unary(
            RUNTIME_SERVICE, "UpdateContainers", api.UpdateContainersRequest, self._updates_from_plugin
        )
        with self._scope:
            async with mux.running() as streams, anyio.create_task_group() as tg:
                tg.start_soon(server.serve_stream, streams[RUNTIME_SERVICE_CONN])
                async with TTRPCClient.over(streams[PLUGIN_SERVICE_CONN]) as client:
                    self._client = client
                    ready()
                    await client.wait_closed()
                tg.cancel_scope.cancel()
        self.closed = True
        self.registered.set()

    def close(self) -> None:
        if not self.closed:
            log.info("nri_plugin_closed", plugin=self.name, kind=self.kind)
        self.closed = True
        self._scope.cancel()

    async def _register(self, request: api.RegisterPluginRequest, ctx: TTRPCContext) -> api.Empty:
        try:
            if self.kind == "external":
                check_plugin_name(request.plugin_name)
                check_plugin_index(request.plugin_idx)
                self.base, self.index = request.plugin_name, request.plugin_idx
        except InvalidArgument as exc:
            self.registration_error = exc
            raise
        finally:
            self.registered.set()
        log.info(
            "nri_plugin_registered", plugin=self.name, kind=self.kind, nri=request.NRI_version or "unknown"
        )
        return api.Empty()

    async def _updates_from_plugin(
        self, request: api.UpdateContainersRequest, ctx: TTRPCContext
    ) -> api.UpdateContainersResponse:
        log.info(
            "nri_plugin_updates", plugin=self.name, updates=len(request.update), evictions=len(request.evict)
        )
        failed = await self._update_containers(list(request.update))
        return api.UpdateContainersResponse(failed=failed)

    async def _request(self, method: str, request: Any, response: type[Any], limit: float) -> Any:
        client = self._client
        if self.closed or client is None:
            raise PluginClosed(self.name)
        try:
            return await client.call_message(PLUGIN_SERVICE, method, request, response, timeout=limit)
        except (DeadlineExceeded, Unavailable) as exc:
            # As NRI's isFatalError: a timeout or a closed connection ends the plugin.
            log.error("nri_plugin_failed", plugin=self.name, method=method, error=str(exc))
            self.close()
            raise PluginClosed(self.name) from exc

    async def configure(self, config: str, runtime: tuple[str, str], timeouts: Timeouts) -> None:
        request = api.ConfigureRequest(
            config=config,
            runtime_name=runtime[0],
            runtime_version=runtime[1],
            registration_timeout=int(timeouts.registration * 1000),
            request_timeout=int(timeouts.request * 1000),
        )
        reply = await self._request("Configure", request, api.ConfigureResponse, timeouts.request)
        events = reply.events
        if events and events & ~valid_events():
            raise InvalidArgument(f"invalid plugin events: 0x{events & ~valid_events():x}")
        self.events = events or valid_events()

    async def synchronize(
        self, pods: list[api.PodSandbox], containers: list[api.Container], limit: float
    ) -> list[api.ContainerUpdate]:
        # As NRI: a state too big for one message goes in batches (``more`` on all but the last),
        # cut smaller each time the message is refused as too large.
        pods_per, containers_per = len(pods), len(containers)
        while True:
            request = api.SynchronizeRequest(
                pods=pods[:pods_per],
                containers=containers[:containers_per],
                more=len(pods) > pods_per or len(containers) > containers_per,
            )
            try:
                reply = await self._request("Synchronize", request, api.SynchronizeResponse, limit)
            except ResourceExhausted:
                if pods_per + containers_per <= 8:
                    raise InvalidArgument("failed to synchronize plugin with split messages") from None
                pods_per, containers_per = max(pods_per // 2, 4), max(containers_per // 2, 4)
                pods_per, containers_per = min(pods_per, len(pods)), min(containers_per, len(containers))
                continue
            if not request.more:
                return list(reply.update)
            if reply.update or not reply.more:
                self.close()
                raise InvalidArgument("plugin does not handle split sync requests")
            pods, containers = pods[pods_per:], containers[containers_per:]
            pods_per, containers_per = min(pods_per, len(pods)), min(containers_per, len(containers))

    async def call(self, event: api.Event, request: Any, limit: float) -> Any:
        spec = event_calls()[event]
        return await self._request(spec.method, request, spec.response, limit)


class HookPlugin(Plugin):
    """An object with ``corral.nri`` hook implementations, called in corrald's own process."""

    kind = "in-process"

    def __init__(self, hooks: object, base: str, index: str) -> None:
        check_plugin_name(base)
        check_plugin_index(index)
        self.hooks = hooks
        self.base, self.index = base, index
        self.events = mask_of(
            *(e for name, e in hook_events().items() if callable(getattr(hooks, name, None)))
        )

    async def _invoke(self, name: str, limit: float, **kwargs: Any) -> Any:
        function = getattr(self.hooks, name, None)
        if function is None:
            return None
        if self.closed:
            raise PluginClosed(self.name)
        try:
            with anyio.fail_after(limit):
                result = function(**kwargs)
                if inspect.isawaitable(result):
                    result = await result
        except TimeoutError:
            log.error("nri_plugin_failed", plugin=self.name, method=name, error=f"timed out after {limit:g}s")
            self.close()
            raise PluginClosed(self.name) from None
        return result

    async def configure(self, config: str, runtime: tuple[str, str], timeouts: Timeouts) -> None:
        await self._invoke(
            "nri_configure",
            timeouts.request,
            config=config,
            runtime_name=runtime[0],
            runtime_version=runtime[1],
        )

    async def synchronize(
        self, pods: list[api.PodSandbox], containers: list[api.Container], limit: float
    ) -> list[api.ContainerUpdate]:
        result = await self._invoke("nri_synchronize", limit, pods=pods, containers=containers)
        return list(result or [])

    async def call(self, event: api.Event, request: Any, limit: float) -> Any:
        name = next(n for n, e in hook_events().items() if e == event)
        if event == api.Event.VALIDATE_CONTAINER_ADJUSTMENT:
            return _as_reply(event, await self._invoke(name, limit, request=request))
        kwargs: dict[str, Any] = {"pod": request.pod or api.PodSandbox()}
        if hasattr(request, "container"):
            kwargs["container"] = request.container or api.Container()
        if event == api.Event.UPDATE_CONTAINER:
            kwargs["linux_resources"] = request.linux_resources or api.LinuxResources()
        result = await self._invoke(name, limit, **kwargs)
        return _as_reply(event, result)


def _as_reply(event: api.Event, result: Any) -> Any:
    """A hook's return value as the event's reply message."""
    response = event_calls()[event].response
    if result is None or isinstance(result, response):
        return result
    if event == api.Event.CREATE_CONTAINER and isinstance(result, api.ContainerAdjustment):
        return api.CreateContainerResponse(adjust=result)
    if event in (api.Event.UPDATE_CONTAINER, api.Event.STOP_CONTAINER) and isinstance(result, list):
        return response(update=result)
    raise InvalidArgument(f"NRI hook for {event.name} returned a {type(result).__name__}")
