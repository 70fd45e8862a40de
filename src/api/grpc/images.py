"""io.containerd.grpc.v1.images — containerd.services.images.v1.Images."""

from __future__ import annotations

from corral.api.edge import error_for
from corral.api.grpc import GRPCServices
from corral.api.types.containerd.services.images import v1 as pb
from corral.api.types.google import protobuf
from corral.api.wire import descriptor_from_wire, field_mask_paths, image_from_wire, image_to_wire
from corral.kernel import InitContext, Registration
from corral.plugins import types
from corral.plugins.services.images import ImagesService

INVALID_ARGUMENT = 3


def _named(image: pb.Image | None) -> pb.Image:
    """containerd's services check the name before the store sees the request (a bare status,
    with no error kind appended to its message)."""
    if image is None or not image.name:
        raise error_for(INVALID_ARGUMENT, "Image.Name required")
    return image


class ImagesGRPC(pb.ImagesBase):
    def __init__(self, local: ImagesService) -> None:
        self._local = local

    async def get(self, message: pb.GetImageRequest) -> pb.GetImageResponse:
        return pb.GetImageResponse(image=image_to_wire(await self._local.get(message.name)))

    async def list(self, message: pb.ListImagesRequest) -> pb.ListImagesResponse:
        images = await self._local.list(message.filters)
        return pb.ListImagesResponse(images=[image_to_wire(i) for i in images])

    async def create(self, message: pb.CreateImageRequest) -> pb.CreateImageResponse:
        image = image_from_wire(_named(message.image))
        created = await self._local.create(image, epoch=message.source_date_epoch)
        return pb.CreateImageResponse(image=image_to_wire(created))

    async def update(self, message: pb.UpdateImageRequest) -> pb.UpdateImageResponse:
        image = image_from_wire(_named(message.image))
        paths = field_mask_paths(message.update_mask)
        updated = await self._local.update(image, paths, epoch=message.source_date_epoch)
        return pb.UpdateImageResponse(image=image_to_wire(updated))

    async def delete(self, message: pb.DeleteImageRequest) -> protobuf.Empty:
        target = None if message.target is None else descriptor_from_wire(message.target)
        await self._local.delete(message.name, target=target, sync=message.sync)
        return protobuf.Empty()


async def init(ic: InitContext) -> GRPCServices:
    return GRPCServices((ImagesGRPC(ic.get_by_id(types.SERVICE, "images-service", ImagesService)),))


registration = Registration(type=types.GRPC, id="images", init=init, requires=(types.SERVICE,))
