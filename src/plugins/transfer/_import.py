"""Importing an image archive into the image store, all or nothing.

Every blob is ingested under a lease of the transfer's own as it streams past, the archive is
resolved and checked, the images it names are judged by every verifier, unpacked, and only then
created. A failure anywhere (a malformed archive, a denial, a failed unpack, a client gone)
removes the lease and collects at once, so nothing of the import remains; a daemon killed
meanwhile leaves a lease the next start removes.
"""

from __future__ import annotations

import builtins
import hashlib
import zlib
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol

import anyio
import anyio.to_thread
import structlog

from corral.kernel import AlreadyExists, CorralError, InvalidArgument, NotFound, PermissionDenied
from corral.plugins.core import GC_EXPIRE, UNCOMPRESSED, Descriptor, bound_lease
from corral.plugins.images import oci
from corral.plugins.metadata import Image, ImageStore, Lease, NamespacedContent, NamespacedSnapshots, Resource
from corral.plugins.transfer import (
    TRANSFER_LEASE_LABEL,
    ImageImportStream,
    ImageStoreTarget,
    Progress,
    ProgressFunc,
    UnpackRequest,
)
from corral.plugins.transfer._names import REF_SOURCE, NamedImage, image_names
from corral.plugins.unpack import ChainLocks, LayerApplier, UnpackTarget, unpack_image
from corral.plugins.verifiers import ImageVerifier

log = structlog.get_logger("corral.transfer")

LEASE_EXPIRY = timedelta(hours=24)
"""containerd's transfer leases expire after a day; corral's are also removed at the next start."""
if TYPE_CHECKING:
    from corral.plugins.images import archive

INGEST_PREFIX = "import-"
PULL_INGEST_PREFIX = "pull-"
"""What a transfer's ingests are named under its lease: a start removes those a dead daemon left."""


class TransferLeases(Protocol):
    async def create(self, lease_id: str = "", labels: Mapping[str, str] | None = None) -> Lease: ...

    async def delete(self, lease_id: str, *, sync: bool = False) -> None: ...

    async def list(self, filters: Sequence[str] = ()) -> builtins.list[Lease]: ...

    async def add_resource(self, lease_id: str, resource: Resource) -> None: ...


@dataclass(frozen=True)
class UnpackChoice:
    """A configured unpack: the platform it serves, its snapshotter and its applier."""

    platform: oci.Platform
    snapshotter: str
    applier: LayerApplier


@dataclass
class ImportServices:
    content: NamespacedContent
    images: ImageStore
    leases: TransferLeases
    snapshots: NamespacedSnapshots
    verifiers: Mapping[str, ImageVerifier]
    unpacks: Sequence[UnpackChoice]
    default_applier: LayerApplier
    locks: ChainLocks = field(default_factory=ChainLocks)
    exact_platform: bool = False
    """containerd's ``check_platform_supported``: off, an unpack configuration serves its OS."""


async def open_transfer_lease(
    leases: TransferLeases, what: str, labels: Mapping[str, str] | None = None
) -> Lease:
    expires = (datetime.now(UTC) + LEASE_EXPIRY).strftime("%Y-%m-%dT%H:%M:%SZ")
    return await leases.create("", {**(labels or {}), GC_EXPIRE: expires, TRANSFER_LEASE_LABEL: what})


async def close_transfer_lease(leases: TransferLeases, lease: Lease, *, failed: bool) -> None:
    """Drop the lease; after a failure collect at once, so nothing it held outlives the call."""
    with anyio.CancelScope(shield=True):
        try:
            await leases.delete(lease.id, sync=failed)
        except NotFound:
            pass
        except Exception as exc:  # the transfer's own outcome matters more; the lease expires anyway
            log.warning("transfer_lease_not_removed", lease=lease.id, error=str(exc))


class Importer:
    def __init__(self, services: ImportServices) -> None:
        self.s = services

    async def run(
        self, source: ImageImportStream, store: ImageStoreTarget, progress: ProgressFunc
    ) -> list[Image]:
        lease = await open_transfer_lease(self.s.leases, "import")
        failed = True
        try:
            with bound_lease(lease.id):
                progress(Progress("Importing"))
                images = await self._import(lease, source, store, progress)
            failed = False
        finally:
            await close_transfer_lease(self.s.leases, lease, failed=failed)
        progress(Progress("Completed import"))
        return images

    async def _import(
        self, lease: Lease, source: ImageImportStream, store: ImageStoreTarget, progress: ProgressFunc
    ) -> list[Image]:
        # The archive reader and the decompressors: at the first import, not at start-up.
        from corral.plugins.images import archive
        from corral.plugins.transfer._stream import decompressed

        targets = [self.unpack_target(request) for request in store.unpacks]
        platforms = oci.ordered(*store.platforms) if store.platforms else None
        reader = archive.ArchiveReader()
        chunks = decompressed(source.chunks) if not source.media_type else source.chunks
        async for blob in reader.ablobs(chunks):
            await self._ingest(lease, blob, progress)
        contents = reader.contents(platforms=platforms)
        if contents.format is archive.ArchiveFormat.DOCKER:
            compressed = await self._compressed_layers(lease, contents, compress=source.force_compress)
            if compressed:
                contents = reader.contents(platforms=platforms, compressed_layers=compressed)
        for digest, data in contents.synthesized.items():
            await self._store_document(lease, digest, data)
        await self._label_children(contents)
        entries = tuple(
            replace(entry, annotations={**entry.annotations, REF_SOURCE: "annotation"})
            for entry in contents.index.manifests
        )
        named = image_names(contents.index_descriptor, entries, store)
        if not named:
            raise NotFound("no image name found: the archive names no image and no name was given")
        await self._verify(named)
        await self._unpack(named, targets, progress)
        created = []
        for image in named:
            created.append(await self._create(image))
            progress(Progress("saved", name=image.name, desc=_core(image.target)))
        return created

    async def _ingest(self, lease: Lease, blob: archive.Blob, progress: ProgressFunc) -> None:
        content = self.s.content
        ref = f"{INGEST_PREFIX}{lease.id}/{blob.name}"
        expected = blob.expected_digest or ""
        progress(Progress("importing", name=blob.name, total=blob.size))
        try:
            writer = await content.writer(ref, total=blob.size, expected=expected)
        except AlreadyExists:
            await self.s.leases.add_resource(lease.id, Resource(expected, "content"))
            return  # already stored: the reader reads past it, still checking its digest
        try:
            if expected and blob.size and writer.offset == blob.size:
                # stored already (for another namespace, or by an import alongside): the commit
                # records it; the reader still reads the bytes past, checking them against the name
                await writer.commit(blob.size, expected)
            else:
                if writer.offset:
                    await writer.truncate(0)
                async for chunk in blob.achunks():
                    await writer.write(chunk)
                await writer.commit(blob.size, blob.digest)
        except AlreadyExists:
            await self.s.leases.add_resource(lease.id, Resource(expected or blob.digest, "content"))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await writer.close()
                with suppress(CorralError):
                    await content.abort(ref)
            raise
        finally:
            await writer.close()
        progress(Progress("imported", name=blob.name, progress=blob.size, total=blob.size))

    async def _compressed_layers(
        self, lease: Lease, contents: archive.ArchiveContents, *, compress: bool
    ) -> dict[str, oci.Descriptor]:
        """containerd's docker importer names a compressed blob already stored for a layer (found
        by its ``containerd.io/uncompressed`` label) instead of the archive's; with ``compress`` it
        gzips each uncompressed layer that has none."""
        found: dict[str, oci.Descriptor] = {}
        layers = {layer.digest: layer for m in contents.manifests.values() for layer in m.layers}
        for digest, layer in layers.items():
            known = await self.s.content.list([f'labels."{UNCOMPRESSED}"=={digest}'])
            if known:
                info = known[0]
                head = b"".join([chunk async for chunk in await self.s.content.read(info.digest, 0, 10)])
                media_type = oci.DOCKER_LAYER_GZIP if head.startswith(_COMPRESSED_MAGIC) else oci.DOCKER_LAYER
                await self.s.leases.add_resource(lease.id, Resource(info.digest, "content"))
                found[digest] = oci.Descriptor(media_type, info.digest, info.size)
            elif compress and layer.media_type == oci.DOCKER_LAYER:
                found[digest] = await self._compress(lease, layer)
        return found

    async def _compress(self, lease: Lease, layer: oci.Descriptor) -> oci.Descriptor:
        ref = f"{INGEST_PREFIX}{lease.id}/compress-{layer.digest}"
        packer = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        hasher = hashlib.sha256()
        writer = await self.s.content.writer(ref)
        size = 0
        try:
            async for chunk in await self.s.content.read(layer.digest):
                packed = await anyio.to_thread.run_sync(packer.compress, chunk)
                if packed:
                    hasher.update(packed)
                    size += len(packed)
                    await writer.write(packed)
            tail = packer.flush()
            hasher.update(tail)
            size += len(tail)
            await writer.write(tail)
            digest = f"sha256:{hasher.hexdigest()}"
            try:
                await writer.commit(size, digest, {UNCOMPRESSED: layer.digest})
            except AlreadyExists:
                await self.s.leases.add_resource(lease.id, Resource(digest, "content"))
        except BaseException:
            with anyio.CancelScope(shield=True), suppress(CorralError):
                await writer.close()
                await self.s.content.abort(ref)
            raise
        finally:
            await writer.close()
        return oci.Descriptor(oci.DOCKER_LAYER_GZIP, digest, size)

    async def _store_document(self, lease: Lease, digest: str, data: bytes) -> None:
        ref = f"{INGEST_PREFIX}{lease.id}/{digest}"
        try:
            writer = await self.s.content.writer(ref, total=len(data), expected=digest)
        except AlreadyExists:
            await self.s.leases.add_resource(lease.id, Resource(digest, "content"))
            return
        try:
            if writer.offset != len(data):
                if writer.offset:
                    await writer.truncate(0)
                await writer.write(data)
            await writer.commit(len(data), digest)
        except AlreadyExists:
            await self.s.leases.add_resource(lease.id, Resource(digest, "content"))
        finally:
            await writer.close()

    async def _label_children(self, contents: archive.ArchiveContents) -> None:
        """containerd's ``gc.ref.content`` labels: an index holds its manifests, a manifest its
        config and layers, so an image holds everything under its target."""
        labels: dict[str, dict[str, str]] = {
            contents.index_descriptor.digest: _index_labels(contents.index),
        }
        for digest, index in contents.indexes.items():
            labels[digest] = _index_labels(index)
        for digest, manifest in contents.manifests.items():
            found = {"containerd.io/gc.ref.content.config": manifest.config.digest}
            for i, layer in enumerate(manifest.layers):
                found[f"containerd.io/gc.ref.content.l.{i}"] = layer.digest
            labels[digest] = found
        for digest, wanted in labels.items():
            if wanted:
                await self.s.content.update(digest, wanted, [f"labels.{key}" for key in wanted])

    async def _verify(self, named: Sequence[NamedImage]) -> None:
        for image in named:
            desc = _core(image.target)
            for verifier_id, verifier in sorted(self.s.verifiers.items()):
                try:
                    judgement = await verifier.verify_image(image.name, desc)
                except CorralError as exc:
                    raise type(exc)(
                        f"blocking import of {image.name} with digest {desc.digest}: "
                        f"image verifier {verifier_id} returned error: {exc.detail}"
                    ) from exc
                if not judgement.ok:
                    raise PermissionDenied(
                        f"image verifier {verifier_id} blocked import of {image.name} "
                        f"with digest {desc.digest} for reason: {judgement.reason}"
                    )
                log.debug("image_verified", verifier=verifier_id, image=image.name, reason=judgement.reason)

    async def _unpack(
        self, named: Sequence[NamedImage], targets: Sequence[UnpackTarget], progress: ProgressFunc
    ) -> None:
        done: set[tuple[str, str]] = set()
        for target in targets:
            for image in named:
                key = (target.name, image.target.digest)
                if key in done:
                    continue
                done.add(key)

                def report(event: str, layer: Descriptor, name: str = image.name) -> None:
                    progress(
                        Progress(event, name=layer.digest, parents=(name,), total=layer.size, desc=layer)
                    )

                await unpack_image(self.s.content, image.target, target, locks=self.s.locks, progress=report)

    def unpack_target(self, request: UnpackRequest) -> UnpackTarget:
        """containerd's choice among the configured unpacks: the platform must match, and the
        snapshotter too when one is named. A snapshotter no configuration names, but loaded,
        is used with the default differ (containerd would silently not unpack)."""
        platform = request.platform or oci.Platform.host()
        chosen: UnpackChoice | None = None
        for choice in self.s.unpacks:
            if self.s.exact_platform and not oci.only(choice.platform).match(platform):
                continue
            if choice.platform.os != platform.os:
                continue
            if request.snapshotter in ("", choice.snapshotter):
                chosen = choice
                break
        if chosen is None:
            if not request.snapshotter:
                raise InvalidArgument(f"no unpack configuration for platform {platform}")
            chosen = UnpackChoice(platform, request.snapshotter, self.s.default_applier)
        snapshotter = self.s.snapshots.get(chosen.snapshotter)
        return UnpackTarget(chosen.snapshotter, snapshotter, chosen.applier, oci.only(platform))

    async def _create(self, image: NamedImage) -> Image:
        record = Image(image.name, _core(image.target), dict(image.labels))
        for _ in range(3):
            try:
                return await self.s.images.create(record)
            except AlreadyExists:
                pass
            try:
                return await self.s.images.update(record)
            except NotFound:
                continue
        raise AlreadyExists(f"image {image.name!r} keeps changing under the import")


_COMPRESSED_MAGIC = (b"\x1f\x8b", b"\x28\xb5\x2f\xfd")


def _index_labels(index: oci.Index) -> dict[str, str]:
    return {f"containerd.io/gc.ref.content.m.{i}": entry.digest for i, entry in enumerate(index.manifests)}


def _core(desc: oci.Descriptor) -> Descriptor:
    return Descriptor(desc.media_type, desc.digest, desc.size, dict(desc.annotations))
