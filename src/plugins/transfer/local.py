"""io.containerd.transfer.v1.local — imports, exports, pulls and pushes through the image store.

Import: an archive stream into the image store, verified by every image verifier, optionally
unpacked (``[[unpack_config]]`` pairs a platform with a snapshotter and a differ). Export: images
of the store to an OCI archive. Pull: an image of a registry into the store, verified before it
is downloaded, unpacked while it downloads. Push: an image of the store to a registry. With no
image verifier loaded, every image is let in (containerd 2.0 to 2.2 refuse to start the transfer
service then).
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from corral.kernel import (
    InitContext,
    NotFound,
    PluginUnavailable,
    Registration,
    SkipPlugin,
    Unavailable,
    Unimplemented,
    inert,
)
from corral.plugins import types
from corral.plugins.core import bound_namespace
from corral.plugins.images import oci
from corral.plugins.metadata import (
    ImageStore,
    Metadata,
    NamespacedContent,
    NamespacedSnapshots,
    NamespaceStore,
)
from corral.plugins.transfer import (
    TRANSFER_LEASE_LABEL,
    ImageExportStream,
    ImageImportStream,
    ImageLookup,
    ImageStoreTarget,
    OCIRegistry,
    ProgressFunc,
)
from corral.plugins.transfer._import import (
    INGEST_PREFIX,
    PULL_INGEST_PREFIX,
    Importer,
    ImportServices,
    TransferLeases,
    UnpackChoice,
)
from corral.plugins.unpack import ChainLocks, LayerApplier
from corral.plugins.verifiers import ImageVerifier

if TYPE_CHECKING:
    from corral.plugins.transfer._pull import PullServices

log = structlog.get_logger("corral.transfer")


@dataclass(frozen=True)
class UnpackConfiguration:
    """One ``[[unpack_config]]`` entry: a platform, its snapshotter and differ."""

    platform: str = ""
    """The platform unpacked for ("" is this host)."""
    snapshotter: str = "overlayfs"
    differ: str = ""
    """A differ plugin's id; "" is the diff service (its configured differs in order)."""


@dataclass(frozen=True)
class TransferConfig:
    """The ``io.containerd.transfer.v1.local`` section."""

    unpack_config: tuple[UnpackConfiguration, ...] = field(default_factory=lambda: (UnpackConfiguration(),))
    """What an import may unpack into, first match wins (containerd's ``unpack_config``)."""
    check_platform_supported: bool = False
    """Unpack only for an entry's exact platform; by default (as containerd) its OS is enough."""
    max_concurrent_downloads: int = 3
    """Blobs one pull downloads at a time (0: no limit)."""
    concurrent_layer_fetch_buffer: int = field(
        default=0, metadata=inert("corral downloads each blob in one request, not in parallel ranges")
    )
    max_concurrent_uploaded_layers: int = 3
    """Blobs one push uploads at a time (0: no limit)."""
    config_path: str = ""
    """Where registry host directories (``<host>/hosts.toml``) are looked for when a pull or push
    names no ``host_dir`` of its own."""


def _ignore(_: Any) -> None:
    return None


class LocalTransferrer:
    def __init__(
        self,
        metadata: Metadata,
        leases: TransferLeases,
        verifiers: dict[str, ImageVerifier],
        unpacks: list[UnpackChoice],
        default_applier: LayerApplier,
        *,
        exact_platform: bool = False,
        config: TransferConfig | None = None,
    ) -> None:
        self._config = config or TransferConfig()
        self._pulls: set[str] = set()
        self._exact_platform = exact_platform
        self._metadata = metadata
        self._leases = leases
        self._verifiers = verifiers
        self._unpacks = unpacks
        self._default_applier = default_applier
        self._locks = ChainLocks()

    def _images(self) -> ImageStore:
        try:
            return self._metadata.view(ImageStore)
        except PluginUnavailable as exc:
            raise Unavailable(f"the metadata store keeps no images: {exc}") from None

    def _services(self) -> ImportServices:
        return ImportServices(
            content=self._metadata.view(NamespacedContent),
            images=self._images(),
            leases=self._leases,
            snapshots=self._metadata.view(NamespacedSnapshots),
            verifiers=self._verifiers,
            unpacks=self._unpacks,
            default_applier=self._default_applier,
            locks=self._locks,
            exact_platform=self._exact_platform,
        )

    def _pull_services(self) -> PullServices:
        from corral.plugins.transfer._pull import PullServices

        services = self._services()
        return PullServices(
            content=services.content,
            images=services.images,
            leases=self._leases,
            verifiers=dict(self._verifiers),
            unpack_target=Importer(services).unpack_target,
            locks=self._locks,
            config_path=self._config.config_path,
            max_concurrent_downloads=self._config.max_concurrent_downloads,
            active=self._pulls,
        )

    async def transfer(
        self, source: object, destination: object, progress: ProgressFunc | None = None
    ) -> None:
        # Each kind of transfer's module (the registry client, the archive reader and writer) is
        # imported by the first transfer of that kind, not at start-up.
        report = progress or _ignore
        if isinstance(source, ImageImportStream) and isinstance(destination, ImageStoreTarget):
            await Importer(self._services()).run(source, destination, report)
            return
        if isinstance(source, OCIRegistry) and isinstance(destination, ImageStoreTarget):
            from corral.plugins.transfer._pull import Puller

            await Puller(self._pull_services()).run(source, destination, report)
            return
        if isinstance(source, ImageLookup) and isinstance(destination, OCIRegistry):
            from corral.plugins.transfer._push import Pusher

            pusher = Pusher(
                self._metadata.view(NamespacedContent),
                self._images(),
                config_path=self._config.config_path,
                max_uploads=self._config.max_concurrent_uploaded_layers,
            )
            await pusher.run(source, destination, report)
            return
        if isinstance(source, ImageLookup) and isinstance(destination, ImageStoreTarget):
            from corral.plugins.transfer._pull import store_image

            image = await self._images().get(source.name)
            await store_image(self._images(), image.target, destination, _ignore)
            return
        if isinstance(source, ImageLookup) and isinstance(destination, ImageExportStream):
            from corral.plugins.transfer._export import export_images, lookup_images

            found = await lookup_images(self._images(), source)
            await export_images(self._metadata.view(NamespacedContent), found, destination, report)
            return
        raise Unimplemented(
            f"unable to transfer from {type(source).__name__} to {type(destination).__name__}"
        )

    async def remove_dead_leases(self) -> int:
        """Leases of transfers that died with a previous daemon, and their ingests: removed."""
        removed = 0
        last: tuple[str, str] | None = None
        for ns in await self._metadata.view(NamespaceStore).list():
            with bound_namespace(ns.name):
                content = self._metadata.view(NamespacedContent)
                for lease in await self._leases.list([f'labels."{TRANSFER_LEASE_LABEL}"']):
                    prefixes = (f"{INGEST_PREFIX}{lease.id}/", f"{PULL_INGEST_PREFIX}{lease.id}/")
                    for status in await content.list_statuses():
                        if status.ref.startswith(prefixes):
                            with suppress(NotFound):
                                await content.abort(status.ref)
                    if last is not None:
                        with bound_namespace(last[0]):
                            await self._leases.delete(last[1])
                    last = (ns.name, lease.id)
                    removed += 1
        if last is not None:
            with bound_namespace(last[0]):
                # the last one collects, so what the dead transfers held is gone before the first call
                await self._leases.delete(last[1], sync=True)
        return removed


async def init(ic: InitContext) -> LocalTransferrer:
    config: TransferConfig = ic.config
    try:
        metadata = ic.get_single(types.METADATA, Metadata)
    except PluginUnavailable as exc:
        raise SkipPlugin(f"no metadata store: {exc}") from None
    leases: TransferLeases = ic.get_single(types.LEASE)
    diff_service: LayerApplier = ic.get_by_id(types.SERVICE, "diff-service")
    differs: dict[str, LayerApplier] = ic.get_by_type(types.DIFFER)
    verifiers = ic.get_by_type(types.IMAGE_VERIFIER, ImageVerifier)
    snapshotters = metadata.view(NamespacedSnapshots).names
    unpacks = []
    for i, uc in enumerate(config.unpack_config):
        where = f"unpack_config[{i}]"
        platform = oci.Platform.parse(uc.platform) if uc.platform else oci.Platform.host()
        if uc.snapshotter not in snapshotters:
            log.info("unpack_config_skipped", entry=where, snapshotter=uc.snapshotter, reason="not loaded")
            continue
        if uc.differ and uc.differ not in differs:
            raise ValueError(f"{where}: differ {uc.differ!r} is not loaded")
        applier = differs[uc.differ] if uc.differ else diff_service
        unpacks.append(UnpackChoice(platform, uc.snapshotter, applier))
    transferrer = LocalTransferrer(
        metadata,
        leases,
        verifiers,
        unpacks,
        diff_service,
        exact_platform=config.check_platform_supported,
        config=config,
    )
    removed = await transferrer.remove_dead_leases()
    if removed:
        log.info("transfer_leases_removed", count=removed)
    return transferrer


registration = Registration(
    type=types.TRANSFER,
    id="local",
    init=init,
    requires=(types.METADATA, types.LEASE, types.SERVICE, types.DIFFER),
    after=(types.IMAGE_VERIFIER, types.SNAPSHOTTER),
    config=TransferConfig,
    description="images imported and pulled into the image store (verified, unpacked), exported and pushed from it",
)
