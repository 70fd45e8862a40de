"""Checks of what a container sees: files written through a snapshot's mounts, as its children see them.

Each check writes a parent through its mounts, reads it back through the same mounts (what the
filesystem kept is the truth to compare with), commits it, and reads children and views of it.
They mount, so they need root.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

import anyio
import anyio.to_thread

from corral.kernel import NotFound
from corral.plugins.core.trees import remove_tree
from corral.plugins.snapshots import Snapshotter
from corral.plugins.snapshots.conformance._children import Children, Job
from corral.plugins.snapshots.conformance._subject import CheckSkipped, Subject, needs_root
from corral.plugins.snapshots.conformance._trees import (
    Tree,
    committed,
    contents,
    differences,
    digest_of,
    expect,
    in_mount,
    make_dirs,
    read_at,
    read_tree,
    tree_of,
    tree_of_committed,
    write_at,
    write_files,
)

FIFO_TIMEOUT = 30.0
"""Seconds a prepare on a parent holding fifos may take: a copy that opens a fifo waits forever."""
DEPTH = 1000
"""Levels of the deep tree."""
NAME_MAX = 255
LONG_PATH = 4096 - 64 - 1
"""Bytes of the long path below a snapshot's root: 64 short of PATH_MAX, for the host's prefix."""
HOLE = 256 << 20
"""Bytes of the hole in the sparse file."""
LAYERS = 128
"""Layers of the tall chain, as many as containerd's suite stacks."""
BASE_TIME_NS = 1_000_000_000_123_456_789
"""An mtime with nanoseconds (2001-09-09), far from now."""


def d(mode: int) -> tuple[object, ...]:
    """A directory's ``Entry.content()``."""
    return ("dir", oct(mode), "", "", (0, 0))


def f(mode: int, data: bytes) -> tuple[object, ...]:
    """A regular file's ``Entry.content()``."""
    return ("file", oct(mode), digest_of(data), "", (0, 0))


def link(target: str) -> tuple[object, ...]:
    """A symlink's ``Entry.content()``."""
    return ("symlink", "0o777", "", target, (0, 0))


def assert_contents(tree: Tree, expected: dict[str, tuple[object, ...]], what: str) -> None:
    seen = contents(tree)
    assert seen == expected, f"{what}: {differences(expected, seen)}"


async def layer(sn: Snapshotter, name: str, parent: str, change: Callable[[Path], object]) -> Tree:
    """Commit ``name`` on ``parent`` after ``change`` ran in its mount; the tree as that mount showed it."""
    key = f"{name}.conformance-active"
    await sn.prepare(key, parent)

    def apply(root: Path) -> Tree:
        change(root)
        return read_tree(root)

    written = await in_mount(sn, key, apply)
    await sn.commit(name, key)
    return written


async def children_of(sn: Snapshotter, name: str, holding: str) -> dict[str, Tree]:
    """What a new active child of ``name`` and a view of it see; ``holding`` names what ``name``
    holds, for the failure when either cannot be made."""
    key = f"{name}.conformance-child"
    try:
        await sn.prepare(key, name)
    except Exception as exc:
        raise AssertionError(
            f"prepare on a parent holding {holding} failed: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        try:
            view = await tree_of_committed(sn, name)
        except Exception as exc:
            raise AssertionError(
                f"a view of a parent holding {holding} failed: {type(exc).__name__}: {exc}"
            ) from exc
        return {"a child": await tree_of(sn, key), "a view": view}
    finally:
        await sn.remove(key)


def same(seen: Tree, written: Tree, attribute: str, what: str) -> None:
    """Every entry of ``written`` has the same ``attribute`` in ``seen``."""
    expected = {p: getattr(e, attribute) for p, e in written.items()}
    got = {p: getattr(e, attribute) for p, e in seen.items() if p in written}
    assert got == expected, f"{what}: {differences(_wrap(expected), _wrap(got))}"


def _wrap(values: Mapping[str, object]) -> dict[str, tuple[object, ...]]:
    return {p: (v,) for p, v in values.items()}


# -- contents -------------------------------------------------------------------------------------


@needs_root
async def check_files_written_through_mounts_are_seen_by_children(subject: Subject) -> None:
    modes = {"etc": 0o755, "etc/hostname": 0o644, "bin": 0o750, "bin/tool": 0o755, "empty": 0o700}
    async with subject.open() as sn:
        await sn.prepare("a")

        def populate(root: Path) -> int:
            write_files(root, {"etc/hostname": b"base\n", "bin/tool": b"#!/bin/sh\n", "link": "etc/hostname"})
            (root / "empty").mkdir()
            for name, mode in modes.items():  # explicit modes: the umask plays no part
                (root / name).chmod(mode)
            return stat.S_IMODE(root.stat().st_mode)

        root_mode = await in_mount(sn, "a", populate)
        assert root_mode == 0o755, f"a new snapshot's root has mode {oct(root_mode)}, not 0o755"
        first = {
            "etc": d(0o755),
            "etc/hostname": f(0o644, b"base\n"),
            "bin": d(0o750),
            "bin/tool": f(0o755, b"#!/bin/sh\n"),
            "link": link("etc/hostname"),
            "empty": d(0o700),
        }
        assert_contents(await tree_of(sn, "a"), first, "the snapshot read back")
        await sn.commit("layer-a", "a")

        await sn.prepare("b", "layer-a")

        def change(root: Path) -> Tree:
            seen = read_tree(root)
            # Same size, same second: a change only the bytes tell apart.
            write_files(root, {"etc/hostname": b"edit\n", "b-only": b"b"})
            (root / "b-only").chmod(0o600)
            return seen

        assert_contents(await in_mount(sn, "b", change), first, "a child of the snapshot")
        await sn.commit("layer-b", "b")

        await sn.view("view-b", "layer-b")

        def read_only(root: Path) -> Tree:
            try:
                write_files(root, {"nope": b"x"})
            except OSError:
                return read_tree(root)
            raise AssertionError("a view's mount accepted a write")

        seen = await in_mount(sn, "view-b", read_only)
        assert_contents(
            seen,
            {**first, "etc/hostname": f(0o644, b"edit\n"), "b-only": f(0o600, b"b")},
            "a view of the child",
        )
        # The child's changes did not reach its parent.
        assert_contents(await tree_of_committed(sn, "layer-a"), first, "the parent after its child changed")


@needs_root
async def check_whiteouts_and_opaque_directories(subject: Subject) -> None:
    async with subject.open() as sn:
        base = {
            "keep": b"k",
            "gone": b"g",
            "dir/x": b"x",
            "dir/y": b"y",
            "file-to-dir": b"f",
            "deep/a/b": b"b",
        }
        await committed(sn, "base", files=base)

        def delete(root: Path) -> None:
            (root / "gone").unlink()
            shutil.rmtree(root / "dir")  # a directory deleted ...
            (root / "dir").mkdir()  # ... and made again: opaque, none of the parent's entries show
            (root / "dir" / "z").write_bytes(b"z")
            (root / "file-to-dir").unlink()
            (root / "file-to-dir").mkdir()
            shutil.rmtree(root / "deep")

        await committed(sn, "deleted", "base", change=delete)
        tree = await tree_of_committed(sn, "deleted")
        assert "gone" not in tree, "a file the child deleted is still seen"
        assert not {"deep", "deep/a", "deep/a/b"} & set(tree), "a directory the child deleted is still seen"
        assert sorted(p for p in tree if p.startswith("dir/")) == ["dir/z"], (
            f"a directory the child made again shows its parent's entries: {sorted(tree)}"
        )
        assert tree["file-to-dir"].kind == "dir"
        assert tree["keep"].digest == digest_of(b"k"), "a file the child kept changed"
        markers = [p for p, e in tree.items() if (e.kind == "char" and e.device == (0, 0)) or ".wh." in p]
        assert not markers, f"a reader sees whiteout markers: {markers}"
        overlay = [p for p, e in tree.items() if any(k.startswith("trusted.overlay.") for k in e.xattrs)]
        assert not overlay, f"a reader sees overlay's own xattrs on {overlay}"

        def readd(root: Path) -> None:
            (root / "gone").write_bytes(b"back")
            (root / "deep" / "a").mkdir(parents=True)
            (root / "deep" / "a" / "new").write_bytes(b"new")
            (root / "dir" / "x").write_bytes(b"x2")

        await committed(sn, "readded", "deleted", change=readd)
        again = await tree_of_committed(sn, "readded")
        assert again["gone"].digest == digest_of(b"back"), "a re-added file shows the deleted one"
        assert sorted(p for p in again if p.startswith("deep/")) == ["deep/a", "deep/a/new"], (
            f"a re-added directory shows what was deleted: {sorted(p for p in again if p.startswith('deep'))}"
        )
        assert sorted(p for p in again if p.startswith("dir/")) == ["dir/x", "dir/z"]
        assert again["dir/x"].digest == digest_of(b"x2")
        assert "dir/y" not in again
        # The parent keeps everything its children deleted.
        original = await tree_of_committed(sn, "base")
        assert {"gone", "dir/x", "dir/y", "deep/a/b"} <= set(original), sorted(original)
        assert original["gone"].digest == digest_of(b"g")


@needs_root
async def check_renames_and_moves_from_lower_layers(subject: Subject) -> None:
    files = {
        "dir1/f1": b"hello",
        "dir2/f2": b"...",
        "somefiles/f1": b"was here first!",
        "somefiles/f2": b"nothing",
    }
    async with subject.open() as sn:
        await committed(sn, "base", files=files)

        def move(root: Path) -> None:
            # shutil.move as mv does: a rename, or a copy where the filesystem refuses (EXDEV).
            shutil.move(root / "dir1", root / "dir1-moved")
            (root / "somefiles" / "f1-new").write_bytes(b"new content 1")
            os.rename(root / "somefiles" / "f1-new", root / "somefiles" / "f1")
            os.rename(root / "somefiles" / "f2", root / "somefiles" / "f3")
            (root / "dir3").mkdir()
            os.link(root / "dir2" / "f2", root / "dir3" / "f2")
            (root / "dir2" / "f2").unlink()

        await committed(sn, "moved", "base", change=move)
        tree = await tree_of_committed(sn, "moved")
        seen = {p: e.digest for p, e in tree.items() if e.kind == "file"}
        expected = {
            "dir1-moved/f1": digest_of(b"hello"),
            "dir3/f2": digest_of(b"..."),
            "somefiles/f1": digest_of(b"new content 1"),
            "somefiles/f3": digest_of(b"nothing"),
        }
        assert seen == expected, f"after renames: {differences(_wrap(expected), _wrap(seen))}"
        assert "dir1" not in tree and tree["dir2"].kind == "dir"


# -- file types -----------------------------------------------------------------------------------


@needs_root
async def check_hard_links_within_a_layer_and_into_children(subject: Subject) -> None:
    async with subject.open() as sn:

        def populate(root: Path) -> None:
            write_files(root, {"a": b"shared", "lonely": b"shared", "dir/other": b"o", "sym": "a"})
            os.link(root / "a", root / "b")
            os.link(root / "a", root / "dir" / "c")
            os.link(root / "dir" / "other", root / "dir" / "other-link")
            os.link(root / "sym", root / "sym-link", follow_symlinks=False)

        written = await layer(sn, "base", "", populate)
        groups = [("a", "b", "dir/c"), ("dir/other", "dir/other-link"), ("sym", "sym-link")]
        for group in groups:
            assert len({written[p].inode for p in group}) == 1, f"the filesystem did not keep {group} linked"

        def linked_in(tree: Tree, what: str) -> None:
            for group in groups:
                inodes = {tree[p].inode for p in group}
                assert len(inodes) == 1, (
                    f"hard links {' = '.join(group)} are separate files in {what}: {inodes}"
                )
                assert all(tree[p].nlink >= len(group) for p in group), (
                    f"hard links {group} report fewer links than names in {what}"
                )
            assert tree["lonely"].inode != tree["a"].inode, f"in {what} a copy became a hard link"

        for what, tree in (await children_of(sn, "base", "hard links")).items():
            linked_in(tree, what)

        def add_links(root: Path) -> None:
            (root / "new").write_bytes(b"new")
            os.link(root / "new", root / "new-link")

        await committed(sn, "child", "base", change=add_links)
        grandchild = await tree_of_committed(sn, "child")
        linked_in(grandchild, "a grandchild")
        assert grandchild["new"].inode == grandchild["new-link"].inode, (
            "hard links made in a child came apart"
        )


@needs_root
async def check_fifos(subject: Subject) -> None:
    root = subject.new_root()
    async with subject.open(root) as sn:

        def populate(root: Path) -> None:
            os.mkfifo(root / "fifo", 0o640)
            (root / "dir").mkdir()
            os.mkfifo(root / "dir" / "pipe", 0o600)
            (root / "fifo").chmod(0o640)
            (root / "dir" / "pipe").chmod(0o600)

        written = await layer(sn, "base", "", populate)
    # In a child process: a copy that opens a fifo waits for a writer forever.
    async with Children.start(subject.plugin) as children:
        outcome = await children.run(Job(str(root), "prepare", ("child", "base")), limit=FIFO_TIMEOUT)
    assert not outcome.timed_out, (
        f"prepare on a parent holding fifos did not finish within {FIFO_TIMEOUT:.0f} s"
        " (a copy that opens a fifo waits forever for a writer)"
    )
    assert not outcome.error, f"prepare on a parent holding fifos failed: {outcome.error}"
    async with subject.open(root) as sn:
        seen = {"a child": await tree_of(sn, "child"), "a view": await tree_of_committed(sn, "base")}
        for what, tree in seen.items():
            for path in ("fifo", "dir/pipe"):
                assert path in tree, f"fifo {path} is missing in {what}"
                assert tree[path].kind == "fifo", f"fifo {path} is a {tree[path].kind} in {what}"
                assert tree[path].mode == written[path].mode, f"fifo {path} has mode {oct(tree[path].mode)}"

        def still_a_pipe(root: Path) -> bytes:
            fd = os.open(root / "fifo", os.O_RDWR | os.O_NONBLOCK)
            try:
                os.write(fd, b"through")
                return os.read(fd, 100)
            finally:
                os.close(fd)

        assert await in_mount(sn, "child", still_a_pipe) == b"through", "the child's fifo is no pipe"


@needs_root
async def check_device_nodes(subject: Subject) -> None:
    # Majors 240-254 are for local use: no driver behind them, so nothing is read by mistake.
    devices = {"char": (stat.S_IFCHR, 0o620, (240, 7)), "dev/block": (stat.S_IFBLK, 0o660, (241, 9))}
    async with subject.open() as sn:

        def populate(root: Path) -> None:
            (root / "dev").mkdir()
            for name, (kind, mode, (major, minor)) in devices.items():
                try:
                    os.mknod(root / name, kind | mode, os.makedev(major, minor))
                except PermissionError as exc:
                    raise CheckSkipped(f"this machine does not allow device nodes (mknod: {exc})") from exc
                os.chmod(root / name, mode)

        await layer(sn, "base", "", populate)
        for what, tree in (await children_of(sn, "base", "device nodes")).items():
            for name, (kind, mode, device) in devices.items():
                expected = ("char" if kind == stat.S_IFCHR else "block", oct(mode), device)
                entry = tree.get(name)
                seen = (entry.kind, oct(entry.mode), entry.device) if entry else None
                assert seen == expected, f"device node {name} is {seen} in {what}, expected {expected}"


@needs_root
async def check_unix_sockets(subject: Subject) -> None:
    async with subject.open() as sn:

        def populate(root: Path) -> None:
            (root / "run").mkdir()
            for name in ("run/app.sock", "top.sock"):
                path = str(root / name)
                if len(path) < 100:
                    with socket.socket(socket.AF_UNIX) as listener:
                        listener.bind(path)  # what a process in a container leaves behind
                else:
                    os.mknod(path, stat.S_IFSOCK | 0o755)
                os.chmod(path, 0o750)

        await layer(sn, "base", "", populate)
        for what, tree in (await children_of(sn, "base", "unix sockets")).items():
            for name in ("run/app.sock", "top.sock"):
                entry = tree.get(name)
                seen = (entry.kind, oct(entry.mode)) if entry else None
                assert seen == ("socket", "0o750"), f"unix socket {name} is {seen} in {what}"


@needs_root
async def check_symlinks_relative_absolute_and_dangling(subject: Subject) -> None:
    long_target = "/".join(["x" * 200] * 19)  # 3,819 bytes: symlink targets may be long too
    links = {
        "rel": "dir/target",
        "dir/up": "../dir/target",
        "abs": "/etc/passwd",
        "dangling": "does/not/exist",
        "dirlink": "dir",
        "chain": "rel",
        "self": "self",
        "long": long_target,
    }
    async with subject.open() as sn:

        def populate(root: Path) -> None:
            write_files(root, {"dir/target": b"pointed at"})
            for name, target in links.items():
                (root / name).symlink_to(target)

        await layer(sn, "base", "", populate)
        for what, tree in (await children_of(sn, "base", "symlinks")).items():
            for name, target in links.items():
                entry = tree.get(name)
                seen = (entry.kind, entry.target) if entry else None
                assert seen == ("symlink", target), f"symlink {name} is {seen} in {what}"

        def resolve(root: Path) -> tuple[bytes, bytes, bool]:
            return (
                (root / "chain").read_bytes(),
                (root / "dirlink" / "target").read_bytes(),
                (root / "dangling").exists(),
            )

        await sn.prepare("child", "base")
        resolved = await in_mount(sn, "child", resolve)
        assert resolved == (b"pointed at", b"pointed at", False), f"symlinks resolve to {resolved} in a child"

        def replace_links(root: Path) -> None:
            (root / "rel").unlink()
            (root / "rel").symlink_to("elsewhere")
            (root / "dangling").unlink()

        await committed(sn, "changed", "base", change=replace_links)
        tree = await tree_of_committed(sn, "changed")
        assert tree["rel"].target == "elsewhere", "a symlink replaced in a child shows the parent's"
        assert "dangling" not in tree, "a symlink deleted in a child is still seen"


# -- metadata -------------------------------------------------------------------------------------


@needs_root
async def check_owners_and_modes(subject: Subject) -> None:
    owners = {
        "owned": (1234, 5678, 0o640),
        "setuid": (1000, 1000, 0o4755),
        "setgid-dir": (0, 1001, 0o2775),
        "sticky": (0, 0, 0o1777),
        "nothing": (7, 7, 0o000),
        "dir": (1, 1, 0o700),
        "dir/inner": (2, 3, 0o444),
    }
    async with subject.open() as sn:

        def populate(root: Path) -> None:
            for name in ("setgid-dir", "sticky", "dir"):
                (root / name).mkdir()
            write_files(root, {"owned": b"o", "setuid": b"#!/bin/sh\n", "nothing": b"", "dir/inner": b"i"})
            (root / "link").symlink_to("owned")
            os.lchown(root / "link", 42, 43)
            for name, (uid, gid, mode) in owners.items():
                os.chown(root / name, uid, gid)  # before chmod: chown clears setuid and setgid
                os.chmod(root / name, mode)
            os.chown(root, 1000, 1000)  # the snapshot's root: what a rootless image sets

        written = await layer(sn, "base", "", populate)
        for name, (uid, gid, mode) in owners.items():
            assert (written[name].uid, written[name].gid, written[name].mode) == (uid, gid, mode), name
        for what, tree in (await children_of(sn, "base", "files of many owners")).items():
            for name in [*owners, "link"]:
                entry = tree.get(name)
                seen = (entry.uid, entry.gid, oct(entry.mode)) if entry else None
                expected = (written[name].uid, written[name].gid, oct(written[name].mode))
                assert seen == expected, (
                    f"{name} is owned (uid, gid, mode) {seen} in {what}, expected {expected}"
                )

        await sn.prepare("root-owner", "base")
        root_owner = await in_mount(sn, "root-owner", lambda root: (root.stat().st_uid, root.stat().st_gid))
        assert root_owner == (1000, 1000), (
            f"a child's root is owned by {root_owner}, its parent's by (1000, 1000)"
        )

        # containerd's layer-by-layer ownership changes: chown of a parent's entries, directories
        # removed and made again with other owners.
        def first(root: Path) -> None:
            write_files(root, {"opt/a/b/file.txt": b"hello", "dir4/f1": b"...", "dir5/f1": b"..."})
            for name in ("dir1", "dir2", "dir3"):
                (root / name).mkdir()
            for name in ("opt", "opt/a", "opt/a/b", "dir1", "dir2", "dir3", "dir4", "dir5"):
                (root / name).chmod(0o700)
            for name in ("dir1", "dir2", "dir3", "dir5", "dir5/f1"):
                os.chown(root / name, 1, 1)

        def second(root: Path) -> None:
            for name in ("opt", "opt/a", "opt/a/b", "opt/a/b/file.txt", "dir4", "dir4/f1"):
                os.chown(root / name, 1, 1)
            os.chown(root / "dir2", 0, 0)
            shutil.rmtree(root / "dir3")

        def third(root: Path) -> None:
            (root / "dir3").mkdir(mode=0o700)
            os.chown(root / "dir3", 1, 1)
            shutil.rmtree(root / "dir5")
            (root / "dir5").mkdir(mode=0o700)
            os.chown(root / "dir5", 1, 1)

        parent = ""
        for n, change in enumerate((first, second, third)):
            written = await layer(sn, f"chown-{n}", parent, change)
            layered = await tree_of_committed(sn, f"chown-{n}")
            same(layered, written, "uid", f"owners after layer {n}")
            same(layered, written, "gid", f"groups after layer {n}")
            same(layered, written, "mode", f"modes after layer {n}")
            assert set(layered) == set(written), (
                f"layer {n}: {differences(contents(written), contents(layered))}"
            )
            parent = f"chown-{n}"


@needs_root
async def check_xattrs(subject: Subject) -> None:
    user = {
        "file": {"user.origin": b"layer", "user.binary": b"\x00\x01\xff", "user.big": bytes(range(256)) * 4},
        "dir": {"user.dir": b"d"},
        "many": {f"user.n{n}": str(n).encode() for n in range(12)},
    }
    trusted = {"file": {"trusted.corral.check": b"t"}, "dir": {"trusted.corral.dir": b"td"}}
    async with subject.open() as sn:

        def populate(root: Path) -> None:
            write_files(root, {"file": b"f", "many": b"m", "dir/inside": b"i", "plain": b"p"})
            for wanted in (user, trusted):
                for name, attributes in wanted.items():
                    for key, value in attributes.items():
                        try:
                            os.setxattr(root / name, key, value)
                        except OSError as exc:
                            raise AssertionError(
                                f"the snapshot's mount refuses xattr {key} on {name}: {exc}"
                            ) from exc

        written = await layer(sn, "base", "", populate)
        for what, tree in (await children_of(sn, "base", "xattrs")).items():
            same(tree, written, "xattrs", f"xattrs in {what}")
            assert written["file"].xattrs.get("user.big") == bytes(range(256)) * 4

        def change(root: Path) -> None:
            (root / "dir" / "added").write_bytes(b"a")  # the directory changes: its xattrs stay
            os.removexattr(root / "file", "user.binary")
            os.setxattr(root / "plain", "user.late", b"late")

        await committed(sn, "child", "base", change=change)
        tree = await tree_of_committed(sn, "child")
        assert tree["dir"].xattrs == written["dir"].xattrs, (
            f"a changed directory lost its xattrs: {tree['dir'].xattrs}"
        )
        assert "user.binary" not in tree["file"].xattrs, "an xattr removed in a child is still seen"
        assert tree["file"].xattrs.get("user.origin") == b"layer"
        assert tree["plain"].xattrs.get("user.late") == b"late", "an xattr set in a child is lost"


@needs_root
async def check_sparse_files(subject: Subject) -> None:
    head, tail = os.urandom(4096), os.urandom(4096)
    size = 4096 + HOLE + 4096
    async with subject.open() as sn:

        def populate(root: Path) -> None:
            with open(root / "sparse", "wb") as file:
                file.write(head)
                file.seek(4096 + HOLE)
                file.write(tail)

        await layer(sn, "base", "", populate)

        def inspect(root: Path) -> None:
            fd = os.open(root / "sparse", os.O_RDONLY)
            try:
                assert os.fstat(fd).st_size == size, (
                    f"a sparse file is {os.fstat(fd).st_size} bytes, not {size}"
                )
                assert os.pread(fd, 4096, 0) == head and os.pread(fd, 4096, 4096 + HOLE) == tail
                try:
                    data = os.lseek(fd, 4096, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno != errno.ENXIO:
                        raise
                    data = size
                # Where the hole is gone (written as zeros), it must at least read as zeros.
                if data < 4096 + HOLE:
                    zeros = bytes(1 << 20)
                    for offset in range(4096, 4096 + HOLE, 1 << 20):
                        chunk = os.pread(fd, min(1 << 20, 4096 + HOLE - offset), offset)
                        assert chunk == zeros[: len(chunk)], f"a sparse file's hole has data at {offset}"
            finally:
                os.close(fd)

        await sn.prepare("child", "base")
        await in_mount(sn, "child", inspect)
        await sn.view("view", "base")
        await in_mount(sn, "view", inspect)


@needs_root
async def check_timestamps(subject: Subject) -> None:
    times = {
        name: BASE_TIME_NS + n * 1_000_001_001
        for n, name in enumerate(("file", "dir/inner", "dir/sub", "dir", "link", "fifo", "empty-dir"))
    }
    async with subject.open() as sn:

        def populate(root: Path) -> None:
            write_files(root, {"file": b"f", "dir/inner": b"i", "link": "file"})
            (root / "dir" / "sub").mkdir()
            (root / "empty-dir").mkdir()
            os.mkfifo(root / "fifo")
            for name, ns in times.items():  # in order: a directory's time after its entries'
                os.utime(root / name, ns=(ns, ns), follow_symlinks=False)

        written = await layer(sn, "base", "", populate)
        for what, tree in (await children_of(sn, "base", "files with set times")).items():
            same(tree, written, "mtime_ns", f"modification times in {what}")

        def change(root: Path) -> None:
            (root / "dir" / "added").write_bytes(b"a")
            os.utime(root / "dir" / "added", ns=(BASE_TIME_NS, BASE_TIME_NS))

        added = await layer(sn, "child", "base", change)
        tree = await tree_of_committed(sn, "child")
        same(tree, added, "mtime_ns", "modification times in a grandchild")
        untouched = {p: e for p, e in written.items() if p != "dir"}
        same(tree, untouched, "mtime_ns", "the parent's times in a grandchild")


# -- shapes ---------------------------------------------------------------------------------------


@needs_root
async def check_deep_trees(subject: Subject) -> None:
    levels = ["d"] * DEPTH
    root = subject.new_root()
    try:
        async with subject.open(root) as sn:
            await _deep_trees(sn, levels)
    finally:
        # Whatever happened, nothing this deep is left for a recursive removal of the scratch
        # directory (Python 3.11's shutil.rmtree recurses once per level).
        await anyio.to_thread.run_sync(remove_tree, root)


async def _deep_trees(sn: Snapshotter, levels: list[str]) -> None:
    await layer(sn, "base", "", lambda root: write_at(root, levels, "bottom", b"at the bottom"))
    try:
        await sn.prepare("child", "base")
    except Exception as exc:
        raise AssertionError(
            f"prepare on a parent {DEPTH} levels deep failed: {type(exc).__name__}: {exc}"
        ) from exc

    def descend(root: Path) -> bytes:
        data = read_at(root, "/".join([*levels, "bottom"]))
        write_at(root, levels[:-1], "child-bottom", b"written by the child")
        return data

    assert await in_mount(sn, "child", descend) == b"at the bottom", "the deep file changed in a child"
    assert (await sn.usage("child")).inodes >= 1
    await sn.commit("child-layer", "child")
    tree = await tree_of_committed(sn, "child-layer")
    deepest = "/".join([*levels, "bottom"])
    assert deepest in tree and tree[deepest].digest == digest_of(b"at the bottom"), "the deep file is lost"
    assert tree["/".join([*levels[:-1], "child-bottom"])].digest == digest_of(b"written by the child")
    assert sum(1 for e in tree.values() if e.kind == "dir") == DEPTH
    await sn.remove("child-layer")
    await sn.remove("base")
    await sn.cleanup()


@needs_root
async def check_long_names(subject: Subject) -> None:
    longest = "n" * NAME_MAX
    components = [f"{n:02d}".ljust(NAME_MAX, "c") for n in range(15)]
    last = "f" * (LONG_PATH - len("/".join(components)) - 1)
    long_path = "/".join([*components, last])
    assert len(long_path) == LONG_PATH and len(last) <= NAME_MAX
    async with subject.open() as sn:

        def populate(root: Path) -> None:
            write_files(root, {longest: b"long name"})
            make_dirs(root, ["d" * NAME_MAX])
            write_at(root, ["d" * NAME_MAX], "e" * NAME_MAX, b"in a long directory")
            write_at(root, components, last, b"near PATH_MAX")

        await layer(sn, "base", "", populate)
        for what, tree in (await children_of(sn, "base", "long names")).items():
            assert tree.get(longest, None) is not None, f"a {NAME_MAX}-byte name is lost in {what}"
            assert tree[f"{'d' * NAME_MAX}/{'e' * NAME_MAX}"].digest == digest_of(b"in a long directory")
            assert long_path in tree, f"a path of {LONG_PATH} bytes is lost in {what}"
            assert tree[long_path].digest == digest_of(b"near PATH_MAX")

        def change(root: Path) -> None:
            write_at(root, components, "g" * len(last), b"the child's")

        await sn.prepare("child", "base")
        await in_mount(sn, "child", change)
        await sn.usage("child")
        await sn.commit("child-layer", "child")
        tree = await tree_of_committed(sn, "child-layer")
        assert tree["/".join([*components, "g" * len(last)])].digest == digest_of(b"the child's")
        assert long_path in tree
        await sn.remove("child-layer")


# -- sizes ----------------------------------------------------------------------------------------


@needs_root
async def check_usage_counts_what_a_snapshot_writes(subject: Subject) -> None:
    size = 1024 * 1024
    async with subject.open() as sn:
        await sn.prepare("active")
        before = await sn.usage("active")
        data = os.urandom(size)  # incompressible, so no filesystem can store it in fewer blocks
        await in_mount(
            sn,
            "active",
            lambda root: write_files(root, {"big": data} | {f"small/{n}": b"." for n in range(10)}),
        )
        after = await sn.usage("active")
        assert after.size - before.size >= size, (before, after)
        assert after.inodes - before.inodes >= 12, (before, after)  # big, small/ and 10 files
        await sn.commit("done", "active")
        stored = await sn.usage("done")
        assert stored.size >= size and stored.inodes >= after.inodes - before.inodes, stored
        await expect(NotFound, sn.usage("active"))


@needs_root
async def check_many_layers_stack_in_order(subject: Subject) -> None:
    async with subject.open() as sn:

        def lowest(root: Path) -> None:
            write_files(
                root,
                {"bottom": b"way at the bottom\n", "overwriteme": b"FIRST!\n", "ONLYME/bottom": b"bye!\n"},
            )
            (root / "ADDHERE").mkdir()

        def layer_n(n: int) -> Callable[[Path], None]:
            def change(root: Path) -> None:
                write_files(
                    root, {"overwriteme": f"{n} WAS HERE!\n".encode(), f"ADDHERE/file-{n}": b"same\n"}
                )
                shutil.rmtree(root / "ONLYME")
                write_files(root, {f"ONLYME/file-{n}": b"only me!\n"})

            return change

        flat = {"bottom": b"way at the bottom\n", "overwriteme": b"FIRST!\n", "ONLYME/bottom": b"bye!\n"}
        parent = ""
        for n in range(LAYERS):
            written = await layer(sn, f"layer-{n}", parent, lowest if n == 0 else layer_n(n))
            if n:
                flat = {k: v for k, v in flat.items() if not k.startswith("ONLYME/")}
                flat |= {"overwriteme": f"{n} WAS HERE!\n".encode(), f"ADDHERE/file-{n}": b"same\n"}
                flat[f"ONLYME/file-{n}"] = b"only me!\n"
            files = {p: e.digest for p, e in written.items() if e.kind == "file"}
            assert files == {p: digest_of(v) for p, v in flat.items()}, f"layer {n} as written"
            parent = f"layer-{n}"
        expected = {p: digest_of(v) for p, v in flat.items()}
        await sn.view("top", parent)
        seen = {p: e.digest for p, e in (await tree_of(sn, "top")).items() if e.kind == "file"}
        assert seen == expected, f"the top of {LAYERS} layers: {differences(_wrap(expected), _wrap(seen))}"
