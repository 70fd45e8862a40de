"""The erofs snapshotter: each committed layer one read-only EROFS image, overlayfs on top for writes.

Layout, as containerd's: ``<root>/metadata.db`` and ``<root>/snapshots/<id>/`` holding ``fs`` (the
upper directory while active; once committed, where the layer's image is mounted to serve as a
lower directory), ``work`` (overlay's, active only), ``.erofslayer`` and, once the layer is made,
``layer.erofs``. The image comes from the erofs differ (a layer unpacked straight into EROFS) or,
for a layer written any other way, from ``mkfs.erofs`` over ``fs`` at commit. A layer mkfs.erofs
cannot encode (erofs-utils 1.5 refuses 255-byte names) stays a plain directory, ``.directory-layer``
marking it, and serves as a lower directory like any other.

Layer images are mounted here, on demand, when a snapshot on them is handed out, and unmounted
when the layer is removed or the snapshotter closes (an overlay built on one keeps its own
reference), so no mount and no loop device outlives its user.
"""

from __future__ import annotations

import builtins
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import anyio
import anyio.to_thread
import structlog

from corral.kernel import AlreadyExists, FailedPrecondition, Internal, NotFound
from corral.plugins.core import Mount
from corral.plugins.snapshots import Kind, Usage
from corral.plugins.snapshots.erofs.layers import (
    DIRECTORY_LAYER,
    LAYER_BLOB,
    LAYER_MARKER,
    SCRATCH_PREFIXES,
    UPPER,
    UPPER_CONVERTED,
    WORK,
    check_mkfs,
    clear_immutable,
    directory_argv,
    enable_verity,
    holds_files,
    inode_count,
    mount_blob,
    mount_points_under,
    set_immutable,
    temporary_blob,
    unmount_detached,
    verity_enabled,
)
from corral.plugins.snapshots.storage import DirectoryBackend, Transaction, disk_usage, fsync_dir, remove_tree

log = structlog.get_logger("corral.snapshots.erofs")

MAX_LOWER_LAYERS = 500
"""The kernel's limit on overlay lower directories (OVL_MAX_STACK)."""


class ErofsSnapshotter(DirectoryBackend):
    """A ``Snapshotter`` of EROFS layers under overlayfs; see the module docstring."""

    max_parents = MAX_LOWER_LAYERS
    remove_directories = False  # remove() unmounts the layer first, then removes the directory

    def __init__(
        self,
        root: Path,
        *,
        mkfs: str,
        ovl_options: Sequence[str] = (),
        enable_fsverity: bool = False,
        set_immutable: bool = False,
    ) -> None:
        super().__init__(root)
        self.mkfs = mkfs
        self.ovl_options = tuple(ovl_options)
        self.enable_fsverity = enable_fsverity
        self.set_immutable = set_immutable
        self._mounting = anyio.Lock()

    # -- what DirectoryBackend asks -------------------------------------------------------------

    async def fill(self, directory: Path, parents: tuple[Path, ...], kind: Kind) -> None:
        if kind is Kind.ACTIVE or len(parents) > 1:
            # Overlay's lower directories are the parents' mounted images: mounted before the
            # snapshot is recorded, so a snapshot handed out can always be mounted.
            for parent in parents:
                await self.mount_layer(parent)
        await anyio.to_thread.run_sync(self._lay_out, directory, parents, kind)

    def _lay_out(self, directory: Path, parents: tuple[Path, ...], kind: Kind) -> None:
        fs = directory / UPPER
        fs.mkdir(mode=0o755)
        fs.chmod(0o755)  # whatever the umask
        if kind is Kind.ACTIVE:
            (directory / WORK).mkdir(mode=0o711)
        marker = directory / LAYER_MARKER
        marker.write_bytes(b"")
        marker.chmod(0o644)
        if parents:
            # The layer's root takes its parent's owner (the parent's image root), as in containerd.
            st = os.stat(parents[0] / UPPER)
            os.lchown(fs, st.st_uid, st.st_gid)

    def mounts_for(self, directory: Path, parents: tuple[Path, ...], kind: Kind) -> builtins.list[Mount]:
        if not parents:
            if (directory / LAYER_BLOB).exists():
                if kind is not Kind.VIEW:
                    raise FailedPrecondition(
                        f"snapshot {directory.name} holds an EROFS layer and has no parent:"
                        " only a view of a committed snapshot can mount it"
                    )
                return [self._blob_mount(directory)]
            # Overlay needs a lower layer: a snapshot without parents is its own directory.
            flag = "ro" if kind is Kind.VIEW else "rw"
            return [Mount("bind", str(directory / UPPER), (flag, "rbind"))]
        if kind is Kind.VIEW and len(parents) == 1:
            if self._is_directory_layer(parents[0]):
                return [Mount("bind", str(parents[0] / UPPER), ("ro", "rbind"))]
            return [self._blob_mount(parents[0])]
        options = []
        if kind is Kind.ACTIVE:
            options += [f"workdir={directory / WORK}", f"upperdir={directory / UPPER}"]
        for parent in parents:
            if not self._is_directory_layer(parent):
                self._blob(parent)
        options.append("lowerdir=" + ":".join(str(p / UPPER) for p in parents))
        options += self.ovl_options
        return [Mount("overlay", "overlay", tuple(options))]

    def own_tree(self, directory: Path) -> Path:
        return directory / UPPER

    # -- layer images ---------------------------------------------------------------------------

    def _is_directory_layer(self, layer: Path) -> bool:
        return (layer / DIRECTORY_LAYER).exists() and not (layer / LAYER_BLOB).exists()

    def _blob(self, layer: Path) -> Path:
        blob = layer / LAYER_BLOB
        if not blob.exists():
            raise FailedPrecondition(f"failed to find valid erofs layer blob: {blob} does not exist")
        return blob

    def _blob_mount(self, layer: Path) -> Mount:
        blob = self._blob(layer)
        if self.enable_fsverity:
            self._check_verity(blob)
        # A loop device, as containerd hands it out: the mount is a static record.
        return Mount("erofs", str(blob), ("ro", "loop"))

    def _check_verity(self, blob: Path) -> None:
        if not verity_enabled(blob):
            raise FailedPrecondition(f"fsverity is not enabled on {blob}")

    async def mount_layer(self, layer: Path) -> None:
        """Mount the committed layer's image on its ``fs``, unless it is already."""
        async with self._mounting:
            await anyio.to_thread.run_sync(self._mount_layer, layer)

    def _mount_layer(self, layer: Path) -> None:
        fs = layer / UPPER
        if os.path.ismount(fs) or self._is_directory_layer(layer):
            return
        blob = self._blob(layer)
        if self.enable_fsverity:
            self._check_verity(blob)
        # A commit cut short may have left the upper directory's files: the image holds them.
        for name in os.listdir(fs):
            remove_tree(fs / name)
        mount_blob(blob, fs)
        log.debug("erofs_layer_mounted", layer=layer.name)

    def _unmount_layers(self, directory: Path) -> None:
        for point in mount_points_under(directory):
            unmount_detached(point)

    # -- the Snapshotter calls that differ from DirectoryBackend's ---------------------------------

    async def mounts(self, key: str) -> builtins.list[Mount]:
        snapshot = await self.store.get_snapshot(key)
        parents = tuple(self.directory(i) for i in snapshot.parent_ids)
        if snapshot.kind is Kind.ACTIVE or len(parents) > 1:
            for parent in parents:  # after a restart, or a crash of whoever mounted them
                await self.mount_layer(parent)
        return self.mounts_for(self.directory(snapshot.id), parents, snapshot.kind)

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        snapshot_id, info, _ = await self.store.get_info(key)
        if info.kind is not Kind.ACTIVE:
            raise FailedPrecondition(f"snapshot {key} is not active")
        if await self._exists(name):  # refused before converting; the transaction checks again
            raise AlreadyExists(f"snapshot {name}")
        directory = self.directory(snapshot_id)
        # Converting may be slow: done before the transaction, published inside it.
        written, made = await anyio.to_thread.run_sync(self._image_for_commit, directory)
        if written is None:
            # mkfs.erofs could not encode the layer: it stays the directory it is (a lower
            # directory like any other), as the warning says; nothing is lost.
            usage = await anyio.to_thread.run_sync(disk_usage, directory / UPPER)
            await self.store.commit_active(key, name, usage, labels)
            return
        try:
            if self.enable_fsverity:
                await anyio.to_thread.run_sync(enable_verity, written)
            usage = await anyio.to_thread.run_sync(self._usage_of, written)

            def publish(tx: Transaction) -> None:
                if made:
                    (directory / UPPER_CONVERTED).write_bytes(b"")
                    fsync_dir(directory)
                tx.commit_active(key, name, usage, labels)
                if made:
                    os.rename(written, directory / LAYER_BLOB)
                    fsync_dir(directory)

            await self.store.run(publish)
        except BaseException:
            if made:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._discard_conversion, directory, written)
            raise
        await anyio.to_thread.run_sync(self._after_commit, directory)

    async def _exists(self, key: str) -> bool:
        try:
            await self.store.get_info(key)
        except NotFound:
            return False
        return True

    def _image_for_commit(self, directory: Path) -> tuple[Path | None, bool]:
        """The image to commit and whether this commit made it: a differ's, or one of ``fs``;
        None (and the directory marked a directory layer) when mkfs.erofs cannot make one."""
        blob = directory / LAYER_BLOB
        if blob.exists() and not (directory / UPPER_CONVERTED).exists():
            if holds_files(directory / UPPER):
                raise FailedPrecondition(
                    f"snapshot {directory.name} holds an applied EROFS layer and files written beside it:"
                    " they cannot both be committed"
                )
            return blob, False
        written = temporary_blob(directory)
        # The layer is what the upper directory holds: overlay whiteouts and opaque directories
        # become the image's own, which overlay honours in a lower layer as in an upper one.
        # From inside the tree: mkfs.erofs names files by paths below its source, and a container's
        # paths may come close to PATH_MAX below the snapshot's root.
        result = subprocess.run(
            directory_argv(self.mkfs, written, Path(".")),
            cwd=directory / UPPER,
            capture_output=True,
            check=False,
        )
        try:
            check_mkfs(result)
        except Internal as exc:
            written.unlink(missing_ok=True)
            if self.enable_fsverity:
                raise  # only sealed images may serve as layers
            log.warning("erofs_layer_kept_as_directory", layer=directory.name, reason=exc.detail)
            (directory / DIRECTORY_LAYER).write_bytes(b"")
            fsync_dir(directory)
            return None, False
        except BaseException:
            written.unlink(missing_ok=True)
            raise
        (directory / DIRECTORY_LAYER).unlink(missing_ok=True)
        return written, True

    def _usage_of(self, blob: Path) -> Usage:
        # What the layer takes on disk is its image; the inodes are those the image holds.
        return Usage(size=os.lstat(blob).st_blocks * 512, inodes=inode_count(blob))

    def _discard_conversion(self, directory: Path, written: Path) -> None:
        if written.name != LAYER_BLOB:
            written.unlink(missing_ok=True)
            (directory / UPPER_CONVERTED).unlink(missing_ok=True)

    def _after_commit(self, directory: Path) -> None:
        (directory / UPPER_CONVERTED).unlink(missing_ok=True)
        # What an apply or commit cut short left beside the layer: scratch, never the layer.
        for scratch in directory.iterdir():
            if scratch.name.startswith(SCRATCH_PREFIXES):
                remove_tree(scratch)
        fs = directory / UPPER
        # The image holds the layer now; fs stays, as the image's mount point.
        for name in os.listdir(fs):
            try:
                remove_tree(fs / name)
            except OSError as exc:
                log.warning("erofs_upper_remove_failed", path=str(fs / name), error=str(exc))
        if self.set_immutable:
            try:
                set_immutable(directory / LAYER_BLOB, True)
            except OSError as exc:
                log.warning("erofs_set_immutable_failed", blob=str(directory / LAYER_BLOB), error=str(exc))

    async def remove(self, key: str) -> None:
        snapshot_id, _ = await self.store.remove(key)
        try:
            with anyio.CancelScope(shield=True):  # the record is gone: the directory goes too
                await anyio.to_thread.run_sync(self._discard, self.directory(snapshot_id))
        except OSError as exc:
            # The snapshot is gone; what is left of its directory is a leftover for cleanup.
            log.warning("snapshot_directory_remove_failed", key=key, error=str(exc))

    def _discard(self, directory: Path) -> None:
        self._unmount_layers(directory)
        clear_immutable(directory / LAYER_BLOB)
        remove_tree(directory)

    async def cleanup(self) -> None:
        owned = await self.store.read(lambda tx: set(tx.ids_in_use()))

        def release_leftovers() -> None:
            # What a crash between a removal's record and its directory left mounted or immutable.
            for name in os.listdir(self.snapshots):
                if name.isdigit() and int(name) not in owned:
                    self._unmount_layers(self.snapshots / name)
                    clear_immutable(self.snapshots / name / LAYER_BLOB)

        await anyio.to_thread.run_sync(release_leftovers)
        await super().cleanup()

    async def aclose(self) -> None:
        """Unmount every layer image mounted under the root, then close the database."""
        with anyio.CancelScope(shield=True):
            try:
                await anyio.to_thread.run_sync(self._unmount_layers, self.snapshots)
            except OSError as exc:
                log.warning("erofs_unmount_failed", root=str(self.root), error=str(exc))
        await super().aclose()
