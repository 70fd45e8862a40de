"""Trees as a container sees them: written and read through a snapshot's mounts, compared entry by entry.

Reading and writing go through directory descriptors (``*at`` calls), so paths deeper than the
mount point allows, up to PATH_MAX below the snapshot's root, work, and trees of any depth are
walked without recursion.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread

from corral.kernel import CorralError
from corral.plugins.core.mount import temporary_mount
from corral.plugins.snapshots import Info, Snapshotter

E = TypeVar("E", bound=CorralError)
T = TypeVar("T")

DIGEST_LIMIT = 16 << 20
"""Regular files up to this size are read and hashed; larger ones are compared by size only."""
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_KINDS = {
    stat.S_IFDIR: "dir",
    stat.S_IFREG: "file",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
}


@dataclass(frozen=True)
class Entry:
    """One entry of a tree, as ``lstat`` and friends report it through a mount."""

    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    inode: tuple[int, int]
    nlink: int
    digest: str = ""
    target: str = ""
    device: tuple[int, int] = (0, 0)
    xattrs: Mapping[str, bytes] = field(default_factory=dict)

    def content(self) -> tuple[object, ...]:
        """What a container reading the entry would call its content: kind, mode, bytes or target."""
        return (self.kind, oct(self.mode), self.digest, self.target, self.device)


Tree = dict[str, Entry]
"""Relative path -> entry, the root itself excluded."""


async def expect(kind: type[E], awaitable: Awaitable[object]) -> E:
    """Await ``awaitable`` and return the error of ``kind`` it raised; fail if it raised nothing."""
    try:
        await awaitable
    except kind as exc:
        return exc
    except CorralError as exc:
        raise AssertionError(f"expected {kind.__name__}, got {type(exc).__name__}: {exc}") from exc
    raise AssertionError(f"expected {kind.__name__}, nothing was raised")


async def walk_all(snapshotter: Snapshotter, *filters: str) -> dict[str, Info]:
    """Every snapshot ``walk`` yields for ``filters``, by name."""
    infos = snapshotter.walk(list(filters))
    try:
        return {info.name: info async for info in infos}
    finally:
        aclose = getattr(infos, "aclose", None)
        if aclose is not None:
            await aclose()


@asynccontextmanager
async def mounted(snapshotter: Snapshotter, key: str) -> AsyncIterator[Path]:
    """The snapshot ``key`` (active or view) mounted on a temporary directory for the block."""
    async with temporary_mount(await snapshotter.mounts(key)) as where:
        yield where


async def in_mount(snapshotter: Snapshotter, key: str, fn: Callable[[Path], T]) -> T:
    """Run ``fn(mount point)`` in a worker thread with ``key`` mounted."""
    async with mounted(snapshotter, key) as root:
        return await anyio.to_thread.run_sync(fn, root)


async def tree_of(snapshotter: Snapshotter, key: str) -> Tree:
    """The tree of the active snapshot or view ``key``, through its mounts."""
    return await in_mount(snapshotter, key, read_tree)


_views = iter(range(1 << 62))


async def tree_of_committed(snapshotter: Snapshotter, name: str) -> Tree:
    """The tree of the committed snapshot ``name``, through a view made for the purpose and removed."""
    view = f"{name}.conformance-view-{next(_views)}"
    await snapshotter.view(view, name)
    try:
        return await tree_of(snapshotter, view)
    finally:
        await snapshotter.remove(view)


async def write(snapshotter: Snapshotter, key: str, files: Mapping[str, bytes | str]) -> None:
    """Write ``files`` into the active snapshot ``key``; a str value makes a symlink to it."""
    await in_mount(snapshotter, key, lambda root: write_files(root, files))


async def committed(
    snapshotter: Snapshotter,
    name: str,
    parent: str = "",
    files: Mapping[str, bytes | str] | None = None,
    change: Callable[[Path], object] | None = None,
) -> None:
    """Commit ``name`` on ``parent``, with ``files`` written and ``change`` run in its mount first."""
    key = f"{name}.conformance-active"
    await snapshotter.prepare(key, parent)
    if files or change:

        def apply(root: Path) -> None:
            if files:
                write_files(root, files)
            if change:
                change(root)

        await in_mount(snapshotter, key, apply)
    await snapshotter.commit(name, key)


# -- in worker threads ------------------------------------------------------------------------------


@contextmanager
def opened(root: Path, relative: str = "") -> Iterator[int]:
    """A descriptor of the directory ``relative`` below ``root`` (``root`` itself when empty)."""
    top = os.open(root, _DIR)
    try:
        fd = os.open(relative, _DIR, dir_fd=top) if relative else os.dup(top)
    finally:
        os.close(top)
    try:
        yield fd
    finally:
        os.close(fd)


def write_files(root: Path, files: Mapping[str, bytes | str]) -> None:
    """Write ``files`` under ``root``, making parent directories; a str value makes a symlink."""
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.symlink_to(content)
        else:
            path.write_bytes(content)


def make_dirs(root: Path, components: list[str]) -> None:
    """Make the nested directories ``components`` below ``root``, one ``mkdirat`` at a time."""
    fd = os.open(root, _DIR)
    try:
        for name in components:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, dir_fd=fd)
            inner = os.open(name, _DIR, dir_fd=fd)
            os.close(fd)
            fd = inner
    finally:
        os.close(fd)


def write_at(root: Path, components: list[str], name: str, data: bytes) -> None:
    """Write the file ``name`` in the directory ``components`` below ``root`` (made as needed)."""
    make_dirs(root, components)
    with opened(root, "/".join(components)) as fd:
        file = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644, dir_fd=fd)
        try:
            os.write(file, data)
        finally:
            os.close(file)


def read_at(root: Path, relative: str) -> bytes:
    """The bytes of the file ``relative`` below ``root``."""
    directory, _, name = relative.rpartition("/")
    with opened(root, directory) as fd:
        file = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        try:
            chunks = []
            while chunk := os.read(file, 1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(file)


def read_tree(root: Path) -> Tree:
    """Every entry under ``root`` (the root itself excluded), without recursion."""
    tree: Tree = {}
    top = os.open(root, _DIR)
    try:
        pending = [""]
        while pending:
            relative = pending.pop()
            fd = os.open(relative, _DIR, dir_fd=top) if relative else os.dup(top)
            try:
                with os.scandir(fd) as entries:
                    names = sorted(entry.name for entry in entries)
                for name in names:
                    path = f"{relative}/{name}" if relative else name
                    entry = _entry(fd, name)
                    tree[path] = entry
                    if entry.kind == "dir":
                        pending.append(path)
            finally:
                os.close(fd)
    finally:
        os.close(top)
    return tree


def _entry(dir_fd: int, name: str) -> Entry:
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    kind = _KINDS.get(stat.S_IFMT(st.st_mode), "unknown")
    digest = target = ""
    if kind == "file" and st.st_size <= DIGEST_LIMIT:
        digest = _digest(dir_fd, name)
    elif kind == "symlink":
        target = os.readlink(name, dir_fd=dir_fd)
    device = (os.major(st.st_rdev), os.minor(st.st_rdev)) if kind in ("char", "block") else (0, 0)
    return Entry(
        kind=kind,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        size=st.st_size if kind != "dir" else 0,
        mtime_ns=st.st_mtime_ns,
        inode=(st.st_dev, st.st_ino),
        nlink=st.st_nlink,
        digest=digest,
        target=target,
        device=device,
        xattrs=_xattrs(dir_fd, name),
    )


def _digest(dir_fd: int, name: str) -> str:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        hashed = hashlib.sha256()
        while chunk := os.read(fd, 1 << 20):
            hashed.update(chunk)
        return hashed.hexdigest()
    finally:
        os.close(fd)


def _xattrs(dir_fd: int, name: str) -> dict[str, bytes]:
    # The xattr calls take no directory descriptor; /proc names the directory without a long path.
    path = f"/proc/self/fd/{dir_fd}/{name}"
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    found = {}
    for key in names:
        try:
            found[key] = os.getxattr(path, key, follow_symlinks=False)
        except OSError:
            continue
    return found


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def differences(expected: Mapping[str, tuple[object, ...]], seen: Mapping[str, tuple[object, ...]]) -> str:
    """What differs between two trees of ``Entry.content()``-like tuples, for an assertion message."""
    lines = [f"missing {p}: {expected[p]}" for p in sorted(set(expected) - set(seen))]
    lines += [f"unexpected {p}: {seen[p]}" for p in sorted(set(seen) - set(expected))]
    lines += [
        f"{p}: expected {expected[p]}, seen {seen[p]}"
        for p in sorted(set(expected) & set(seen))
        if expected[p] != seen[p]
    ]
    return "; ".join(lines[:20]) + (f"; … {len(lines) - 20} more" if len(lines) > 20 else "")


def contents(tree: Tree) -> dict[str, tuple[object, ...]]:
    return {path: entry.content() for path, entry in tree.items()}
