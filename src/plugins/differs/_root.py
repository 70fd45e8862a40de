"""A directory tree opened with chroot semantics: no path, symlink or ``..`` ever leaves it.

Every component is opened relative to its parent's file descriptor with ``O_NOFOLLOW``, so the
kernel never follows a symlink on our behalf. A symlink met on the way is read and resolved
here, as if the tree were ``/``: an absolute target restarts at the root, and ``..`` stops at
the root (containerd's ``fs.RootPath``). Opened directories are cached by their resolved path;
whoever removes or replaces a directory tells the cache with ``forget``.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Sequence
from types import TracebackType

from corral.kernel import InvalidArgument, NotFound

O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_SYMLINKS = 255
"""As Linux's MAXSYMLINKS (40) is per lookup and ours spans a whole path, be generous."""

Key = tuple[bytes, ...]
MkdirHook = Callable[[int, Key], None]


def clean_components(name: bytes) -> list[bytes]:
    """The components of ``name`` after lexical clean-up relative to a root.

    Leading ``/`` and empty or ``.`` components vanish, ``..`` removes the previous component
    and stops at the root: ``filepath.Clean("/" + name)``, which containerd applies to every
    member name before anything else.
    """
    out: list[bytes] = []
    for part in name.split(b"/"):
        if not part or part == b".":
            continue
        if part == b"..":
            if out:
                out.pop()
            continue
        out.append(part)
    return out


def display(parts: Sequence[bytes]) -> str:
    return os.fsdecode(b"/".join(parts)) or "/"


class RootDir:
    """Directories inside ``path``, opened by resolved component tuples."""

    def __init__(self, path: str | bytes | os.PathLike[str], *, cache_size: int = 128) -> None:
        self.path = os.fsencode(path)
        self.fd = os.open(self.path, O_DIR)
        self._cache: dict[Key, int] = {}
        self._plain: dict[Key, bool] = {}
        self._cache_size = cache_size
        self.on_mkdir: MkdirHook | None = None
        """Called with the new directory's fd and key when ``directory(create=True)`` makes one."""

    def __enter__(self) -> RootDir:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        for fd in self._cache.values():
            os.close(fd)
        self._cache.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def forget(self, key: Key) -> None:
        """``key`` was removed or replaced: drop it and everything under it from the cache."""
        n = len(key)
        for cached in [k for k in self._cache if k[:n] == key]:
            os.close(self._cache.pop(cached))
        for known in [k for k in self._plain if k[:n] == key]:
            del self._plain[known]

    def changed(self, key: Key) -> None:
        """The directory ``key``'s mode or xattrs changed: ``plain`` must look again."""
        self._plain.pop(key, None)

    def plain(self, fd: int, key: Key) -> bool:
        """Whether what is created in the directory gets the creator's owner and umask'd mode:
        no setgid bit (group inheritance) and no default ACL (which replaces the umask)."""
        known = self._plain.get(key)
        if known is None:
            known = not os.fstat(fd).st_mode & stat.S_ISGID
            if known:
                try:
                    os.getxattr(fd, "system.posix_acl_default")
                    known = False
                except OSError as err:
                    if err.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
                        raise
            self._plain[key] = known
        return known

    def directory(
        self, parts: Sequence[bytes], *, create: bool = False, follow: bool = True
    ) -> tuple[int, Key]:
        """The fd and resolved key of the directory ``parts`` names (cleaned components).

        Symlinks on the way are resolved inside the root unless ``follow`` is false, when one is
        NotFound. Missing directories are made (0755) when ``create``, else NotFound. Something
        that is neither a directory nor a symlink on the way is InvalidArgument.
        The fd belongs to the cache: do not close it.
        """
        key = tuple(parts)
        if not key:
            return self.fd, ()
        fd = self._cache.get(key)
        if fd is not None:
            return fd, key
        if len(self._cache) >= self._cache_size:
            for cached in self._cache.values():
                os.close(cached)
            self._cache.clear()
            self._plain.clear()
        return self._walk(key, create, follow)

    def _walk(self, parts: Key, create: bool, follow: bool) -> tuple[int, Key]:
        todo = list(reversed(parts))
        resolved: list[bytes] = []
        fd = self.fd
        links = 0
        while todo:
            part = todo.pop()
            if part == b"" or part == b".":
                continue
            if part == b"..":
                if resolved:
                    resolved.pop()
                    fd = self._cache[tuple(resolved)] if resolved else self.fd
                continue
            key = (*resolved, part)
            cached = self._cache.get(key)
            if cached is not None:
                resolved.append(part)
                fd = cached
                continue
            try:
                child = os.open(part, O_DIR, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise NotFound(f"{display(key)} does not exist in the target") from None
                child = self._mkdir(fd, part, key)
            except OSError as err:
                if err.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISLNK(st.st_mode):
                    raise InvalidArgument(f"{display(key)} is not a directory") from None
                if not follow:
                    raise NotFound(f"{display(key)} is a symlink") from None
                links += 1
                if links > MAX_SYMLINKS:
                    raise InvalidArgument(f"too many levels of symbolic links at {display(key)}") from None
                target = os.readlink(part, dir_fd=fd)
                if target.startswith(b"/"):
                    resolved.clear()
                    fd = self.fd
                todo.extend(reversed(target.split(b"/")))
                continue
            self._cache[key] = child
            resolved.append(part)
            fd = child
        return fd, tuple(resolved)

    def _mkdir(self, parent: int, part: bytes, key: Key) -> int:
        try:
            os.mkdir(part, 0o755, dir_fd=parent)
        except FileExistsError:
            return os.open(part, O_DIR, dir_fd=parent)
        child = os.open(part, O_DIR, dir_fd=parent)
        if self.on_mkdir is not None:
            try:
                self.on_mkdir(child, key)
            except BaseException:
                os.close(child)
                raise
        return child

    def resolve(self, parts: Sequence[bytes]) -> Key:
        """Every component resolved inside the root, the last one too; a missing tail is kept as is."""
        todo = list(reversed(parts))
        resolved: list[bytes] = []
        links = 0
        while todo:
            part = todo.pop()
            if part == b"" or part == b".":
                continue
            if part == b"..":
                if resolved:
                    resolved.pop()
                continue
            try:
                parent, _ = self.directory(resolved, follow=False)
                st = os.stat(part, dir_fd=parent, follow_symlinks=False)
            except (FileNotFoundError, NotFound):
                # Nothing on disk to follow: the rest is plain names (``..`` still stops at the root).
                resolved.append(part)
                while todo:
                    rest = todo.pop()
                    if rest == b"..":
                        if resolved:
                            resolved.pop()
                    elif rest not in (b"", b"."):
                        resolved.append(rest)
                break
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > MAX_SYMLINKS:
                    raise InvalidArgument(
                        f"too many levels of symbolic links at {display([*resolved, part])}"
                    )
                target = os.readlink(part, dir_fd=parent)
                if target.startswith(b"/"):
                    resolved.clear()
                todo.extend(reversed(target.split(b"/")))
                continue
            if todo and not stat.S_ISDIR(st.st_mode):
                raise InvalidArgument(f"{display([*resolved, part])} is not a directory")
            resolved.append(part)
        return tuple(resolved)


def resolve_in_root(root: str | os.PathLike[str], relpath: str | bytes) -> str:
    """``relpath`` inside ``root`` with every symlink resolved as if ``root`` were ``/``.

    The result is always ``root`` or below it, whatever the tree's symlinks say; components that
    do not exist yet are appended as they are. (containerd's ``fs.RootPath``.)
    """
    name = os.fsencode(relpath)
    with RootDir(root) as tree:
        parts = tree.resolve(clean_components(name))
    return os.fsdecode(os.path.join(tree.path, *parts)) if parts else os.fsdecode(tree.path)
