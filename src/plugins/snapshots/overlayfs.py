"""io.containerd.snapshotter.v1.overlayfs — snapshots as overlay layers: a child stores only its changes.

Layout: ``<root>/metadata.db`` and ``<root>/snapshots/<id>/{fs,work}``; ``fs`` is the layer (the
upper directory while active, a lower directory of every child once committed), ``work`` is
overlay's scratch directory. Mounts follow containerd's overlay snapshotter exactly, so clients
that inspect them (ctr prints them; the differ mounts them) see the same shapes.
"""

from __future__ import annotations

import builtins
import ctypes
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import anyio
import anyio.to_thread

from corral.kernel import CorralError, InitContext, InvalidArgument, Platform, Registration, SkipPlugin, inert
from corral.plugins import types
from corral.plugins.core import Mount
from corral.plugins.core.idmap import IDMap, supports_idmapped_overlay
from corral.plugins.snapshots import Info, Kind
from corral.plugins.snapshots.storage import DirectoryBackend

MAX_LOWER_LAYERS = 500
"""The kernel's limit on overlay lower directories (OVL_MAX_STACK)."""
UPPERDIR_LABEL = "containerd.io/snapshot/overlay.upperdir"
FILESYSTEMS = Path("/proc/filesystems")
INDEX_PARAMETER = Path("/sys/module/overlay/parameters/index")
"""Present when the kernel knows overlay's ``index`` option, so ``index=off`` can be passed."""


@dataclass(frozen=True)
class OverlayConfig:
    """The ``io.containerd.snapshotter.v1.overlayfs`` section."""

    root_path: str = ""
    """Where snapshots live; empty means the plugin's directory under the daemon root."""
    upperdir_label: bool = False
    """Add the label ``containerd.io/snapshot/overlay.upperdir`` (the snapshot's fs path) to its info."""
    sync_remove: bool = False
    """Delete a snapshot's directory during ``remove``; otherwise the next ``cleanup`` does, as in containerd."""
    mount_options: tuple[str, ...] = ()
    """Extra options for every overlay mount, after ``lowerdir``."""
    slow_chown: bool = field(
        default=False, metadata=inert("corral's overlayfs has no chown fallback for user namespaces")
    )
    """Accepted so containerd configs load; setting it is reported: corral's overlayfs remaps ids
    only with idmapped layers (capability ``remap-ids``), and refuses where the kernel has none."""


class OverlaySnapshotter(DirectoryBackend):
    """A ``Snapshotter`` over overlayfs; see the module docstring."""

    max_parents = MAX_LOWER_LAYERS
    remap_ids = False
    """Hand out ``uidmap=``/``gidmap=`` options for snapshots labelled with id mappings (set at
    init where the kernel mounts overlays over idmapped layers: the capability ``remap-ids``)."""

    def __init__(
        self,
        root: Path,
        *,
        upperdir_label: bool = False,
        sync_remove: bool = False,
        mount_options: Sequence[str] = (),
        index_off: bool | None = None,
    ) -> None:
        super().__init__(root)
        self.upperdir_label = upperdir_label
        self.remove_directories = sync_remove
        self.mount_options = tuple(mount_options)
        self.index_off = INDEX_PARAMETER.exists() if index_off is None else index_off

    async def fill(self, directory: Path, parents: tuple[Path, ...], kind: Kind) -> None:
        await anyio.to_thread.run_sync(self._lay_out, directory, parents)

    def _lay_out(self, directory: Path, parents: tuple[Path, ...]) -> None:
        fs = directory / "fs"
        fs.mkdir(mode=0o755)
        (directory / "work").mkdir(mode=0o711)
        fs.chmod(0o755)  # whatever the umask
        if parents:
            # The layer's root takes its parent's owner, as in containerd: a rootless image's
            # root directory stays writable for its user.
            st = os.stat(parents[0] / "fs")
            os.lchown(fs, st.st_uid, st.st_gid)

    def mounts_for(self, directory: Path, parents: tuple[Path, ...], kind: Kind) -> builtins.list[Mount]:
        if not parents:
            # Overlay needs a lower layer: a snapshot without parents is its own directory.
            flag = "ro" if kind is Kind.VIEW else "rw"
            return [Mount("bind", f"{directory}/fs", (flag, "rbind"))]
        if kind is Kind.VIEW and len(parents) == 1:
            return [Mount("bind", f"{parents[0]}/fs", ("ro", "rbind"))]
        options = ["index=off"] if self.index_off else []
        if kind is Kind.ACTIVE:
            options += [f"workdir={directory}/work", f"upperdir={directory}/fs"]
        options.append("lowerdir=" + ":".join(f"{p}/fs" for p in parents))
        options += self.mount_options
        return [Mount("overlay", "overlay", tuple(options))]

    def own_tree(self, directory: Path) -> Path:
        return directory / "fs"

    # -- id remapping, as containerd 2.x's overlay snapshotter --------------------------------------
    async def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> builtins.list[Mount]:
        idmap = _idmap_of(labels)
        mounts = await super().prepare(key, parent, labels)
        if idmap is not None:
            # The new layer's root belongs to the namespace's root, so it can write there.
            uid, gid = idmap.root()
            snapshot_id, _, _ = await self.store.get_info(key)
            os.lchown(self.directory(snapshot_id) / "fs", uid, gid)
        return self._remapped(mounts, idmap)

    async def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> builtins.list[Mount]:
        idmap = _idmap_of(labels)
        return self._remapped(await super().view(key, parent, labels), idmap)

    async def mounts(self, key: str) -> builtins.list[Mount]:
        info = await self.stat(key)
        return self._remapped(await super().mounts(key), _idmap_of(info.labels))

    def _remapped(self, mounts: builtins.list[Mount], idmap: IDMap | None) -> builtins.list[Mount]:
        if idmap is None or not self.remap_ids:
            return mounts
        return [replace(m, options=(*idmap.options(), *m.options)) for m in mounts]

    def decorate(self, info: Info, directory: Path) -> Info:
        if not self.upperdir_label:
            return info
        return replace(info, labels={**info.labels, UPPERDIR_LABEL: f"{directory}/fs"})


def _idmap_of(labels: Mapping[str, str] | None) -> IDMap | None:
    """The id mapping a snapshot's labels ask for; InvalidArgument when it maps no root."""
    try:
        idmap = IDMap.from_labels(dict(labels or {}))
        if idmap is not None:
            idmap.root()
    except CorralError as exc:
        raise InvalidArgument(f"failed to find root pair: {exc}") from None
    return idmap


def overlay_supported() -> bool:
    """Whether the running kernel has overlayfs (registered in /proc/filesystems)."""
    try:
        text = FILESYSTEMS.read_text()
    except OSError:
        return False
    return any(line.split()[-1:] == ["overlay"] for line in text.splitlines())


class _Dirent64(ctypes.Structure):
    _fields_ = (
        ("d_ino", ctypes.c_uint64),
        ("d_off", ctypes.c_int64),
        ("d_reclen", ctypes.c_ushort),
        ("d_type", ctypes.c_ubyte),
        ("d_name", ctypes.c_char * 256),
    )


_DT_UNKNOWN = 0


def supports_d_type(path: Path) -> bool:
    """Whether directory listings under ``path`` carry file types, which overlay needs.

    Python's scandir hides a missing d_type behind a stat, so the directory is read with libc.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    readdir = getattr(libc, "readdir64", None) or libc.readdir
    readdir.restype = ctypes.POINTER(_Dirent64)
    readdir.argtypes = (ctypes.c_void_p,)
    libc.opendir.restype = ctypes.c_void_p
    libc.opendir.argtypes = (ctypes.c_char_p,)
    libc.closedir.argtypes = (ctypes.c_void_p,)
    with tempfile.TemporaryDirectory(prefix="d_type-check-", dir=path) as probe:
        Path(probe, "file").touch()
        handle = libc.opendir(os.fsencode(probe))
        if not handle:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno), probe)
        try:
            while entry := readdir(handle):
                if entry.contents.d_name == b"file":
                    return bool(entry.contents.d_type != _DT_UNKNOWN)
        finally:
            libc.closedir(handle)
    return False


async def overlay_root(ic: InitContext, root_path: str) -> Path:
    """The snapshotter's root (``root_path`` or the plugin's directory), made 0700 and checked for
    d_type, which overlayfs needs: a filesystem without it is an error, not a skip, because the
    operator asked for overlay snapshots there."""
    root = Path(root_path) if root_path else ic.root
    await anyio.to_thread.run_sync(lambda: root.mkdir(mode=0o700, parents=True, exist_ok=True))
    if not await anyio.to_thread.run_sync(supports_d_type, root):
        raise RuntimeError(
            f"{root} does not support d_type. If the backing filesystem is xfs, "
            "please reformat with ftype=1 to enable d_type support"
        )
    return root


def announce_host_root(ic: InitContext, root: Path) -> None:
    """What an overlay-based snapshotter says of itself: the host's platform and its root."""
    ic.meta.platforms.append(Platform.host())
    ic.meta.exports["root"] = str(root)


async def init(ic: InitContext) -> OverlaySnapshotter:
    config: OverlayConfig = ic.config
    if not overlay_supported():
        raise SkipPlugin(f"overlayfs is not supported by this kernel (no overlay in {FILESYSTEMS})")
    root = await overlay_root(ic, config.root_path)
    snapshotter = await anyio.to_thread.run_sync(
        lambda: OverlaySnapshotter(
            root,
            upperdir_label=config.upperdir_label,
            sync_remove=config.sync_remove,
            mount_options=config.mount_options,
        )
    )
    if await supports_idmapped_overlay(root):
        snapshotter.remap_ids = True
        ic.meta.capabilities.append("remap-ids")
    announce_host_root(ic, root)
    return snapshotter


registration = Registration(
    type=types.SNAPSHOTTER,
    id="overlayfs",
    init=init,
    config=OverlayConfig,
    description="snapshots as overlayfs layers: a child stores only what it changes",
)
