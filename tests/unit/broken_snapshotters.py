"""Snapshotters each broken in one way a real one could be: the conformance suite must catch every one.

Each is an opener the suite can take (a class called with the root), built on ``DirectoryBackend``
as a plugin author would build one. ``Copier`` is native's copy with cp options: each broken copy
drops one thing ``cp -a`` keeps.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import anyio
import anyio.to_thread

from corral.plugins.core import Mount
from corral.plugins.snapshots import Kind
from corral.plugins.snapshots.storage import DirectoryBackend, Snapshot, copy_tree


class Copier(DirectoryBackend):
    """A native-like snapshotter: every snapshot a copy of its parent (``cp -a`` and ``options``)."""

    options: tuple[str, ...] = ()

    async def fill(self, directory: Path, parents: tuple[Path, ...], kind: Kind) -> None:
        if not parents:
            await anyio.to_thread.run_sync(os.chmod, directory, 0o755)
            return
        await copy_tree(parents[0], directory, *self.options)
        await anyio.to_thread.run_sync(self.after_copy, directory)

    def after_copy(self, directory: Path) -> None:
        """What the copy does after cp: nothing, unless broken."""

    def mounts_for(self, directory: Path, parents: tuple[Path, ...], kind: Kind) -> list[Mount]:
        return [Mount("bind", str(directory), ("rbind", "ro" if kind is Kind.VIEW else "rw"))]


class CopytreeSnapshotter(Copier):
    """What the quick start once showed: ``shutil.copytree``. Hard links become copies, a fifo
    blocks the copy (it is opened and read), devices are read as files, xattrs and owners go."""

    async def fill(self, directory: Path, parents: tuple[Path, ...], kind: Kind) -> None:
        if not parents:
            await anyio.to_thread.run_sync(os.chmod, directory, 0o755)
            return
        await anyio.to_thread.run_sync(
            lambda: shutil.copytree(parents[0], directory, symlinks=True, dirs_exist_ok=True)
        )


class BlindReader(Copier):
    """Copies every file that is not a directory or a symlink by reading it: a fifo is opened for
    reading, and the copy waits for a writer that never comes."""

    async def fill(self, directory: Path, parents: tuple[Path, ...], kind: Kind) -> None:
        if not parents:
            await anyio.to_thread.run_sync(os.chmod, directory, 0o755)
            return
        await anyio.to_thread.run_sync(self._read_all, parents[0], directory)

    def _read_all(self, source: Path, target: Path) -> None:
        for path, dirs, names in os.walk(source):
            here = target / os.path.relpath(path, source)
            for name in dirs:
                (here / name).mkdir()
            for name in names:
                if os.path.islink(os.path.join(path, name)):
                    (here / name).symlink_to(os.readlink(os.path.join(path, name)))
                else:
                    with open(os.path.join(path, name), "rb") as data:
                        (here / name).write_bytes(data.read())


class LinkBreaking(Copier):
    """Copies every name of a hard-linked file as a file of its own."""

    options = ("--no-preserve=links",)


class FifoDropping(Copier):
    """Copies everything but fifos."""

    def after_copy(self, directory: Path) -> None:
        for path, _, names in os.walk(directory):
            for name in names:
                if stat.S_ISFIFO(os.lstat(os.path.join(path, name)).st_mode):
                    os.unlink(os.path.join(path, name))


class OwnerLosing(Copier):
    """Copies as whoever runs it: every file the daemon's."""

    options = ("--no-preserve=ownership",)


class XattrDropping(Copier):
    """Copies without extended attributes (capabilities, overlay's markers, user.*)."""

    options = ("--no-preserve=xattr",)


class TimeLosing(Copier):
    """Copies with the time of the copy as every file's modification time."""

    options = ("--no-preserve=timestamps",)


class RecordsFirst(Copier):
    """Records a new snapshot, then fills its directory in place: a crash in between leaves a
    listed snapshot that is half made."""

    async def _create(self, kind: Kind, key: str, parent: str, labels: object) -> Snapshot:
        snapshot = await self.store.create_snapshot(kind, key, parent, labels)  # type: ignore[arg-type]
        directory = self.directory(snapshot.id)
        parents = tuple(self.directory(i) for i in snapshot.parent_ids)

        def fill() -> None:
            if parents:
                shutil.copytree(parents[0], directory, symlinks=True)
            else:
                directory.mkdir(mode=0o755)

        await anyio.to_thread.run_sync(fill)
        return snapshot


class NeverCleansUp(Copier):
    """Leaves whatever a crash left behind, for ever."""

    async def cleanup(self) -> None:
        return None
