"""The plain-record contract (``corral.plugins.nri.NRIEvents``) over NRI's messages: what CRI calls."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from corral.api.nri._adaptation import NRI
from corral.api.nri._oci import (
    CDIInjector,
    apply_adjustment,
    container_from_spec,
    resources_from_oci,
    resources_to_oci,
)
from corral.kernel import OnFirstUse
from corral.plugins.nri import ContainerInfo, Domain, PodInfo, Spec

if TYPE_CHECKING:
    from corral.api.types.nri.pkg.api import v1alpha1 as api
else:
    api = OnFirstUse("corral.api.types.nri.pkg.api.v1alpha1")  # NRI's messages: at the first plugin

_STATES = {
    "created": "CONTAINER_CREATED",
    "running": "CONTAINER_RUNNING",
    "paused": "CONTAINER_PAUSED",
    "stopped": "CONTAINER_STOPPED",
}


def pod_to_nri(pod: PodInfo | None) -> api.PodSandbox | None:
    if pod is None:
        return None
    return api.PodSandbox(
        id=pod.id,
        name=pod.name,
        uid=pod.uid,
        namespace=pod.namespace,
        labels=dict(pod.labels),
        annotations=dict(pod.annotations),
        runtime_handler=pod.runtime_handler,
        linux=api.LinuxPodSandbox(cgroup_parent=pod.cgroup_parent, cgroups_path=pod.cgroups_path),
        pid=pod.pid,
        ips=list(pod.ips),
    )


def container_to_nri(container: ContainerInfo, spec: Spec) -> api.Container:
    nri = container_from_spec(
        container.id,
        spec,
        labels=container.labels,
        name=container.name,
        pod_sandbox_id=container.pod_sandbox_id,
        state=getattr(api.ContainerState, _STATES.get(container.state, "CONTAINER_UNKNOWN")),
        pid=container.pid,
        image=container.image,
        created_at=container.created_at,
    )
    nri.started_at, nri.finished_at, nri.exit_code = (
        container.started_at,
        container.finished_at,
        container.exit_code,
    )
    return nri


class DomainAdapter:
    """A plain-record domain as NRI's runtime sees domains."""

    def __init__(self, domain: Domain) -> None:
        self._domain = domain

    @property
    def name(self) -> str:
        return self._domain.name

    def list_pod_sandboxes(self) -> list[api.PodSandbox]:
        return [p for p in map(pod_to_nri, self._domain.list_pod_sandboxes()) if p is not None]

    def list_containers(self) -> list[api.Container]:
        return [container_to_nri(c, spec) for c, spec in self._domain.list_containers()]

    def has_container(self, container_id: str) -> bool:
        return self._domain.has_container(container_id)

    async def update_container(self, update: api.ContainerUpdate) -> None:
        if update.linux is not None and update.linux.resources is not None:
            await self._domain.update_container(update.container_id, resources_to_oci(update.linux.resources))

    async def evict_container(self, eviction: api.ContainerEviction) -> None:
        await self._domain.evict_container(eviction.container_id, eviction.reason)


class Events:
    """``NRIEvents`` for CRI: records and specs in, adjusted specs out."""

    def __init__(self, nri: NRI, cdi: CDIInjector | None = None) -> None:
        self._nri = nri
        self._cdi = cdi

    def register_domain(self, domain: Domain) -> None:
        self._nri.register_domain(DomainAdapter(domain))

    async def run_pod_sandbox(self, pod: PodInfo) -> None:
        await self._nri.run_pod_sandbox(pod_to_nri(pod) or api.PodSandbox())

    async def stop_pod_sandbox(self, pod: PodInfo) -> None:
        await self._nri.stop_pod_sandbox(pod_to_nri(pod) or api.PodSandbox())

    async def remove_pod_sandbox(self, pod: PodInfo) -> None:
        await self._nri.remove_pod_sandbox(pod_to_nri(pod) or api.PodSandbox())

    async def create_container(self, pod: PodInfo | None, container: ContainerInfo, spec: Spec) -> Spec:
        adjustment = await self._nri.create_container(pod_to_nri(pod), container_to_nri(container, spec))
        adjusted: Spec = json.loads(json.dumps(spec))
        apply_adjustment(adjusted, adjustment, self._cdi)
        return adjusted

    async def post_create_container(self, pod: PodInfo | None, container: ContainerInfo, spec: Spec) -> None:
        await self._nri.post_create_container(pod_to_nri(pod), container_to_nri(container, spec))

    async def start_container(self, pod: PodInfo | None, container: ContainerInfo, spec: Spec) -> None:
        await self._nri.start_container(pod_to_nri(pod), container_to_nri(container, spec))

    async def post_start_container(self, pod: PodInfo | None, container: ContainerInfo, spec: Spec) -> None:
        await self._nri.post_start_container(pod_to_nri(pod), container_to_nri(container, spec))

    async def update_container(
        self, pod: PodInfo | None, container: ContainerInfo, spec: Spec, resources: Mapping[str, Any]
    ) -> Mapping[str, Any] | None:
        wanted = await self._nri.update_container(
            pod_to_nri(pod), container_to_nri(container, spec), resources_from_oci(resources)
        )
        return None if wanted is None else resources_to_oci(wanted)

    async def stop_container(self, pod: PodInfo | None, container: ContainerInfo, spec: Spec) -> None:
        await self._nri.stop_container(pod_to_nri(pod), container_to_nri(container, spec))

    async def remove_container(self, pod: PodInfo | None, container: ContainerInfo, spec: Spec) -> None:
        await self._nri.remove_container(pod_to_nri(pod), container_to_nri(container, spec))
