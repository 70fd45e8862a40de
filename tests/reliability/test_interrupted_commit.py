"""What the kill -9 suite found: a crash inside a snapshot commit, after the snapshotter had committed
and before the record changed, left an active snapshot listed whose backend snapshot was gone (no
mounts, nothing to commit). The commit is now recorded as under way first, and finished (or
forgotten) before the next call; here a child process dies at exactly that point."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import anyio

from corral.plugins.core import namespace
from corral.plugins.metadata import NamespacedSnapshots
from corral.plugins.metadata.sqlite import open_metadata
from corral.plugins.snapshots import Kind
from corral.plugins.snapshots.native import NativeSnapshotter

CHILD = """
import os, sys, anyio
from pathlib import Path
from corral.plugins.core import namespace
from corral.plugins.metadata import NamespacedSnapshots
from corral.plugins.metadata.sqlite import open_metadata
from corral.plugins.snapshots.native import NativeSnapshotter

class DiesAfterCommit(NativeSnapshotter):
    async def commit(self, name, key, labels=None):
        await super().commit(name, key, labels)
        os._exit(9)  # killed between the snapshotter's commit and the record's

async def main():
    root = Path(sys.argv[1])
    md = open_metadata(root / "meta.db", snapshotters={"native": DiesAfterCommit(root / "native")})
    snapshots = md.view(NamespacedSnapshots).get("native")
    with namespace("ns"):
        await snapshots.prepare("base", labels={"containerd.io/gc.root": "x"})
        await snapshots.commit("base-c", "base", labels={"containerd.io/gc.root": "x"})

anyio.run(main)
"""


def test_a_commit_killed_after_the_snapshotter_committed_is_finished_on_the_next_start(
    tmp_path: Path,
) -> None:
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD), str(tmp_path)], check=False)
    assert child.returncode == 9

    async def main() -> None:
        backend = NativeSnapshotter(tmp_path / "native")
        md = open_metadata(tmp_path / "meta.db", snapshotters={"native": backend})
        snapshots = md.view(NamespacedSnapshots).get("native")
        with namespace("ns"):
            listed = {info.name: info async for info in snapshots.walk()}
            assert list(listed) == ["base-c"]
            assert listed["base-c"].kind is Kind.COMMITTED
            assert listed["base-c"].labels == {"containerd.io/gc.root": "x"}
            await snapshots.prepare("child", "base-c")
            assert [m.type for m in await snapshots.mounts("child")] == ["bind"]

    anyio.run(main)
