"""Exporting images from the image store as the OCI archive containerd's exporter writes."""

from __future__ import annotations

from collections.abc import AsyncIterator

from corral.kernel import NotFound, Unimplemented
from corral.plugins.images import archive, oci
from corral.plugins.metadata import Image, ImageStore, NamespacedContent
from corral.plugins.transfer import ImageExportStream, ImageLookup, Progress, ProgressFunc


async def lookup_images(images: ImageStore, lookup: ImageLookup) -> list[Image]:
    """containerd's ``Lookup``: the store's name, then each extra reference (prefixes refused)."""
    found = []
    if lookup.name:
        found.append(await images.get(lookup.name))
    for ref in lookup.extra_references:
        if ref.is_prefix:
            raise Unimplemented("prefix lookup on export not implemented")
        found.append(await images.get(ref.name))
    if not found:
        raise NotFound("no image to export: name one or more images")
    return found


async def export_images(
    content: NamespacedContent, images: list[Image], dest: ImageExportStream, progress: ProgressFunc
) -> None:
    progress(Progress("Exporting"))
    targets = [
        archive.ExportImage(
            oci.Descriptor(i.target.media_type, i.target.digest, i.target.size, dict(i.target.annotations)),
            (i.name,),
        )
        for i in images
    ]
    platforms = oci.ordered(*dest.platforms) if dest.platforms else oci.default_strict_matcher()
    documents: dict[str, bytes] = {}
    while needed := archive.missing_documents(
        targets, documents, platforms=platforms, all_platforms=dest.all_platforms
    ):
        for desc in needed:
            documents[desc.digest] = b"".join([chunk async for chunk in await content.read(desc.digest)])
    plan = archive.plan_oci_archive(
        targets,
        documents,
        platforms=platforms,
        all_platforms=dest.all_platforms,
        skip_manifest_json=dest.skip_compatibility_manifest,
        skip_nondistributable=dest.skip_non_distributable,
    )
    total = sum(desc.size for desc in plan.blobs)
    sent = 0

    async def open_blob(desc: oci.Descriptor) -> AsyncIterator[bytes]:
        nonlocal sent
        try:
            reader = await content.read(desc.digest)
        except NotFound:
            raise NotFound(
                f"content {desc.digest} ({desc.media_type}) of an exported image is missing"
            ) from None

        async def counted() -> AsyncIterator[bytes]:
            nonlocal sent
            async for chunk in reader:
                sent += len(chunk)
                yield chunk
            progress(Progress("exported", name=desc.digest, progress=desc.size, total=desc.size))

        return counted()

    async for chunk in plan.achunks(open_blob):
        await dest.sink.write(chunk)
    progress(Progress("Completed export", progress=sent, total=total))
