"""Backend keys numbered as containerd numbers them: ``<namespace>/<n>/<key>``, with ``n`` counted
by each namespace's snapshotter on its own, used up by a snapshot the backend refuses, and counted
from 1 again once the namespace is deleted (the Go client test found the shared count)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from corral.kernel import InvalidArgument
from corral.plugins.core import namespace
from corral.plugins.metadata import NamespacedSnapshots, NamespaceStore
from corral.plugins.metadata.sqlite import open_metadata
from corral.plugins.snapshots.native import NativeSnapshotter


def test_each_namespaces_snapshotter_counts_its_backend_keys_on_its_own(tmp_path: Path) -> None:
    native, other = NativeSnapshotter(tmp_path / "native"), NativeSnapshotter(tmp_path / "other")

    async def keys(snapshotter: NativeSnapshotter) -> list[str]:
        return sorted([info.name async for info in snapshotter.walk()])

    async def main() -> None:
        md = open_metadata(tmp_path / "meta.db", snapshotters={"native": native, "other": other})
        snapshots = md.view(NamespacedSnapshots)
        with namespace("a"):
            await snapshots.get("native").prepare("k1")
            await snapshots.get("other").prepare("k1")
            with pytest.raises(InvalidArgument, match='parent "a/1/k1" is not committed snapshot'):
                await snapshots.get("native").view("v", "k1")  # draws a/2 and is refused
            await snapshots.get("native").prepare("k3")
        with namespace("b"):
            await snapshots.get("native").prepare("k1")
        assert await keys(native) == ["a/1/k1", "a/3/k3", "b/1/k1"]
        assert await keys(other) == ["a/1/k1"]
        with namespace("a"):
            for name, key in (("native", "k1"), ("native", "k3"), ("other", "k1")):
                await snapshots.get(name).remove(key)
        await md.view(NamespaceStore).delete("a")
        with namespace("a"):
            await snapshots.get("native").prepare("again")
        assert "a/1/again" in await keys(native)
        md.close()

    anyio.run(main)
