"""Computing a layer: the changes from a lower tree to an upper tree, written as a tar stream.

Blocking code for a worker thread. Changes come from one of two walks: an overlay upper
directory alone (it *is* the change set: whiteout devices and opaque xattrs spell deletions), or
both trees side by side, compared as containerd's continuity does (type, mode, owner, device,
``security.capability``, then size, mtime and, when the times may have been truncated, content).
The tar carries what containerd's carries: names sorted, numeric owners, whole-second mtimes,
``security.capability`` as the only xattr, hard links by inode (also to names the change left
alone, as containerd does), parents of every change.

Depth costs descriptors and memory only in proportion to what is walked, not to how deep it is:
every lookup is relative to its directory's descriptor (no path is ever longer than one name),
at most ``KEEP_OPEN`` directories per tree stay open (one let go is reopened through ``..`` of
its child, checked to be the same directory), and the current path is one buffer, cut back on
the way up.
"""

from __future__ import annotations

import enum
import errno
import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from corral.kernel import InvalidArgument
from corral.plugins.core.tar import (
    BLOCKDEV,
    CHAR,
    DIRECTORY,
    FIFO,
    HARDLINK,
    REGULAR,
    SYMLINK,
    encode_header,
)
from corral.plugins.differs._tar import TarWriter, check_stop
from corral.plugins.differs._whiteouts import (
    OPAQUE,
    OVERLAY_XATTR_PREFIX,
    is_opaque_value,
    is_overlay_whiteout,
    opaque_xattr,
    whiteout_name,
)

__all__ = ["Change", "ChangeKind", "directory_changes", "overlay_changes", "write_layer"]

_NS = 1_000_000_000
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_COMPARE_CHUNK = 1 << 20
CAPABILITY = "security.capability"
"""The one xattr containerd's diff records (and compares): file capabilities."""
KEEP_OPEN = 16
"""Directory descriptors a walk holds open per tree at most, whatever the depth."""


class ChangeKind(enum.Enum):
    ADD = "add"
    MODIFY = "modify"
    DELETE = "delete"
    OPAQUE = "opaque"
    """The directory hides everything below it; its own entry comes first, as an ADD."""
    UNMODIFIED = "unmodified"
    """A name left alone whose inode has other names: it is in the layer if another name is."""


@dataclass(eq=False, slots=True)
class Level:
    """A directory of the upper tree on the walk's way down: what a change's parents need."""

    parent: Level | None
    end: int
    """The length of its path (relative to the root) in the paths of everything below it."""
    stat: os.stat_result
    capability: bytes | None
    emitted: bool = False
    """Whether its entry is in the layer already (as a change or as a change's parent)."""


@dataclass(frozen=True, slots=True)
class Change:
    kind: ChangeKind
    path: bytes
    """Relative to the trees' roots, ``/``-separated, no leading ``/``."""
    stat: os.stat_result | None
    """The upper entry's lstat (not for DELETE and OPAQUE)."""
    at: Level
    """The directory the change is in (for OPAQUE, the opaque directory itself)."""
    dir_fd: int
    """``at``'s descriptor, open while the change is being handled."""

    @property
    def name(self) -> bytes:
        return self.path.rpartition(b"/")[2]


def _proc(dir_fd: int, name: bytes) -> bytes:
    """A path that reaches ``name`` in the open directory without resolving anything above it."""
    return b"/proc/self/fd/%d/%s" % (dir_fd, name)


def _getxattr(target: int | bytes, name: str) -> bytes | None:
    try:
        if isinstance(target, int):
            return os.getxattr(target, name)
        return os.getxattr(target, name, follow_symlinks=False)
    except OSError as err:
        if err.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return None
        raise


def _names(fd: int) -> list[bytes]:
    """The entries of the open directory, in reverse order (popped from the end: sorted)."""
    return sorted((os.fsencode(n) for n in os.listdir(fd)), reverse=True)


@dataclass(eq=False, slots=True)
class _Dir:
    fd: int | None
    device: int
    inode: int


@dataclass(eq=False)
class _Walk:
    """One tree walked depth first: the open directory on top, at most KEEP_OPEN open below it."""

    root: bytes
    dirs: list[_Dir] = field(default_factory=list)
    path: bytearray = field(default_factory=bytearray)
    ends: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        fd = os.open(self.root, _DIR)
        st = os.fstat(fd)
        self.dirs.append(_Dir(fd, st.st_dev, st.st_ino))

    @property
    def fd(self) -> int:
        fd = self.dirs[-1].fd
        assert fd is not None
        return fd

    def rel(self, name: bytes) -> bytes:
        return bytes(self.path) + b"/" + name if self.path else name

    def enter(self, name: bytes) -> int | None:
        """Go down into the directory ``name``; its fd, or None when it is not (or no longer) one."""
        try:
            fd = os.open(name, _DIR, dir_fd=self.fd)
        except FileNotFoundError:
            return None
        except OSError as err:
            if err.errno in (errno.ENOTDIR, errno.ELOOP):
                return None
            raise
        st = os.fstat(fd)
        self.dirs.append(_Dir(fd, st.st_dev, st.st_ino))
        self.ends.append(len(self.path))
        if self.path:
            self.path += b"/"
        self.path += name
        if len(self.dirs) > KEEP_OPEN:
            far = self.dirs[-KEEP_OPEN - 1]
            if far.fd is not None:
                os.close(far.fd)
                far.fd = None
        return fd

    def leave(self) -> None:
        gone = self.dirs.pop()
        assert gone.fd is not None
        parent = self.dirs[-1]
        try:
            if parent.fd is None:
                fd = os.open(b"..", _DIR, dir_fd=gone.fd)
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) != (parent.device, parent.inode):
                    os.close(fd)
                    raise InvalidArgument("a directory moved while the layer was written")
                parent.fd = fd
        finally:
            os.close(gone.fd)
        del self.path[self.ends.pop() :]

    def close(self) -> None:
        for d in self.dirs:
            if d.fd is not None:
                os.close(d.fd)
        self.dirs.clear()


def _level(walk: _Walk, parent: Level | None, fd: int, emitted: bool) -> Level:
    return Level(parent, len(walk.path), os.fstat(fd), _getxattr(fd, CAPABILITY), emitted)


def overlay_changes(upperdir: str | bytes, *, xattr_prefix: str = OVERLAY_XATTR_PREFIX) -> Iterator[Change]:
    """The changes an overlay upper directory holds, over exactly the lowers it was mounted on."""
    opaque = opaque_xattr(xattr_prefix)
    walk = _Walk(os.fsencode(upperdir))
    try:
        top = _level(walk, None, walk.fd, True)
        pending = [(top, _names(walk.fd))]
        while pending:
            at, names = pending[-1]
            if not names:
                pending.pop()
                if pending:
                    walk.leave()
                continue
            name = names.pop()
            fd = walk.fd
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            path = walk.rel(name)
            if is_overlay_whiteout(st.st_mode, st.st_rdev):
                yield Change(ChangeKind.DELETE, path, None, at, fd)
                continue
            yield Change(ChangeKind.ADD, path, st, at, fd)
            if stat.S_ISDIR(st.st_mode):
                child = walk.enter(name)
                if child is None:
                    raise InvalidArgument(f"{os.fsdecode(path)} changed while the layer was written")
                level = _level(walk, at, child, True)
                if is_opaque_value(_getxattr(child, opaque)):
                    yield Change(ChangeKind.OPAQUE, path, None, level, child)
                pending.append((level, _names(child)))
    finally:
        walk.close()


def directory_changes(lower: str | bytes | None, upper: str | bytes) -> Iterator[Change]:
    """The changes from the tree ``lower`` (None: empty) to the tree ``upper``, walking both.

    Names whose entries are the same but have other hard links are UNMODIFIED changes: the
    layer needs them as links when another name of the inode is in it (containerd's rule).
    """
    up = _Walk(os.fsencode(upper))
    low = _Walk(os.fsencode(lower)) if lower is not None else None
    try:
        top = _level(up, None, up.fd, True)
        pending = [(top, _merged(low.fd if low else None, up.fd), low is not None)]
        while pending:
            at, items, below = pending[-1]
            if not items:
                pending.pop()
                if pending:
                    up.leave()
                    if below:
                        assert low is not None
                        low.leave()
                continue
            name, in_lower, in_upper = items.pop()
            fd = up.fd
            path = up.rel(name)
            if not in_upper:
                yield Change(ChangeKind.DELETE, path, None, at, fd)
                continue
            ust = os.stat(name, dir_fd=fd, follow_symlinks=False)
            lower_dir = False
            changed = True
            if in_lower:
                assert low is not None
                lst = os.stat(name, dir_fd=low.fd, follow_symlinks=False)
                lower_dir = stat.S_ISDIR(lst.st_mode)
                changed = not _same(low.fd, lst, fd, ust, name)
                if changed:
                    yield Change(ChangeKind.MODIFY, path, ust, at, fd)
                elif not stat.S_ISDIR(ust.st_mode) and ust.st_nlink > 1:
                    yield Change(ChangeKind.UNMODIFIED, path, ust, at, fd)
            else:
                yield Change(ChangeKind.ADD, path, ust, at, fd)
            if not stat.S_ISDIR(ust.st_mode):
                continue
            child = up.enter(name)
            if child is None:
                raise InvalidArgument(f"{os.fsdecode(path)} changed while the layer was written")
            level = _level(up, at, child, changed)
            deeper = False
            if lower_dir:
                assert low is not None
                deeper = low.enter(name) is not None
            pending.append((level, _merged(low.fd if deeper and low else None, child), deeper))
    finally:
        up.close()
        if low is not None:
            low.close()


def _merged(low: int | None, up: int) -> list[tuple[bytes, bool, bool]]:
    """(name, in lower, in upper) for one directory, in reverse order (popped from the end: sorted)."""
    uppers = set(_names(up))
    lowers = set(_names(low)) if low is not None else set()
    return [(n, n in lowers, n in uppers) for n in sorted(uppers | lowers, reverse=True)]


def _same(lfd: int, lst: os.stat_result, ufd: int, ust: os.stat_result, name: bytes) -> bool:
    """continuity's ``sameFile``: the entries' stat, capabilities and (for non-directories) data."""
    if lst.st_dev == ust.st_dev and lst.st_ino == ust.st_ino:
        return True
    if lst.st_mode != ust.st_mode or lst.st_rdev != ust.st_rdev:
        return False
    if lst.st_uid != ust.st_uid or lst.st_gid != ust.st_gid:
        return False
    if _getxattr(_proc(lfd, name), CAPABILITY) != _getxattr(_proc(ufd, name), CAPABILITY):
        return False
    if stat.S_ISDIR(ust.st_mode):
        return True
    if lst.st_size != ust.st_size or lst.st_mtime_ns // _NS != ust.st_mtime_ns // _NS:
        return False
    if stat.S_ISLNK(ust.st_mode):
        # containerd compares targets only when both times may be truncated; a target is cheap.
        return os.readlink(name, dir_fd=lfd) == os.readlink(name, dir_fd=ufd)
    lns, uns = lst.st_mtime_ns % _NS, ust.st_mtime_ns % _NS
    if lns or uns:
        return lns == uns
    # Both times may have been truncated (by a tar without PAX times): only the bytes can tell.
    return not stat.S_ISREG(ust.st_mode) or ust.st_size == 0 or _same_content(lfd, ufd, name)


def _same_content(lfd: int, ufd: int, name: bytes) -> bool:
    fa = os.open(name, _READ, dir_fd=lfd)
    try:
        fb = os.open(name, _READ, dir_fd=ufd)
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
    sink: Callable[[bytes], object],
    *,
    stop: threading.Event | None = None,
    mtime_bound: int | None = None,
) -> tuple[str, int]:
    """Write ``changes`` as a tar to ``sink``; (diffID, size).

    No entry's mtime is later than ``mtime_bound`` (ns since the epoch) when it is given. Once
    ``stop`` is set the walk raises ``Stopped`` before its next entry (the sink, before its next
    chunk)."""
    tar = TarWriter(sink)
    layer = _LayerWriter(tar, mtime_bound)
    for change in changes:
        check_stop(stop)
        layer.write(change)
    return tar.close()


@dataclass(frozen=True, slots=True)
class _LaterLink:
    """A name left alone whose inode's first changed name has not been seen yet."""

    path: bytes
    parents: list[Level]


class _LayerWriter:
    def __init__(self, tar: TarWriter, mtime_bound: int | None = None) -> None:
        self.tar = tar
        self.mtime_bound = mtime_bound
        self.inodes: dict[tuple[int, int], bytes] = {}
        self.later: dict[tuple[int, int], list[_LaterLink]] = {}

    def write(self, change: Change) -> None:
        kind = change.kind
        if kind is ChangeKind.DELETE:
            self._parents(change.at, change.path)
            parent, _, base = change.path.rpartition(b"/")
            name = parent + b"/" + whiteout_name(base) if parent else whiteout_name(base)
            self.tar.add(encode_header(name, REGULAR, mode=0))
            return
        if kind is ChangeKind.OPAQUE:
            self._parents(change.at, change.path)
            self.tar.add(encode_header(change.path + b"/" + OPAQUE, REGULAR, mode=0))
            return
        st = change.stat
        assert st is not None
        if stat.S_ISSOCK(st.st_mode):
            return  # no tar form; containerd leaves sockets (and their parents) out
        linked = not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1
        inode = (st.st_dev, st.st_ino)
        first = self.inodes.get(inode) if linked else None
        if kind is ChangeKind.UNMODIFIED and first is None:
            self.later.setdefault(inode, []).append(_LaterLink(change.path, _unemitted(change.at)))
            return
        self._parents(change.at, change.path)
        if first is not None:
            self.tar.add(self._header(change.path, HARDLINK, st, None, linkname=first))
            return
        self._entry(change, st)
        if linked:
            self.inodes[inode] = change.path
            for link in self.later.pop(inode, ()):
                for level in reversed(link.parents):
                    self._emit(level, link.path)
                self.tar.add(self._header(link.path, HARDLINK, st, None, linkname=change.path))

    def _header(
        self,
        name: bytes,
        typeflag: bytes,
        st: os.stat_result,
        capability: bytes | None,
        *,
        size: int = 0,
        linkname: bytes = b"",
        device: bool = False,
    ) -> bytes:
        mtime = st.st_mtime_ns if self.mtime_bound is None else min(st.st_mtime_ns, self.mtime_bound)
        return encode_header(
            name,
            typeflag,
            mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            size=size,
            mtime=mtime // _NS,
            linkname=linkname,
            devmajor=os.major(st.st_rdev) if device else 0,
            devminor=os.minor(st.st_rdev) if device else 0,
            xattrs={CAPABILITY.encode(): capability} if capability is not None else None,
        )

    def _parents(self, at: Level, path: bytes) -> None:
        """Directories above a change go in first, with their upper attributes (containerd's too)."""
        for level in reversed(_unemitted(at)):
            self._emit(level, path)

    def _emit(self, level: Level, below: bytes) -> None:
        if not level.emitted:
            level.emitted = True
            self.tar.add(self._header(below[: level.end] + b"/", DIRECTORY, level.stat, level.capability))

    def _entry(self, change: Change, st: os.stat_result) -> None:
        rel, fd, name = change.path, change.dir_fd, change.name
        mode = st.st_mode
        capability = _getxattr(_proc(fd, name), CAPABILITY)
        if stat.S_ISDIR(mode):
            self.tar.add(self._header(rel + b"/", DIRECTORY, st, capability))
        elif stat.S_ISREG(mode):
            file = os.open(name, _READ, dir_fd=fd)
            try:
                now = os.fstat(file)
                if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                    raise InvalidArgument(f"{os.fsdecode(rel)} changed while the layer was written")
                self.tar.add_file(
                    self._header(rel, REGULAR, now, capability, size=now.st_size), file, now.st_size
                )
            finally:
                os.close(file)
        elif stat.S_ISLNK(mode):
            self.tar.add(self._header(rel, SYMLINK, st, capability, linkname=os.readlink(name, dir_fd=fd)))
        elif stat.S_ISCHR(mode):
            self.tar.add(self._header(rel, CHAR, st, capability, device=True))
        elif stat.S_ISBLK(mode):
            self.tar.add(self._header(rel, BLOCKDEV, st, capability, device=True))
        elif stat.S_ISFIFO(mode):
            self.tar.add(self._header(rel, FIFO, st, capability))


def _unemitted(at: Level) -> list[Level]:
    """``at`` and the directories above it whose entries are not in the layer yet, deepest first
    (never the root: the root is the snapshot's)."""
    out: list[Level] = []
    level: Level | None = at
    while level is not None and level.parent is not None and not level.emitted:
        out.append(level)
        level = level.parent
    return out
