"""Pushing an image of the store to a registry, as containerd 2.x's transfer service does.

The image's content is walked from its target (an index's manifests filtered by the lookup's
platforms, all of them when none), and pushed children first: layers and configs at most
``max_concurrent_uploaded_layers`` at a time (each skipped when the registry has it, mounted
from another repository of the same registry when the content's distribution-source label
names one), then manifests by digest, and the target last under the reference's tag.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import structlog

from corral.kernel import CorralError, NotFound
from corral.plugins.images import oci
from corral.plugins.metadata import Image, ImageStore, NamespacedContent
from corral.plugins.remotes import Descriptor as RemoteDescriptor
from corral.plugins.remotes import PushOutcome, Reference, RegistryClient, parse_reference
from corral.plugins.transfer import ImageLookup, OCIRegistry, Progress, ProgressFunc
from corral.plugins.transfer._pull import first_error
from corral.plugins.transfer._registry import DISTRIBUTION_SOURCE, BlobProgress, open_client, ref_key

log = structlog.get_logger("corral.transfer")


class Pusher:
    def __init__(
        self, content: NamespacedContent, images: ImageStore, *, config_path: str = "", max_uploads: int = 3
    ) -> None:
        self.content = content
        self.images = images
        self.config_path = config_path
        self.max_uploads = max_uploads

    async def run(self, lookup: ImageLookup, destination: OCIRegistry, progress: ProgressFunc) -> Image:
        image = await self.images.get(lookup.name)
        ref = parse_reference(destination.reference)
        matcher = oci.any_of(*lookup.platforms) if lookup.platforms else oci.ALL
        progress(Progress(f"Pushing to {destination}"))
        progress(Progress("pushing content", name=image.name, desc=image.target))
        client = await open_client(destination, self.config_path, push=True)
        async with client:
            root = oci.Descriptor(
                image.target.media_type,
                image.target.digest,
                image.target.size,
                dict(image.target.annotations),
            )
            await _Push(self, client, ref, matcher, progress, image.name).push(root, (image.name,), root=True)
        progress(Progress("pushed content", name=image.name, desc=image.target))
        progress(Progress(f"Completed push to {destination}", desc=image.target))
        return image


class _Push:
    def __init__(
        self,
        owner: Pusher,
        client: RegistryClient,
        ref: Reference,
        matcher: oci.PlatformMatcher,
        progress: ProgressFunc,
        name: str,
    ) -> None:
        self.content = owner.content
        self.client = client
        self.ref = ref
        self.matcher = matcher
        self.report = progress
        limit = owner.max_uploads
        self.limiter = anyio.CapacityLimiter(limit if limit > 0 else 1 << 20)
        self.pushed: dict[str, anyio.Event] = {}
        self.name = name

    async def _read(self, desc: oci.Descriptor) -> bytes:
        try:
            return b"".join([chunk async for chunk in await self.content.read(desc.digest)])
        except NotFound:
            raise NotFound(f"content digest {desc.digest}: not found") from None

    async def push(self, desc: oci.Descriptor, parents: tuple[str, ...], *, root: bool = False) -> None:
        """Push ``desc`` after its children; each descriptor once, however often it is referenced."""
        seen = self.pushed.get(desc.digest)
        if seen is not None:
            await seen.wait()
            return
        done = self.pushed[desc.digest] = anyio.Event()
        try:
            blob = BlobProgress(self.report, "uploading", ref_key(desc), parents, desc)
            blob.state("waiting", progress=0)
            children: list[oci.Descriptor] = []
            data = b""
            if oci.is_index(desc.media_type) or oci.is_manifest(desc.media_type):
                data = await self._read(desc)
                oci.verify_digest(data, desc.digest, f"{desc.media_type} {desc.digest}")
                if oci.is_index(desc.media_type):
                    index = oci.parse_index(data, desc.media_type)
                    children = [
                        e for e in index.manifests if e.platform is None or self.matcher.match(e.platform)
                    ]
                else:
                    manifest = oci.parse_manifest(data, desc.media_type)
                    children = [manifest.config, *manifest.layers]
            me = (ref_key(desc),)
            try:
                async with anyio.create_task_group() as tg:
                    for child in children:
                        tg.start_soon(self._push_child, child, me)
            except BaseExceptionGroup as group:
                raise first_error(group) from None
            if data:
                await self._push_document(desc, data, blob, root=root)
            else:
                await self._push_blob(desc, blob)
        finally:
            done.set()

    async def _push_child(self, child: oci.Descriptor, parents: tuple[str, ...]) -> None:
        if oci.is_nondistributable(child.media_type):
            return  # containerd skips non-distributable layers unless asked
        await self.push(child, parents)

    async def _push_document(
        self, desc: oci.Descriptor, data: bytes, blob: BlobProgress, *, root: bool
    ) -> None:
        remote = RemoteDescriptor(desc.media_type, desc.digest, desc.size)
        target = self.ref if root and self.ref.tag else self.ref.with_object(digest=desc.digest)
        if not root and await self.client.exists(target, remote):
            blob.state("already exists")
            return
        await self.client.push_manifest(target, remote, data)
        blob.state("complete")

    async def _push_blob(self, desc: oci.Descriptor, blob: BlobProgress) -> None:
        remote = RemoteDescriptor(desc.media_type, desc.digest, desc.size)
        mount_from = await self._mount_source(desc)
        async with self.limiter:
            moved = 0

            async def body() -> AsyncIterator[bytes]:
                nonlocal moved
                async for chunk in await self.content.read(desc.digest):
                    moved += len(chunk)
                    blob.moved(moved)
                    yield chunk

            try:
                await self.content.info(desc.digest)
            except NotFound:
                raise NotFound(f"content digest {desc.digest}: not found") from None
            try:
                result = await self.client.push_blob(self.ref, remote, body(), mount_from=mount_from)
            except CorralError as exc:
                log.info("push_blob_failed", digest=desc.digest, error=str(exc))
                raise
        if result.outcome is PushOutcome.UPLOADED:
            blob.state("complete")
        else:
            blob.state("already exists")

    async def _mount_source(self, desc: oci.Descriptor) -> str | None:
        try:
            info = await self.content.info(desc.digest)
        except NotFound:
            return None
        source = info.labels.get(f"{DISTRIBUTION_SOURCE}{self.ref.host.rsplit(':', 1)[0]}", "")
        for repository in source.split(","):
            if repository and repository != self.ref.repository:
                return repository
        return None
