"""NRI for every container run through the tasks service (``ctr run``, ``corral run``): a corral
extension — containerd sends NRI events only for CRI's containers.

The tasks service calls ``create`` with a task's spec before the shim's Create (plugins adjust it),
``created``, ``starting``/``started`` around Start, and ``stopped`` when the task is deleted; a
container's deletion sends RemoveContainer. These containers have no pod: plugins see an empty
one. Plugins' updates go to the task (the shim's Update), evictions kill it.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from corral.api.nri._adaptation import NRI
from corral.api.nri._oci import (
    CDIInjector,
    Spec,
    apply_adjustment,
    container_from_spec,
    resources_from_oci,
    resources_to_oci,
)
from corral.api.nri._result import copy
from corral.kernel import OnFirstUse
from corral.plugins.core.namespaces import namespace as bound_namespace
from corral.plugins.metadata import AnyValue
from corral.plugins.runtimes import PlatformRuntime, TaskStatus

if TYPE_CHECKING:
    from corral.api.types.nri.pkg.api import v1alpha1 as api
else:
    api = OnFirstUse("corral.api.types.nri.pkg.api.v1alpha1")  # NRI's messages: at the first plugin

log = structlog.get_logger("corral.nri")

RESOURCES_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"


@dataclass
class _Tracked:
    namespace: str
    container: api.Container


class TaskLifecycle:
    """The tasks service's containers as an NRI domain, and the events their tasks send."""

    name = "tasks"

    def __init__(self, nri: NRI, runtime: PlatformRuntime | None, cdi: CDIInjector | None = None) -> None:
        self._nri = nri
        self._runtime = runtime
        self._cdi = cdi
        self._tracked: dict[str, _Tracked] = {}

    # -- Domain ------------------------------------------------------------------------------
    def list_pod_sandboxes(self) -> list[api.PodSandbox]:
        return []

    def list_containers(self) -> list[api.Container]:
        return [copy(t.container) for t in self._tracked.values()]

    def has_container(self, container_id: str) -> bool:
        return container_id in self._tracked

    async def update_container(self, update: api.ContainerUpdate) -> None:
        tracked = self._tracked[update.container_id]
        if self._runtime is None or update.linux is None or update.linux.resources is None:
            return
        value = json.dumps(resources_to_oci(update.linux.resources)).encode()
        with bound_namespace(tracked.namespace):
            task = await self._runtime.get(update.container_id)
            await task.update(AnyValue(RESOURCES_TYPE_URL, value), {})

    async def evict_container(self, eviction: api.ContainerEviction) -> None:
        tracked = self._tracked[eviction.container_id]
        if self._runtime is None:
            return
        with bound_namespace(tracked.namespace):
            task = await self._runtime.get(eviction.container_id)
            await task.kill(int(signal.SIGKILL), True)

    async def recover(self) -> None:
        """The tasks that outlived a restart of corrald, from their bundles' specs, so plugins are
        shown them (Synchronize) and hear of their stop and removal."""
        if self._runtime is None:
            return
        try:
            tasks = await self._runtime.tasks(all_namespaces=True)
        except Exception as exc:
            log.warning("nri_recover_failed", error=str(exc))
            return
        for task in tasks:
            try:
                with bound_namespace(task.namespace):
                    state = await task.state()
                spec = json.loads((Path(state.bundle) / "config.json").read_text()) if state.bundle else {}
            except Exception as exc:
                log.warning("nri_recover_failed", id=task.id, error=str(exc))
                continue
            running = state.status in (TaskStatus.RUNNING, TaskStatus.PAUSED, TaskStatus.PAUSING)
            container = container_from_spec(
                task.id,
                spec,
                state=api.ContainerState.CONTAINER_RUNNING
                if running
                else api.ContainerState.CONTAINER_STOPPED,
                pid=state.pid,
            )
            self._tracked[task.id] = _Tracked(task.namespace, container)
            self._nri.recovered(task.id, running)

    # -- events ------------------------------------------------------------------------------
    async def create(
        self, namespace: str, container_id: str, labels: Mapping[str, str], image: str, spec: Spec
    ) -> Spec:
        """``spec`` with every plugin's adjustment applied (a conflict or a plugin's error fails)."""
        created_at = int(time.time() * 1e9)
        nri_container = container_from_spec(
            container_id, spec, labels=labels, image=image, created_at=created_at
        )
        self._tracked[container_id] = _Tracked(namespace, nri_container)
        try:
            adjustment = await self._nri.create_container(None, copy(nri_container))
            adjusted: dict[str, Any] = json.loads(json.dumps(spec))
            apply_adjustment(adjusted, adjustment, self._cdi)
        except BaseException:
            self._tracked.pop(container_id, None)
            raise
        self._tracked[container_id] = _Tracked(
            namespace,
            container_from_spec(container_id, adjusted, labels=labels, image=image, created_at=created_at),
        )
        return adjusted

    async def created(self, container_id: str, pid: int) -> None:
        tracked = self._tracked.get(container_id)
        if tracked is None:
            return
        tracked.container.pid = pid
        await self._nri.post_create_container(None, copy(tracked.container))

    async def create_failed(self, container_id: str) -> None:
        """The shim refused the adjusted spec: plugins hear the container is gone."""
        tracked = self._tracked.pop(container_id, None)
        if tracked is not None:
            await self._nri.remove_container(None, tracked.container)

    async def starting(self, container_id: str) -> None:
        tracked = self._tracked.get(container_id)
        if tracked is not None:
            await self._nri.start_container(None, copy(tracked.container))

    async def started(self, container_id: str, pid: int) -> None:
        tracked = self._tracked.get(container_id)
        if tracked is None:
            return
        tracked.container.state = api.ContainerState.CONTAINER_RUNNING
        tracked.container.pid = pid
        tracked.container.started_at = int(time.time() * 1e9)
        await self._nri.post_start_container(None, copy(tracked.container))

    async def updating(self, container_id: str, resources: Mapping[str, Any]) -> Mapping[str, Any] | None:
        tracked = self._tracked.get(container_id)
        if tracked is None:
            return None
        wanted = await self._nri.update_container(
            None, copy(tracked.container), resources_from_oci(resources)
        )
        return None if wanted is None else resources_to_oci(wanted)

    async def updated(self, container_id: str) -> None:
        tracked = self._tracked.get(container_id)
        if tracked is not None:
            await self._nri.post_update_container(None, copy(tracked.container))

    async def stopped(self, container_id: str, exit_status: int = 0) -> None:
        tracked = self._tracked.get(container_id)
        if tracked is None:
            return
        tracked.container.state = api.ContainerState.CONTAINER_STOPPED
        tracked.container.exit_code = exit_status
        tracked.container.finished_at = int(time.time() * 1e9)
        await self._nri.stop_container(None, copy(tracked.container))

    async def removed(self, container_id: str) -> None:
        tracked = self._tracked.pop(container_id, None)
        if tracked is not None:
            await self._nri.remove_container(None, tracked.container)
