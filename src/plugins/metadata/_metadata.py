"""The metadata plugin's instance: the database plus the namespaced views built on it."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path

import structlog

from corral.kernel import NotFound
from corral.plugins.content import ContentStore
from corral.plugins.metadata._content import NamespacedContent
from corral.plugins.metadata._gc import CollectionResult, Collector
from corral.plugins.metadata._leases import LeaseManager
from corral.plugins.metadata._snapshots import NamespacedSnapshotter, SnapshotKind
from corral.plugins.metadata._store import MetadataStore
from corral.plugins.snapshots import Snapshotter

log = structlog.get_logger("corral.metadata")


class Metadata(MetadataStore):
    """Namespaces, content records, leases and the garbage collector over one sqlite file."""

    def __init__(
        self,
        path: Path,
        *,
        backend: ContentStore | None,
        snapshotters: Mapping[str, Snapshotter] | None = None,
        no_sync: bool = False,
    ) -> None:
        super().__init__(path, no_sync=no_sync)
        self.collector = Collector()
        self.leases = LeaseManager(self)
        self.content = NamespacedContent(self, backend) if backend is not None else None
        self.snapshotters: dict[str, NamespacedSnapshotter] = {}
        for name, snapshotter in sorted((snapshotters or {}).items()):
            self.snapshotters[name] = NamespacedSnapshotter(self, name, snapshotter)
            self.collector.register(SnapshotKind(name))

    async def garbage_collect(self) -> CollectionResult:
        """Collect unreferenced records in one transaction, then remove blobs no namespace holds."""
        result = await self.run(self.collector.collect)
        for name, snapshotter in self.snapshotters.items():
            result.swept[f"snapshots/{name}"] = await snapshotter.sweep()
        if self.content is not None:
            await self._sweep_blobs(result)
        removed = {kind: len(nodes) for kind, nodes in result.removed.items()}
        log.info(
            "gc_collected", marked=result.marked, removed=removed, pause_ms=round(result.seconds * 1000, 3)
        )
        return result

    async def _sweep_blobs(self, result: CollectionResult) -> None:
        assert self.content is not None
        backend = self.content.backend

        def held(db: sqlite3.Connection) -> set[str]:
            return {d for (d,) in db.execute("SELECT DISTINCT digest FROM content")}

        keep = await self.run(held)
        async for info in backend.list():
            if info.digest in keep or info.digest in self.content.in_flight:
                continue
            try:
                await backend.delete(info.digest)
            except NotFound:
                continue
            result.swept["blobs"] = result.swept.get("blobs", 0) + 1
