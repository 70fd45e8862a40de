"""The unpacker: an image's layers into snapshots keyed by chain ID, with containerd's labels."""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Protocol

import anyio
import structlog

from corral.kernel import AlreadyExists, CorralError, FailedPrecondition, InvalidArgument, NotFound
from corral.plugins.core import GC_REF_SNAPSHOT, UNCOMPRESSED, Descriptor, Mount
from corral.plugins.images import oci
from corral.plugins.snapshots import Kind, Snapshotter

log = structlog.get_logger("corral.unpack")

UNPACK_KEY_PREFIX = "extract"
LABEL_SNAPSHOT_REF = "containerd.io/snapshot.ref"
LABEL_SNAPSHOT_DIFF_ID = "containerd.io/snapshot/diff-id"
LABEL_PARENT_CHAIN_ID = "containerd.io/snapshot/parent-chain-id"
_INHERITED = "containerd.io/snapshot/"
_DOCUMENT_LIMIT = oci.JSON_LIMIT


class ContentInfo(Protocol):
    @property
    def labels(self) -> Mapping[str, str]: ...


class UnpackContent(Protocol):
    """What the unpacker needs of the namespaced content store."""

    async def info(self, digest: str) -> ContentInfo: ...

    async def read(self, digest: str, offset: int = 0, size: int = 0) -> AsyncIterator[bytes]: ...

    async def update(self, digest: str, labels: Mapping[str, str], paths: Sequence[str]) -> ContentInfo: ...


class LayerApplier(Protocol):
    """A differ, or the diff service: applies a layer from the content store to mounts."""

    async def apply(self, desc: Descriptor, mounts: Sequence[Mount]) -> Descriptor: ...


UnpackProgress = Callable[[str, Descriptor], None]
"""Told ``("unpacking" | "unpacked" | "exists", layer)`` as each layer goes."""


class ChainLocks:
    """One unpack of a chain ID per snapshotter at a time (containerd's duplication suppressor)."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], tuple[anyio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, snapshotter: str, chain_id: str) -> AsyncIterator[None]:
        key = (snapshotter, chain_id)
        lock, users = self._locks.get(key, (anyio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


@dataclass(frozen=True)
class UnpackTarget:
    """Where to unpack: a snapshotter (``name`` is its key in the GC label) and an applier."""

    name: str
    snapshotter: Snapshotter
    applier: LayerApplier
    platforms: oci.PlatformMatcher = field(default_factory=oci.default_matcher)


@dataclass(frozen=True)
class UnpackResult:
    manifest: oci.Descriptor
    config: oci.Descriptor
    chain_id: str
    """The top of the chain: the snapshot a container's rootfs is prepared from."""
    applied: int
    """Layers applied now (the rest were committed already)."""


def unpack_key(chain_id: str) -> str:
    """containerd's ``extract-<nanoseconds>-<random> <chainID>``."""
    unique = f"{time.time_ns() % 1_000_000_000}-{base64.urlsafe_b64encode(secrets.token_bytes(3)).decode()}"
    return f"{UNPACK_KEY_PREFIX}-{unique} {chain_id}"


async def _read_document(content: UnpackContent, desc: oci.Descriptor) -> bytes:
    if desc.size > _DOCUMENT_LIMIT:
        raise InvalidArgument(f"{desc.media_type} {desc.digest} is {desc.size} bytes, too large a document")
    chunks = [chunk async for chunk in await content.read(desc.digest)]
    data = b"".join(chunks)
    oci.verify_digest(data, desc.digest, f"{desc.media_type} {desc.digest}")
    return data


async def select_manifest(
    content: UnpackContent, target: oci.Descriptor, platforms: oci.PlatformMatcher
) -> tuple[oci.Descriptor, oci.Manifest] | None:
    """The manifest ``target`` (a manifest or an index, nested or not) offers for ``platforms``,
    the best by their preference; None when it offers none."""
    if oci.is_manifest(target.media_type):
        return target, oci.parse_manifest(await _read_document(content, target), target.media_type)
    if not oci.is_index(target.media_type):
        raise InvalidArgument(
            f"cannot unpack {target.media_type} {target.digest}: not a manifest or an index"
        )
    index = oci.parse_index(await _read_document(content, target), target.media_type)
    candidates = [
        entry
        for entry in index.manifests
        if (oci.is_manifest(entry.media_type) or oci.is_index(entry.media_type))
        and (entry.platform is None or platforms.match(entry.platform))
    ]
    for entry in oci.by_preference(candidates, platforms, lambda d: d.platform):
        if oci.is_index(entry.media_type):
            found = await select_manifest(content, entry, platforms)
            if found is not None:
                return found
            continue
        manifest = oci.parse_manifest(await _read_document(content, entry), entry.media_type)
        if entry.platform is None and oci.is_config(manifest.config.media_type):
            config = oci.parse_image_config(await _read_document(content, manifest.config))
            if not platforms.match(config.platform):
                continue
        return entry, manifest
    return None


async def unpack_image(
    content: UnpackContent,
    target: oci.Descriptor,
    into: UnpackTarget,
    *,
    locks: ChainLocks | None = None,
    progress: UnpackProgress | None = None,
    ready: Callable[[oci.Descriptor], Awaitable[None]] | None = None,
) -> UnpackResult | None:
    """Unpack the image ``target`` into ``into``'s snapshotter; None when it has no manifest for
    ``into.platforms``. Objects made are held by the request's lease until the config's label
    holds the chain. ``ready`` is awaited before a layer not yet committed is applied (a pull
    downloading it meanwhile)."""
    found = await select_manifest(content, target, into.platforms)
    if found is None:
        return None
    manifest_desc, manifest = found
    if not oci.is_config(manifest.config.media_type):
        raise InvalidArgument(
            f"manifest {manifest_desc.digest}: {manifest.config.media_type} is not an image config"
        )
    config = oci.parse_image_config(await _read_document(content, manifest.config))
    layers = [layer for layer in manifest.layers if oci.is_layer(layer.media_type)]
    diff_ids = list(config.diff_ids)
    if len(layers) != len(diff_ids):
        raise InvalidArgument(f"number of layers and diffIDs don't match: {len(layers)} != {len(diff_ids)}")
    chain = oci.chain_ids(diff_ids)
    locks = locks or ChainLocks()
    applied = 0
    for i, layer in enumerate(layers):
        parent = chain[i - 1] if i else ""
        async with locks.hold(into.name, chain[i]):
            if await _committed(into.snapshotter, chain[i]):
                if progress:
                    progress("exists", _core(layer))
                continue
            if ready is not None:
                await ready(layer)
            if progress:
                progress("unpacking", _core(layer))
            await _apply_layer(content, into, layer, diff_ids[i], chain[i], parent)
            applied += 1
            if progress:
                progress("unpacked", _core(layer))
    top = chain[-1] if chain else ""
    await content.update(
        manifest.config.digest,
        {f"{GC_REF_SNAPSHOT}{into.name}": top},
        [f"labels.{GC_REF_SNAPSHOT}{into.name}"],
    )
    log.debug(
        "image_unpacked", config=manifest.config.digest, chain_id=top, snapshotter=into.name, applied=applied
    )
    return UnpackResult(manifest_desc, manifest.config, top, applied)


async def _committed(snapshotter: Snapshotter, chain_id: str) -> bool:
    try:
        info = await snapshotter.stat(chain_id)
    except NotFound:
        return False
    return info.kind is Kind.COMMITTED


def _core(desc: oci.Descriptor) -> Descriptor:
    return Descriptor(desc.media_type, desc.digest, desc.size, dict(desc.annotations))


async def _apply_layer(
    content: UnpackContent,
    into: UnpackTarget,
    layer: oci.Descriptor,
    diff_id: str,
    chain_id: str,
    parent: str,
) -> None:
    labels = {k: v for k, v in layer.annotations.items() if k.startswith(_INHERITED)}
    labels[LABEL_SNAPSHOT_REF] = chain_id
    labels[LABEL_SNAPSHOT_DIFF_ID] = diff_id
    if parent:
        labels[LABEL_PARENT_CHAIN_ID] = parent
    snapshotter = into.snapshotter
    key = ""
    mounts: list[Mount] = []
    for _ in range(3):
        key = unpack_key(chain_id)
        try:
            mounts = await snapshotter.prepare(key, parent, labels)
            break
        except AlreadyExists:
            continue
    else:
        raise AlreadyExists(f"unable to prepare extraction snapshot for {chain_id}")
    committed = False
    try:
        try:
            applied = await into.applier.apply(_core(layer), mounts)
        except CorralError as exc:
            raise type(exc)(
                f"failed to extract layer ({layer.media_type} {layer.digest}) to {into.name} as {key!r}: {exc.detail}"
            ) from exc
        if applied.digest != diff_id:
            raise FailedPrecondition(
                f"wrong diff id {applied.digest!r} calculated on extraction {diff_id!r}, desc {layer.digest!r}"
            )
        try:
            await snapshotter.commit(chain_id, key, labels)
            committed = True
        except AlreadyExists:
            pass  # another unpack committed the same chain meanwhile
    finally:
        if not committed:
            with anyio.CancelScope(shield=True), suppress(NotFound):
                await snapshotter.remove(key)
    await content.update(layer.digest, {UNCOMPRESSED: diff_id}, [f"labels.{UNCOMPRESSED}"])
