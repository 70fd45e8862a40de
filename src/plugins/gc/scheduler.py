"""io.containerd.gc.v1.scheduler — decides when the metadata store collects garbage.

As containerd's scheduler: a collection follows deletions (every one when ``deletion_threshold``
is 0), or ``mutation_threshold`` other changes, after ``schedule_delay``; collections are spaced
so their pauses take at most ``pause_threshold`` of the time; one runs ``startup_delay`` after
start when that is set; ``collect_now`` (a ``sync`` delete) runs one at once and waits for it.
The spacing comes from the average metadata pause of the collections so far, as containerd's.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import timedelta

import anyio
import structlog

from corral.kernel import InitContext, Registration, format_duration
from corral.plugins import types
from corral.plugins.core.tracing import span
from corral.plugins.metadata import CollectionResult, Metadata

log = structlog.get_logger("corral.gc")

MINIMUM_PAUSE = 0.005
"""The least average pause the spacing of collections is computed from, as containerd's (5 ms):
with the default ``pause_threshold`` of 0.02, collections follow each other at least 245 ms apart."""


@dataclass(frozen=True)
class SchedulerConfig:
    """The ``io.containerd.gc.v1.scheduler`` section: when a collection runs (containerd's keys)."""

    pause_threshold: float = 0.02
    """Longest fraction of time spent paused in collections (0 < x < 1)."""
    deletion_threshold: int = 0
    """Deletions that trigger a collection; 0 means every deletion does."""
    mutation_threshold: int = 100
    """Other changes that trigger a collection."""
    schedule_delay: timedelta = timedelta(0)
    """Wait this long after a trigger, gathering more changes into one collection."""
    startup_delay: timedelta = timedelta(0)
    """Collect this long after start; 0 (the default) means no collection at start-up.

    containerd collects 100ms after every start, so a blob ingested without a lease or reference
    (as ``ctr content ingest`` leaves it) vanishes when the daemon restarts after a crash.
    corral only collects after deletions or changes, or when asked to.
    """

    def __post_init__(self) -> None:
        if not 0 < self.pause_threshold < 1:
            raise ValueError(f"pause_threshold must be between 0 and 1, got {self.pause_threshold}")
        if self.deletion_threshold < 0 or self.mutation_threshold < 0:
            raise ValueError("deletion_threshold and mutation_threshold must not be negative")


class Scheduler:
    """Counts changes reported by the metadata store and runs its collector when due."""

    def __init__(self, metadata: Metadata, config: SchedulerConfig) -> None:
        self._metadata = metadata
        self._config = config
        self._deletions = 0
        self._mutations = 0
        startup = config.startup_delay.total_seconds()
        self._due: float | None = time.monotonic() + startup if startup > 0 else None
        self._wake = anyio.Event()
        self._earliest = 0.0
        self._pause_sum = 0.0
        self._lock = anyio.Lock()
        self.last: CollectionResult | None = None
        self.collections = 0
        self.exports: dict[str, str] = {}
        """The plugin's exports (shown by ``ctr plugins ls -d`` and ``corral plugins info``):
        what the last collection could not remove is reported here until a later one does."""
        metadata.on_mutation(self._changed)

    def _changed(self, deleted: bool) -> None:
        if deleted:
            self._deletions += 1
        else:
            self._mutations += 1
        threshold = self._config.deletion_threshold
        if (deleted and (threshold == 0 or self._deletions >= threshold)) or (
            self._config.mutation_threshold and self._mutations >= self._config.mutation_threshold
        ):
            due = time.monotonic() + self._config.schedule_delay.total_seconds()
            self._due = due if self._due is None else min(self._due, due)
            self._wake.set()

    async def collect_now(self) -> CollectionResult:
        """Collect at once and wait for it (what a ``sync`` delete asks for)."""
        async with self._lock:
            self._deletions = self._mutations = 0
            self._due = None
            with span("gc.Collect") as current:
                result = await self._metadata.garbage_collect()
                if current.recording:
                    current.set_attributes(_span_attributes(result))
            self.last = result
            self.collections += 1
            # containerd's spacing: from the average pause (the metadata's part of a collection,
            # not the removal of blobs and snapshots after it), at least MINIMUM_PAUSE.
            self._pause_sum += result.seconds
            self._earliest = time.monotonic() + self.spacing
            self._report(result)
            return result

    @property
    def spacing(self) -> float:
        """Seconds from one collection to the earliest next one a change can start: the average
        pause so far (at least ``MINIMUM_PAUSE``) divided by ``pause_threshold``, less itself."""
        pause = max(self._pause_sum / self.collections if self.collections else 0.0, MINIMUM_PAUSE)
        return pause / self._config.pause_threshold - pause

    def _report(self, result: CollectionResult) -> None:
        self.exports["Collections"] = str(self.collections)
        self.exports["Spacing"] = format_duration(timedelta(seconds=self.spacing))
        failures = [f"{kind}: {what}" for kind, items in sorted(result.failed.items()) for what in items]
        if failures:
            self.exports["RemovalFailures"] = f"{len(failures)}: " + "; ".join(failures)[:1000]
        else:
            self.exports.pop("RemovalFailures", None)

    async def run(self) -> None:
        while True:
            if self._due is None:
                await self._wake.wait()
                self._wake = anyio.Event()
                continue
            wait = max(self._due, self._earliest) - time.monotonic()
            if wait > 0:
                with anyio.move_on_after(wait):
                    await self._wake.wait()
                self._wake = anyio.Event()
                if max(self._due or math.inf, self._earliest) > time.monotonic():
                    continue
            try:
                await self.collect_now()
            except Exception as exc:
                log.error("gc_failed", error=str(exc), exc_info=exc)
                self._due = None


def _span_attributes(result: CollectionResult) -> dict[str, object]:
    return {
        "gc.marked": result.marked,
        "gc.removed": sum(len(v) for v in result.removed.values()),
        "gc.swept": sum(result.swept.values()),
        "gc.failed": sum(len(v) for v in result.failed.values()),
        "gc.pause_seconds": result.seconds,
    }


async def init(ic: InitContext) -> Scheduler:
    config: SchedulerConfig = ic.config
    scheduler = Scheduler(ic.get_single(types.METADATA, Metadata), config)
    scheduler.exports = ic.meta.exports
    ic.meta.exports.update(
        {
            "PauseThreshold": str(config.pause_threshold),
            "DeletionThreshold": str(config.deletion_threshold),
            "MutationThreshold": str(config.mutation_threshold),
            "ScheduleDelay": format_duration(config.schedule_delay),
        }
    )
    ic.start_soon(scheduler.run, "gc")
    return scheduler


registration = Registration(
    type=types.GC,
    id="scheduler",
    init=init,
    requires=(types.METADATA,),
    config=SchedulerConfig,
    description="schedules garbage collection of the metadata store",
)
