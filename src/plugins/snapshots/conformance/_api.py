"""Checks of the Snapshotter calls themselves: chains, kinds, times, labels, walk, removal, errors.

None of them mounts anything, so they run without root.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import anyio

from corral.kernel import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from corral.plugins.core import Mount
from corral.plugins.snapshots import Kind, Snapshotter
from corral.plugins.snapshots.conformance._subject import Subject, close
from corral.plugins.snapshots.conformance._trees import committed, expect, walk_all

CLOCK_SLACK = timedelta(milliseconds=1)
"""Times are compared at microseconds; a float conversion may round one."""


async def check_prepare_commit_and_view_build_a_chain(subject: Subject) -> None:
    async with subject.open() as sn:
        assert isinstance(sn, Snapshotter)
        mounts = await sn.prepare("base-active")
        assert mounts and all(isinstance(m, Mount) for m in mounts), f"prepare returned {mounts!r}"
        assert await sn.mounts("base-active") == mounts, "mounts differ from what prepare returned"
        info = await sn.stat("base-active")
        assert (info.name, info.kind, info.parent) == ("base-active", Kind.ACTIVE, "")

        await sn.commit("base", "base-active")
        await expect(NotFound, sn.stat("base-active"))
        base = await sn.stat("base")
        assert (base.name, base.kind, base.parent) == ("base", Kind.COMMITTED, "")

        await sn.prepare("child-active", "base")
        child = await sn.stat("child-active")
        assert (child.kind, child.parent) == (Kind.ACTIVE, "base")
        await sn.commit("child", "child-active")
        assert (await sn.stat("child")).parent == "base"
        # Transitivity: the grandparent is reached through the parent.
        assert (await sn.stat((await sn.stat("child")).parent)).parent == ""

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


async def check_stat_and_walk_agree_and_times_are_set(subject: Subject) -> None:
    async with subject.open() as sn:
        before = datetime.now(UTC)
        await sn.prepare("c1-active")
        await sn.commit("c1", "c1-active")
        await sn.prepare("c2-active", "c1")
        await sn.commit("c2", "c2-active")
        await sn.prepare("a1", "c2")
        await sn.prepare("a2")
        await sn.view("v1", "c2")
        await sn.view("v2")
        after = datetime.now(UTC)
        expected = {
            "c1": (Kind.COMMITTED, ""),
            "c2": (Kind.COMMITTED, "c1"),
            "a1": (Kind.ACTIVE, "c2"),
            "a2": (Kind.ACTIVE, ""),
            "v1": (Kind.VIEW, "c2"),
            "v2": (Kind.VIEW, ""),
        }
        walked = await walk_all(sn)
        assert set(walked) == set(expected)
        for name, (kind, parent) in expected.items():
            info = await sn.stat(name)
            assert walked[name] == info, f"walk and stat disagree on {name}: {walked[name]} != {info}"
            assert (info.name, info.kind, info.parent) == (name, kind, parent), info
            assert info.created_at is not None and info.updated_at is not None, f"{name} has no times"
            assert before - CLOCK_SLACK <= info.created_at <= after + CLOCK_SLACK, (
                f"{name} created at {info.created_at}, not between {before} and {after}"
            )
            assert info.created_at == info.updated_at, f"{name} was updated before anything changed it"

            started = datetime.now(UTC)
            updated = await sn.update(replace(info, parent="does-not-exist", labels={"l1": "v1"}))
            ended = datetime.now(UTC)
            assert (updated.name, updated.kind, updated.parent) == (name, kind, parent), updated
            assert updated.labels.get("l1") == "v1"
            assert updated.created_at == info.created_at, f"updating {name} changed its creation time"
            assert updated.updated_at is not None
            assert started - CLOCK_SLACK <= updated.updated_at <= ended + CLOCK_SLACK, (
                f"{name} updated at {updated.updated_at}, not between {started} and {ended}"
            )
            assert await sn.stat(name) == updated


async def check_labels_are_kept_and_updated_by_field_path(subject: Subject) -> None:
    async with subject.open() as sn:
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


async def check_walk_filters_by_kind_parent_labels_and_name(subject: Subject) -> None:
    root = {"containerd.io/gc.root": "check-walk"}
    async with subject.open() as sn:
        await sn.prepare("a-np", labels=root)
        await sn.prepare("p-tmp", labels=root)
        await sn.commit("p", "p-tmp", labels=root)
        await sn.prepare("a", "p", labels=root)
        await sn.view("v", "p", labels=root)
        await sn.prepare("p-wl-tmp", labels=root)
        await sn.commit("p-wl", "p-wl-tmp", labels={"l": "1", **root})
        await sn.prepare("a-wl", "p-wl", labels={"l": "2", **root})
        await sn.view("v-wl", "p-wl", labels={"l": "3", **root})
        await sn.prepare("a-np-wl", labels={"l": "2", **root})
        await sn.prepare("unrooted")

        everything = {"a-np", "p", "a", "v", "p-wl", "a-wl", "v-wl", "a-np-wl", "unrooted"}
        cases: list[tuple[tuple[str, ...], set[str]]] = [
            ((), everything),
            (('labels."containerd.io/gc.root"==check-walk',), everything - {"unrooted"}),
            (('kind==active,labels."containerd.io/gc.root"==check-walk',), {"a-np", "a", "a-wl", "a-np-wl"}),
            (('kind==view,labels."containerd.io/gc.root"==check-walk',), {"v", "v-wl"}),
            (('kind==committed,labels."containerd.io/gc.root"==check-walk',), {"p", "p-wl"}),
            (("name==p", "name==a-np-wl"), {"p", "a-np-wl"}),  # any of them
            (("name==a-wl,labels.l",), {"a-wl"}),  # all of these
            (("parent==p",), {"a", "v"}),
            (('parent!="",labels."containerd.io/gc.root"==check-walk',), {"a", "v", "a-wl", "v-wl"}),
            (("labels.l",), {"p-wl", "a-wl", "v-wl", "a-np-wl"}),
            (("labels.l==2",), {"a-wl", "a-np-wl"}),
            (("name~=^a-np",), {"a-np", "a-np-wl"}),
            (("kind==active,labels.l==1",), set()),
        ]
        for filters, matches in cases:
            assert set(await walk_all(sn, *filters)) == matches, f"walk {list(filters)}"
        assert (await walk_all(sn, "name==a-wl"))["a-wl"].parent == "p-wl"
        await expect(InvalidArgument, walk_all(sn, "kind=="))


async def check_a_parent_with_children_cannot_be_removed(subject: Subject) -> None:
    async with subject.open() as sn:
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


async def check_a_chain_is_removed_from_the_top_and_keys_are_reused(subject: Subject) -> None:
    async with subject.open() as sn:
        await committed(sn, "base")
        await committed(sn, "mid", "base")
        await sn.prepare("top", "mid")
        await sn.view("look", "mid")
        await expect(FailedPrecondition, sn.remove("mid"))
        for key in ("top", "look", "mid", "base"):
            await sn.remove(key)
            await expect(NotFound, sn.stat(key))
        assert await walk_all(sn) == {}
        # Keys of removed snapshots can be used again, whatever they were.
        await committed(sn, "committed-1")
        await sn.prepare("reuse-1", "committed-1")
        await sn.remove("reuse-1")
        await sn.view("reuse-1", "committed-1")
        await sn.remove("reuse-1")
        await sn.prepare("reuse-1")
        await sn.remove("committed-1")
        await sn.commit("committed-1", "reuse-1")
        assert (await sn.stat("committed-1")).parent == ""


async def check_concurrent_prepares_on_one_parent(subject: Subject) -> None:
    async with subject.open() as sn:
        await committed(sn, "base")
        mounts: dict[str, list[Mount]] = {}

        async def create(key: str) -> None:
            make = sn.view if key.startswith("view") else sn.prepare
            mounts[key] = await make(key, "base")

        keys = {f"container-{n}" for n in range(16)} | {f"view-{n}" for n in range(4)}
        async with anyio.create_task_group() as tg:
            for key in sorted(keys):
                tg.start_soon(create, key)
        assert set(await walk_all(sn, "parent==base")) == set(mounts) == keys
        active = [tuple(m) for key, m in mounts.items() if key.startswith("container")]
        assert len(set(active)) == len(active), "two active snapshots share mounts"

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
        assert sorted(outcomes) == ["created"] + ["exists"] * 4, outcomes
        assert len(await walk_all(sn, "parent==base")) == len(keys) + 1

        # Removing concurrently is as safe as creating.
        async with anyio.create_task_group() as tg:
            for key in sorted(keys):
                tg.start_soon(sn.remove, key)
        assert set(await walk_all(sn)) == {"base", "same"}


async def check_errors_have_containerds_kinds_and_change_nothing(subject: Subject) -> None:
    async with subject.open() as sn:
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
        await expect(AlreadyExists, sn.view("active", "base"))
        await expect(AlreadyExists, sn.commit("base", "active"))
        await expect(FailedPrecondition, sn.remove("base"))

        assert await walk_all(sn) == before, "a failed call changed the snapshots"
        assert (await sn.stat("active")).kind is Kind.ACTIVE  # the failed commit kept it active


async def check_cleanup_keeps_every_live_snapshot(subject: Subject) -> None:
    async with subject.open() as sn:
        await committed(sn, "base")
        await sn.prepare("active", "base")
        await sn.view("view", "base")
        await committed(sn, "removed")
        await sn.remove("removed")
        before = await walk_all(sn)
        mounts = {key: await sn.mounts(key) for key in ("active", "view")}
        await sn.cleanup()
        await sn.cleanup()  # nothing left to do is fine
        assert await walk_all(sn) == before
        for key, expected in mounts.items():
            assert await sn.mounts(key) == expected
        await sn.prepare("after", "base")


async def check_closing_twice_is_harmless(subject: Subject) -> None:
    root = subject.new_root()
    async with subject.open(root) as sn:
        await committed(sn, "closed-twice")
        await sn.remove("closed-twice")
        await close(sn)
        await close(sn)  # and the kernel, or the block's end, closes it a third time
    async with subject.open(root) as sn:  # and it opens again on the same root
        assert await walk_all(sn) == {}
