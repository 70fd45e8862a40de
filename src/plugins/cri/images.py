"""io.containerd.cri.v1.images — the kubelet's view of the image store: pull, status, list, remove.

The image store is containerd's own, in the ``k8s.io`` namespace, so ``ctr -n k8s.io images ls``
sees what CRI pulled (and CRI sees what ctr imported there). As containerd's CRI, an image is
known by its id (its config's digest) and by every name that targets it: a pull names the image
by its id, its repo tag and its repo digest, labelled ``io.cri-containerd.image=managed``.
Nothing is cached across calls but facts derived from immutable content.
"""

from __future__ import annotations

import builtins
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from corral.kernel import (
    PROPERTY_ROOT,
    AlreadyExists,
    CorralError,
    InitContext,
    InvalidArgument,
    NotFound,
    Registration,
    SkipPlugin,
)
from corral.plugins import types
from corral.plugins.core import Descriptor, bound_lease, bound_namespace
from corral.plugins.cri._pull import AuthConfig, Puller, PullLeases, PullRequest
from corral.plugins.cri.config import ImageConfig, split_v2_section
from corral.plugins.images import oci
from corral.plugins.metadata import Image, Metadata, NamespacedContent, NamespacedSnapshots
from corral.plugins.services.images import ImagesService
from corral.plugins.unpack import ChainLocks, LayerApplier, UnpackTarget, select_manifest, unpack_image

log = structlog.get_logger("corral.cri")

K8S_NAMESPACE = "k8s.io"
IMAGE_LABEL = "io.cri-containerd.image"
IMAGE_LABEL_VALUE = "managed"
PINNED_LABEL = "io.cri-containerd.pinned"
PINNED_LABEL_VALUE = "pinned"

__all__ = [
    "IMAGE_LABEL",
    "IMAGE_LABEL_VALUE",
    "K8S_NAMESPACE",
    "PINNED_LABEL",
    "PINNED_LABEL_VALUE",
    "AuthConfig",
    "CRIImage",
    "CRIImageService",
    "FilesystemUsage",
]


@dataclass(frozen=True)
class CRIImage:
    """One image as CRI reports it: every name targeting the same config is one image."""

    id: str
    references: tuple[str, ...]
    chain_id: str
    size: int
    spec: Mapping[str, Any]
    """The image config as stored (containerd's ``imagespec.Image``)."""
    pinned: bool = False

    @property
    def repo_tags(self) -> list[str]:
        return [r for r in self.references if _kind_of(r) == "tag"]

    @property
    def repo_digests(self) -> list[str]:
        return [r for r in self.references if _kind_of(r) == "digest"]

    @property
    def user(self) -> tuple[int | None, str]:
        """containerd's ``getUserFromImage``: a numeric user is a uid, anything else a name."""
        config = self.spec.get("config")
        user = str((config or {}).get("User") or "") if isinstance(config, Mapping) else ""
        if not user:
            return None, ""
        user = user.split(":")[0]
        try:
            return int(user), ""
        except ValueError:
            return None, user

    def verbose_info(self) -> dict[str, str]:
        info = {"chainID": self.chain_id, "imageSpec": self.spec}
        return {"info": json.dumps(info, separators=(",", ":"))}


@dataclass(frozen=True)
class FilesystemUsage:
    timestamp: int
    mountpoint: str
    used_bytes: int
    inodes_used: int


@dataclass(frozen=True)
class _Facts:
    config_digest: str
    chain_id: str
    size: int
    spec: Mapping[str, Any]


def _kind_of(name: str) -> str:
    """containerd's ``ParseImageReferences``: "digest" for a canonical name, "tag" for a tagged
    one, "" for anything else (an image id)."""
    if _is_digest(name):
        return ""
    try:
        ref = oci.parse_normalized(name)
    except CorralError:
        return ""
    if ref.digest:
        return "digest"
    return "tag" if ref.tag else ""


def _is_digest(text: str) -> bool:
    try:
        oci.parse_digest(text)
    except CorralError:
        return False
    return True


class CRIImageService:
    def __init__(
        self,
        config: ImageConfig,
        *,
        images: ImagesService,
        content: NamespacedContent,
        snapshots: NamespacedSnapshots,
        leases: PullLeases,
        applier: LayerApplier,
        root: Path,
    ) -> None:
        self.config = config
        self._images = images
        self._content = content
        self._snapshots = snapshots
        self._applier = applier
        self._root = root
        self._facts: dict[str, _Facts] = {}
        self._locks = ChainLocks()
        self._runtime_snapshotters: dict[str, str] = {
            handler: platform.snapshotter or config.snapshotter
            for handler, platform in config.runtime_platform.items()
        }
        self.puller = Puller(
            content=content,
            leases=leases,
            config_path=config.registry.config_path,
            max_concurrent_downloads=config.max_concurrent_downloads,
            locks=self._locks,
        )

    # -- configuration ---------------------------------------------------------------------
    def set_runtime_snapshotter(self, handler: str, snapshotter: str) -> None:
        """A runtime handler's own snapshotter (``containerd.runtimes.<h>.snapshotter``), as
        containerd's CRI plugin hands the runtime section's choice to the image service."""
        self._runtime_snapshotters.setdefault(handler, snapshotter)

    def snapshotter_for(self, runtime_handler: str) -> str:
        return (
            self._runtime_snapshotters.get(runtime_handler, self.config.snapshotter)
            or self.config.snapshotter
        )

    def snapshotter_root(self, name: str) -> str:
        """Where a snapshotter keeps its data: ``<root>/io.containerd.snapshotter.v1.<name>``."""
        return str(self._root.parent / f"{types.SNAPSHOTTER}.{name}")

    # -- reading ---------------------------------------------------------------------------
    async def _facts_of(self, target: Descriptor) -> _Facts:
        known = self._facts.get(target.digest)
        if known is not None:
            return known
        desc = oci.Descriptor(target.media_type, target.digest, target.size)
        found = await select_manifest(self._content, desc, oci.default_matcher())
        if found is None:
            raise NotFound(f"no manifest of {target.digest} for this platform")
        manifest_desc, manifest = found
        raw = b"".join([c async for c in await self._content.read(manifest.config.digest)])
        oci.verify_digest(raw, manifest.config.digest, "image config")
        config = oci.parse_image_config(raw)
        size = manifest.config.size + sum(max(layer.size, 0) for layer in manifest.layers)
        size += manifest_desc.size + (target.size if target.digest != manifest_desc.digest else 0)
        facts = _Facts(manifest.config.digest, oci.chain_id(config.diff_ids), size, json.loads(raw))
        self._facts[target.digest] = facts
        return facts

    async def list(self) -> builtins.list[CRIImage]:
        """Every image of the namespace, by id; names whose content is missing are left out."""
        with bound_namespace(K8S_NAMESPACE):
            records = await self._images.list()
            by_id: dict[str, list[tuple[Image, _Facts]]] = {}
            for record in records:
                try:
                    facts = await self._facts_of(record.target)
                except CorralError as exc:
                    log.warning("cri_image_unreadable", image=record.name, error=str(exc))
                    continue
                by_id.setdefault(facts.config_digest, []).append((record, facts))
        found = []
        for image_id, named in sorted(by_id.items()):
            facts = named[0][1]
            found.append(
                CRIImage(
                    id=image_id,
                    references=tuple(sorted(record.name for record, _ in named)),
                    chain_id=facts.chain_id,
                    size=facts.size,
                    spec=facts.spec,
                    pinned=any(record.labels.get(PINNED_LABEL) == PINNED_LABEL_VALUE for record, _ in named),
                )
            )
        return found

    async def resolve(self, ref_or_id: str) -> CRIImage:
        """containerd's ``LocalResolve``: a digest is an id; else a name (normalised) that some
        image carries; else an id or a unique prefix of one. NotFound when none matches."""
        images = await self.list()
        image_id = ref_or_id if _is_digest(ref_or_id) else ""
        if not image_id:
            try:
                normalized = str(oci.parse_docker_ref(ref_or_id))
            except CorralError:
                normalized = ""
            image_id = next((i.id for i in images if normalized and normalized in i.references), "")
        return _lookup_id(images, image_id or ref_or_id)

    async def status(self, ref_or_id: str) -> CRIImage | None:
        try:
            return await self.resolve(ref_or_id)
        except NotFound:
            return None

    async def unpacked(self, image: CRIImage, snapshotter_name: str) -> str:
        """``image`` unpacked in ``snapshotter_name`` (containerd's ``Image.Unpack``, a no-op when it
        is): the chain id. What it makes is held by the lease bound by the caller."""
        with bound_namespace(K8S_NAMESPACE):
            snapshotter = self._snapshots.get(snapshotter_name)
            try:
                await snapshotter.stat(image.chain_id)
                return image.chain_id
            except NotFound:
                pass
            record = await self._images.get(image.references[0] if image.references else image.id)
            target = oci.Descriptor(record.target.media_type, record.target.digest, record.target.size)
            into = UnpackTarget(snapshotter_name, snapshotter, self._applier, oci.default_matcher())
            result = await unpack_image(self._content, target, into, locks=self._locks)
        if result is None:
            raise NotFound(f"no manifest of {record.target.digest} for this platform")
        return result.chain_id

    # -- changing --------------------------------------------------------------------------
    async def pull(self, name: str, *, auth: AuthConfig | None = None, runtime_handler: str = "") -> str:
        """Pull ``name`` for this platform into the handler's snapshotter; the image id."""
        try:
            ref = oci.parse_docker_ref(name)
        except CorralError as exc:
            # containerd 1.6 answers Unknown here (its parse error has no kind); InvalidArgument says why
            raise InvalidArgument(
                f"failed to parse image reference {json.dumps(name)}: {exc.detail}"
            ) from None
        normalized = str(ref)
        labels = {IMAGE_LABEL: IMAGE_LABEL_VALUE}
        if normalized in self.config.pinned_images.values():
            labels[PINNED_LABEL] = PINNED_LABEL_VALUE
        snapshotter_name = self.snapshotter_for(runtime_handler)
        started = time.monotonic()
        with bound_namespace(K8S_NAMESPACE):
            snapshotter = self._snapshots.get(snapshotter_name)
            target = UnpackTarget(snapshotter_name, snapshotter, self._applier, oci.default_matcher())
            lease = await self.puller.open_lease(normalized)
            failed = True
            try:
                with bound_lease(lease.id):
                    try:
                        pulled = await self.puller.fetch_and_unpack(
                            lease, PullRequest(ref, snapshotter_name, labels, auth), target
                        )
                    except CorralError as exc:
                        # containerd 1.6 keeps only NotFound as a kind and answers Unknown for the rest;
                        # corral keeps the registry client's kind (PermissionDenied, Unavailable …)
                        raise type(exc)(
                            f'failed to pull and unpack image "{normalized}": {exc.detail}'
                        ) from exc
                    image_id = pulled.config_digest
                    repo_digest = f"{ref.name}@{pulled.target.digest}" if not ref.digest else normalized
                    repo_tag = normalized if ref.tag else ""
                    for reference in (image_id, repo_tag, repo_digest):
                        if reference:
                            await self._name(reference, pulled.target, labels)
                failed = False
            finally:
                await self.puller.close_lease(lease, failed=failed)
        log.info(
            "cri_image_pulled",
            image=name,
            id=image_id,
            repo_tag=repo_tag,
            repo_digest=repo_digest,
            fetched_bytes=pulled.fetched_bytes,
            seconds=round(time.monotonic() - started, 3),
        )
        return image_id

    async def _name(self, name: str, target: Descriptor, labels: Mapping[str, str]) -> None:
        """containerd's ``createOrUpdateImageReference``."""
        record = Image(name, target, dict(labels))
        try:
            await self._images.create(record)
            return
        except AlreadyExists:
            pass
        old = await self._images.get(name)
        paths = ["target"]
        if old.labels.get(IMAGE_LABEL) != labels.get(IMAGE_LABEL):
            paths.append(f"labels.{IMAGE_LABEL}")
        if (
            old.labels.get(PINNED_LABEL) != labels.get(PINNED_LABEL)
            and labels.get(PINNED_LABEL) == PINNED_LABEL_VALUE
        ):
            paths.append(f"labels.{PINNED_LABEL}")
        if old.target.digest == target.digest and len(paths) < 2:
            return
        await self._images.update(record, paths)

    async def remove(self, ref_or_id: str) -> None:
        """Remove every name of the image ``ref_or_id`` resolves to, the last one collecting at
        once; an image not found is no error (as containerd)."""
        try:
            image = await self.resolve(ref_or_id)
        except NotFound:
            return
        with bound_namespace(K8S_NAMESPACE):
            for i, reference in enumerate(image.references):
                try:
                    await self._images.delete(reference, sync=i == len(image.references) - 1)
                except NotFound:
                    continue

    async def filesystems(self) -> builtins.list[FilesystemUsage]:
        """containerd's ImageFsInfo: per snapshotter CRI uses (the default first), the usage of
        the namespace's snapshots in it."""
        others = set(self._runtime_snapshotters.values()) - {self.config.snapshotter}
        names = [self.config.snapshotter, *sorted(others)]
        found = []
        with bound_namespace(K8S_NAMESPACE):
            for name in names:
                used = inodes = 0
                now = time.time_ns()
                if name in self._snapshots.names:
                    snapshotter = self._snapshots.get(name)
                    async for info in snapshotter.walk():
                        try:
                            usage = await snapshotter.usage(info.name)
                        except CorralError:
                            continue
                        used += usage.size
                        inodes += usage.inodes
                found.append(FilesystemUsage(now, self.snapshotter_root(name), used, inodes))
        return found

    async def remove_dead_pulls(self) -> int:
        with bound_namespace(K8S_NAMESPACE):
            return await self.puller.remove_dead_leases()


class AmbiguousImageId(CorralError):
    """A truncated id that more than one image id starts with (go-digest's digestset)."""


def _lookup_id(images: Sequence[CRIImage], text: str) -> CRIImage:
    """go-digest's ``digestset.Lookup``: an exact id, or the one id a (hex or ``alg:hex``) prefix
    names."""
    for image in images:
        if image.id == text:
            return image
    algorithm, colon, prefix = text.rpartition(":")
    matches = [
        image
        for image in images
        if image.id.partition(":")[2].startswith(prefix)
        and (not colon or image.id.startswith(algorithm + ":"))
    ]
    if not matches:
        raise NotFound(f"image {text!r}")
    if len(matches) > 1:
        raise AmbiguousImageId(f"can not resolve {text!r} locally: ambiguous digest string")
    return matches[0]


async def init(ic: InitContext) -> CRIImageService:
    config: ImageConfig = ic.config
    metadata = ic.get_single(types.METADATA, Metadata)
    snapshots = metadata.view(NamespacedSnapshots)
    if config.snapshotter not in snapshots.names:
        # containerd fails here; the snapshotter being unavailable on this machine is a skip in corral
        raise SkipPlugin(f'failed to find snapshotter "{config.snapshotter}"')
    service = CRIImageService(
        config,
        images=ic.get_by_id(types.SERVICE, "images-service", ImagesService),
        content=metadata.view(NamespacedContent),
        snapshots=snapshots,
        leases=ic.get_single(types.LEASE),
        applier=ic.get_by_id(types.SERVICE, "diff-service"),
        root=Path(ic.properties.get(PROPERTY_ROOT) or os.fspath(ic.root)),
    )
    removed = await service.remove_dead_pulls()
    if removed:
        log.info("cri_pull_leases_removed", count=removed)
    ic.meta.exports["RegistryConfigPath"] = config.registry.config_path
    return service


registration = Registration(
    type=types.CRI,
    id="images",
    init=init,
    requires=(types.METADATA, types.LEASE, types.SERVICE),
    config=ImageConfig,
    migrate=split_v2_section,
    description="CRI images in the k8s.io namespace: pulls from registries, status, removal",
)
