"""What the kill -9 suite found: a crash after a new snapshot's directory was renamed into place and
before its transaction committed rolled the id back but left the directory; the next snapshot drew
the same id and its rename failed with "Directory not empty" (Unknown over gRPC)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from corral.plugins.snapshots.native import NativeSnapshotter
from corral.plugins.snapshots.overlayfs import OverlaySnapshotter


@pytest.mark.parametrize("kind", ["native", "overlayfs"])
def test_a_directory_left_under_the_next_id_does_not_fail_the_next_snapshot(
    tmp_path: Path, kind: str
) -> None:
    async def main() -> None:
        backend = NativeSnapshotter(tmp_path) if kind == "native" else OverlaySnapshotter(tmp_path)
        leftover = tmp_path / "snapshots" / "1"
        (leftover / "fs").mkdir(parents=True)
        (leftover / "fs" / "from-the-crash").write_text("left by a rolled-back transaction")
        await backend.prepare("fresh")
        info = [i async for i in backend.walk()]
        assert [i.name for i in info] == ["fresh"]
        assert not (leftover / "fs" / "from-the-crash").exists()
        await backend.aclose()

    anyio.run(main)
