"""Deterministic layers: tar streams from entries or directory trees, OCI whiteouts, compression.

The same tree always gives the same bytes: entries sorted by path (parents first), one fixed
mtime, owners 0 unless asked, no xattrs, no user or group names, gzip without a name or time
in its header and at a fixed level.
"""

from __future__ import annotations

import enum
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import zstandard
from isal import isal_zlib

from corral.kernel import InvalidArgument
from corral.plugins.core.tar import (
    DIRECTORY,
    END_OF_ARCHIVE,
    FIFO,
    HARDLINK,
    REGULAR,
    SYMLINK,
    encode_header,
)
from corral.plugins.images import _mediatypes as mt
from corral.plugins.images._digest import digest_of
from corral.plugins.images._documents import Descriptor

GZIP_LEVEL = isal_zlib.ISAL_DEFAULT_COMPRESSION
ZSTD_LEVEL = 3
WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"


class Compression(enum.Enum):
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"

    @property
    def media_type(self) -> str:
        """The OCI layer media type of a layer compressed this way."""
        return {Compression.NONE: mt.OCI_LAYER, Compression.GZIP: mt.OCI_LAYER_GZIP}.get(
            self, mt.OCI_LAYER_ZSTD
        )


def compress(data: bytes, compression: Compression) -> bytes:
    """``data`` compressed deterministically."""
    if compression is Compression.GZIP:
        compressor = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, 16 + isal_zlib.MAX_WBITS)
        return bytes(compressor.compress(data) + compressor.flush())
    if compression is Compression.ZSTD:
        return bytes(zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data))
    return data


class EntryKind(enum.Enum):
    FILE = "file"
    DIRECTORY = "directory"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    FIFO = "fifo"
    WHITEOUT = "whiteout"
    """Deletes ``path`` from the layers below."""
    OPAQUE = "opaque"
    """Hides everything the layers below have in the directory ``path``."""


@dataclass(frozen=True)
class LayerEntry:
    """One thing a layer holds, at ``path`` relative to the root (``bin/sh``)."""

    path: str
    kind: EntryKind
    data: bytes = b""
    mode: int = 0o644
    target: str = ""
    """A symlink's target as written, or the path a hard link shares its inode with."""
    uid: int = 0
    gid: int = 0

    @classmethod
    def file(cls, path: str, data: bytes, mode: int = 0o644, *, uid: int = 0, gid: int = 0) -> LayerEntry:
        return cls(path, EntryKind.FILE, data, mode, uid=uid, gid=gid)

    @classmethod
    def directory(cls, path: str, mode: int = 0o755, *, uid: int = 0, gid: int = 0) -> LayerEntry:
        return cls(path, EntryKind.DIRECTORY, mode=mode, uid=uid, gid=gid)

    @classmethod
    def symlink(cls, path: str, target: str) -> LayerEntry:
        return cls(path, EntryKind.SYMLINK, mode=0o777, target=target)

    @classmethod
    def hardlink(cls, path: str, target: str) -> LayerEntry:
        return cls(path, EntryKind.HARDLINK, target=target)

    @classmethod
    def whiteout(cls, path: str) -> LayerEntry:
        return cls(path, EntryKind.WHITEOUT, mode=0)

    @classmethod
    def opaque(cls, path: str) -> LayerEntry:
        return cls(path, EntryKind.OPAQUE, mode=0)


@dataclass(frozen=True)
class Layer:
    """A built layer: its uncompressed tar (whose digest is the diffID) and its blob."""

    tar: bytes
    blob: bytes
    compression: Compression
    descriptor: Descriptor = field(init=False)

    def __post_init__(self) -> None:
        desc = Descriptor(self.compression.media_type, digest_of(self.blob), len(self.blob))
        object.__setattr__(self, "descriptor", desc)

    @property
    def diff_id(self) -> str:
        return digest_of(self.tar)

    @property
    def digest(self) -> str:
        return self.descriptor.digest


def _clean_path(path: str) -> str:
    if path.startswith("/"):
        path = path.lstrip("/")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise InvalidArgument(f"layer entry {path!r}: a path inside the layer is needed")
    return "/".join(parts)


def _sort_key(path: str) -> tuple[str, ...]:
    return tuple(path.split("/"))


def layer_tar(entries: Iterable[LayerEntry], *, mtime: int = 0) -> bytes:
    """The uncompressed tar of ``entries``: sorted, parents added as 0755 directories when
    missing, whiteouts as ``.wh.NAME`` and opaque directories as ``DIR/.wh..wh..opq``."""
    members: dict[str, LayerEntry] = {}
    for entry in entries:
        path = _clean_path(entry.path)
        if entry.kind is EntryKind.WHITEOUT:
            parent, _, base = path.rpartition("/")
            path = (parent + "/" if parent else "") + WHITEOUT_PREFIX + base
        elif entry.kind is EntryKind.OPAQUE:
            members.setdefault(path, LayerEntry.directory(path))
            path = path + "/" + OPAQUE_WHITEOUT
        existing = members.get(path)
        if existing is not None and not (existing.kind is entry.kind is EntryKind.DIRECTORY):
            raise InvalidArgument(f"layer entry {path!r} is given twice")
        members[path] = LayerEntry(
            path, entry.kind, entry.data, entry.mode, entry.target, entry.uid, entry.gid
        )
    for path in list(members):
        parts = path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            existing = members.get(parent)
            if existing is None:
                members[parent] = LayerEntry.directory(parent)
            elif existing.kind is not EntryKind.DIRECTORY:
                raise InvalidArgument(f"layer entry {path!r}: its parent {parent!r} is not a directory")
    out = bytearray()
    for path in sorted(members, key=_sort_key):
        out += _member(members[path], mtime)
    out += END_OF_ARCHIVE
    return bytes(out)


def _member(entry: LayerEntry, mtime: int) -> bytes:
    def header(name: str, typeflag: bytes, *, mode: int, size: int = 0, linkname: str = "") -> bytes:
        return encode_header(
            name, typeflag, size=size, mode=mode, uid=entry.uid, gid=entry.gid, mtime=mtime, linkname=linkname
        )

    if entry.kind is EntryKind.DIRECTORY:
        return header(entry.path + "/", DIRECTORY, mode=entry.mode)
    if entry.kind is EntryKind.SYMLINK:
        return header(entry.path, SYMLINK, mode=0o777, linkname=entry.target)
    if entry.kind is EntryKind.HARDLINK:
        return header(entry.path, HARDLINK, mode=entry.mode, linkname=_clean_path(entry.target))
    if entry.kind is EntryKind.FIFO:
        return header(entry.path, FIFO, mode=entry.mode)
    if entry.kind in (EntryKind.WHITEOUT, EntryKind.OPAQUE):
        return header(entry.path, REGULAR, mode=0)
    data = entry.data
    return header(entry.path, REGULAR, mode=entry.mode, size=len(data)) + data + bytes(-len(data) % 512)


def build_layer(
    entries: Iterable[LayerEntry], *, compression: Compression = Compression.GZIP, mtime: int = 0
) -> Layer:
    """A layer holding ``entries``."""
    tar = layer_tar(entries, mtime=mtime)
    return Layer(tar, compress(tar, compression), compression)


# --- directory trees -----------------------------------------------------------------------


def directory_entries(root: str | os.PathLike[str], *, keep_owners: bool = False) -> list[LayerEntry]:
    """Everything under ``root`` (not ``root`` itself) as layer entries, hard links preserved.

    Regular files, directories, symlinks and FIFOs; sockets are skipped (tar cannot hold them)
    and device nodes are refused. Permission bits are kept, owners only with ``keep_owners``.
    """
    base = Path(root)
    if not base.is_dir():
        raise InvalidArgument(f"{root} is not a directory")
    entries: list[LayerEntry] = []
    inodes: dict[tuple[int, int], str] = {}

    def walk(directory: Path, prefix: str) -> None:
        with os.scandir(directory) as listing:
            names = sorted(item.name for item in listing)
        for name in names:
            full = directory / name
            path = prefix + name
            info = full.lstat()
            mode = stat.S_IMODE(info.st_mode)
            uid, gid = (info.st_uid, info.st_gid) if keep_owners else (0, 0)
            if stat.S_ISDIR(info.st_mode):
                entries.append(LayerEntry.directory(path, mode, uid=uid, gid=gid))
                walk(full, path + "/")
            elif stat.S_ISLNK(info.st_mode):
                entries.append(LayerEntry.symlink(path, os.readlink(full)))
            elif stat.S_ISREG(info.st_mode):
                key = (info.st_dev, info.st_ino)
                if info.st_nlink > 1 and key in inodes:
                    entries.append(
                        LayerEntry(path, EntryKind.HARDLINK, mode=mode, target=inodes[key], uid=uid, gid=gid)
                    )
                    continue
                inodes[key] = path
                entries.append(LayerEntry.file(path, full.read_bytes(), mode, uid=uid, gid=gid))
            elif stat.S_ISFIFO(info.st_mode):
                entries.append(LayerEntry(path, EntryKind.FIFO, mode=mode, uid=uid, gid=gid))
            elif stat.S_ISSOCK(info.st_mode):
                continue
            else:
                raise InvalidArgument(f"{full}: device nodes are not supported by the layer builder")

    walk(base, "")
    return entries


def layer_from_directory(
    root: str | os.PathLike[str],
    *,
    compression: Compression = Compression.GZIP,
    whiteouts: Sequence[str] = (),
    opaque: Sequence[str] = (),
    keep_owners: bool = False,
    mtime: int = 0,
) -> Layer:
    """A layer of the tree at ``root``, plus whiteouts deleting ``whiteouts`` from the layers
    below and opaque markers hiding the lower contents of the directories ``opaque``."""
    entries = directory_entries(root, keep_owners=keep_owners)
    entries += [LayerEntry.whiteout(path) for path in whiteouts]
    entries += [LayerEntry.opaque(path) for path in opaque]
    return build_layer(entries, compression=compression, mtime=mtime)


def _signature(entry: LayerEntry) -> tuple[object, ...]:
    return (entry.kind, entry.mode, entry.uid, entry.gid, entry.data, entry.target)


def diff_entries(lower: Sequence[LayerEntry], upper: Sequence[LayerEntry]) -> list[LayerEntry]:
    """What turns ``lower`` into ``upper``: new and changed entries, directories holding them,
    and a whiteout for each path ``upper`` no longer has (not for those under a removed one)."""
    old: Mapping[str, LayerEntry] = {e.path: e for e in lower}
    new: Mapping[str, LayerEntry] = {e.path: e for e in upper}
    changed = [e for e in upper if e.path not in old or _signature(old[e.path]) != _signature(e)]
    kept = {e.path for e in changed}
    for entry in list(changed):
        parts = entry.path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent not in kept and parent in new:
                kept.add(parent)
                changed.append(new[parent])
    removed: list[LayerEntry] = []
    for path in sorted(old, key=_sort_key):
        if path in new:
            continue
        parts = path.split("/")
        ancestors = ("/".join(parts[:depth]) for depth in range(1, len(parts)))
        if any(a not in new or new[a].kind is not EntryKind.DIRECTORY for a in ancestors):
            continue
        removed.append(LayerEntry.whiteout(path))
    return changed + removed


def layer_from_diff(
    lower: str | os.PathLike[str],
    upper: str | os.PathLike[str],
    *,
    compression: Compression = Compression.GZIP,
    mtime: int = 0,
) -> Layer:
    """The layer that turns the tree ``lower`` into the tree ``upper``, deletions as whiteouts."""
    entries = diff_entries(directory_entries(lower), directory_entries(upper))
    return build_layer(entries, compression=compression, mtime=mtime)
