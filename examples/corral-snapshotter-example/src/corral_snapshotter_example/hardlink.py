"""A snapshotter like corral's native one, except that views are made of hard links.

Each snapshot is a whole tree in ``<root>/snapshots/<id>``, handed out as one bind mount; keys,
parents, kinds, labels and usage live in ``<root>/metadata.db`` (corral's ``MetaStore``).

- ``prepare`` copies the parent with ``cp -a --reflink=always``, so on btrfs or XFS the copy shares
  data blocks until they are written; where the filesystem cannot clone (ext4, tmpfs) it falls
  back to a plain ``cp -a``. Either way a writable snapshot never shares an inode with its parent.
- ``view`` hard-links the parent's files (``cp -al``): no data is copied on any filesystem. This
  is safe only because a view is mounted read-only and a committed parent is never written. The
  view's files *are* the parent's inodes: whatever writes them by another path (the view's
  directory on the host, or a mount made read-write) changes the committed parent and every
  other view of it. Readers of a view also see a link count above 1 on every file.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import anyio
import anyio.to_thread
from corral.kernel import Internal
from corral.plugins.core import Mount
from corral.plugins.snapshots import Info, Kind, Usage
from corral.plugins.snapshots.storage import MetaStore, Snapshot, Transaction, disk_usage

SNAPSHOTS = "snapshots"
DATABASE = "metadata.db"
FILLING_PREFIX = "new-"


class HardlinkSnapshotter:
    """A ``corral.plugins.snapshots.Snapshotter`` over plain directories; see the module docstring.

    One process owns ``root``. A new snapshot's directory is filled under a temporary name and
    renamed to its id in the transaction that records the snapshot, so no record lacks its
    directory; a crash can leave a directory without a record, which ``cleanup`` removes.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.snapshots = root / SNAPSHOTS
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.snapshots.mkdir(mode=0o700, exist_ok=True)
        self.store = MetaStore(root / DATABASE)
        self._filling: set[str] = set()
        """Names of temporary directories being filled, which ``cleanup`` must leave alone."""
        self._clone = True
        """Whether ``prepare`` still tries reflinks; the first refusal turns it off for this root."""

    def directory(self, snapshot_id: int) -> Path:
        """Where the snapshot's tree is: the source of its bind mount."""
        return self.snapshots / str(snapshot_id)

    # -- the Snapshotter protocol ----------------------------------------------------------------

    async def stat(self, key: str) -> Info:
        _, info, _ = await self.store.get_info(key)
        return info

    async def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        return await self.store.update_info(info, fieldpaths)

    async def usage(self, key: str) -> Usage:
        snapshot_id, info, usage = await self.store.get_info(key)
        if info.kind is Kind.ACTIVE:
            return await anyio.to_thread.run_sync(disk_usage, self.directory(snapshot_id))
        # Committed: measured at commit. A view adds nothing of its own but directories and links.
        return usage

    async def mounts(self, key: str) -> builtins.list[Mount]:
        return self._mounts(await self.store.get_snapshot(key))

    async def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> builtins.list[Mount]:
        return self._mounts(await self._create(Kind.ACTIVE, key, parent, labels))

    async def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> builtins.list[Mount]:
        return self._mounts(await self._create(Kind.VIEW, key, parent, labels))

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        snapshot_id, info, usage = await self.store.get_info(key)
        if info.kind is Kind.ACTIVE:
            usage = await anyio.to_thread.run_sync(disk_usage, self.directory(snapshot_id))
        await self.store.commit_active(key, name, usage, labels)

    async def remove(self, key: str) -> None:
        snapshot_id, _ = await self.store.remove(key)
        with anyio.CancelScope(shield=True):  # the record is gone: its directory goes too
            await anyio.to_thread.run_sync(remove_tree, self.directory(snapshot_id))

    async def walk(self, filters: Sequence[str] = ()) -> AsyncIterator[Info]:
        for _, info in await self.store.walk(filters):
            yield info

    async def cleanup(self) -> None:
        """Remove every directory under ``snapshots/`` that no snapshot owns and no call is filling."""

        def leftovers(tx: Transaction) -> builtins.list[str]:
            # Listed inside a transaction: a directory takes its id's name in the transaction that
            # records the id, so a name listed here without a record is truly orphaned.
            owned = {str(snapshot_id) for snapshot_id in tx.ids_in_use()}
            return sorted(n for n in os.listdir(self.snapshots) if n not in owned and n not in self._filling)

        for name in await self.store.run(leftovers):
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(remove_tree, self.snapshots / name)

    async def aclose(self) -> None:
        """Close the metadata database; the kernel calls this when the daemon stops."""
        await self.store.aclose()

    # -- creating --------------------------------------------------------------------------------

    def _mounts(self, snapshot: Snapshot) -> builtins.list[Mount]:
        # "ro" is what keeps a view's hard links from writing into its parent.
        flag = "ro" if snapshot.kind is Kind.VIEW else "rw"
        return [Mount("bind", str(self.directory(snapshot.id)), ("rbind", flag))]

    async def _create(self, kind: Kind, key: str, parent: str, labels: Mapping[str, str] | None) -> Snapshot:
        # Refuse early what the transaction would refuse anyway, before copying anything.
        parent_ids = await self.store.run(lambda tx: tx.check_create(kind, key, parent))
        temporary = self._reserve_temporary()
        try:
            try:
                await self._fill(kind, temporary, parent_ids[0] if parent_ids else None)
            except Exception:
                # A parent removed while it was copied fails the copy: report that, not cp's words.
                await self.store.run(lambda tx: tx.check_create(kind, key, parent))
                raise

            def publish(tx: Transaction) -> Snapshot:
                snapshot = tx.create_snapshot(kind, key, parent, labels)
                os.rename(temporary, self.directory(snapshot.id))
                fsync_directory(self.snapshots)  # the directory is durable before its record is
                return snapshot

            return await self.store.run(publish)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(remove_tree, temporary)
            raise
        finally:
            self._filling.discard(temporary.name)

    def _reserve_temporary(self) -> Path:
        # Reserved before it exists, so cleanup never sees the directory without its reservation.
        name = FILLING_PREFIX + secrets.token_hex(8)
        self._filling.add(name)
        path = self.snapshots / name
        try:
            path.mkdir(mode=0o700)
        except BaseException:
            self._filling.discard(name)
            raise
        return path

    async def _fill(self, kind: Kind, directory: Path, parent_id: int | None) -> None:
        if parent_id is None:
            await anyio.to_thread.run_sync(os.chmod, directory, 0o755)
        elif kind is Kind.VIEW:
            await copy_tree(self.directory(parent_id), directory, "--link")
        else:
            await self._copy(self.directory(parent_id), directory)

    async def _copy(self, source: Path, directory: Path) -> None:
        if not self._clone:
            await copy_tree(source, directory)
            return
        try:
            await copy_tree(source, directory, "--reflink=always")
            return
        except Internal:
            await anyio.to_thread.run_sync(empty_directory, directory)
        # Had the clone failed for another reason (a full disk), this copy fails too, and says so.
        await copy_tree(source, directory)
        self._clone = False  # a plain copy worked where a clone did not: this filesystem cannot clone


async def copy_tree(source: Path, target: Path, *options: str) -> None:
    """``cp -a`` the contents of ``source`` onto the existing ``target``, which takes the mode and
    owner of ``source`` itself.

    cp rather than shutil.copytree: it keeps owners, hard links among the copied files, device
    nodes, fifos, xattrs and times. Internal, with cp's message, when it fails.
    """
    cp = shutil.which("cp") or "/bin/cp"
    result = await anyio.run_process([cp, "-a", *options, "--", f"{source}/.", str(target)], check=False)
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip() or f"exit status {result.returncode}"
        raise Internal(f"copying snapshot {source.name} (cp -a {' '.join(options)}): {message}")


def empty_directory(path: Path) -> None:
    """Remove everything under ``path``, keeping ``path``."""
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


def remove_tree(path: Path) -> None:
    """Remove ``path`` and everything under it; a missing path is fine."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)


def fsync_directory(path: Path) -> None:
    """Make the entries of ``path`` (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
