"""The sqlite metadata plugin's instance: the database, the views its kinds offer, and the collector."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import structlog

from corral.kernel import PluginUnavailable
from corral.plugins.events.types import Publisher
from corral.plugins.metadata import CollectionResult, NamespaceStore
from corral.plugins.metadata._gc import Collector
from corral.plugins.metadata._namespaces import Namespaces
from corral.plugins.metadata.database import Database, ObjectKind

V = TypeVar("V")

log = structlog.get_logger("corral.metadata")


class SqliteMetadata:
    """A ``Metadata``: every kind's records in one sqlite file, collected together."""

    def __init__(
        self,
        path: Path,
        kinds: Sequence[ObjectKind],
        *,
        no_sync: bool = False,
        publisher: Publisher | None = None,
    ) -> None:
        self.db = Database(path, kinds, no_sync=no_sync, publisher=publisher)
        self._views: list[object] = [Namespaces(self.db)]
        for kind in self.db.kinds:
            self._views.extend(kind.views())
        self.collector = Collector(c for kind in self.db.kinds for c in kind.collectables())
        self.failed: dict[str, list[str]] = {}
        """What the last collection could not remove from the backends, by kind."""

    def view(self, contract: type[V]) -> V:
        # A view that names its contract as a base wins: contracts with the same method names
        # (ImageStore, ContainerStore, NamespaceStore) cannot be told apart structurally.
        for view in self._views:
            if contract in type(view).__mro__:
                return view  # type: ignore[return-value]
        for view in self._views:
            if isinstance(view, contract):
                return view
        raise PluginUnavailable(f"the metadata store offers no {contract.__qualname__}")

    @property
    def namespaces(self) -> NamespaceStore:
        return self.view(NamespaceStore)

    def on_mutation(self, listener: Callable[[bool], None]) -> None:
        self.db.on_mutation(listener)

    async def garbage_collect(self) -> CollectionResult:
        """Collect unreferenced records in one transaction, then sweep each kind's backend."""
        result = await self.db.run(self.collector.collect)
        for kind in self.db.kinds:
            await kind.collected(result.removed)
        started = time.perf_counter()
        for kind in self.db.kinds:
            try:
                swept = await kind.sweep()
            except Exception as exc:  # a backend out of reach (a proxy): the other kinds still go
                log.warning("gc_sweep_failed", kind=kind.name, error=str(exc))
                swept = {f"failed:{kind.name}": [f"sweep: {exc}"]}
            for name, value in swept.items():
                if isinstance(value, list):
                    if value:
                        result.failed[name.removeprefix("failed:")] = value
                else:
                    result.swept[name] = value
        self.failed = dict(result.failed)
        removed = {kind: len(nodes) for kind, nodes in result.removed.items()}
        log.info(
            "gc_collected",
            marked=result.marked,
            removed=removed,
            swept=result.swept,
            failed={k: len(v) for k, v in result.failed.items()},
            pause_ms=round(result.seconds * 1000, 3),
            sweep_ms=round((time.perf_counter() - started) * 1000, 3),
        )
        return result

    def close(self) -> None:
        self.db.close()
