"""io.containerd.service.v1.namespaces-service — namespaces over the metadata store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from corral.kernel import InitContext, Registration
from corral.plugins import types
from corral.plugins.events.types import (
    Event,
    NamespaceCreate,
    NamespaceDelete,
    NamespaceUpdate,
    Publisher,
    optional_publisher,
)
from corral.plugins.metadata._store import MetadataStore, Namespace


class NamespacesService:
    """The namespace operations a client sees; validation and storage live in the store."""

    def __init__(self, store: MetadataStore, events: Publisher | None = None) -> None:
        self._store = store
        self._events = events

    async def _publish(self, event: Event, name: str) -> None:
        # containerd publishes under the namespace concerned, not the caller's.
        if self._events is not None:
            await self._events.publish(event, namespace=name)

    async def create(self, name: str, labels: Mapping[str, str]) -> Namespace:
        created = await self._store.create_namespace(name, labels)
        await self._publish(NamespaceCreate(name=name, labels=dict(labels)), name)
        return created

    async def get(self, name: str) -> Namespace:
        return await self._store.get_namespace(name)

    async def list(self) -> list[Namespace]:
        return await self._store.list_namespaces()

    async def update(self, name: str, labels: Mapping[str, str], paths: Sequence[str]) -> Namespace:
        updated = await self._store.update_namespace(name, labels, paths)
        # As containerd: the event carries the labels of the request, not the result.
        await self._publish(NamespaceUpdate(name=name, labels=dict(labels)), name)
        return updated

    async def delete(self, name: str) -> None:
        await self._store.delete_namespace(name)
        await self._publish(NamespaceDelete(name=name), name)


async def init(ic: InitContext) -> NamespacesService:
    return NamespacesService(ic.get_single(types.METADATA), optional_publisher(ic.get_by_type(types.EVENT)))


registration = Registration(
    type=types.SERVICE,
    id="namespaces-service",
    init=init,
    requires=(types.METADATA,),
    after=(types.EVENT,),
    description="create, label, list and remove namespaces",
)
