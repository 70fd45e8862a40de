"""Applying a layer's tar stream to a directory, never writing outside it.

Blocking code for a worker thread. Member names are cleaned lexically and their parent
directories resolved inside the target with chroot semantics (``_root``); every entry is then
created relative to its parent's file descriptor with ``O_NOFOLLOW``/``O_EXCL``, after removing
whatever was there. Hard-link targets are resolved the same way, and ``linkat`` never follows a
symlink at the end, so a link can only ever name an inode that is already inside the target.

Two whiteout modes, as containerd's: in a plain directory (a bind mount, or a temporary mount of
anything else) whiteouts delete; in an overlay upper directory they become overlayfs's own marks.
"""

from __future__ import annotations

import enum
import errno
import os
import stat
import threading
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial

import structlog

from corral.kernel import (
    CorralError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from corral.plugins.core.tar import (
    BLOCKDEV,
    CHAR,
    DIRECTORY,
    FIFO,
    HARDLINK,
    REGULAR,
    SYMLINK,
    TarEntry,
)
from corral.plugins.core.trees import remove_tree_at
from corral.plugins.differs._root import Key, RootDir, clean_components, display, resolve_in_root
from corral.plugins.differs._tar import Readable, ReadAhead, TarReader, check_stop
from corral.plugins.differs._whiteouts import (
    META_PREFIX,
    OPAQUE,
    OVERLAY_XATTR_PREFIX,
    Kind,
    classify,
    opaque_xattr,
    private_xattr,
)
from corral.plugins.differs._whiteouts import (
    PREFIX as WHITEOUT_PREFIX,
)

__all__ = ["AppliedLayer", "WhiteoutMode", "apply_layer", "resolve_in_root"]

log = structlog.get_logger("corral.differ")

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_TIME_NS = (1 << 63) - 1


class WhiteoutMode(enum.Enum):
    REMOVE = "remove"
    """A plain directory holding every layer: ``.wh.NAME`` deletes NAME, opaque empties the directory."""
    OVERLAY = "overlay"
    """An overlay upper directory: char device 0:0 for a deletion, ``overlay.opaque=y`` for opaque."""


@dataclass(frozen=True)
class AppliedLayer:
    """The uncompressed stream's digest (the diffID) and size, and how many members it had."""

    digest: str
    size: int
    entries: int


def apply_layer(
    source: Readable,
    root: str | os.PathLike[str],
    *,
    whiteouts: WhiteoutMode = WhiteoutMode.REMOVE,
    parents: Sequence[str | os.PathLike[str]] = (),
    overlay_xattr_prefix: str = OVERLAY_XATTR_PREFIX,
    stop: threading.Event | None = None,
) -> AppliedLayer:
    """Apply the uncompressed tar ``source`` to the directory ``root``.

    ``parents`` are an overlay's lower directories, top first: a directory the layer needs but
    the upper directory lacks is created with the attributes it has below, so the merged view
    does not change underneath the layer. Once ``stop`` is set the apply raises ``Stopped`` before
    its next entry or chunk of data.
    """
    with ExitStack() as stack:
        ahead = ReadAhead(source, stop=stop)
        stack.callback(ahead.close)
        reader = TarReader(ahead, digest=False)
        tree = stack.enter_context(RootDir(root))
        # One set of names for the upper directory and its lowers: a key means the same path in each.
        lowers = [stack.enter_context(RootDir(p, names=tree.names)) for p in parents]
        applier = _Applier(tree, whiteouts, lowers, overlay_xattr_prefix)
        while (entry := reader.next()) is not None:
            check_stop(stop)
            try:
                applier.apply(entry, reader)
            except CorralError as err:
                raise type(err)(f"{_show(entry.name)}: {err.detail}") from err
            except OSError as err:
                raise _os_error(err, entry.name) from err
        try:
            applier.finish()
        except OSError as err:
            raise _os_error(err, b"") from err
        reader.finish()
        digest, size = ahead.result()
    return AppliedLayer(digest, size, applier.entries)


def _show(name: bytes) -> str:
    return repr(os.fsdecode(name))


def _os_error(err: OSError, name: bytes) -> CorralError:
    where = f"{_show(name)}: " if name else ""
    message = f"{where}{err.strerror or err}"
    if err.errno in (errno.EACCES, errno.EPERM):
        return PermissionDenied(message)
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE):
        return ResourceExhausted(message)
    if err.errno in (errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP, errno.EINVAL, errno.EXDEV):
        return InvalidArgument(message)
    if err.errno == errno.EROFS:
        return FailedPrecondition(message)
    return Internal(message)


def _times(entry: TarEntry) -> tuple[int, int]:
    """(atime, mtime) in ns; atime is the later of the two, out-of-range times are the epoch (containerd)."""
    mtime = entry.mtime_ns if 0 <= entry.mtime_ns <= _MAX_TIME_NS else 0
    atime = entry.atime_ns
    if atime is None or atime < mtime or atime > _MAX_TIME_NS:
        atime = mtime
    return atime, mtime


class _Applier:
    def __init__(self, tree: RootDir, mode: WhiteoutMode, lowers: list[RootDir], xattr_prefix: str) -> None:
        self.tree = tree
        self.overlay = mode is WhiteoutMode.OVERLAY
        self.lowers = lowers
        self.xattr_prefix = xattr_prefix
        self.privileged = os.geteuid() == 0
        self.owner = (os.geteuid(), os.getegid())
        self.umask = _umask()
        self.proc = b"/proc/self/fd/%d/"
        self.names = tree.names
        self.unpacked: set[Key] = set()
        self.dirs: dict[Key, tuple[int, int, int | None]] = {}
        self.not_below: set[Key] = set()
        """Directories made in the upper directory that no lower has: nor has any lower what is in them."""
        self.entries = 0
        if lowers:
            tree.on_mkdir = self._copy_parent

    # -- dispatch ---------------------------------------------------------------------------

    def apply(self, entry: TarEntry, reader: TarReader) -> None:
        self.entries += 1
        parts = clean_components(entry.name)
        if not parts or (parts[0].startswith(META_PREFIX) and parts != [OPAQUE]):
            # The root itself is the snapshot's, not the layer's (containerd ignores it); AUFS
            # bookkeeping at the top is no file either. A top-level opaque marker is a whiteout of
            # everything below (containerd applies it to the root as to any directory).
            return
        base = parts.pop()
        pfd, pkey = self.tree.directory(parts, create=True)
        if base.startswith(WHITEOUT_PREFIX):
            kind, target = classify(base)
            if kind is Kind.WHITEOUT:
                if self.overlay:
                    self._overlay_whiteout(pfd, pkey, target, entry)
                else:
                    self._remove_if_present(pfd, pkey, target)
            elif kind is Kind.OPAQUE:
                if self.overlay:
                    os.setxattr(pfd, opaque_xattr(self.xattr_prefix), b"y")
                    self.tree.changed(pkey)
                else:
                    self._clear(pkey)
            return
        kind_of = entry.type
        if kind_of == REGULAR:
            self._file(pfd, pkey, base, entry, reader)
        elif kind_of == DIRECTORY:
            self._directory(pfd, pkey, base, entry)
        elif kind_of == SYMLINK:
            self._symlink(pfd, pkey, base, entry)
        elif kind_of == HARDLINK:
            self._hardlink(pfd, pkey, base, entry)
        elif kind_of in (CHAR, BLOCKDEV, FIFO):
            if not self._special(pfd, pkey, base, entry):
                return
        else:
            raise InvalidArgument(f"unsupported tar member type {kind_of!r}")
        if not self.overlay:
            self.unpacked.add(self.names.child(pkey, base))

    def finish(self) -> None:
        """Directory times last, their contents being done; then the modes held back, deepest first."""
        live = self.names.live()
        held: list[tuple[Key, int]] = []
        for key, (atime, mtime, mode) in self.dirs.items():
            if not live[key]:
                continue  # removed or replaced later in the layer
            try:
                fd, _ = self.tree.directory(key, follow=False)
            except (NotFound, InvalidArgument):
                continue
            os.utime(fd, ns=(atime, mtime))
            if mode is not None:
                held.append((key, mode))
        for key, mode in reversed(held):
            fd, _ = self.tree.directory(key, follow=False)
            os.fchmod(fd, mode)

    # -- entries ----------------------------------------------------------------------------

    def _file(self, pfd: int, pkey: Key, base: bytes, entry: TarEntry, reader: TarReader) -> None:
        mode = entry.mode
        # The cheap path, which is most files: creation alone gives the right owner and mode.
        plain = self.tree.plain(pfd, pkey)
        chown = self.privileged and ((entry.uid, entry.gid) != self.owner or not plain)
        exact = not entry.xattrs and not chown and plain and not mode & self.umask and mode <= 0o777
        create_mode = mode if exact else 0o600
        try:
            fd = os.open(base, _CREATE, create_mode, dir_fd=pfd)
        except FileExistsError:
            self._remove_if_present(pfd, pkey, base)
            fd = os.open(base, _CREATE, create_mode, dir_fd=pfd)
        try:
            if entry.size:
                reader.copy_to(fd)
            if chown:
                os.fchown(fd, entry.uid, entry.gid)
            if not exact:
                for name, value in entry.xattrs.items():
                    _setxattr(fd, name, value)
                os.fchmod(fd, mode)
            os.utime(fd, ns=_times(entry))
        finally:
            os.close(fd)

    def _directory(self, pfd: int, pkey: Key, base: bytes, entry: TarEntry) -> None:
        try:
            os.mkdir(base, 0o700, dir_fd=pfd)
        except FileExistsError:
            st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                # Anything but a directory is replaced; a directory is merged into.
                self._remove(pfd, self.names.find(pkey, base), base, st)
                os.mkdir(base, 0o700, dir_fd=pfd)
        key = self.names.child(pkey, base)
        fd, _ = self.tree.directory(key, follow=False)
        if self.privileged:
            os.fchown(fd, entry.uid, entry.gid)
        for name, value in entry.xattrs.items():
            _setxattr(fd, name, value)
        deferred = None
        mode = entry.mode
        if not self.privileged and mode & 0o700 != 0o700:
            # Without CAP_DAC_OVERRIDE a read-only directory could not be filled: restrict it last.
            deferred, mode = mode, mode | 0o700
        os.fchmod(fd, mode)
        self.tree.changed(key)
        atime, mtime = _times(entry)
        self.dirs.pop(key, None)
        self.dirs[key] = (atime, mtime, deferred)

    def _symlink(self, pfd: int, pkey: Key, base: bytes, entry: TarEntry) -> None:
        if not entry.linkname:
            raise InvalidArgument("symlink with an empty target")
        try:
            os.symlink(entry.linkname, base, dir_fd=pfd)
        except FileExistsError:
            self._remove_if_present(pfd, pkey, base)
            os.symlink(entry.linkname, base, dir_fd=pfd)
        self._set_by_name(pfd, base, entry, chmod=False)

    def _hardlink(self, pfd: int, pkey: Key, base: bytes, entry: TarEntry) -> None:
        target = clean_components(entry.linkname)
        if not target:
            raise InvalidArgument("hard link to the root directory")
        tbase = target.pop()
        if self.lowers and not self._in_upper(target, tbase):
            # A link to a file of a lower layer: copy it up first, as overlayfs does for link(2).
            self._copy_up(target, tbase, entry.linkname)
        try:
            tfd, tkey = self.tree.directory(target)
        except NotFound:
            raise InvalidArgument(f"hard link target {_show(entry.linkname)} does not exist") from None
        if tkey == pkey and tbase == base:
            return  # a link to itself: already there
        # Looking up one directory may evict the other from the cache: hold our own fd.
        tfd = os.dup(tfd)
        try:
            pfd, _ = self.tree.directory(pkey, follow=False)
            try:
                _link(tfd, tbase, pfd, base)
            except FileExistsError:
                self._remove_if_present(pfd, pkey, base)
                _link(tfd, tbase, pfd, base)
        except FileNotFoundError:
            raise InvalidArgument(f"hard link target {_show(entry.linkname)} does not exist") from None
        except PermissionError:
            raise InvalidArgument(f"hard link target {_show(entry.linkname)} cannot be linked") from None
        finally:
            os.close(tfd)

    def _in_upper(self, parts: list[bytes], base: bytes) -> bool:
        try:
            fd, _ = self.tree.directory(parts)
            os.stat(base, dir_fd=fd, follow_symlinks=False)
        except (NotFound, FileNotFoundError):
            return False
        return True

    def _copy_up(self, parts: list[bytes], base: bytes, linkname: bytes) -> None:
        """Copy a regular file or symlink of the topmost lower that has it into the upper directory."""
        for lower in self.lowers:
            try:
                lfd, _ = lower.directory(parts, follow=False)
                st = os.stat(base, dir_fd=lfd, follow_symlinks=False)
            except (NotFound, FileNotFoundError):
                continue
            except InvalidArgument:
                break
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                break  # a whiteout, a directory, a device: nothing a hard link may name
            lfd = os.dup(lfd)  # the upper lookup below may use the lowers' caches (parent copy)
            try:
                pfd, _ = self.tree.directory(parts, create=True)
                _copy_entry(lfd, base, pfd, st, self.privileged)
            finally:
                os.close(lfd)
            return
        raise InvalidArgument(f"hard link target {_show(linkname)} does not exist")

    def _special(self, pfd: int, pkey: Key, base: bytes, entry: TarEntry) -> bool:
        if entry.type == FIFO:
            make = partial(os.mkfifo, base, 0o600, dir_fd=pfd)
        else:
            if not self.privileged:
                log.debug("differ_device_skipped", name=os.fsdecode(base), reason="not root")
                return False
            kind = stat.S_IFCHR if entry.type == CHAR else stat.S_IFBLK
            device = _device_number(entry)
            make = partial(os.mknod, base, kind | 0o600, device, dir_fd=pfd)
        try:
            make()
        except FileExistsError:
            self._remove_if_present(pfd, pkey, base)
            make()
        except PermissionError:
            if entry.type == FIFO:
                raise
            # Root in a user namespace may not make devices; containerd skips them there too.
            log.debug("differ_device_skipped", name=os.fsdecode(base), reason="mknod refused")
            return False
        self._set_by_name(pfd, base, entry, chmod=True)
        return True

    def _set_by_name(self, pfd: int, base: bytes, entry: TarEntry, *, chmod: bool) -> None:
        """Owner, xattrs, mode, times of something we must not open (symlink, device, fifo)."""
        if self.privileged:
            os.chown(base, entry.uid, entry.gid, dir_fd=pfd, follow_symlinks=False)
        if entry.xattrs:
            # The parent's fd as a path: only the last component is looked up, and not followed.
            path = self.proc % pfd + base
            for name, value in entry.xattrs.items():
                _setxattr(path, name, value)
        if chmod:
            # Just created by us as a non-symlink; Linux has no lchmod.
            os.chmod(base, entry.mode, dir_fd=pfd)
        os.utime(base, ns=_times(entry), dir_fd=pfd, follow_symlinks=False)

    # -- whiteouts --------------------------------------------------------------------------

    def _overlay_whiteout(self, pfd: int, pkey: Key, target: bytes, entry: TarEntry) -> None:
        self._remove_if_present(pfd, pkey, target)
        os.mknod(target, stat.S_IFCHR, os.makedev(0, 0), dir_fd=pfd)
        if self.privileged:
            os.chown(target, entry.uid, entry.gid, dir_fd=pfd, follow_symlinks=False)

    def _remove_if_present(self, pfd: int, pkey: Key, base: bytes) -> None:
        try:
            st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        self._remove(pfd, self.names.find(pkey, base), base, st)

    def _remove(self, pfd: int, key: Key | None, base: bytes, st: os.stat_result) -> None:
        if stat.S_ISDIR(st.st_mode):
            if key is not None:
                self.tree.forget(key)  # and what was recorded below it is no longer live
            # Iterative, by file descriptors (a bounded number at any depth), never following symlinks.
            remove_tree_at(pfd, os.fsdecode(base))
        else:
            os.unlink(base, dir_fd=pfd)

    def _clear(self, dkey: Key) -> None:
        """Opaque directory, plain-directory style: remove everything this layer did not add.

        Depth first without recursion; a directory is reopened by key when its turn comes back."""
        pending: list[tuple[Key, list[tuple[bytes, bool]] | None]] = [(dkey, None)]
        while pending:
            key, children = pending[-1]
            dfd, _ = self.tree.directory(key, follow=False)
            if children is None:
                with os.scandir(dfd) as it:
                    children = [(os.fsencode(e.name), e.is_dir(follow_symlinks=False)) for e in it]
                pending[-1] = (key, children)
            if not children:
                pending.pop()
                continue
            name, is_dir = children.pop()
            child = self.names.find(key, name)
            if child is not None and child in self.unpacked:
                if is_dir:
                    pending.append((child, None))
                continue
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            self._remove(dfd, child, name, st)

    # -- overlay parents --------------------------------------------------------------------

    def _copy_parent(self, fd: int, key: Key) -> None:
        """A directory made in the upper directory takes the attributes it has in the lowers."""
        if self.names.parent[key] in self.not_below:
            self.not_below.add(key)
            return
        for lower in self.lowers:
            try:
                lfd, _ = lower.directory(key, follow=False)
            except NotFound:
                continue
            except InvalidArgument:
                break  # replaced by a non-directory in this lower: the default permissions stand
            st = os.fstat(lfd)
            if self.privileged:
                os.fchown(fd, st.st_uid, st.st_gid)
            for name in os.listxattr(lfd):
                if not private_xattr(name, self.xattr_prefix):
                    _setxattr(fd, name.encode(), os.getxattr(lfd, name))
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
            os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
            self.tree.changed(key)
            return
        self.not_below.add(key)
        log.debug("differ_parent_not_in_lowers", path=display(self.names.parts(key)))


def _device_number(entry: TarEntry) -> int:
    """The header's device number; one that no device can have is refused (containerd's check)."""
    major, minor = entry.devmajor, entry.devminor
    try:
        if major < 0 or minor < 0:
            raise OverflowError
        return os.makedev(major, minor)
    except OverflowError:
        raise InvalidArgument(f"device number {major}:{minor} is out of range") from None


def _umask() -> int:
    """The process umask without changing it (os.umask would, racing other threads); 0o7777
    (never trust creation modes) when /proc does not say."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o7777


def _copy_entry(src_dir: int, name: bytes, dst_dir: int, st: os.stat_result, privileged: bool) -> None:
    """Copy the regular file or symlink ``name`` with its owner, mode, xattrs and times."""
    times = (st.st_atime_ns, st.st_mtime_ns)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(name, dir_fd=src_dir), name, dir_fd=dst_dir)
        if privileged:
            os.chown(name, st.st_uid, st.st_gid, dir_fd=dst_dir, follow_symlinks=False)
        os.utime(name, ns=times, dir_fd=dst_dir, follow_symlinks=False)
        return
    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_dir)
    try:
        dst = os.open(name, _CREATE, 0o600, dir_fd=dst_dir)
        try:
            left = st.st_size
            while left > 0:
                sent = os.sendfile(dst, src, None, min(left, 1 << 30))
                if not sent:
                    break
                left -= sent
            if privileged:
                os.fchown(dst, st.st_uid, st.st_gid)
            for attr in os.listxattr(src):
                if not private_xattr(attr):
                    _setxattr(dst, attr.encode(), os.getxattr(src, attr))
            os.fchmod(dst, stat.S_IMODE(st.st_mode))
            os.utime(dst, ns=times)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _link(src_dir: int, src: bytes, dst_dir: int, dst: bytes) -> None:
    # follow_symlinks=False: linkat without AT_SYMLINK_FOLLOW links a symlink itself, never its target.
    os.link(src, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir, follow_symlinks=False)


def _setxattr(target: int | bytes, name: bytes, value: bytes) -> None:
    try:
        if isinstance(target, int):
            os.setxattr(target, name, value)
        else:
            os.setxattr(target, name, value, follow_symlinks=False)
    except OSError as err:
        # Filesystems without xattrs lose them, as containerd's apply does (with a warning).
        if err.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        log.warning("differ_xattr_unsupported", xattr=os.fsdecode(name), error=err.strerror)
