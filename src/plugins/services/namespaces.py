"""io.containerd.service.v1.namespaces-service — namespaces over the metadata store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from corral.kernel import InitContext, Registration
from corral.plugins import types
from corral.plugins.metadata._store import MetadataStore, Namespace


class NamespacesService:
    """The namespace operations a client sees; validation and storage live in the store."""

    def __init__(self, store: MetadataStore) -> None:
        self._store = store

    async def create(self, name: str, labels: Mapping[str, str]) -> Namespace:
        return await self._store.create_namespace(name, labels)

    async def get(self, name: str) -> Namespace:
        return await self._store.get_namespace(name)

    async def list(self) -> list[Namespace]:
        return await self._store.list_namespaces()

    async def update(self, name: str, labels: Mapping[str, str], paths: Sequence[str]) -> Namespace:
        return await self._store.update_namespace(name, labels, paths)

    async def delete(self, name: str) -> None:
        await self._store.delete_namespace(name)


async def init(ic: InitContext) -> NamespacesService:
    return NamespacesService(ic.get_single(types.METADATA))


registration = Registration(
    type=types.SERVICE,
    id="namespaces-service",
    init=init,
    requires=(types.METADATA,),
    description="create, label, list and remove namespaces",
)
