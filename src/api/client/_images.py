"""Image calls."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import cached_property

from corral.api.client._connection import Connection
from corral.api.types.containerd import types as containerd_types
from corral.api.types.containerd.services.images import v1 as images_pb
from corral.api.types.google import protobuf


class ImageCalls(Connection):
    """Image calls."""

    @cached_property
    def images(self) -> images_pb.ImagesStub:
        return images_pb.ImagesStub(self.channel, metadata=self._metadata())

    async def list_images(self, filters: Sequence[str] = ()) -> list[images_pb.Image]:
        reply = await self.call(self.images.list(images_pb.ListImagesRequest(filters=list(filters))))
        return list(reply.images)

    async def get_image(self, name: str) -> images_pb.Image:
        reply = await self.call(self.images.get(images_pb.GetImageRequest(name=name)))
        assert reply.image is not None
        return reply.image

    async def create_image(
        self,
        name: str,
        target: containerd_types.Descriptor,
        labels: Mapping[str, str] | None = None,
        *,
        epoch: datetime | None = None,
        lease: str | None = None,
    ) -> images_pb.Image:
        """Name ``target`` (a manifest or index already in the content store); ``epoch`` sets
        its times (a source date epoch), ``lease`` holds it if it carries ``gc.expire``."""
        request = images_pb.CreateImageRequest(
            image=images_pb.Image(name=name, target=target, labels=dict(labels or {})),
            source_date_epoch=epoch,
        )
        stub = images_pb.ImagesStub(self.channel, metadata=self._lease_metadata(lease))
        reply = await self.call(stub.create(request))
        assert reply.image is not None
        return reply.image

    async def update_image(self, image: images_pb.Image, paths: Sequence[str] = ()) -> images_pb.Image:
        """Replace what ``paths`` name (``labels.KEY``, ``target``, …), or with none the whole image."""
        request = images_pb.UpdateImageRequest(
            image=image, update_mask=protobuf.FieldMask(paths=list(paths)) if paths else None
        )
        reply = await self.call(self.images.update(request))
        assert reply.image is not None
        return reply.image

    async def label_image(self, name: str, labels: Mapping[str, str]) -> images_pb.Image:
        """Set (or, with an empty value, remove) the given labels, leaving the others alone."""
        image = images_pb.Image(name=name, labels={k: v for k, v in labels.items() if v})
        return await self.update_image(image, [f"labels.{k}" for k in labels])

    async def delete_image(
        self, name: str, *, sync: bool = False, target: containerd_types.Descriptor | None = None
    ) -> None:
        """Remove an image; ``sync`` waits for the collection, ``target`` only if it still names that."""
        await self.call(self.images.delete(images_pb.DeleteImageRequest(name=name, sync=sync, target=target)))
