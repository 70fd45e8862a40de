"""A directory tree opened with chroot semantics: no path, symlink or ``..`` ever leaves it.

Every component is opened relative to its parent's file descriptor with ``O_NOFOLLOW``, so the
kernel never follows a symlink on our behalf. A symlink met on the way is read and resolved
here, as if the tree were ``/``: an absolute target restarts at the root, and ``..`` stops at
the root (containerd's ``fs.RootPath``).

Depth costs nothing but the names themselves: a path is an interned node (``PathNames``, one
small int per distinct directory path, whatever its depth), the recently used directories
are kept open (at most ``cache_size``) and a lookup starts from the nearest one, so a layer
10,000 levels deep holds a bounded number of descriptors and memory for its distinct names,
never one descriptor or one copy of the path per level. Whoever removes or replaces a directory tells
the tree with ``forget``: its node and everything under it are retired, so the same path
interned again is a new node.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import OrderedDict
from collections.abc import Callable, Sequence
from types import TracebackType

from corral.kernel import InvalidArgument, NotFound

O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_SYMLINKS = 255
"""As Linux's MAXSYMLINKS (40) is per lookup and ours spans a whole path, be generous."""

ROOT = 0
Key = int
"""A node of ``PathNames``: a directory path relative to the root (``ROOT`` is the root)."""
MkdirHook = Callable[[int, Key], None]


def clean_components(name: bytes) -> list[bytes]:
    """The components of ``name`` after lexical clean-up relative to a root.

    Leading ``/`` and empty or ``.`` components vanish, ``..`` removes the previous component
    and stops at the root: ``filepath.Clean("/" + name)``, which containerd applies to every
    member name before anything else.
    """
    inner = name.strip(b"/")
    framed = b"/" + inner + b"/"
    if b"//" not in framed and b"/./" not in framed and b"/../" not in framed:
        return inner.split(b"/")  # the usual name, cleaned by searches in C: depth costs little
    out: list[bytes] = []
    for part in inner.split(b"/"):
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


class PathNames:
    """Paths as nodes of a tree of names: memory per distinct path, not per component of it.

    Interning remembers the last path asked for, so a layer's next entry in the same directory,
    a child of it or a parent of it is found by comparing lists (in C), not by walking names.
    """

    def __init__(self) -> None:
        self._children: dict[tuple[int, bytes], int] = {}
        self.parent: list[int] = [ROOT]
        self.name: list[bytes] = [b""]
        self.retired: list[bool] = [False]
        self._last: list[bytes] = []
        self._last_nodes: list[int] = [ROOT]

    def __len__(self) -> int:
        return len(self.parent)

    def child(self, node: Key, name: bytes) -> Key:
        key = (node, name)
        found = self._children.get(key)
        if found is None:
            found = len(self.parent)
            self._children[key] = found
            self.parent.append(node)
            self.name.append(name)
            self.retired.append(False)
        return found

    def find(self, node: Key, name: bytes) -> Key | None:
        return self._children.get((node, name))

    def intern(self, parts: Sequence[bytes]) -> Key:
        """The node of the path ``parts`` (clean components), made if new."""
        parts = list(parts)
        last, nodes = self._last, self._last_nodes
        n, m = len(parts), len(last)
        if n == m and parts == last:
            return nodes[-1]
        if n == m + 1 and parts[:m] == last:
            common = m
        elif n < m and parts == last[:n]:
            common = n
        else:
            common = self._common_prefix(parts, last)
        del nodes[common + 1 :]
        node = nodes[-1]
        for part in parts[common:]:
            node = self.child(node, part)
            nodes.append(node)
        self._last = parts
        return node

    @staticmethod
    def _common_prefix(a: list[bytes], b: list[bytes]) -> int:
        lo, hi = 0, min(len(a), len(b))
        while lo < hi:  # the longest equal prefix, by slices compared in C
            mid = (lo + hi + 1) // 2
            if a[:mid] == b[:mid]:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def parts(self, node: Key) -> list[bytes]:
        out: list[bytes] = []
        while node != ROOT:
            out.append(self.name[node])
            node = self.parent[node]
        out.reverse()
        return out

    def retire(self, node: Key) -> None:
        """``node``'s directory is gone: the path interned again is a new node (so is any below)."""
        if node == ROOT:
            return
        self.retired[node] = True
        self._children.pop((self.parent[node], self.name[node]), None)
        if node in self._last_nodes:
            cut = self._last_nodes.index(node)
            del self._last_nodes[cut:]
            del self._last[cut - 1 :]

    def live(self) -> list[bool]:
        """Per node: whether neither it nor a directory above it was retired (one pass: parents
        are always interned before their children)."""
        alive = [True] * len(self.parent)
        for node in range(1, len(self.parent)):
            alive[node] = alive[self.parent[node]] and not self.retired[node]
        return alive


class RootDir:
    """Directories inside ``path``, opened by interned paths (``PathNames``, shareable between
    trees that are layers of one another, such as an overlay's upper and lower directories)."""

    def __init__(
        self,
        path: str | bytes | os.PathLike[str],
        *,
        cache_size: int = 64,
        names: PathNames | None = None,
    ) -> None:
        self.path = os.fsencode(path)
        self.fd = os.open(self.path, O_DIR)
        self.names = names if names is not None else PathNames()
        self._cache: OrderedDict[Key, int] = OrderedDict()
        self._plain: dict[Key, bool] = {}
        self._cache_size = max(cache_size, 2)
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

    @property
    def open_directories(self) -> int:
        return len(self._cache) + 1

    def forget(self, key: Key) -> None:
        """``key`` was removed or replaced: it and everything under it are never handed out again."""
        fd = self._cache.pop(key, None)
        if fd is not None:
            os.close(fd)
        self._plain.pop(key, None)
        self.names.retire(key)

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
        self, parts: Sequence[bytes] | Key, *, create: bool = False, follow: bool = True
    ) -> tuple[int, Key]:
        """The fd and resolved key of the directory ``parts`` (clean components, or a key) names.

        Symlinks on the way are resolved inside the root unless ``follow`` is false, when one is
        NotFound. Missing directories are made (0755) when ``create``, else NotFound. Something
        that is neither a directory nor a symlink on the way is InvalidArgument.
        The fd belongs to the tree and stays open at least until the next call: do not close it.
        """
        key = parts if isinstance(parts, int) else self.names.intern(parts)
        if key == ROOT:
            return self.fd, ROOT
        fd = self._cache.get(key)
        if fd is not None:
            self._cache.move_to_end(key)
            return fd, key
        # Start from the nearest directory above that is open; walk only the rest.
        todo: list[bytes] = []
        start = key
        names, parents = self.names.name, self.names.parent
        while start != ROOT and start not in self._cache:
            todo.append(names[start])
            start = parents[start]
        start_fd = self.fd if start == ROOT else self._cache[start]
        return self._walk(start, start_fd, todo, create, follow)

    def _walk(self, node: Key, fd: int, todo: list[bytes], create: bool, follow: bool) -> tuple[int, Key]:
        """Open ``todo`` (reversed components) below ``node`` (open as ``fd``, not ours to close)."""
        owned = -1  # the one descriptor of the walk that is not the root's or the cache's
        links = 0
        names = self.names
        try:
            while todo:
                part = todo.pop()
                if part == b"" or part == b".":
                    continue
                if part == b"..":
                    if node != ROOT:
                        node = names.parent[node]
                        fd, owned = self._open_known(node, owned)
                    continue
                child_key = names.child(node, part)
                cached = self._cache.get(child_key)
                if cached is not None:
                    node, fd = child_key, cached
                    owned = self._release(owned)
                    continue
                try:
                    child = os.open(part, O_DIR, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise NotFound(f"{self._show(child_key)} does not exist in the target") from None
                    child = self._mkdir(fd, part, child_key)
                except OSError as err:
                    if err.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                    if not stat.S_ISLNK(st.st_mode):
                        raise InvalidArgument(f"{self._show(child_key)} is not a directory") from None
                    if not follow:
                        raise NotFound(f"{self._show(child_key)} is a symlink") from None
                    links += 1
                    if links > MAX_SYMLINKS:
                        raise InvalidArgument(
                            f"too many levels of symbolic links at {self._show(child_key)}"
                        ) from None
                    target = os.readlink(part, dir_fd=fd)
                    if target.startswith(b"/"):
                        node, fd = ROOT, self.fd
                        owned = self._release(owned)
                    todo.extend(reversed(target.split(b"/")))
                    continue
                self._release(owned)
                owned = fd = child
                node = child_key
        except BaseException:
            self._release(owned)
            raise
        if owned >= 0:
            self._remember(node, owned)
        return fd, node

    def _open_known(self, node: Key, owned: int) -> tuple[int, int]:
        """A directory already resolved (no symlink on its path), opened again from the nearest
        open one; (fd, the walk's owned fd)."""
        self._release(owned)
        if node == ROOT:
            return self.fd, -1
        cached = self._cache.get(node)
        if cached is not None:
            return cached, -1
        todo: list[bytes] = []
        start = node
        while start != ROOT and start not in self._cache:
            todo.append(self.names.name[start])
            start = self.names.parent[start]
        fd = self.fd if start == ROOT else self._cache[start]
        owned = -1
        try:
            while todo:
                child = os.open(todo.pop(), O_DIR, dir_fd=fd)
                self._release(owned)
                owned = fd = child
        except BaseException:
            self._release(owned)
            raise
        return fd, owned

    @staticmethod
    def _release(fd: int) -> int:
        if fd >= 0:
            os.close(fd)
        return -1

    def _remember(self, key: Key, fd: int) -> None:
        self._cache[key] = fd
        while len(self._cache) > self._cache_size:
            _, old = self._cache.popitem(last=False)
            os.close(old)

    def _show(self, key: Key) -> str:
        return display(self.names.parts(key))

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

    def resolve(self, parts: Sequence[bytes]) -> list[bytes]:
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
        return resolved


def resolve_in_root(root: str | os.PathLike[str], relpath: str | bytes) -> str:
    """``relpath`` inside ``root`` with every symlink resolved as if ``root`` were ``/``.

    The result is always ``root`` or below it, whatever the tree's symlinks say; components that
    do not exist yet are appended as they are. (containerd's ``fs.RootPath``.)
    """
    name = os.fsencode(relpath)
    with RootDir(root) as tree:
        parts = tree.resolve(clean_components(name))
    return os.fsdecode(os.path.join(tree.path, *parts)) if parts else os.fsdecode(tree.path)
