"""io.containerd.nri.v1.nri — NRI with containerd's configuration keys and defaults.

In-process plugins are ``io.corral.nri-plugin.v1`` plugins: each instance carries ``corral.nri``
hook implementations and an ``nri_index``; third-party ones are enabled in config.toml as any
plugin is. The tasks service's containers go through NRI too (``TaskLifecycle``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import anyio
import pluggy
import structlog

from corral import __version__
from corral.api.nri._adaptation import (
    DEFAULT_PLUGIN_CONFIG_PATH,
    DEFAULT_PLUGIN_PATH,
    DEFAULT_SOCKET_PATH,
    NRI,
    Settings,
)
from corral.api.nri._events import Events
from corral.api.nri._plugins import Timeouts
from corral.api.nri._tasks import TaskLifecycle
from corral.api.nri.hookspecs import PROJECT, NRIHookSpecs
from corral.kernel import InitContext, Registration, SkipPlugin
from corral.plugins import types
from corral.plugins.cdi import DeviceInjector
from corral.plugins.events.types import ContainerDelete, EventExchange, RawEvent, TaskExit
from corral.plugins.runtimes import PlatformRuntime

log = structlog.get_logger("corral.nri")


@dataclass
class NRIConfig:
    """The ``io.containerd.nri.v1.nri`` section (containerd's keys and defaults)."""

    disable: bool = False
    """Disable NRI altogether."""
    socket_path: str = DEFAULT_SOCKET_PATH
    """The socket external plugins connect to."""
    plugin_path: str = DEFAULT_PLUGIN_PATH
    """Pre-installed plugins (``NN-name`` executables) launched at start."""
    plugin_config_path: str = DEFAULT_PLUGIN_CONFIG_PATH
    """``NN-name.conf`` or ``name.conf``: the configuration a plugin is given."""
    plugin_registration_timeout: timedelta = timedelta(seconds=5)
    """How long a plugin has to register once connected."""
    plugin_request_timeout: timedelta = timedelta(seconds=2)
    """How long a plugin has to answer one event; one that does not is closed and left out."""
    disable_connections: bool = False
    """Accept no connections on the socket (pre-installed and in-process plugins only)."""


class NRIPlugin:
    """The plugin's instance (``corral.plugins.nri.NRIService``): CRI's events, the tasks service's,
    and the NRI runtime itself for code that speaks NRI's messages."""

    def __init__(self, nri: NRI, events: Events, tasks: TaskLifecycle) -> None:
        self.nri = nri
        self._events = events
        self._tasks = tasks

    @property
    def events(self) -> Events:
        return self._events

    @property
    def tasks(self) -> TaskLifecycle:
        return self._tasks

    async def condition(self) -> str:
        """Shown by ``corral plugins why``: ok, yet no external plugin can connect (and why)."""
        return self.nri.not_listening


async def _watch_containers(exchange: EventExchange, tasks: TaskLifecycle) -> None:
    """A task's init process exiting is its container's stop (containerd's NotifyContainerExit);
    a container's deletion is its removal."""
    topics = ['topic=="/tasks/exit"', 'topic=="/containers/delete"']
    async with exchange.subscribe(topics) as events:
        async for envelope in events:
            event = envelope.event
            try:
                if isinstance(event, ContainerDelete):
                    await tasks.removed(event.id)
                elif isinstance(event, TaskExit):
                    if event.id in ("", event.container_id):
                        await tasks.stopped(event.container_id, event.exit_status)
                elif isinstance(event, RawEvent) and event.type_url.endswith("containerd.events.TaskExit"):
                    from corral.api.types.containerd import events as pb_events

                    exit = pb_events.TaskExit.parse(event.value)
                    if exit.id in ("", exit.container_id):
                        await tasks.stopped(exit.container_id, exit.exit_status)
            except Exception as exc:
                log.warning("nri_event_failed", topic=envelope.topic, error=str(exc))


def check_hooks(hooks: object, name: str) -> None:
    """pluggy's checks: every ``corral.nri`` hook implemented is one of the specs, with its arguments."""
    checker = pluggy.PluginManager(PROJECT)
    checker.add_hookspecs(NRIHookSpecs)
    checker.register(hooks, name=name)
    checker.check_pending()


async def init(ic: InitContext) -> NRIPlugin:
    config: NRIConfig = ic.config
    if config.disable:
        raise SkipPlugin("NRI is disabled by configuration")
    settings = Settings(
        socket_path=config.socket_path,
        plugin_path=config.plugin_path,
        plugin_config_path=config.plugin_config_path,
        timeouts=Timeouts(
            registration=config.plugin_registration_timeout.total_seconds(),
            request=config.plugin_request_timeout.total_seconds(),
        ),
        disable_connections=config.disable_connections,
        runtime=("corral", __version__),
    )
    nri = NRI(settings)
    runtime = next(iter(ic.get_by_type(types.RUNTIME_V2, PlatformRuntime).values()), None)
    cdi = next(iter(ic.get_by_type(types.CDI, DeviceInjector).values()), None)
    tasks = TaskLifecycle(nri, runtime, cdi.inject if cdi is not None else None)
    nri.register_domain(tasks)
    await tasks.recover()
    for plugin_id, hooks in ic.get_by_type(types.NRI_PLUGIN).items():
        try:
            check_hooks(hooks, plugin_id)
            await nri.register_hooks(hooks, plugin_id, str(getattr(hooks, "nri_index", "50")))
        except Exception as exc:
            # One broken in-process plugin is left out; NRI and the other plugins go on.
            log.error("nri_hooks_refused", plugin=f"{types.NRI_PLUGIN}.{plugin_id}", error=str(exc))
    ready = anyio.Event()
    failed: list[Exception] = []

    async def serve() -> None:
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(nri.serve)
                ready.set()
        except Exception as exc:
            failed.append(exc)
            ready.set()
            if not failed[1:]:
                log.error("nri_failed", error=str(exc))

    ic.start_soon(serve, name="nri")
    await ready.wait()
    if failed:
        raise failed[0]
    exchange = next(iter(ic.get_by_type(types.EVENT, EventExchange).values()), None)
    if exchange is not None:
        ic.start_soon(lambda: _watch_containers(exchange, tasks), name="container-events")
    ic.meta.exports["socket_path"] = config.socket_path if nri.listening else ""
    return NRIPlugin(nri, Events(nri, cdi.inject if cdi is not None else None), tasks)


registration = Registration(
    type=types.NRI,
    id="nri",
    init=init,
    config=NRIConfig,
    after=(types.RUNTIME_V2, types.CDI, types.EVENT, types.NRI_PLUGIN),
    description="the Node Resource Interface: NRI plugins adjust and update containers",
)
