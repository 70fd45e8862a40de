"""io.containerd.metadata.v1.sqlite — namespaced metadata in one sqlite file under the plugin root."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from corral.kernel import InitContext, Registration
from corral.plugins import types
from corral.plugins.metadata._metadata import Metadata


@dataclass(frozen=True)
class SqliteConfig:
    content_sharing_policy: Literal["shared", "isolated"] = "shared"
    """"shared": a blob in the store is visible to any namespace that proves it has it."""
    no_sync: bool = False
    """Skip fsync on commit: faster, and a power loss may lose the last transactions."""


def migrate_bolt_section(from_version: int, plugins: dict[str, Any]) -> None:
    """A containerd config's ``io.containerd.metadata.v1.bolt`` section configures this plugin."""
    bolt = plugins.pop(f"{types.METADATA}.bolt", None)
    if bolt is not None:
        plugins.setdefault(f"{types.METADATA}.sqlite", {}).update(bolt)


async def init(ic: InitContext) -> Metadata:
    config: SqliteConfig = ic.config
    path = ic.root / "meta.db"
    backends = list(ic.get_by_type(types.CONTENT).values())
    if len(backends) > 1:
        raise RuntimeError(f"more than one content store is ok: {len(backends)}; disable all but one")
    store = Metadata(
        path,
        backend=backends[0] if backends else None,
        snapshotters=ic.get_by_type(types.SNAPSHOTTER),
        no_sync=config.no_sync,
    )
    ic.meta.exports.update({"path": str(path), "policy": config.content_sharing_policy})
    return store


registration = Registration(
    type=types.METADATA,
    id="sqlite",
    init=init,
    after=(types.CONTENT, types.EVENT, types.SNAPSHOTTER),
    config=SqliteConfig,
    migrate=migrate_bolt_section,
    description="namespaced metadata (namespaces, leases, references) in one sqlite file",
)
