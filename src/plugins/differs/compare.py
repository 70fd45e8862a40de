"""Computing a layer: the changes from a lower tree to an upper tree, written as a tar stream.

Blocking code for a worker thread. Changes come from one of two walks: an overlay upper
directory alone (it *is* the change set: whiteout devices and opaque xattrs spell deletions), or
both trees side by side. The tar is deterministic: names sorted, numeric owners, whole-second
mtimes, xattrs in PAX records, hard links within the layer detected by inode.
"""

from __future__ import annotations

import enum
import errno
import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from corral.kernel import InvalidArgument
from corral.plugins.differs._tar import (
    BLOCKDEV,
    CHAR,
    DIRECTORY,
    FIFO,
    HARDLINK,
    REGULAR,
    SYMLINK,
    TarWriter,
    check_stop,
    encode_header,
)
from corral.plugins.differs._whiteouts import (
    OPAQUE,
    OVERLAY_XATTR_PREFIX,
    is_opaque_value,
    is_overlay_whiteout,
    opaque_xattr,
    private_xattr,
    whiteout_name,
)

__all__ = ["Change", "ChangeKind", "directory_changes", "overlay_changes", "write_layer"]

_NS = 1_000_000_000
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_COMPARE_CHUNK = 1 << 20


class ChangeKind(enum.Enum):
    ADD = "add"
    MODIFY = "modify"
    DELETE = "delete"
    OPAQUE = "opaque"
    """The directory hides everything below it; its own entry comes first, as an ADD."""


@dataclass(frozen=True, slots=True)
class Change:
    kind: ChangeKind
    path: bytes
    """Relative to the trees' roots, ``/``-separated, no leading ``/``."""
    stat: os.stat_result | None = None
    """The upper entry's lstat, for ADD and MODIFY."""


def _join(root: bytes, rel: bytes) -> bytes:
    return root + b"/" + rel if rel else root


def _child(rel: bytes, name: bytes) -> bytes:
    return rel + b"/" + name if rel else name


def _getxattr(path: bytes, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError as err:
        if err.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return None
        raise


def layer_xattrs(path: bytes, overlay_prefix: str = OVERLAY_XATTR_PREFIX) -> dict[bytes, bytes]:
    """The xattrs a layer carries for ``path``: all but overlay's own and SELinux labels."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as err:
        if err.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    out: dict[bytes, bytes] = {}
    for name in names:
        if private_xattr(name, overlay_prefix):
            continue
        value = _getxattr(path, name)
        if value is not None:
            out[name.encode()] = value
    return out


def overlay_changes(upperdir: str | bytes, *, xattr_prefix: str = OVERLAY_XATTR_PREFIX) -> Iterator[Change]:
    """The changes an overlay upper directory holds, over exactly the lowers it was mounted on."""
    root = os.fsencode(upperdir)
    opaque = opaque_xattr(xattr_prefix)
    stack: list[tuple[bytes, Iterator[bytes]]] = [(b"", iter(sorted(os.listdir(root))))]
    while stack:
        rel, names = stack[-1]
        name = next(names, None)
        if name is None:
            stack.pop()
            continue
        path = _child(rel, name)
        full = _join(root, path)
        st = os.lstat(full)
        if is_overlay_whiteout(st.st_mode, st.st_rdev):
            yield Change(ChangeKind.DELETE, path)
            continue
        yield Change(ChangeKind.ADD, path, st)
        if stat.S_ISDIR(st.st_mode):
            if is_opaque_value(_getxattr(full, opaque)):
                yield Change(ChangeKind.OPAQUE, path)
            stack.append((path, iter(sorted(os.listdir(full)))))


def directory_changes(
    lower: str | bytes | None, upper: str | bytes, *, xattr_prefix: str = OVERLAY_XATTR_PREFIX
) -> Iterator[Change]:
    """The changes from the tree ``lower`` (None: empty) to the tree ``upper``, walking both.

    An entry differs when its type, mode, owner, device, xattrs differ, or (not for directories)
    its size, mtime, symlink target or, when both mtimes are whole seconds, its content.
    """
    low = os.fsencode(lower) if lower is not None else None
    up = os.fsencode(upper)
    stack: list[tuple[bytes, Iterator[tuple[bytes, bool, bool]]]] = [
        (b"", iter(_merged(low, up, b"", low is not None)))
    ]
    while stack:
        rel, items = stack[-1]
        item = next(items, None)
        if item is None:
            stack.pop()
            continue
        name, in_lower, in_upper = item
        path = _child(rel, name)
        if not in_upper:
            yield Change(ChangeKind.DELETE, path)
            continue
        upath = _join(up, path)
        ust = os.lstat(upath)
        below_is_dir = False
        if in_lower:
            assert low is not None
            lpath = _join(low, path)
            lst = os.lstat(lpath)
            below_is_dir = stat.S_ISDIR(lst.st_mode)
            if not _same(lpath, lst, upath, ust, xattr_prefix):
                yield Change(ChangeKind.MODIFY, path, ust)
        else:
            yield Change(ChangeKind.ADD, path, ust)
        if stat.S_ISDIR(ust.st_mode):
            stack.append((path, iter(_merged(low, up, path, below_is_dir))))


def _merged(low: bytes | None, up: bytes, rel: bytes, lower_dir: bool) -> list[tuple[bytes, bool, bool]]:
    """(name, in lower, in upper) for the directory ``rel``, sorted by name."""
    uppers = set(os.listdir(_join(up, rel)))
    lowers = set(os.listdir(_join(low, rel))) if low is not None and lower_dir else set()
    return [(n, n in lowers, n in uppers) for n in sorted(uppers | lowers)]


def _same(lpath: bytes, lst: os.stat_result, upath: bytes, ust: os.stat_result, prefix: str) -> bool:
    if lst.st_dev == ust.st_dev and lst.st_ino == ust.st_ino:
        return True
    if lst.st_mode != ust.st_mode or lst.st_rdev != ust.st_rdev:
        return False
    if lst.st_uid != ust.st_uid or lst.st_gid != ust.st_gid:
        return False
    if layer_xattrs(lpath, prefix) != layer_xattrs(upath, prefix):
        return False
    if stat.S_ISDIR(ust.st_mode):
        return True
    if lst.st_size != ust.st_size or lst.st_mtime_ns // _NS != ust.st_mtime_ns // _NS:
        return False
    if stat.S_ISLNK(ust.st_mode):
        return os.readlink(lpath) == os.readlink(upath)
    lns, uns = lst.st_mtime_ns % _NS, ust.st_mtime_ns % _NS
    if lns or uns:
        return lns == uns
    # Both times may have been truncated (by a tar without PAX times): only the bytes can tell.
    return not stat.S_ISREG(ust.st_mode) or ust.st_size == 0 or _same_content(lpath, upath)


def _same_content(a: bytes, b: bytes) -> bool:
    fa = os.open(a, _READ)
    try:
        fb = os.open(b, _READ)
        try:
            while True:
                ca = os.read(fa, _COMPARE_CHUNK)
                if ca != os.read(fb, _COMPARE_CHUNK):
                    return False
                if not ca:
                    return True
        finally:
            os.close(fb)
    finally:
        os.close(fa)


def write_layer(
    changes: Iterator[Change],
    upper: str | bytes,
    sink: Callable[[bytes], object],
    *,
    xattr_prefix: str = OVERLAY_XATTR_PREFIX,
    stop: threading.Event | None = None,
) -> tuple[str, int]:
    """Write ``changes`` (entries read from ``upper``) as a tar to ``sink``; (diffID, size).

    Once ``stop`` is set the walk raises ``Stopped`` before its next entry (the sink, before its
    next chunk)."""
    tar = TarWriter(sink)
    layer = _LayerWriter(tar, os.fsencode(upper), xattr_prefix)
    for change in changes:
        check_stop(stop)
        layer.write(change)
    return tar.close()


class _LayerWriter:
    def __init__(self, tar: TarWriter, upper: bytes, xattr_prefix: str) -> None:
        self.tar = tar
        self.upper = upper
        self.xattr_prefix = xattr_prefix
        self.dirs: set[bytes] = set()
        self.inodes: dict[tuple[int, int], bytes] = {}

    def write(self, change: Change) -> None:
        self._parents(change.path)
        if change.kind is ChangeKind.DELETE:
            parent, _, base = change.path.rpartition(b"/")
            self.tar.add(encode_header(_child(parent, whiteout_name(base)), REGULAR))
        elif change.kind is ChangeKind.OPAQUE:
            self.tar.add(encode_header(change.path + b"/" + OPAQUE, REGULAR))
        else:
            assert change.stat is not None
            self._entry(change.path, change.stat)

    def _parents(self, rel: bytes) -> None:
        """Directories above a change go in first, with their upper attributes (containerd does too)."""
        end = rel.find(b"/")
        while end > 0:
            parent = rel[:end]
            if parent not in self.dirs:
                st = os.lstat(_join(self.upper, parent))
                if not stat.S_ISDIR(st.st_mode):
                    raise InvalidArgument(f"{os.fsdecode(parent)} changed while the layer was written")
                self._entry(parent, st)
            end = rel.find(b"/", end + 1)

    def _entry(self, rel: bytes, st: os.stat_result) -> None:
        path = _join(self.upper, rel)
        mode = st.st_mode
        xattrs = layer_xattrs(path, self.xattr_prefix)
        if stat.S_ISDIR(mode):
            self.dirs.add(rel)
            self.tar.add(_header(rel + b"/", DIRECTORY, st, xattrs))
        elif stat.S_ISREG(mode):
            if st.st_nlink > 1:
                inode = (st.st_dev, st.st_ino)
                first = self.inodes.get(inode)
                if first is not None:
                    self.tar.add(_header(rel, HARDLINK, st, xattrs, linkname=first))
                    return
                self.inodes[inode] = rel
            fd = os.open(path, _READ)
            try:
                now = os.fstat(fd)
                if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                    raise InvalidArgument(f"{os.fsdecode(rel)} changed while the layer was written")
                self.tar.add_file(_header(rel, REGULAR, now, xattrs, size=now.st_size), fd, now.st_size)
            finally:
                os.close(fd)
        elif stat.S_ISLNK(mode):
            self.tar.add(_header(rel, SYMLINK, st, xattrs, linkname=os.readlink(path)))
        elif stat.S_ISCHR(mode):
            self.tar.add(_header(rel, CHAR, st, xattrs, device=True))
        elif stat.S_ISBLK(mode):
            self.tar.add(_header(rel, BLOCKDEV, st, xattrs, device=True))
        elif stat.S_ISFIFO(mode):
            self.tar.add(_header(rel, FIFO, st, xattrs))
        # Sockets have no tar form; containerd leaves them out too.


def _header(
    name: bytes,
    typeflag: bytes,
    st: os.stat_result,
    xattrs: dict[bytes, bytes],
    *,
    size: int = 0,
    linkname: bytes = b"",
    device: bool = False,
) -> bytes:
    return encode_header(
        name,
        typeflag,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        size=size,
        mtime=st.st_mtime_ns // _NS,
        linkname=linkname,
        devmajor=os.major(st.st_rdev) if device else 0,
        devminor=os.minor(st.st_rdev) if device else 0,
        xattrs=xattrs,
    )
