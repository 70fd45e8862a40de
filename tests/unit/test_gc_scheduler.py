"""When the scheduler lets the next collection run: containerd's spacing, from the metadata pause."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from corral.plugins.core import namespace
from corral.plugins.gc.scheduler import MINIMUM_PAUSE, Scheduler, SchedulerConfig
from corral.plugins.metadata import NamespacedSnapshots
from corral.plugins.metadata.sqlite import open_metadata
from corral.plugins.snapshots.native import NativeSnapshotter


def test_collections_are_spaced_by_the_average_pause_not_by_the_removals(tmp_path: Path) -> None:
    """Removing blobs and snapshot directories after the pause can take far longer than the pause
    itself; as containerd's, only the pause (averaged over the collections so far, at least 5 ms)
    sets how soon the next collection that a deletion asks for may run."""

    async def main() -> None:
        md = open_metadata(tmp_path / "meta.db", snapshotters={"native": NativeSnapshotter(tmp_path / "sn")})
        scheduler = Scheduler(md, SchedulerConfig(pause_threshold=0.02))
        snapshots = md.view(NamespacedSnapshots).get("native")
        pauses = []
        with namespace("ns"):
            for round_ in range(2):
                for i in range(40):
                    await snapshots.prepare(f"s{round_}-{i}")
                for i in range(40):
                    await snapshots.remove(f"s{round_}-{i}")
                result = await scheduler.collect_now()
                pauses.append(result.seconds)
        pause = max(sum(pauses) / len(pauses), MINIMUM_PAUSE)
        assert scheduler.spacing == pytest.approx(pause / 0.02 - pause)
        assert scheduler.exports["Spacing"].endswith("ms")
        md.close()

    anyio.run(main)
