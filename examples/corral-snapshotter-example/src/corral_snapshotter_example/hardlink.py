"""A snapshotter like corral's native one, except that views are made of hard links.

Each snapshot is a whole tree, handed out as one bind mount. ``prepare`` copies the parent
(reflinked where the filesystem can, as on btrfs or XFS), so a writable snapshot never shares an
inode with its parent. ``view`` hard-links the parent's files: no data is copied, which is safe
only because a view is mounted read-only and a committed parent is never written. Bookkeeping,
crash safety and cleanup are corral's ``DirectoryBackend``.
"""

from __future__ import annotations

from pathlib import Path

import anyio
from corral.plugins.core import Mount
from corral.plugins.snapshots import Kind
from corral.plugins.snapshots.storage import DirectoryBackend, copy_tree


class HardlinkSnapshotter(DirectoryBackend):
    """A ``corral.plugins.snapshots.Snapshotter`` over plain directories; see the module docstring."""

    async def fill(self, directory: Path, parents: tuple[Path, ...], kind: Kind) -> None:
        if not parents:
            await anyio.Path(directory).chmod(0o755)  # a new root is 0755, as in containerd
        elif kind is Kind.VIEW:
            await copy_tree(parents[0], directory, "--link")
        else:
            await copy_tree(parents[0], directory, "--reflink=auto")

    def mounts_for(self, directory: Path, parents: tuple[Path, ...], kind: Kind) -> list[Mount]:
        # "ro" is what keeps a view's hard links from writing into its parent.
        return [Mount("bind", str(directory), ("rbind", "ro" if kind is Kind.VIEW else "rw"))]
