"""A lazy-pulling snapshotter in miniature, as stargz behaves on containerd's wire: a Prepare whose
``containerd.io/snapshot.ref`` names a layer it can provide commits that layer under the ref's
name itself and answers AlreadyExists. Run as a proxy process::

    python tests/lazy_snapshotter.py ROOT SOCKET LAYERS.json   # {"sha256:chain": {"file": "text"}}
"""

from __future__ import annotations

import builtins
import json
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

import anyio

from corral.api.proxy import serve_snapshotter
from corral.kernel import AlreadyExists
from corral.plugins.core import Mount
from corral.plugins.snapshots.native import NativeSnapshotter

REF = "containerd.io/snapshot.ref"


class LazyLayers(NativeSnapshotter):
    """``available``: layer chain IDs it can provide, with their files; ``seen_labels``: every
    Prepare's labels, to check what the daemon passed on."""

    def __init__(self, root: Path, available: Mapping[str, Mapping[str, bytes]] | None = None) -> None:
        super().__init__(root)
        self.available = {k: dict(v) for k, v in (available or {}).items()}
        self.seen_labels: list[dict[str, str]] = []

    async def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> builtins.list[Mount]:
        labels = dict(labels or {})
        self.seen_labels.append(labels)
        target = labels.get(REF, "")
        if target not in self.available:
            return await super().prepare(key, parent, labels)
        mounts = await super().prepare(key, parent, labels)
        for name, data in self.available.pop(target).items():
            (Path(mounts[0].source) / name).write_bytes(data)
        await self.commit(target, key, labels)
        raise AlreadyExists(f"target snapshot {target!r}")


async def serve(root: Path, address: str, available: Mapping[str, Mapping[str, bytes]]) -> None:
    snapshotter = await anyio.to_thread.run_sync(LazyLayers, root, available)
    async with serve_snapshotter(snapshotter, address):
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break


if __name__ == "__main__":
    layers = json.loads(Path(sys.argv[3]).read_text())
    anyio.run(
        serve,
        Path(sys.argv[1]),
        sys.argv[2],
        {k: {n: t.encode() for n, t in v.items()} for k, v in layers.items()},
    )
