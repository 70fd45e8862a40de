"""Removing directory trees of any depth, by file descriptor, never following a symlink.

Snapshots hold whatever containers and layers put in them: a directory 10,000 levels deep is
legal (each level's name is short), and Python 3.11's ``shutil.rmtree`` recurses once per level
until ``RecursionError``. This walk is iterative, keeps at most ``KEEP_OPEN`` directories open
whatever the depth (a level whose descriptor was closed is reopened through its child's ``..``
and checked to be the same directory), and holds in memory only the names still to visit.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

KEEP_OPEN = 32
"""Directory descriptors held open at most, whatever the depth of the tree."""

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class _Level:
    name: str
    fd: int | None
    device: int
    inode: int
    subdirs: list[str] = field(default_factory=list)
    scanned: bool = False


def remove_tree(path: Path | str) -> None:
    """Remove ``path`` and everything under it; a missing path is fine, a symlink is removed itself."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        remove_tree_at(parent, path.name)
    finally:
        os.close(parent)


def remove_tree_at(dir_fd: int, name: str) -> None:
    """Remove the entry ``name`` of the directory open as ``dir_fd``, with everything under it."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        os.unlink(name, dir_fd=dir_fd)  # not a directory (or a symlink to one): the entry itself
        return
    stack = [_level(name, fd)]
    try:
        while stack:
            level = stack[-1]
            assert level.fd is not None
            if not level.scanned:
                _scan(level)
            if level.subdirs:
                child = level.subdirs.pop()
                opened = _open_child(level.fd, child)
                if opened is not None:
                    stack.append(_level(child, opened))
                    _bound_open(stack)
                continue
            # Empty now: step up (reopening the parent if its descriptor was let go) and remove it.
            if len(stack) == 1:
                os.close(level.fd)
                level.fd = None
                stack.pop()
                with contextlib.suppress(FileNotFoundError):
                    os.rmdir(name, dir_fd=dir_fd)
                continue
            parent = stack[-2]
            if parent.fd is None:
                parent.fd = _reopen_parent(level.fd, parent)
            os.close(level.fd)
            level.fd = None
            stack.pop()
            os.rmdir(level.name, dir_fd=parent.fd)
    finally:
        for level in stack:
            if level.fd is not None:
                os.close(level.fd)


def _level(name: str, fd: int) -> _Level:
    st = os.fstat(fd)
    return _Level(name, fd, st.st_dev, st.st_ino)


def _scan(level: _Level) -> None:
    """Unlink everything but directories; remember the directories to visit."""
    assert level.fd is not None
    with os.scandir(level.fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                level.subdirs.append(entry.name)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.name, dir_fd=level.fd)
    level.scanned = True


def _open_child(fd: int, name: str) -> int | None:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        # Replaced by a file or a symlink since the scan: remove that entry instead.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=fd)
        return None


def _bound_open(stack: list[_Level]) -> None:
    if len(stack) > KEEP_OPEN:
        far = stack[-KEEP_OPEN - 1]
        if far.fd is not None:
            os.close(far.fd)
            far.fd = None


def _reopen_parent(child_fd: int, parent: _Level) -> int:
    fd = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=child_fd)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (parent.device, parent.inode):
        os.close(fd)
        raise OSError(errno.ESTALE, f"directory {parent.name!r} moved while its tree was being removed")
    return fd
