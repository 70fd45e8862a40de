"""io.containerd.metadata.v1.sqlite — namespaced metadata in one sqlite file under the plugin root."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from corral.kernel import InitContext, Registration
from corral.plugins import types
from corral.plugins.content import ContentStore
from corral.plugins.events.types import Publisher, optional_publisher
from corral.plugins.metadata._containers import ContainersKind
from corral.plugins.metadata._content import ContentKind
from corral.plugins.metadata._images import ImagesKind
from corral.plugins.metadata._leases import LeasesKind
from corral.plugins.metadata._metadata import SqliteMetadata
from corral.plugins.metadata._sandboxes import SandboxesKind
from corral.plugins.metadata._snapshots import SnapshotsKind
from corral.plugins.metadata.database import ObjectKind
from corral.plugins.snapshots import Snapshotter

__all__ = ["SqliteConfig", "SqliteMetadata", "build_kinds", "open_metadata", "registration"]


@dataclass(frozen=True)
class SqliteConfig:
    """The ``io.containerd.metadata.v1.sqlite`` section (a containerd config's ``bolt`` section too)."""

    content_sharing_policy: Literal["shared", "isolated"] = "shared"
    """"shared": a namespace that names a stored blob's digest gets it without sending the bytes;
    "isolated": it must write (and so prove it has) the bytes first."""
    no_sync: bool = False
    """Skip fsync on commit: faster, and a power loss may lose the last transactions."""


def build_kinds(
    content: ContentStore | None,
    snapshotters: dict[str, Snapshotter],
    *,
    policy: Literal["shared", "isolated"] = "shared",
) -> list[ObjectKind]:
    """The kinds of object the built-in store keeps, in the order containerd reports what a
    namespace still holds. A new kind is one module and one line here."""
    kinds: list[ObjectKind] = [ImagesKind()]
    if content is not None:
        kinds.append(ContentKind(content, policy))
    kinds += [ContainersKind(), SnapshotsKind(snapshotters), LeasesKind(), SandboxesKind()]
    return kinds


async def init(ic: InitContext) -> SqliteMetadata:
    config: SqliteConfig = ic.config
    path = ic.root / "meta.db"
    backends = ic.get_by_type(types.CONTENT, ContentStore)
    if len(backends) > 1:
        raise RuntimeError(f"more than one content store is ok: {len(backends)}; disable all but one")
    publisher: Publisher | None = optional_publisher(ic.get_by_type(types.EVENT))
    store = open_metadata(
        path,
        content=next(iter(backends.values()), None),
        snapshotters=ic.get_by_type(types.SNAPSHOTTER, Snapshotter),
        policy=config.content_sharing_policy,
        no_sync=config.no_sync,
        publisher=publisher,
    )
    ic.meta.exports.update({"path": str(path), "policy": config.content_sharing_policy})
    return store


registration = Registration(
    type=types.METADATA,
    id="sqlite",
    init=init,
    after=(types.CONTENT, types.EVENT, types.SNAPSHOTTER),
    config=SqliteConfig,
    config_aliases=(f"{types.METADATA}.bolt",),  # a containerd config's section configures this store
    description="namespaced metadata (namespaces, images, content, containers, snapshots, leases, sandboxes)",
)


def open_metadata(
    path: Path,
    *,
    content: ContentStore | None = None,
    snapshotters: dict[str, Snapshotter] | None = None,
    policy: Literal["shared", "isolated"] = "shared",
    no_sync: bool = False,
    publisher: Publisher | None = None,
) -> SqliteMetadata:
    """The built-in store over the given backends, outside a daemon (tests, tools, other plugins' tests)."""
    kinds = build_kinds(content, snapshotters or {}, policy=policy)
    return SqliteMetadata(path, kinds, no_sync=no_sync, publisher=publisher)
