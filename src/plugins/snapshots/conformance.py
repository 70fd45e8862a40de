"""What every ``Snapshotter`` must do, built-in, third-party or fake: checks with plain asserts.

Each check is ``async def check_x(make_snapshotter)``, where ``make_snapshotter()`` is an async
context manager yielding a fresh, empty snapshotter. Run them all with
``check_snapshotter(make_snapshotter)``, or one by one from ``CHECKS`` (e.g. as parametrised
tests, so each failure is reported on its own). The checks need no test framework, only anyio.

Checks in ``MOUNTING_CHECKS`` mount what the snapshotter hands out (with
``corral.plugins.snapshots.mount``) to write and read files as a container would, so they need
root; run without it they raise ``PermissionError`` saying so. Whiteouts and opaque directories
are the differ's business; what every snapshotter must get right is what a reader of a child
sees after files and directories of its parent were deleted through the child's mounts.
"""

from __future__ import annotations

import functools
import os
import shutil
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread

from corral.kernel import AlreadyExists, CorralError, FailedPrecondition, InvalidArgument, NotFound
from corral.plugins.core import Mount
from corral.plugins.core.mount import temporary_mount
from corral.plugins.snapshots import Info, Kind, Snapshotter

SnapshotterFactory = Callable[[], AbstractAsyncContextManager[Snapshotter]]
Check = Callable[[SnapshotterFactory], Awaitable[None]]
PlantLeftover = Callable[[Snapshotter], Path]
"""Puts on disk what a crash could leave behind (a directory no snapshot owns); returns its path."""
E = TypeVar("E", bound=CorralError)

Tree = dict[str, tuple[str, ...]]
"""A mounted tree as a reader sees it: relative path -> ("dir", mode) | ("file", mode, text) | ("link", target)."""

_mounting: set[Check] = set()


# -- helpers -------------------------------------------------------------------------------------


def require_mount_privilege(what: str) -> None:
    """Mounting needs root: say so plainly rather than fail inside mount(8)."""
    if os.geteuid() != 0:
        raise PermissionError(f"{what} mounts snapshots, which needs root (effective uid 0); run it as root")


def mounting(check: Check) -> Check:
    """Mark a check that mounts snapshots: it needs root, and says so first."""

    @functools.wraps(check)
    async def run(make_snapshotter: SnapshotterFactory) -> None:
        require_mount_privilege(check.__name__)
        await check(make_snapshotter)

    _mounting.add(run)
    return run


async def expect(kind: type[E], awaitable: Awaitable[object]) -> E:
    """Await ``awaitable`` and return the error of ``kind`` it raised; fail if it raised nothing."""
    try:
        await awaitable
    except kind as exc:
        return exc
    raise AssertionError(f"expected {kind.__name__}, nothing was raised")


async def walk_all(snapshotter: Snapshotter, *filters: str) -> dict[str, Info]:
    infos = snapshotter.walk(list(filters))
    try:
        return {info.name: info async for info in infos}
    finally:
        aclose = getattr(infos, "aclose", None)
        if aclose is not None:
            await aclose()


@asynccontextmanager
async def mounted(snapshotter: Snapshotter, key: str) -> AsyncIterator[Path]:
    """The snapshot ``key`` mounted on a temporary directory for the block."""
    async with temporary_mount(await snapshotter.mounts(key)) as where:
        yield where


def write_files(root: Path, files: Mapping[str, bytes | str]) -> None:
    """Write ``files`` under ``root``; a str value makes a symlink pointing to it."""
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.symlink_to(content)
        else:
            path.write_bytes(content)


def read_tree(root: Path) -> Tree:
    """Every entry under ``root`` as a reader of the mount sees it (the root itself excluded)."""
    tree: Tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            relative = str(path.relative_to(root))
            st = path.lstat()
            mode = oct(stat.S_IMODE(st.st_mode))
            if stat.S_ISLNK(st.st_mode):
                tree[relative] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                tree[relative] = ("dir", mode)
            elif stat.S_ISREG(st.st_mode):
                tree[relative] = ("file", mode, path.read_text())
            else:
                tree[relative] = ("other", oct(st.st_mode), str(st.st_rdev))
    return tree


async def write(snapshotter: Snapshotter, key: str, files: Mapping[str, bytes | str]) -> None:
    async with mounted(snapshotter, key) as root:
        await anyio.to_thread.run_sync(write_files, root, files)


async def tree_of(snapshotter: Snapshotter, key: str) -> Tree:
    async with mounted(snapshotter, key) as root:
        return await anyio.to_thread.run_sync(read_tree, root)


async def committed(
    snapshotter: Snapshotter, name: str, parent: str = "", files: Mapping[str, bytes | str] | None = None
) -> None:
    """Commit ``name`` on ``parent``, holding ``files`` (written through its mounts when given)."""
    key = f"{name}-active"
    await snapshotter.prepare(key, parent)
    if files:
        await write(snapshotter, key, files)
    await snapshotter.commit(name, key)


# -- checks --------------------------------------------------------------------------------------


async def check_prepare_commit_and_view_build_a_chain(make_snapshotter: SnapshotterFactory) -> None:
    async with make_snapshotter() as sn:
        assert isinstance(sn, Snapshotter)
        mounts = await sn.prepare("base-active")
        assert mounts and all(isinstance(m, Mount) for m in mounts)
        assert await sn.mounts("base-active") == mounts
        info = await sn.stat("base-active")
        assert (info.name, info.kind, info.parent) == ("base-active", Kind.ACTIVE, "")
        assert info.created_at is not None and info.updated_at is not None

        await sn.commit("base", "base-active")
        await expect(NotFound, sn.stat("base-active"))
        base = await sn.stat("base")
        assert (base.name, base.kind, base.parent) == ("base", Kind.COMMITTED, "")

        await sn.prepare("child-active", "base")
        child = await sn.stat("child-active")
        assert (child.kind, child.parent) == (Kind.ACTIVE, "base")
        await sn.commit("child", "child-active")
        assert (await sn.stat("child")).parent == "base"

        view_mounts = await sn.view("child-view", "child")
        assert view_mounts and await sn.mounts("child-view") == view_mounts
        view = await sn.stat("child-view")
        assert (view.kind, view.parent) == (Kind.VIEW, "child")
        await sn.view("empty-view")
        assert (await sn.stat("empty-view")).kind is Kind.VIEW
        assert set(await walk_all(sn)) == {"base", "child", "child-view", "empty-view"}

        # A committed snapshot's old key is free again.
        await sn.prepare("base-active", "base")
        assert (await sn.stat("base-active")).parent == "base"


@mounting
async def check_files_written_through_mounts_are_seen_by_children(
    make_snapshotter: SnapshotterFactory,
) -> None:
    modes = {"etc": 0o755, "etc/hostname": 0o644, "bin": 0o750, "bin/tool": 0o755, "empty": 0o700}
    async with make_snapshotter() as sn:
        await sn.prepare("a")
        async with mounted(sn, "a") as root:

            def populate() -> None:
                write_files(
                    root, {"etc/hostname": b"base\n", "bin/tool": b"#!/bin/sh\n", "link": "etc/hostname"}
                )
                (root / "empty").mkdir()
                for name, mode in modes.items():  # explicit modes: the umask plays no part
                    (root / name).chmod(mode)

            await anyio.to_thread.run_sync(populate)
        first = {
            "etc": ("dir", "0o755"),
            "etc/hostname": ("file", "0o644", "base\n"),
            "bin": ("dir", "0o750"),
            "bin/tool": ("file", "0o755", "#!/bin/sh\n"),
            "link": ("link", "etc/hostname"),
            "empty": ("dir", "0o700"),
        }
        assert await tree_of(sn, "a") == first
        await sn.commit("layer-a", "a")

        await sn.prepare("b", "layer-a")
        async with mounted(sn, "b") as root:
            assert await anyio.to_thread.run_sync(read_tree, root) == first

            def change() -> None:
                write_files(root, {"etc/hostname": b"child\n", "b-only": b"b"})
                (root / "b-only").chmod(0o600)

            await anyio.to_thread.run_sync(change)
        await sn.commit("layer-b", "b")

        await sn.view("view-b", "layer-b")
        async with mounted(sn, "view-b") as root:
            seen = await anyio.to_thread.run_sync(read_tree, root)
            try:
                await anyio.to_thread.run_sync(write_files, root, {"nope": b"x"})
            except OSError:
                pass
            else:
                raise AssertionError("a view's mount accepted a write")
        assert seen == {
            **first,
            "etc/hostname": ("file", "0o644", "child\n"),
            "b-only": ("file", "0o600", "b"),
        }
        # The child's changes did not reach its parent.
        await sn.view("view-a", "layer-a")
        assert await tree_of(sn, "view-a") == first


@mounting
async def check_deletions_in_a_child_hide_the_parents_files(make_snapshotter: SnapshotterFactory) -> None:
    async with make_snapshotter() as sn:
        await committed(
            sn,
            "base",
            files={
                "keep": b"k",
                "gone": b"g",
                "dir/x": b"x",
                "dir/y": b"y",
                "file-to-dir": b"f",
                "deep/a/b": b"b",
            },
        )
        await sn.prepare("child", "base")
        async with mounted(sn, "child") as root:

            def change() -> None:
                (root / "gone").unlink()
                shutil.rmtree(root / "dir")
                (root / "dir").mkdir()
                (root / "dir" / "z").write_bytes(b"z")
                (root / "file-to-dir").unlink()
                (root / "file-to-dir").mkdir()
                shutil.rmtree(root / "deep")

            await anyio.to_thread.run_sync(change)
        await sn.commit("child-layer", "child")

        await sn.view("reader", "child-layer")
        tree = await tree_of(sn, "reader")
        assert "gone" not in tree
        assert "deep" not in tree and "deep/a/b" not in tree
        assert sorted(p for p in tree if p.startswith("dir/")) == ["dir/z"]
        assert tree["file-to-dir"][0] == "dir"
        assert tree["keep"][2:] == ("k",)
        assert all(entry[0] != "other" for entry in tree.values()), f"a reader sees markers: {tree}"

        # Deletions hide the files from every later layer too, and the parent keeps them.
        await sn.prepare("grandchild", "child-layer")
        assert set(await tree_of(sn, "grandchild")) == set(tree)
        await sn.view("base-reader", "base")
        assert {"gone", "dir/x", "dir/y", "deep/a/b"} <= set(await tree_of(sn, "base-reader"))


async def check_a_parent_with_children_cannot_be_removed(make_snapshotter: SnapshotterFactory) -> None:
    async with make_snapshotter() as sn:
        await committed(sn, "base")
        await sn.prepare("child", "base")
        await sn.view("peek", "base")
        await expect(FailedPrecondition, sn.remove("base"))
        assert (await sn.stat("base")).kind is Kind.COMMITTED
        await sn.remove("child")
        await expect(FailedPrecondition, sn.remove("base"))  # the view still needs it
        await sn.remove("peek")
        await sn.remove("base")
        await expect(NotFound, sn.stat("base"))
        await expect(NotFound, sn.remove("base"))
        assert await walk_all(sn) == {}


async def check_a_chain_is_removed_from_the_top(make_snapshotter: SnapshotterFactory) -> None:
    async with make_snapshotter() as sn:
        await committed(sn, "base")
        await committed(sn, "mid", "base")
        await sn.prepare("top", "mid")
        await sn.view("look", "mid")
        await expect(FailedPrecondition, sn.remove("mid"))
        for key in ("top", "look", "mid", "base"):
            await sn.remove(key)
            await expect(NotFound, sn.stat(key))
        assert await walk_all(sn) == {}
        # Keys of removed snapshots can be used again.
        await committed(sn, "base")
        await sn.prepare("top", "base")
        assert (await sn.stat("top")).parent == "base"


@mounting
async def check_usage_counts_what_a_snapshot_writes(make_snapshotter: SnapshotterFactory) -> None:
    size = 1024 * 1024
    async with make_snapshotter() as sn:
        await sn.prepare("active")
        before = await sn.usage("active")
        data = os.urandom(size)  # incompressible, so no filesystem can store it in fewer blocks
        await write(sn, "active", {"big": data} | {f"small/{n}": b"." for n in range(10)})
        after = await sn.usage("active")
        assert after.size - before.size >= size, (before, after)
        assert after.inodes - before.inodes >= 12, (before, after)  # big, small/ and 10 files
        await sn.commit("done", "active")
        stored = await sn.usage("done")
        assert stored.size >= size and stored.inodes >= after.inodes - before.inodes, stored
        await expect(NotFound, sn.usage("active"))


async def check_labels_are_kept_and_updated_by_field_path(make_snapshotter: SnapshotterFactory) -> None:
    async with make_snapshotter() as sn:
        await sn.prepare("active", labels={"a": "1", "b": "2"})
        info = await sn.stat("active")
        assert (info.labels.get("a"), info.labels.get("b")) == ("1", "2")
        await sn.commit("done", "active", labels={"c": "3"})
        done = await sn.stat("done")
        assert done.labels.get("c") == "3"

        updated = await sn.update(replace(done, labels={"c": "changed", "d": "ignored"}), ["labels.c"])
        assert updated.labels.get("c") == "changed" and "d" not in updated.labels
        assert updated.created_at == done.created_at
        assert updated.updated_at is not None and done.updated_at is not None
        assert updated.updated_at >= done.updated_at
        updated = await sn.update(replace(done, labels={"e": "5"}), ["labels.e"])
        assert (updated.labels.get("c"), updated.labels.get("e")) == ("changed", "5")
        updated = await sn.update(replace(done, labels={}), ["labels.c"])  # absent: removed
        assert "c" not in updated.labels and updated.labels.get("e") == "5"
        updated = await sn.update(replace(done, labels={"x": "1"}), ["labels"])
        assert updated.labels.get("x") == "1" and "e" not in updated.labels
        updated = await sn.update(replace(done, labels={"y": "2"}))  # no paths: all labels
        assert updated.labels.get("y") == "2" and "x" not in updated.labels
        assert (await sn.stat("done")).labels == updated.labels

        for path in ("name", "parent", "kind", "created_at"):
            await expect(InvalidArgument, sn.update(replace(done, parent="other"), [path]))
        await expect(InvalidArgument, sn.update(replace(done, labels={"z": "1"}), ["labels.z", "parent"]))
        assert (await sn.stat("done")).labels == updated.labels  # a failed update changes nothing
        await expect(NotFound, sn.update(replace(done, name="missing"), ["labels.y"]))

        await sn.view("view", "done", labels={"v": "1"})
        assert (await sn.stat("view")).labels.get("v") == "1"


async def check_walk_filters_by_kind_parent_labels_and_name(make_snapshotter: SnapshotterFactory) -> None:
    async with make_snapshotter() as sn:
        await sn.prepare("base-active", labels={"a": "b"})
        await sn.commit("base", "base-active", labels={"a": "b"})
        await sn.prepare("other-active")
        await sn.commit("other", "other-active", labels={"role": "other"})
        await sn.prepare("child", "base", labels={"a": "c"})
        await sn.view("look", "base")

        assert set(await walk_all(sn)) == {"base", "other", "child", "look"}
        assert set(await walk_all(sn, "kind==committed")) == {"base", "other"}
        assert set(await walk_all(sn, "kind==active")) == {"child"}
        assert set(await walk_all(sn, "kind==view")) == {"look"}
        assert set(await walk_all(sn, "parent==base")) == {"child", "look"}
        assert set(await walk_all(sn, "labels.a==b")) == {"base"}
        assert set(await walk_all(sn, "labels.a")) == {"base", "child"}
        assert set(await walk_all(sn, "name==other")) == {"other"}
        assert set(await walk_all(sn, "name~=^o")) == {"other"}
        assert set(await walk_all(sn, "name==other", "kind==view")) == {"other", "look"}  # any of them
        assert set(await walk_all(sn, "kind==active,labels.a==c")) == {"child"}  # all of these
        assert set(await walk_all(sn, "kind==active,labels.a==b")) == set()
        assert (await walk_all(sn, "name==child"))["child"].parent == "base"
        await expect(InvalidArgument, walk_all(sn, "kind=="))


@mounting
async def check_many_layers_stack_in_order(make_snapshotter: SnapshotterFactory) -> None:
    layers = 50
    async with make_snapshotter() as sn:
        parent = ""
        for n in range(layers):
            await committed(sn, f"layer-{n}", parent, {f"layer-{n}": f"{n}".encode(), "top": f"{n}".encode()})
            parent = f"layer-{n}"
        await sn.prepare("container", parent)
        tree = await tree_of(sn, "container")
        for n in range(layers):
            assert tree[f"layer-{n}"][2:] == (f"{n}",), n
        assert tree["top"][2:] == (f"{layers - 1}",)
        await sn.view("view", parent)
        assert await tree_of(sn, "view") == tree


async def check_concurrent_prepares_on_one_parent(make_snapshotter: SnapshotterFactory) -> None:
    async with make_snapshotter() as sn:
        await committed(sn, "base")
        mounts: dict[str, list[Mount]] = {}

        async def prepare(key: str) -> None:
            mounts[key] = await sn.prepare(key, "base")

        async with anyio.create_task_group() as tg:
            for n in range(20):
                tg.start_soon(prepare, f"container-{n}")
        assert set(await walk_all(sn, "parent==base")) == set(mounts) == {f"container-{n}" for n in range(20)}
        assert len({tuple(m) for m in mounts.values()}) == 20, "two active snapshots share mounts"

        outcomes: list[str] = []

        async def duplicate() -> None:
            try:
                await sn.prepare("same", "base")
                outcomes.append("created")
            except AlreadyExists:
                outcomes.append("exists")

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(duplicate)
        assert sorted(outcomes) == ["created"] + ["exists"] * 4
        assert len(await walk_all(sn, "parent==base")) == 21


async def check_errors_have_containerds_kinds_and_change_nothing(
    make_snapshotter: SnapshotterFactory,
) -> None:
    async with make_snapshotter() as sn:
        await committed(sn, "base")
        await sn.prepare("active", "base")
        await sn.view("view", "base")
        before = await walk_all(sn)

        await expect(NotFound, sn.stat("missing"))
        await expect(NotFound, sn.mounts("missing"))
        await expect(NotFound, sn.usage("missing"))
        await expect(NotFound, sn.remove("missing"))
        await expect(NotFound, sn.commit("new", "missing"))
        await expect(NotFound, sn.prepare("new", "missing"))
        await expect(NotFound, sn.view("new", "missing"))
        await expect(FailedPrecondition, sn.commit("new", "view"))
        await expect(FailedPrecondition, sn.commit("new", "base"))
        await expect(FailedPrecondition, sn.mounts("base"))
        await expect(InvalidArgument, sn.prepare("new", "active"))
        await expect(InvalidArgument, sn.prepare("new", "view"))
        await expect(InvalidArgument, sn.view("new", "active"))
        await expect(AlreadyExists, sn.prepare("active", "base"))
        await expect(AlreadyExists, sn.prepare("base"))
        await expect(AlreadyExists, sn.view("view"))
        await expect(AlreadyExists, sn.commit("base", "active"))
        await expect(FailedPrecondition, sn.remove("base"))

        assert await walk_all(sn) == before
        assert (await sn.stat("active")).kind is Kind.ACTIVE  # the failed commit kept it active


CHECKS: tuple[Check, ...] = (
    check_prepare_commit_and_view_build_a_chain,
    check_files_written_through_mounts_are_seen_by_children,
    check_deletions_in_a_child_hide_the_parents_files,
    check_a_parent_with_children_cannot_be_removed,
    check_a_chain_is_removed_from_the_top,
    check_usage_counts_what_a_snapshot_writes,
    check_labels_are_kept_and_updated_by_field_path,
    check_walk_filters_by_kind_parent_labels_and_name,
    check_many_layers_stack_in_order,
    check_concurrent_prepares_on_one_parent,
    check_errors_have_containerds_kinds_and_change_nothing,
)
"""Every check, in a stable order."""

MOUNTING_CHECKS: frozenset[Check] = frozenset(_mounting)
"""The checks in ``CHECKS`` that mount snapshots, and so need root."""


async def check_cleanup_removes_leftovers_only(
    make_snapshotter: SnapshotterFactory, plant_leftover: PlantLeftover
) -> None:
    """For backends that keep snapshots under a root: ``cleanup`` removes what ``plant_leftover``
    put there and keeps every live snapshot."""
    async with make_snapshotter() as sn:
        await committed(sn, "base")
        await sn.prepare("active", "base")
        await sn.view("view", "base")
        await committed(sn, "removed")
        await sn.remove("removed")
        leftover = plant_leftover(sn)
        assert leftover.exists()
        mounts = {key: await sn.mounts(key) for key in ("active", "view")}
        await sn.cleanup()
        assert not leftover.exists(), f"cleanup left {leftover}"
        assert set(await walk_all(sn)) == {"base", "active", "view"}
        for key, expected in mounts.items():
            assert await sn.mounts(key) == expected
        await sn.cleanup()  # nothing left to do is fine
        await sn.prepare("after", "base")


async def check_snapshotter(
    make_snapshotter: SnapshotterFactory, *, plant_leftover: PlantLeftover | None = None
) -> None:
    """Run every check (and the cleanup check when ``plant_leftover`` is given); the first failure
    propagates."""
    for check in CHECKS:
        await check(make_snapshotter)
    if plant_leftover is not None:
        await check_cleanup_removes_leftovers_only(make_snapshotter, plant_leftover)
