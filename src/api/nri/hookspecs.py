"""NRI's events as pluggy hooks (project ``corral.nri``): a Python package adjusts containers in
process, with no socket and no separate program — something containerd cannot offer.

Implement any of these on an object marked with ``corral.api.nri.hookimpl``; each takes the
same messages an external NRI plugin receives (``corral.api.types.nri.pkg.api.v1alpha1``) and may
return the same reply, or a coroutine that yields it. The hooks an object implements are the
events it subscribes to. It is ordered among external plugins by its two-digit index.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import pluggy

from corral.kernel import OnFirstUse

if TYPE_CHECKING:
    from corral.api.types.nri.pkg.api import v1alpha1 as api
else:
    api = OnFirstUse("corral.api.types.nri.pkg.api.v1alpha1")  # NRI's messages: at the first plugin

PROJECT = "corral.nri"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class NRIHookSpecs:
    """One hook per NRI event; the name is the event's, snake_case, prefixed ``nri_``."""

    @hookspec
    def nri_configure(self, config: str, runtime_name: str, runtime_version: str) -> object:
        """Once, before any event; ``config`` is the plugin's configuration text, if any."""

    @hookspec
    def nri_synchronize(self, pods: list[api.PodSandbox], containers: list[api.Container]) -> object:
        """The pods and containers that exist; may return a list of ``ContainerUpdate``."""

    @hookspec
    def nri_run_pod_sandbox(self, pod: api.PodSandbox) -> object: ...

    @hookspec
    def nri_stop_pod_sandbox(self, pod: api.PodSandbox) -> object: ...

    @hookspec
    def nri_remove_pod_sandbox(self, pod: api.PodSandbox) -> object: ...

    @hookspec
    def nri_create_container(self, pod: api.PodSandbox, container: api.Container) -> object:
        """May return a ``ContainerAdjustment`` or a ``CreateContainerResponse`` (adjustment,
        updates of other containers, evictions)."""

    @hookspec
    def nri_post_create_container(self, pod: api.PodSandbox, container: api.Container) -> object: ...

    @hookspec
    def nri_start_container(self, pod: api.PodSandbox, container: api.Container) -> object: ...

    @hookspec
    def nri_post_start_container(self, pod: api.PodSandbox, container: api.Container) -> object: ...

    @hookspec
    def nri_update_container(
        self, pod: api.PodSandbox, container: api.Container, linux_resources: api.LinuxResources
    ) -> object:
        """May return an ``UpdateContainerResponse`` or a list of ``ContainerUpdate``."""

    @hookspec
    def nri_post_update_container(self, pod: api.PodSandbox, container: api.Container) -> object: ...

    @hookspec
    def nri_stop_container(self, pod: api.PodSandbox, container: api.Container) -> object:
        """May return a ``StopContainerResponse`` or a list of ``ContainerUpdate``."""

    @hookspec
    def nri_remove_container(self, pod: api.PodSandbox, container: api.Container) -> object: ...

    @hookspec
    def nri_validate_container_adjustment(self, request: api.ValidateContainerAdjustmentRequest) -> object:
        """A validator: the pristine container, the combined adjustment, who set what; return a
        ``ValidateContainerAdjustmentResponse`` with ``reject`` to refuse the creation."""


@functools.cache
def hook_events() -> dict[str, api.Event]:
    """Each event hook and the NRI event it stands for."""
    return {
        "nri_run_pod_sandbox": api.Event.RUN_POD_SANDBOX,
        "nri_stop_pod_sandbox": api.Event.STOP_POD_SANDBOX,
        "nri_remove_pod_sandbox": api.Event.REMOVE_POD_SANDBOX,
        "nri_create_container": api.Event.CREATE_CONTAINER,
        "nri_post_create_container": api.Event.POST_CREATE_CONTAINER,
        "nri_start_container": api.Event.START_CONTAINER,
        "nri_post_start_container": api.Event.POST_START_CONTAINER,
        "nri_update_container": api.Event.UPDATE_CONTAINER,
        "nri_post_update_container": api.Event.POST_UPDATE_CONTAINER,
        "nri_stop_container": api.Event.STOP_CONTAINER,
        "nri_remove_container": api.Event.REMOVE_CONTAINER,
        "nri_validate_container_adjustment": api.Event.VALIDATE_CONTAINER_ADJUSTMENT,
    }
