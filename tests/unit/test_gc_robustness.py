"""Garbage collection survives what snapshots hold: deep trees, and entries that cannot be removed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import anyio
import pytest
from deep_trees import deep_tree

from corral.plugins.core import namespace
from corral.plugins.gc.scheduler import Scheduler, SchedulerConfig
from corral.plugins.metadata import NamespacedSnapshots
from corral.plugins.metadata.sqlite import open_metadata
from corral.plugins.snapshots.native import NativeSnapshotter
from corral.plugins.snapshots.overlayfs import OverlaySnapshotter


def fs_of(mounts: list[object]) -> Path:
    """The directory an active snapshot without a parent is mounted from (a bind mount)."""
    source = mounts[0].source  # type: ignore[attr-defined]
    return Path(source)


@pytest.mark.parametrize("backend", ["native", "overlayfs"])
def test_a_snapshot_holding_a_tree_10000_levels_deep_is_collected(tmp_path: Path, backend: str) -> None:
    async def main() -> None:
        snapshotter = (
            NativeSnapshotter(tmp_path / "sn") if backend == "native" else OverlaySnapshotter(tmp_path / "sn")
        )
        md = open_metadata(tmp_path / "meta.db", snapshotters={backend: snapshotter})
        snapshots = md.view(NamespacedSnapshots).get(backend)
        with namespace("ns"):
            deep_tree(fs_of(await snapshots.prepare("deep")) / "tree", 10_000)
            await snapshots.prepare("other")
            await snapshots.remove("deep")
            await snapshots.remove("other")
            result = await md.garbage_collect()
        assert result.failed == {}
        assert os.listdir(tmp_path / "sn" / "snapshots") == []

    anyio.run(main)


@pytest.mark.skipif(os.geteuid() != 0, reason="chattr +i needs root")
def test_one_snapshot_that_cannot_be_removed_does_not_stop_the_others(tmp_path: Path) -> None:
    async def main() -> None:
        snapshotter = OverlaySnapshotter(tmp_path / "sn")
        md = open_metadata(tmp_path / "meta.db", snapshotters={"overlayfs": snapshotter})
        scheduler = Scheduler(md, SchedulerConfig())
        snapshots = md.view(NamespacedSnapshots).get("overlayfs")
        with namespace("ns"):
            stuck = fs_of(await snapshots.prepare("stuck")) / "file"
            stuck.write_text("x")
            if subprocess.run(["chattr", "+i", str(stuck)], capture_output=True).returncode != 0:  # noqa: ASYNC221
                pytest.skip("this file system has no immutable attribute")
            try:
                for key in ("a", "b"):
                    (fs_of(await snapshots.prepare(key)) / "f").write_text(key)
                for key in ("stuck", "a", "b"):
                    await snapshots.remove(key)
                result = await scheduler.collect_now()
                # The other two went; the stuck one is reported, not lost.
                assert len(os.listdir(tmp_path / "sn" / "snapshots")) == 1
                assert list(result.failed) == ["snapshots/overlayfs"]
                assert scheduler.exports["RemovalFailures"].startswith("1: snapshots/overlayfs: ")
            finally:
                subprocess.run(["chattr", "-i", str(stuck)], check=True)  # noqa: ASYNC221
            result = await scheduler.collect_now()
        assert result.failed == {}
        assert "RemovalFailures" not in scheduler.exports
        assert os.listdir(tmp_path / "sn" / "snapshots") == []

    anyio.run(main)
