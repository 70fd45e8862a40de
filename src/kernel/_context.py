"""What a plugin's init receives: its config, its directories, and the plugins it declared."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

import anyio
import structlog

from corral.kernel._records import PluginMeta, PluginRecord, Status
from corral.kernel._registration import ALL_TYPES, Registration

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

PROPERTY_ROOT = "io.containerd.plugin.root"
PROPERTY_STATE = "io.containerd.plugin.state"
PROPERTY_GRPC_ADDRESS = "io.containerd.plugin.grpc.address"
PROPERTY_TTRPC_ADDRESS = "io.containerd.plugin.ttrpc.address"
PROPERTY_METRICS_ADDRESS = "io.corral.plugin.metrics.address"
"""``[metrics] address``: where the metrics plugin listens (empty: no listener)."""
PROPERTY_METRICS_HISTOGRAM = "io.corral.plugin.metrics.grpc_histogram"
"""``[metrics] grpc_histogram``, as "true" or "false"."""
PROPERTY_LOG_TRACE_ID = "io.corral.plugin.debug.log_trace_id"
"""``[debug] log_trace_id``, as "true" or "false": log entries carry the current ``trace_id``."""

T = TypeVar("T")


class PluginUnavailable(LookupError):
    """A looked-up plugin is missing, skipped or failed; the message says which and why.

    Raised out of an init, it makes the plugin skipped when what it looked up was skipped, disabled
    or absent, and failed when that had failed: one cause, one status, all the way down, with
    ``blockers`` naming the plugins in the way (for ``corral plugins why``).
    """

    def __init__(self, message: str, *, blockers: tuple[str, ...] = (), failed: bool = False) -> None:
        super().__init__(message)
        self.blockers = blockers
        self.failed = failed


class UndeclaredDependency(RuntimeError):
    """A plugin looked up a type it did not declare in ``requires`` or ``after``."""


class PluginSet(Protocol):
    """A live, read-only view of every plugin the kernel knows, in start order."""

    def records(self) -> Sequence[PluginRecord]: ...

    def get(self, uri: str) -> PluginRecord | None: ...

    def dependents(self, uri: str) -> tuple[str, ...]:
        """URIs of the started plugins that were ordered after ``uri`` because of it."""
        ...


class InitContext:
    """Handed to ``Registration.init``; lookups see only the types the plugin declared."""

    def __init__(
        self,
        registration: Registration,
        *,
        config: Any,
        root: Path,
        state: Path,
        properties: Mapping[str, str],
        plugins: PluginSet,
        task_group: TaskGroup,
    ) -> None:
        self.registration = registration
        self.config = config
        self.properties = dict(properties)
        self.meta = PluginMeta()
        self.plugins = plugins
        self.log = structlog.get_logger("corral.plugin").bind(plugin=registration.uri)
        self._root = root
        self._state = state
        self._task_group = task_group

    @property
    def uri(self) -> str:
        return self.registration.uri

    @cached_property
    def root(self) -> Path:
        """``<root>/<type>.<id>``, created (0700) on first use."""
        return ensure_directory(self._root, ROOT_MODE)

    @cached_property
    def state(self) -> Path:
        """``<state>/<type>.<id>``, created (0711) on first use."""
        return ensure_directory(self._state, STATE_MODE)

    def start_soon(self, fn: Callable[[], Coroutine[Any, Any, Any]], name: str = "") -> None:
        """Run a background task owned by the daemon: it is cancelled when the daemon stops."""
        self._task_group.start_soon(fn, name=f"{self.uri}:{name or getattr(fn, '__name__', 'task')}")

    async def task_group(self, name: str = "tasks") -> TaskGroup:
        """A task group of the plugin's own for the work its calls start later (a shim's
        connection, a pod's watcher), open from now until the daemon stops: then, after every
        plugin is closed, what still runs there is cancelled."""
        opened: list[TaskGroup] = []
        ready = anyio.Event()

        async def own() -> None:
            async with anyio.create_task_group() as tasks:
                opened.append(tasks)
                ready.set()
                await anyio.sleep_forever()

        self.start_soon(own, name=name)
        await ready.wait()
        return opened[0]

    def _declared(self, plugin_type: str) -> None:
        deps = self.registration.ordering_types
        if ALL_TYPES not in deps and plugin_type not in deps:
            raise UndeclaredDependency(
                f"{self.uri} looked up {plugin_type} without declaring it in requires or after"
            )

    def _of_type(self, plugin_type: str) -> list[PluginRecord]:
        self._declared(plugin_type)
        return [r for r in self.plugins.records() if r.type == plugin_type and r.uri != self.uri]

    # Each lookup takes an optional contract (a runtime-checkable Protocol or a class): the instance
    # is checked against it and typed as it, so callers never hold an ``Any``.
    @overload
    def get_by_type(self, plugin_type: str) -> dict[str, Any]: ...
    @overload
    def get_by_type(self, plugin_type: str, contract: type[T]) -> dict[str, T]: ...
    def get_by_type(self, plugin_type: str, contract: type[T] | None = None) -> dict[str, Any]:
        """Instances of every ok plugin of ``plugin_type``, by id (skipped and failed ones left out)."""
        return {r.id: _conforming(r, contract) for r in self._of_type(plugin_type) if r.ok}

    @overload
    def get_single(self, plugin_type: str) -> Any: ...
    @overload
    def get_single(self, plugin_type: str, contract: type[T]) -> T: ...
    def get_single(self, plugin_type: str, contract: type[T] | None = None) -> Any:
        """The one ok plugin of ``plugin_type``."""
        records = self._of_type(plugin_type)
        ok = [r for r in records if r.ok]
        if len(ok) == 1:
            return _conforming(ok[0], contract)
        if len(ok) > 1:
            raise PluginUnavailable(
                f"multiple plugins registered for {plugin_type}: {', '.join(r.uri for r in ok)}", failed=True
            )
        raise PluginUnavailable(
            f"no plugins registered for {plugin_type}{_why_none(records)}",
            blockers=tuple(r.uri for r in records),
            failed=any(r.status is Status.ERROR for r in records),
        )

    @overload
    def get_by_id(self, plugin_type: str, plugin_id: str) -> Any: ...
    @overload
    def get_by_id(self, plugin_type: str, plugin_id: str, contract: type[T]) -> T: ...
    def get_by_id(self, plugin_type: str, plugin_id: str, contract: type[T] | None = None) -> Any:
        self._declared(plugin_type)
        rec = self.plugins.get(f"{plugin_type}.{plugin_id}")
        if rec is None:
            raise PluginUnavailable(f"no plugins registered for {plugin_type}.{plugin_id}")
        if not rec.ok:
            raise PluginUnavailable(
                f"{rec.uri} is {rec.status.value}: {rec.reason}",
                blockers=(rec.uri,),
                failed=rec.status is Status.ERROR,
            )
        return _conforming(rec, contract)


def _conforming(rec: PluginRecord, contract: type[Any] | None) -> Any:
    if contract is not None and not isinstance(rec.instance, contract):
        raise PluginUnavailable(
            f"{rec.uri} does not provide {contract.__qualname__} (its instance is a {type(rec.instance).__name__})",
            blockers=(rec.uri,),
            failed=True,
        )
    return rec.instance


def _why_none(records: Sequence[PluginRecord]) -> str:
    if not records:
        return ""
    return " (" + "; ".join(f"{r.uri} is {r.status.value}: {r.reason}" for r in records) + ")"


ROOT_MODE = 0o700
"""The daemon's root and each plugin's directory in it: nobody else may enter."""
STATE_MODE = 0o711
"""The daemon's state and each plugin's directory in it: others may pass through (to a socket
they were given access to), never list or read."""


def ensure_directory(path: Path, mode: int) -> Path:
    """Create ``path`` with ``mode``; an existing one that grants more than ``mode`` is tightened
    to it, with a log line, so a root made by an older or careless install stops leaking."""
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    current = path.stat().st_mode & 0o777
    if current & ~mode:
        path.chmod(current & mode)
        structlog.get_logger("corral.kernel").warning(
            "directory_mode_repaired", path=str(path), was=oct(current), now=oct(current & mode)
        )
    return path


def dependency_problem(
    registration: Registration, records: Sequence[PluginRecord]
) -> tuple[Status, str, tuple[str, ...]] | None:
    """Why a plugin cannot start given the state of the types it requires, or None if it can."""
    for plugin_type in registration.requires:
        if plugin_type == ALL_TYPES:
            continue
        providers = [r for r in records if r.type == plugin_type]
        if any(r.ok for r in providers):
            continue
        if not providers:
            return Status.SKIP, f"requires {plugin_type}, which no installed plugin provides", ()
        blockers = tuple(r.uri for r in providers)
        detail = "; ".join(
            f"{r.uri} is {r.status.value}" + (f": {r.reason}" if r.reason else "") for r in providers
        )
        failed = any(r.status is Status.ERROR for r in providers)
        return (Status.ERROR if failed else Status.SKIP), f"requires {plugin_type}, but {detail}", blockers
    return None
