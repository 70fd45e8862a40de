"""io.containerd.service.v1.images-service — the namespaced image store, with ``sync`` deletes."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable

from corral.kernel import InitContext, Registration
from corral.plugins import types
from corral.plugins.core import Descriptor
from corral.plugins.metadata import CollectionResult, Image, ImageStore, Metadata


@runtime_checkable
class Collecting(Protocol):
    """What a sync delete needs from the ``io.containerd.gc.v1`` plugin."""

    async def collect_now(self) -> CollectionResult: ...


class ImagesService:
    """What the images service offers: the store's calls, and ``delete(sync=True)``, which returns
    once the collection that follows has removed what only the image held (as containerd's)."""

    def __init__(self, store: ImageStore, scheduler: Collecting | None) -> None:
        self.store = store
        self._scheduler = scheduler

    async def get(self, name: str) -> Image:
        return await self.store.get(name)

    async def list(self, filters: Sequence[str] = ()) -> builtins.list[Image]:
        return await self.store.list(filters)

    async def create(self, image: Image, *, epoch: datetime | None = None) -> Image:
        return await self.store.create(image, epoch=epoch)

    async def update(
        self, image: Image, paths: Sequence[str] = (), *, epoch: datetime | None = None
    ) -> Image:
        return await self.store.update(image, paths, epoch=epoch)

    async def delete(self, name: str, *, target: Descriptor | None = None, sync: bool = False) -> None:
        await self.store.delete(name, target=target)
        if sync and self._scheduler is not None:
            await self._scheduler.collect_now()


async def init(ic: InitContext) -> ImagesService:
    metadata = ic.get_single(types.METADATA, Metadata)
    return ImagesService(metadata.view(ImageStore), ic.get_single(types.GC, Collecting))


registration = Registration(
    type=types.SERVICE,
    id="images-service",
    init=init,
    requires=(types.METADATA, types.GC),
    description="namespaced images: names, targets, labels; deletes that can wait for the collection",
)
