"""io.containerd.snapshotter.v1.native — every snapshot a full copy of its parent, bind-mounted.

Works on any filesystem and needs no kernel support beyond bind mounts; the price is a copy of
the parent's whole tree per snapshot (cheap where the filesystem can reflink). Layout:
``<root>/metadata.db`` and ``<root>/snapshots/<id>/`` (the snapshot's tree itself).
"""

from __future__ import annotations

import builtins
import os
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread

from corral.kernel import InitContext, Platform, Registration
from corral.plugins import types
from corral.plugins.core import Mount
from corral.plugins.snapshots import Kind
from corral.plugins.snapshots.storage import DirectoryBackend, copy_tree


@dataclass(frozen=True)
class NativeConfig:
    """The ``io.containerd.snapshotter.v1.native`` section."""

    root_path: str = ""
    """Where snapshots live; empty means the plugin's directory under the daemon root."""


class NativeSnapshotter(DirectoryBackend):
    """A ``Snapshotter`` over plain directories; see the module docstring."""

    async def fill(self, directory: Path, parents: tuple[Path, ...], kind: Kind) -> None:
        if not parents:
            await anyio.to_thread.run_sync(os.chmod, directory, 0o755)
            return
        # --reflink=auto shares the data blocks where the filesystem can (btrfs, xfs). Copying
        # "<parent>/." onto the new directory also gives it the parent root's mode and owner.
        await copy_tree(parents[0], directory, "--reflink=auto")

    def mounts_for(self, directory: Path, parents: tuple[Path, ...], kind: Kind) -> builtins.list[Mount]:
        flag = "ro" if kind is Kind.VIEW else "rw"
        return [Mount("bind", str(directory), ("rbind", flag))]


async def init(ic: InitContext) -> NativeSnapshotter:
    config: NativeConfig = ic.config
    root = Path(config.root_path) if config.root_path else ic.root
    snapshotter = await anyio.to_thread.run_sync(NativeSnapshotter, root)
    ic.meta.platforms.append(Platform.host())
    ic.meta.exports["root"] = str(root)
    return snapshotter


registration = Registration(
    type=types.SNAPSHOTTER,
    id="native",
    init=init,
    config=NativeConfig,
    description="snapshots as full copies of their parent, handed out as bind mounts",
)
