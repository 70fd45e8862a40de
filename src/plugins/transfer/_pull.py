"""Pulling an image from a registry into the image store, as containerd 2.x's transfer service does.

Resolve the reference, let every verifier judge it, then walk it: the index and manifests (only
the wanted platforms' layers; every manifest and config with ``all_metadata``), configs, and
layers downloaded at most ``max_concurrent_downloads`` at a time while each unpack applies them in
order as they arrive. A blob already held is not downloaded again; a layer whose chain is
already committed in every snapshotter unpacked into is not downloaded at all (as containerd).
The image is created last.

Everything downloaded is held by the pull's lease. When the registry goes away midway
(Unavailable, DeadlineExceeded) the lease is kept, with the partial download of each blob, so
the next pull of the same reference takes it over: complete blobs are skipped and a partial one
is resumed with a range request. Any other failure (a blob that does not match its digest, a
verifier's denial, a failed unpack) removes the lease and collects at once: nothing of the image
remains.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field

import anyio
import anyio.abc
import structlog

from corral.kernel import (
    AlreadyExists,
    CorralError,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from corral.plugins.core import Descriptor, bound_lease
from corral.plugins.images import oci
from corral.plugins.metadata import Image, ImageStore, Lease, NamespacedContent, Resource
from corral.plugins.remotes import Descriptor as RemoteDescriptor
from corral.plugins.remotes import RegistryClient, parse_reference
from corral.plugins.snapshots import Kind
from corral.plugins.transfer import (
    ImageStoreTarget,
    OCIRegistry,
    Progress,
    ProgressFunc,
    UnpackRequest,
)
from corral.plugins.transfer._import import (
    PULL_INGEST_PREFIX,
    TransferLeases,
    close_transfer_lease,
    open_transfer_lease,
)
from corral.plugins.transfer._registry import DISTRIBUTION_SOURCE, BlobProgress, core, open_client, ref_key
from corral.plugins.unpack import ChainLocks, UnpackTarget, unpack_image
from corral.plugins.verifiers import ImageVerifier

log = structlog.get_logger("corral.transfer")

RESUME_LABEL = "corral.io/transfer.resume"
"""On a pull's lease kept after the registry went away: a hash of the reference it pulled."""
DOCUMENT_LIMIT = oci.JSON_LIMIT


@dataclass
class PullServices:
    content: NamespacedContent
    images: ImageStore
    leases: TransferLeases
    verifiers: dict[str, ImageVerifier]
    unpack_target: Callable[[UnpackRequest], UnpackTarget]
    """The configured unpack serving a request (the import's choice, shared)."""
    locks: ChainLocks
    config_path: str = ""
    max_concurrent_downloads: int = 3
    active: set[str] = field(default_factory=set)
    """Leases of pulls running now, which no other pull takes over."""


def _resume_key(reference: str) -> str:
    return hashlib.sha256(reference.encode()).hexdigest()[:32]


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, Unavailable | DeadlineExceeded)


@dataclass
class _Download:
    done: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None


class Puller:
    def __init__(self, services: PullServices) -> None:
        self.s = services

    async def run(self, source: OCIRegistry, store: ImageStoreTarget, progress: ProgressFunc) -> list[Image]:
        ref = parse_reference(source.reference)
        if not ref.object:
            raise InvalidArgument(f"reference {source.reference}: a tag or digest is required to pull")
        targets = [self._unpack_target(request) for request in store.unpacks]
        lease, adopted = await self._lease(source.reference)
        self.s.active.add(lease.id)
        failed = True
        keep = False
        pull: _Pull | None = None
        try:
            with bound_lease(lease.id):
                client = await open_client(
                    source, self.s.config_path, max_connections=max(8, self.s.max_concurrent_downloads * 2)
                )
                async with client:
                    pull = _Pull(self.s, client, source, lease, progress)
                    images = await pull.run(store, targets)
            failed = False
        except BaseException as exc:
            # worth keeping only once something was downloaded
            keep = _retryable(exc) and (adopted or (pull is not None and pull.resolved))
            if keep:
                log.info("pull_interrupted_kept_for_resume", reference=source.reference, lease=lease.id)
            raise
        finally:
            self.s.active.discard(lease.id)
            if not keep:
                if failed:
                    await self._abort_ingests(lease)
                await close_transfer_lease(self.s.leases, lease, failed=failed)
        progress(Progress(f"Completed pull from {source}"))
        return images

    def _unpack_target(self, request: UnpackRequest) -> UnpackTarget:
        return self.s.unpack_target(request)

    async def _lease(self, reference: str) -> tuple[Lease, bool]:
        """A lease the registry's going away left for this reference (True), else a new one."""
        key = _resume_key(reference)
        for lease in await self.s.leases.list([f'labels."{RESUME_LABEL}"=={key}']):
            if lease.id not in self.s.active:
                log.info("pull_resumed", reference=reference, lease=lease.id)
                return lease, True
        return await open_transfer_lease(self.s.leases, "pull", {RESUME_LABEL: key}), False

    async def _abort_ingests(self, lease: Lease) -> None:
        prefix = f"{PULL_INGEST_PREFIX}{lease.id}/"
        with anyio.CancelScope(shield=True):
            try:
                statuses = await self.s.content.list_statuses()
            except CorralError:
                return
            for status in statuses:
                if status.ref.startswith(prefix):
                    with suppress(CorralError):
                        await self.s.content.abort(status.ref)


class _Pull:
    """One pull's walk, downloads and unpacks."""

    def __init__(
        self,
        services: PullServices,
        client: RegistryClient,
        source: OCIRegistry,
        lease: Lease,
        progress: ProgressFunc,
    ) -> None:
        self.s = services
        self.client = client
        self.source = source
        self.ref = parse_reference(source.reference)
        self.lease = lease
        self.report = progress
        limit = services.max_concurrent_downloads
        self.limiter = anyio.CapacityLimiter(limit if limit > 0 else 1 << 20)
        self.downloads: dict[str, _Download] = {}
        self.layers: dict[str, tuple[oci.Descriptor, tuple[str, ...]]] = {}
        self.tg: anyio.abc.TaskGroup | None = None
        self.root_name = ""
        self.resolved = False

    async def run(self, store: ImageStoreTarget, targets: Sequence[UnpackTarget]) -> list[Image]:
        self.report(Progress(f"Resolving from {self.source}"))
        try:
            name, resolved = await self.client.resolve(self.ref)
        except CorralError as exc:
            raise type(exc)(f"failed to resolve image: {exc.detail}") from exc
        self.root_name = name
        self.resolved = True
        root = oci.Descriptor(resolved.media_type, resolved.digest, resolved.size)
        if root.media_type == "application/vnd.docker.distribution.manifest.v1+prettyjws":
            raise InvalidArgument("schema 1 image manifests are no longer supported")
        await self._verify(name, core(root))
        self.report(Progress(f"Pulling from {self.source}"))
        self.report(Progress("fetching image content", name=name, desc=core(root)))
        matcher = oci.ordered(*store.platforms) if store.platforms else oci.ALL
        manifests = await self._walk(root, (), matcher, store)
        wanted = await self._layers_to_fetch(manifests, targets)
        try:
            async with anyio.create_task_group() as tg:
                self.tg = tg
                for layer, parents in wanted:
                    self._schedule(layer, parents)
                for target in targets:
                    tg.start_soon(self._unpack, root, target)
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        finally:
            self.tg = None
        for download in self.downloads.values():
            if download.error is not None:
                raise download.error
        return await self._store(root, store)

    async def _verify(self, name: str, desc: Descriptor) -> None:
        for verifier_id, verifier in sorted(self.s.verifiers.items()):
            try:
                judgement = await verifier.verify_image(name, desc)
            except CorralError as exc:
                raise type(exc)(
                    f"blocking pull of {name} with digest {desc.digest}: "
                    f"image verifier {verifier_id} returned error: {exc.detail}"
                ) from exc
            if not judgement.ok:
                raise PermissionDenied(
                    f"image verifier {verifier_id} blocked pull of {name} "
                    f"with digest {desc.digest} for reason: {judgement.reason}"
                )

    # -- the walk: documents first ---------------------------------------------------------

    async def _walk(
        self,
        desc: oci.Descriptor,
        parents: tuple[str, ...],
        matcher: oci.PlatformMatcher,
        store: ImageStoreTarget,
        *,
        metadata_only: bool = False,
    ) -> list[tuple[oci.Descriptor, oci.Manifest, oci.ImageConfig | None]]:
        """Fetch ``desc`` and the documents under it; the manifests whose layers are wanted."""
        data = await self._document(desc, parents)
        me = (ref_key(desc),)
        if oci.is_index(desc.media_type):
            index = oci.parse_index(data, desc.media_type)
            children = self._filter(index.manifests, matcher, store)
            await self._label(
                desc, {f"containerd.io/gc.ref.content.m.{i}": c.digest for i, (c, _) in enumerate(children)}
            )
            found: list[tuple[oci.Descriptor, oci.Manifest, oci.ImageConfig | None]] = []
            results: list[list[tuple[oci.Descriptor, oci.Manifest, oci.ImageConfig | None]]] = [
                [] for _ in children
            ]

            async def one(i: int, child: oci.Descriptor, only_meta: bool) -> None:
                if oci.is_index(child.media_type) or oci.is_manifest(child.media_type):
                    results[i] = await self._walk(child, me, matcher, store, metadata_only=only_meta)

            try:
                async with anyio.create_task_group() as tg:
                    for i, (child, only_meta) in enumerate(children):
                        tg.start_soon(one, i, child, only_meta)
            except BaseExceptionGroup as group:
                raise first_error(group) from None
            for r in results:
                found.extend(r)
            return found
        if oci.is_manifest(desc.media_type):
            manifest = oci.parse_manifest(data, desc.media_type)
            labels = {"containerd.io/gc.ref.content.config": manifest.config.digest}
            if not metadata_only:
                for i, layer in enumerate(manifest.layers):
                    labels[f"containerd.io/gc.ref.content.l.{i}"] = layer.digest
            await self._label(desc, labels)
            config_data = await self._document(manifest.config, me)
            config = None
            if oci.is_config(manifest.config.media_type):
                with suppress(InvalidArgument):
                    config = oci.parse_image_config(config_data)
            if metadata_only:
                return []
            if (
                desc.platform is None
                and config is not None
                and matcher is not oci.ALL
                and not matcher.match(config.platform)
            ):
                return []
            return [(desc, manifest, config)]
        return []

    def _filter(
        self, entries: Sequence[oci.Descriptor], matcher: oci.PlatformMatcher, store: ImageStoreTarget
    ) -> list[tuple[oci.Descriptor, bool]]:
        """containerd's image filter: matching children (``manifest_limit`` best of them), and
        with ``all_metadata`` the others too, for their manifest and config only."""
        if matcher is oci.ALL:
            return [(e, False) for e in entries]
        matching = oci.by_preference(entries, matcher, lambda d: d.platform)
        if store.manifest_limit > 0:
            matching = matching[: store.manifest_limit]
        chosen = {id(e) for e in matching}
        out = []
        for entry in entries:
            if id(entry) in chosen:
                out.append((entry, False))
            elif store.all_metadata and oci.is_manifest(entry.media_type):
                out.append((entry, True))
        return out

    async def _document(self, desc: oci.Descriptor, parents: tuple[str, ...]) -> bytes:
        """A manifest, index or config: from the store when held, else downloaded into it."""
        if desc.size > DOCUMENT_LIMIT:
            raise InvalidArgument(
                f"{desc.media_type} {desc.digest} is {desc.size} bytes, too large a document"
            )
        await self._download(desc, parents or (self.root_name,))
        data = b"".join([chunk async for chunk in await self.s.content.read(desc.digest)])
        oci.verify_digest(data, desc.digest, f"{desc.media_type} {desc.digest}")
        return data

    async def _label(self, desc: oci.Descriptor, labels: dict[str, str]) -> None:
        if labels:
            await self.s.content.update(desc.digest, labels, [f"labels.{key}" for key in labels])

    # -- layers --------------------------------------------------------------------------

    async def _layers_to_fetch(
        self,
        manifests: Sequence[tuple[oci.Descriptor, oci.Manifest, oci.ImageConfig | None]],
        targets: Sequence[UnpackTarget],
    ) -> list[tuple[oci.Descriptor, tuple[str, ...]]]:
        """Each wanted manifest's layers, less the bottom ones whose chain every unpack that
        serves the manifest has committed already (containerd does not fetch those)."""
        out: list[tuple[oci.Descriptor, tuple[str, ...]]] = []
        for desc, manifest, config in manifests:
            parents = (ref_key(desc),)
            layers = [layer for layer in manifest.layers if oci.is_layer(layer.media_type)]
            for layer in manifest.layers:
                self.layers.setdefault(layer.digest, (layer, parents))
            skip = 0
            if config is not None and len(config.diff_ids) == len(layers):
                platform = desc.platform or config.platform
                serving = [t for t in targets if t.platforms.match(platform)]
                if serving:
                    chain = oci.chain_ids(list(config.diff_ids))
                    skip = min([await _committed_prefix(t, chain) for t in serving])
            for layer in layers[skip:]:
                out.append((layer, parents))
        return out

    def _schedule(self, layer: oci.Descriptor, parents: tuple[str, ...]) -> _Download:
        found = self.downloads.get(layer.digest)
        if found is not None:
            return found
        download = self.downloads[layer.digest] = _Download()
        BlobProgress(self.report, "waiting", ref_key(layer), parents, layer).state("waiting", progress=0)
        assert self.tg is not None

        async def run() -> None:
            try:
                await self._download(layer, parents, announced=True)
            except BaseException as exc:
                download.error = exc
                raise
            finally:
                download.done.set()

        self.tg.start_soon(run)
        return download

    async def _ready(self, layer: oci.Descriptor) -> None:
        download = self.downloads.get(layer.digest)
        if download is None:
            download = self._schedule(layer, self.layers.get(layer.digest, (layer, (self.root_name,)))[1])
        await download.done.wait()
        if download.error is not None:
            raise download.error

    async def _unpack(self, root: oci.Descriptor, target: UnpackTarget) -> None:
        def report(event: str, layer: Descriptor) -> None:
            desc = oci.Descriptor(layer.media_type, layer.digest, layer.size, dict(layer.annotations))
            parents = self.layers.get(layer.digest, (desc, (self.root_name,)))[1]
            blob = BlobProgress(self.report, event, ref_key(desc), parents, desc)
            if event == "unpacking":
                blob.state("extracting", progress=0)
            elif event == "unpacked":
                blob.state("extracted")

        await unpack_image(
            self.s.content, root, target, locks=self.s.locks, progress=report, ready=self._ready
        )

    # -- one blob ------------------------------------------------------------------------

    async def _download(
        self, desc: oci.Descriptor, parents: tuple[str, ...], *, announced: bool = False
    ) -> None:
        content = self.s.content
        name = ref_key(desc)
        blob = BlobProgress(self.report, "downloading", name, parents, desc)
        if not announced:
            blob.state("waiting", progress=0)
        ref = f"{PULL_INGEST_PREFIX}{self.lease.id}/{desc.digest}"
        labels = await self._source_labels(desc)
        async with self.limiter:
            try:
                writer = await content.writer(ref, total=desc.size, expected=desc.digest)
            except AlreadyExists:
                await self.s.leases.add_resource(self.lease.id, Resource(desc.digest, "content"))
                await self._label(desc, await self._source_labels(desc))
                blob.state("already exists")
                return
            try:
                offset = writer.offset
                if offset > desc.size:
                    await writer.truncate(0)
                    offset = 0
                if offset < desc.size or desc.size == 0:
                    if offset:
                        log.info("pull_download_resumed", digest=desc.digest, offset=offset, size=desc.size)
                    remote = RemoteDescriptor(desc.media_type, desc.digest, desc.size)
                    async with self.client.fetch(self.ref, remote, offset=offset) as stream:
                        async for chunk in stream:
                            await writer.write(chunk)
                            blob.moved(stream.position)
                await writer.commit(desc.size, desc.digest, labels)
            except AlreadyExists:
                await self.s.leases.add_resource(self.lease.id, Resource(desc.digest, "content"))
                await self._label(desc, await self._source_labels(desc))
            except BaseException as exc:
                # a partial download stays for a resume unless its bytes are wrong; the lease's
                # end decides about the rest
                if not _retryable(exc) and not isinstance(exc, anyio.get_cancelled_exc_class()):
                    with anyio.CancelScope(shield=True):
                        await writer.close()
                        with suppress(CorralError):
                            await content.abort(ref)
                raise
            finally:
                with anyio.CancelScope(shield=True):
                    await writer.close()
        blob.state("complete")

    async def _source_labels(self, desc: oci.Descriptor) -> dict[str, str]:
        """containerd's distribution-source label: the repositories of this registry (by host
        name, without the port) the blob is known to come from, sorted, comma-separated."""
        key = f"{DISTRIBUTION_SOURCE}{self.ref.host.rsplit(':', 1)[0] if ']' not in self.ref.host else self.ref.host}"
        try:
            existing = (await self.s.content.info(desc.digest)).labels.get(key, "")
        except NotFound:
            existing = ""
        repositories = {r for r in existing.split(",") if r} | {self.ref.repository}
        return {key: ",".join(sorted(repositories))}

    # -- the image -----------------------------------------------------------------------

    async def _store(self, root: oci.Descriptor, store: ImageStoreTarget) -> list[Image]:
        return await store_image(self.s.images, core(root), store, self.report)


async def store_image(
    images: ImageStore, target: Descriptor, store: ImageStoreTarget, progress: ProgressFunc
) -> list[Image]:
    """containerd's image store naming for a pull or a tag: the name, then the extra references."""
    labels = dict(store.labels)
    names: list[str] = []
    if store.name:
        names.append(store.name)
    for extra in store.extra_references:
        if extra.is_prefix and not extra.add_digest:
            continue
        names.append(f"{extra.name}@{target.digest}" if extra.add_digest else extra.name)
    if not names:
        raise NotFound("no image name found")
    created = []
    for name in names:
        image = await _create(images, Image(name, target, labels))
        created.append(image)
        progress(Progress("saved", name=image.name, desc=image.target))
    return created


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that ended a group of downloads and unpacks (not the cancellations it caused)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return first_error(exc)
        if not isinstance(exc, anyio.get_cancelled_exc_class()):
            return exc
    return group.exceptions[0]


async def _committed_prefix(target: UnpackTarget, chain: Sequence[str]) -> int:
    """How many bottom layers of ``chain`` ``target``'s snapshotter has committed."""
    for i, chain_id in enumerate(chain):
        try:
            info = await target.snapshotter.stat(chain_id)
        except NotFound:
            return i
        if info.kind is not Kind.COMMITTED:
            return i
    return len(chain)


async def _create(images: ImageStore, record: Image) -> Image:
    for _ in range(3):
        try:
            return await images.create(record)
        except AlreadyExists:
            pass
        try:
            return await images.update(record)
        except NotFound:
            continue
    raise AlreadyExists(f"image {record.name!r} keeps changing under the pull")
