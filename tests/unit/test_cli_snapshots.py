"""``corral snapshots`` and the client's snapshot calls.

They run against a fake daemon: a grpclib server on a unix socket whose Snapshots service keeps each
snapshotter's snapshots in memory, answers with mounts shaped like containerd's overlayfs ones, and records
every request, so what goes on the wire (snapshotter, labels, field masks) is checked without corrald.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from click.testing import CliRunner, Result
from grpclib.const import Status as GRPCStatus
from grpclib.events import RecvRequest, listen
from grpclib.exceptions import GRPCError
from grpclib.server import Server

from corral.api.cli import cli
from corral.api.cli.snapshots import build_tree, gc_root_labels, mount_command, tree_lines, usage_size
from corral.api.client import Client, connect
from corral.api.types.containerd.services.snapshots import v1 as pb
from corral.api.types.containerd.types import Mount
from corral.api.types.google import protobuf
from corral.kernel import FailedPrecondition, NotFound

T = TypeVar("T")

GC_ROOT = "containerd.io/gc.root"
NOW = datetime(2024, 5, 1, 10, 11, 12, tzinfo=UTC)
GO_ZERO = datetime(1, 1, 1, tzinfo=UTC)
ROOT = "/var/lib/corral/snapshots/overlayfs"
SERVICE = "/containerd.services.snapshots.v1.Snapshots"

# ------------------------------------------------------------------------------ a fake daemon


@dataclass
class Snap:
    name: str
    parent: str
    kind: pb.Kind
    labels: dict[str, str] = field(default_factory=dict)
    id: int = 0
    mounts: list[Mount] = field(default_factory=list)
    size: int = 0
    inodes: int = 0


class FakeSnapshots(pb.SnapshotsBase):
    """Snapshots per snapshotter, in memory; ``requests`` holds every request in the order received."""

    def __init__(self, *snapshotters: str) -> None:
        self.stores: dict[str, dict[str, Snap]] = {name: {} for name in snapshotters or ("overlayfs",)}
        self.requests: list[Any] = []
        self.next_id = 1

    def add(
        self, name: str, parent: str = "", kind: pb.Kind = pb.Kind.COMMITTED, snapshotter: str = "overlayfs",
        **labels: str,
    ) -> Snap:  # fmt: skip
        snap = Snap(name, parent, kind, dict(labels), id=self.next_id)
        self.next_id += 1
        self.stores[snapshotter][name] = snap
        return snap

    def _store(self, snapshotter: str) -> dict[str, Snap]:
        if snapshotter not in self.stores:
            raise GRPCError(
                GRPCStatus.INVALID_ARGUMENT, f"snapshotter not loaded: {snapshotter}: invalid argument"
            )
        return self.stores[snapshotter]

    def _get(self, snapshotter: str, key: str) -> Snap:
        snap = self._store(snapshotter).get(key)
        if snap is None:
            raise GRPCError(GRPCStatus.NOT_FOUND, f"snapshot {key} does not exist: not found")
        return snap

    def _create(
        self, snapshotter: str, key: str, parent: str, labels: dict[str, str], kind: pb.Kind
    ) -> list[Mount]:
        store = self._store(snapshotter)
        if key in store:
            raise GRPCError(GRPCStatus.ALREADY_EXISTS, f"snapshot {key}: already exists")
        lower = self._get(snapshotter, parent) if parent else None
        snap = self.add(key, parent, kind, snapshotter, **labels)
        if kind == pb.Kind.VIEW and lower is not None:
            snap.mounts = [Mount(type="bind", source=f"{ROOT}/{lower.id}/fs", options=["ro", "rbind"])]
        elif lower is None:
            snap.mounts = [Mount(type="bind", source=f"{ROOT}/{snap.id}/fs", options=["rw", "rbind"])]
        else:
            snap.mounts = [
                Mount(
                    type="overlay",
                    source="overlay",
                    options=[
                        "index=off",
                        f"workdir={ROOT}/{snap.id}/work",
                        f"upperdir={ROOT}/{snap.id}/fs",
                        f"lowerdir={ROOT}/{lower.id}/fs",
                    ],
                )
            ]
        return snap.mounts

    def _info(self, snap: Snap) -> pb.Info:
        return pb.Info(
            name=snap.name, parent=snap.parent, kind=snap.kind, created_at=NOW, updated_at=GO_ZERO,
            labels=dict(snap.labels),
        )  # fmt: skip

    async def prepare(self, message: pb.PrepareSnapshotRequest) -> pb.PrepareSnapshotResponse:
        self.requests.append(message)
        mounts = self._create(
            message.snapshotter, message.key, message.parent, message.labels, pb.Kind.ACTIVE
        )
        return pb.PrepareSnapshotResponse(mounts=mounts)

    async def view(self, message: pb.ViewSnapshotRequest) -> pb.ViewSnapshotResponse:
        self.requests.append(message)
        mounts = self._create(message.snapshotter, message.key, message.parent, message.labels, pb.Kind.VIEW)
        return pb.ViewSnapshotResponse(mounts=mounts)

    async def mounts(self, message: pb.MountsRequest) -> pb.MountsResponse:
        self.requests.append(message)
        return pb.MountsResponse(mounts=self._get(message.snapshotter, message.key).mounts)

    async def commit(self, message: pb.CommitSnapshotRequest) -> protobuf.Empty:
        self.requests.append(message)
        store = self._store(message.snapshotter)
        active = self._get(message.snapshotter, message.key)
        if active.kind != pb.Kind.ACTIVE:
            raise GRPCError(GRPCStatus.FAILED_PRECONDITION, f"snapshot {message.key} is not active")
        del store[message.key]
        store[message.name] = Snap(
            message.name, active.parent, pb.Kind.COMMITTED, {**active.labels, **message.labels}, active.id
        )
        return protobuf.Empty()

    async def remove(self, message: pb.RemoveSnapshotRequest) -> protobuf.Empty:
        self.requests.append(message)
        store = self._store(message.snapshotter)
        self._get(message.snapshotter, message.key)
        if any(s.parent == message.key for s in store.values()):
            raise GRPCError(
                GRPCStatus.FAILED_PRECONDITION, "cannot remove snapshot with child: failed precondition"
            )
        del store[message.key]
        return protobuf.Empty()

    async def stat(self, message: pb.StatSnapshotRequest) -> pb.StatSnapshotResponse:
        self.requests.append(message)
        return pb.StatSnapshotResponse(info=self._info(self._get(message.snapshotter, message.key)))

    async def update(self, message: pb.UpdateSnapshotRequest) -> pb.UpdateSnapshotResponse:
        self.requests.append(message)
        assert message.info is not None and message.update_mask is not None
        snap = self._get(message.snapshotter, message.info.name)
        for path in message.update_mask.paths:
            key = path.removeprefix("labels.")
            if message.info.labels.get(key):
                snap.labels[key] = message.info.labels[key]
            else:
                snap.labels.pop(key, None)
        return pb.UpdateSnapshotResponse(info=self._info(snap))

    async def list(self, message: pb.ListSnapshotsRequest) -> AsyncIterator[pb.ListSnapshotsResponse]:
        self.requests.append(message)
        infos = [self._info(s) for s in self._store(message.snapshotter).values()]
        for start in range(0, len(infos), 2):  # small batches: the client must gather them
            yield pb.ListSnapshotsResponse(info=infos[start : start + 2])

    async def usage(self, message: pb.UsageRequest) -> pb.UsageResponse:
        self.requests.append(message)
        snap = self._get(message.snapshotter, message.key)
        return pb.UsageResponse(size=snap.size, inodes=snap.inodes)

    async def cleanup(self, message: pb.CleanupRequest) -> protobuf.Empty:
        self.requests.append(message)
        self._store(message.snapshotter)
        return protobuf.Empty()

    def sent(self, kind: type[T]) -> builtin_list[T]:
        """The requests of one type, in the order received."""
        return [r for r in self.requests if isinstance(r, kind)]


builtin_list = list


@dataclass
class Daemon:
    socket: str
    metadata: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    """The request metadata seen, per method path."""


@contextmanager
def fake_daemon(*services: Any) -> Iterator[Daemon]:
    """Serve ``services`` on a fresh unix socket from a thread of its own, recording request metadata."""
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        daemon = Daemon(os.path.join(tmp, "corral.sock"))
        loop = asyncio.new_event_loop()
        listening = threading.Event()
        servers: list[Server] = []

        async def record(event: RecvRequest) -> None:
            seen = {k: str(v) for k, v in event.metadata.items()}
            daemon.metadata.setdefault(event.method_name, []).append(seen)

        async def serve() -> None:
            server = Server(list(services))
            listen(server, RecvRequest, record)
            servers.append(server)
            await server.start(path=daemon.socket)
            listening.set()
            await server.wait_closed()

        thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
        thread.start()
        assert listening.wait(10)
        try:
            yield daemon
        finally:
            loop.call_soon_threadsafe(servers[0].close)
            thread.join(10)
            loop.close()


def run(daemon: Daemon, fn: Callable[[Client], Awaitable[T]], namespace: str = "default") -> T:
    async def conversation() -> T:
        async with connect(daemon.socket, namespace) as client:
            return await fn(client)

    return asyncio.run(conversation())


def corral(daemon: Daemon, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, ["-a", daemon.socket, *args], env=env, catch_exceptions=False)


def gc_root_moment(labels: dict[str, str]) -> datetime:
    """The gc.root label, which must be RFC 3339 in UTC to the second, as ctr writes it."""
    value = labels[GC_ROOT]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", value), value
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def image_chain(store: FakeSnapshots) -> None:
    """base <- mid <- {top, work (active)}, and an unrelated other; listed out of order on purpose."""
    store.add("work", "mid", pb.Kind.ACTIVE)
    store.add("mid", "base")
    store.add("other")
    store.add("base")
    store.add("top", "mid")


# ------------------------------------------------------------------------------ the client


def test_client_prepare_view_commit_send_snapshotter_key_parent_and_labels() -> None:
    store = FakeSnapshots("overlayfs", "native")
    store.add("base", snapshotter="native")
    with fake_daemon(store) as daemon:

        async def conversation(c: Client) -> tuple[list[Mount], list[Mount]]:
            active = await c.snapshot_prepare("native", "k1", "base", {"a": "1"})
            view = await c.snapshot_view("native", "v1", "base")
            await c.snapshot_commit("native", "c1", "k1", {"b": "2"})
            return active, view

        active, view = run(daemon, conversation, namespace="ns1")
    prepare, view_request, commit = store.requests
    assert isinstance(prepare, pb.PrepareSnapshotRequest)
    assert (prepare.snapshotter, prepare.key, prepare.parent, prepare.labels) == (
        "native",
        "k1",
        "base",
        {"a": "1"},
    )
    assert isinstance(view_request, pb.ViewSnapshotRequest)
    assert (view_request.snapshotter, view_request.key, view_request.labels) == ("native", "v1", {})
    assert isinstance(commit, pb.CommitSnapshotRequest)
    assert (commit.snapshotter, commit.name, commit.key, commit.labels) == ("native", "c1", "k1", {"b": "2"})
    assert [m.type for m in active] == ["overlay"] and [m.type for m in view] == ["bind"]
    assert store.stores["native"]["c1"].labels == {"a": "1", "b": "2"}
    for method in ("Prepare", "View", "Commit"):
        assert [md["containerd-namespace"] for md in daemon.metadata[f"{SERVICE}/{method}"]] == ["ns1"]


def test_client_list_gathers_every_batch_and_passes_filters() -> None:
    store = FakeSnapshots()
    for i in range(5):
        store.add(f"s{i}")
    with fake_daemon(store) as daemon:
        items = run(daemon, lambda c: c.snapshot_list("overlayfs", ["kind==committed"]))
    assert sorted(i.name for i in items) == [f"s{i}" for i in range(5)]
    [request] = store.sent(pb.ListSnapshotsRequest)
    assert (request.snapshotter, request.filters) == ("overlayfs", ["kind==committed"])


def test_client_update_labels_sends_a_labels_field_mask_and_leaves_out_removed_values() -> None:
    store = FakeSnapshots()
    store.add("s", keep="1", old="x")
    with fake_daemon(store) as daemon:
        info = run(daemon, lambda c: c.snapshot_update_labels("overlayfs", "s", {"new": "y", "old": ""}))
    [request] = store.sent(pb.UpdateSnapshotRequest)
    assert request.snapshotter == "overlayfs"
    assert request.info is not None and request.update_mask is not None
    assert (request.info.name, request.info.labels) == ("s", {"new": "y"})
    assert request.update_mask.paths == ["labels.new", "labels.old"]
    assert info.labels == {"keep": "1", "new": "y"}


def test_client_stat_usage_mounts_remove_cleanup_and_errors() -> None:
    store = FakeSnapshots()
    snap = store.add("s", kind=pb.Kind.ACTIVE)
    snap.size, snap.inodes, snap.mounts = 8192, 3, [Mount(type="bind", source="/x", options=["rw", "rbind"])]
    store.add("child", "s")
    with fake_daemon(store) as daemon:
        info = run(daemon, lambda c: c.snapshot_stat("overlayfs", "s"))
        usage = run(daemon, lambda c: c.snapshot_usage("overlayfs", "s"))
        mounts = run(daemon, lambda c: c.snapshot_mounts("overlayfs", "s"))
        run(daemon, lambda c: c.snapshot_cleanup("overlayfs"))
        with pytest.raises(FailedPrecondition, match="with child"):
            run(daemon, lambda c: c.snapshot_remove("overlayfs", "s"))
        run(daemon, lambda c: c.snapshot_remove("overlayfs", "child"))
        with pytest.raises(NotFound, match="snapshot nope does not exist: not found"):
            run(daemon, lambda c: c.snapshot_stat("overlayfs", "nope"))
    assert (info.name, info.kind) == ("s", pb.Kind.ACTIVE)
    assert (usage.size, usage.inodes) == (8192, 3)
    assert [(m.source, m.options) for m in mounts] == [("/x", ["rw", "rbind"])]
    assert [r.snapshotter for r in store.sent(pb.CleanupRequest)] == ["overlayfs"]
    assert list(store.stores["overlayfs"]) == ["s"]


# ------------------------------------------------------------------------------ prepare, view, commit


def test_prepare_adds_gc_root_now_in_rfc3339_and_prints_nothing() -> None:
    store = FakeSnapshots()
    store.add("base")
    with fake_daemon(store) as daemon:
        before = datetime.now(UTC).replace(microsecond=0)
        result = corral(daemon, "snapshots", "prepare", "k1", "base", "--label", "a=b")
        after = datetime.now(UTC)
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")
    [request] = store.sent(pb.PrepareSnapshotRequest)
    assert (request.snapshotter, request.key, request.parent) == ("overlayfs", "k1", "base")
    assert set(request.labels) == {"a", GC_ROOT} and request.labels["a"] == "b"
    assert before <= gc_root_moment(request.labels) <= after


def test_prepare_without_gc_root_and_without_parent() -> None:
    store = FakeSnapshots()
    with fake_daemon(store) as daemon:
        result = corral(daemon, "snapshots", "prepare", "--no-gc-root", "k1")
    assert result.exit_code == 0, result.output
    [request] = store.sent(pb.PrepareSnapshotRequest)
    assert (request.parent, request.labels) == ("", {})


def test_prepare_prints_the_mounts_as_json_or_as_commands() -> None:
    store = FakeSnapshots()
    base = store.add("base")
    with fake_daemon(store) as daemon:
        as_json = corral(daemon, "snapshots", "prepare", "k1", "base", "--mounts")
        as_commands = corral(daemon, "snapshots", "prepare", "k2", "base", "-t", "/mnt/k2")
    k1, k2 = store.stores["overlayfs"]["k1"].id, store.stores["overlayfs"]["k2"].id
    assert json.loads(as_json.stdout) == [
        {
            "type": "overlay",
            "source": "overlay",
            "target": "",
            "options": [
                "index=off",
                f"workdir={ROOT}/{k1}/work",
                f"upperdir={ROOT}/{k1}/fs",
                f"lowerdir={ROOT}/{base.id}/fs",
            ],
        }
    ]
    assert as_commands.stdout == (
        f"mount -t overlay overlay /mnt/k2 -o index=off,workdir={ROOT}/{k2}/work,"
        f"upperdir={ROOT}/{k2}/fs,lowerdir={ROOT}/{base.id}/fs\n"
    )


def test_view_and_commit_send_gc_root_too() -> None:
    store = FakeSnapshots()
    store.add("base")
    store.add("k1", "base", pb.Kind.ACTIVE)
    with fake_daemon(store) as daemon:
        before = datetime.now(UTC).replace(microsecond=0)
        viewed = corral(daemon, "snapshots", "view", "v1", "base")
        committed = corral(daemon, "snapshots", "commit", "layer-2", "k1", "--label", "x=y")
        bare = corral(daemon, "snapshots", "view", "v2", "base", "--no-gc-root")
    assert [r.exit_code for r in (viewed, committed, bare)] == [0, 0, 0]
    assert viewed.stdout == committed.stdout == ""
    view, bare_view = store.sent(pb.ViewSnapshotRequest)
    assert (view.key, view.parent, view.snapshotter) == ("v1", "base", "overlayfs")
    assert gc_root_moment(view.labels) >= before
    assert bare_view.labels == {}
    [commit] = store.sent(pb.CommitSnapshotRequest)
    assert (commit.name, commit.key, commit.snapshotter) == ("layer-2", "k1", "overlayfs")
    assert gc_root_moment(commit.labels) >= before and commit.labels["x"] == "y"
    assert store.stores["overlayfs"]["layer-2"].kind == pb.Kind.COMMITTED


def test_the_snapshotter_comes_from_the_option_or_the_environment() -> None:
    store = FakeSnapshots("overlayfs", "native", "btrfs")
    with fake_daemon(store) as daemon:
        corral(daemon, "snapshots", "--snapshotter", "native", "prepare", "a")
        corral(daemon, "snapshot", "prepare", "b", env={"CORRAL_SNAPSHOTTER": "btrfs"})
        corral(daemon, "snapshots", "prepare", "c")
        unknown = corral(daemon, "snapshots", "--snapshotter", "zfs", "ls")
    assert [(r.snapshotter, r.key) for r in store.sent(pb.PrepareSnapshotRequest)] == [
        ("native", "a"),
        ("btrfs", "b"),
        ("overlayfs", "c"),
    ]
    assert unknown.exit_code == 1
    assert unknown.stderr == "corral: snapshotter not loaded: zfs: invalid argument\n"


# ------------------------------------------------------------------------------ listings


def test_ls_table_json_quiet_and_filters() -> None:
    store = FakeSnapshots()
    image_chain(store)
    store.stores["overlayfs"]["base"].labels = {"b": "2", "a": "1"}
    with fake_daemon(store) as daemon:
        table = corral(daemon, "snapshots", "ls")
        data = json.loads(corral(daemon, "snapshots", "ls", "--format", "json").stdout)
        quiet = corral(daemon, "snapshots", "ls", "-q", "kind==active")
    assert [line.split() for line in table.stdout.splitlines()] == [
        ["KEY", "PARENT", "KIND"],
        ["base", "-", "Committed"],
        ["mid", "base", "Committed"],
        ["other", "-", "Committed"],
        ["top", "mid", "Committed"],
        ["work", "mid", "Active"],
    ]
    assert data[0] == {
        "key": "base",
        "parent": "",
        "kind": "Committed",
        "created_at": "2024-05-01T10:11:12Z",
        "updated_at": None,
        "labels": {"a": "1", "b": "2"},
    }
    assert [d["key"] for d in data] == ["base", "mid", "other", "top", "work"]
    assert quiet.stdout.split() == ["base", "mid", "other", "top", "work"]  # the fake ignores filters
    assert store.sent(pb.ListSnapshotsRequest)[-1].filters == ["kind==active"]


def test_tree_is_indented_like_ctrs() -> None:
    store = FakeSnapshots()
    image_chain(store)
    store.add("orphan", "gone")  # its parent is not listed: ctr shows the parent as a root of its own
    with fake_daemon(store) as daemon:
        text = corral(daemon, "snapshots", "tree")
        data = json.loads(corral(daemon, "snapshots", "tree", "--format", "json").stdout)
        explicit = corral(daemon, "snapshots", "--snapshotter", "overlayfs", "tree", "--format", "text")
    assert text.exit_code == 0
    assert text.stdout == (" base\n  \\_ mid\n    \\_ top\n    \\_ work\n gone\n  \\_ orphan\n other\n")
    assert data[0] == {
        "key": "base",
        "kind": "Committed",
        "children": [
            {
                "key": "mid",
                "kind": "Committed",
                "children": [
                    {"key": "top", "kind": "Committed", "children": []},
                    {"key": "work", "kind": "Active", "children": []},
                ],
            }
        ],
    }
    assert [(d["key"], d["kind"]) for d in data[1:]] == [("gone", "Unknown"), ("other", "Committed")]
    assert explicit.stdout == text.stdout


def test_tree_of_no_snapshots_prints_nothing_and_survives_a_parent_loop() -> None:
    assert tree_lines(build_tree([])) == ""
    looped = [pb.Info(name="a", parent="b"), pb.Info(name="b", parent="a"), pb.Info(name="r")]
    assert tree_lines(build_tree(looped)) == " r\n"


def test_info_prints_a_listing_by_default_like_every_command_and_json_when_asked() -> None:
    store = FakeSnapshots()
    store.add("base")
    store.add("k1", "base", pb.Kind.ACTIVE, **{GC_ROOT: "2024-05-01T10:00:00Z", "z": "1"})
    with fake_daemon(store) as daemon:
        data = json.loads(corral(daemon, "snapshots", "info", "k1", "--format", "json").stdout)
        listing = corral(daemon, "snapshots", "info", "k1").stdout
    assert data == {
        "key": "k1",
        "parent": "base",
        "kind": "Active",
        "created_at": "2024-05-01T10:11:12Z",
        "updated_at": None,
        "labels": {GC_ROOT: "2024-05-01T10:00:00Z", "z": "1"},
    }
    assert listing == (
        "Key:      k1\n"
        "Parent:   base\n"
        "Kind:     Active\n"
        "Created:  2024-05-01T10:11:12Z\n"
        "Updated:  -\n"
        "Labels:\n"
        f"  {GC_ROOT}=2024-05-01T10:00:00Z\n"
        "  z=1\n"
    )
    assert {(r.snapshotter, r.key) for r in store.sent(pb.StatSnapshotRequest)} == {("overlayfs", "k1")}


def test_usage_of_all_snapshots_or_of_one() -> None:
    store = FakeSnapshots()
    for name, size, inodes in (("b", 4096, 2), ("a", 5 * 1024 * 1024 + 300 * 1024, 120)):
        snap = store.add(name)
        snap.size, snap.inodes = size, inodes
    with fake_daemon(store) as daemon:
        every = corral(daemon, "snapshots", "usage")
        calls_for_every = [type(r).__name__ for r in store.requests]
        one = corral(daemon, "snapshots", "usage", "b", "-b")
        data = json.loads(corral(daemon, "snapshots", "usage", "--format", "json").stdout)
        missing = corral(daemon, "snapshots", "usage", "nope")
    assert calls_for_every == ["ListSnapshotsRequest", "UsageRequest", "UsageRequest"]
    assert [line.split() for line in every.stdout.splitlines()] == [
        ["KEY", "SIZE", "INODES"],
        ["a", "5.3", "MiB", "120"],
        ["b", "4.0", "KiB", "2"],
    ]
    assert [line.split() for line in one.stdout.splitlines()] == [
        ["KEY", "SIZE", "INODES"],
        ["b", "4096", "2"],
    ]
    assert data == [
        {"key": "a", "size": 5 * 1024 * 1024 + 300 * 1024, "inodes": 120},
        {"key": "b", "size": 4096, "inodes": 2},
    ]
    assert (missing.exit_code, missing.stderr) == (1, "corral: snapshot nope does not exist: not found\n")


def test_usage_sizes_read_as_ctr_shows_them() -> None:
    assert [usage_size(n) for n in (0, 1023, 1024, 1536, 10 * 1024**3, 2**70)] == [
        "0.0 B", "1023.0 B", "1.0 KiB", "1.5 KiB", "10.0 GiB", "1.0 ZiB",
    ]  # fmt: skip


# ------------------------------------------------------------------------------ mounts


def test_mounts_prints_a_runnable_mount_command_for_an_overlay() -> None:
    store = FakeSnapshots()
    base = store.add("base")
    with fake_daemon(store) as daemon:
        corral(daemon, "snapshots", "prepare", "k1", "base")
        result = corral(daemon, "snapshots", "mounts", "/mnt/rootfs", "k1")
        data = json.loads(
            corral(daemon, "snapshots", "mounts", "/mnt/rootfs", "k1", "--format", "json").stdout
        )
    k1 = store.stores["overlayfs"]["k1"].id
    assert result.exit_code == 0
    assert result.stdout == (
        f"mount -t overlay overlay /mnt/rootfs -o index=off,workdir={ROOT}/{k1}/work,"
        f"upperdir={ROOT}/{k1}/fs,lowerdir={ROOT}/{base.id}/fs\n"
    )
    assert [(d["type"], d["target"]) for d in data] == [("overlay", "/mnt/rootfs")]
    assert {(r.snapshotter, r.key) for r in store.sent(pb.MountsRequest)} == {("overlayfs", "k1")}


def test_mounts_of_a_bind_mount_has_no_type_and_the_bind_flag_first() -> None:
    store = FakeSnapshots()
    base = store.add("base")
    with fake_daemon(store) as daemon:
        corral(daemon, "snapshots", "view", "v1", "base")
        corral(daemon, "snapshots", "prepare", "fresh")
        view = corral(daemon, "snapshots", "mounts", "/mnt/v", "v1")
        fresh = corral(daemon, "snapshots", "mounts", "/mnt/f", "fresh")
    assert view.stdout == f"mount -o rbind,ro {ROOT}/{base.id}/fs /mnt/v\n"
    fresh_id = store.stores["overlayfs"]["fresh"].id
    assert fresh.stdout == f"mount -o rbind,rw {ROOT}/{fresh_id}/fs /mnt/f\n"


def test_mount_commands_quote_what_the_shell_would_split_and_join_sub_targets() -> None:
    odd = Mount(type="bind", source="/data/my dir", options=["ro", "rbind"])
    assert mount_command(odd, "/mnt/a b") == "mount -o rbind,ro '/data/my dir' '/mnt/a b'"
    assert shlex.split(mount_command(odd, "/mnt/a b")) == [
        "mount",
        "-o",
        "rbind,ro",
        "/data/my dir",
        "/mnt/a b",
    ]
    sub = Mount(type="tmpfs", source="tmpfs", target="/dev/shm", options=["nosuid", "size=64m"])
    assert mount_command(sub, "/mnt/root/") == "mount -t tmpfs tmpfs /mnt/root/dev/shm -o nosuid,size=64m"
    plain = Mount(type="bind", source="/src", options=["ro"])
    assert mount_command(plain, "/t") == "mount -o bind,ro /src /t"
    untyped = Mount(type="proc", source="", options=[])
    assert mount_command(untyped, "/t/proc") == "mount -t proc none /t/proc"


def test_mounts_of_a_missing_snapshot_is_one_line_and_exit_1() -> None:
    store = FakeSnapshots()
    with fake_daemon(store) as daemon:
        result = corral(daemon, "snapshots", "mounts", "/mnt", "nope")
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == "corral: snapshot nope does not exist: not found\n"


# ------------------------------------------------------------------------------ rm and label


def test_rm_goes_on_after_a_failure_and_exits_1() -> None:
    store = FakeSnapshots()
    store.add("a")
    store.add("b")
    store.add("parent")
    store.add("child", "parent")
    with fake_daemon(store) as daemon:
        result = corral(daemon, "snapshots", "rm", "a", "nope", "parent", "b")
    assert result.exit_code == 1
    assert result.stdout == "a\nb\n"
    assert result.stderr == (
        "corral: snapshot nope does not exist: not found\n"
        "corral: cannot remove snapshot with child: failed precondition\n"
    )
    assert sorted(store.stores["overlayfs"]) == ["child", "parent"]
    assert {r.snapshotter for r in store.sent(pb.RemoveSnapshotRequest)} == {"overlayfs"}


def test_label_sets_and_removes_with_a_field_mask() -> None:
    store = FakeSnapshots()
    store.add("s", old="1", keep="2")
    with fake_daemon(store) as daemon:
        result = corral(daemon, "snapshots", "label", "s", "new=x", "old=")
        missing = corral(daemon, "snapshots", "label", "nope", "a=b")
        bad = corral(daemon, "snapshots", "label", "s", "=v")
    assert (result.exit_code, result.stdout) == (0, "")
    request = store.sent(pb.UpdateSnapshotRequest)[0]
    assert request.update_mask is not None and request.info is not None
    assert request.update_mask.paths == ["labels.new", "labels.old"]
    assert (request.snapshotter, request.info.name, request.info.labels) == ("overlayfs", "s", {"new": "x"})
    assert store.stores["overlayfs"]["s"].labels == {"keep": "2", "new": "x"}
    assert (missing.exit_code, missing.stderr) == (1, "corral: snapshot nope does not exist: not found\n")
    assert bad.exit_code == 2 and bad.stderr.startswith("corral: invalid label '=v'")


def test_every_call_carries_the_namespace() -> None:
    store = FakeSnapshots()
    store.add("s")
    with fake_daemon(store) as daemon:
        corral(daemon, "-n", "ns9", "snapshots", "ls")
        corral(daemon, "-n", "ns9", "snapshots", "usage")
        corral(daemon, "-n", "ns9", "snapshots", "info", "s")
    seen = [md["containerd-namespace"] for calls in daemon.metadata.values() for md in calls]
    assert len(seen) == 4 and set(seen) == {"ns9"}


def test_usage_errors_and_help() -> None:
    missing = CliRunner().invoke(cli, ["snapshots", "view", "v1"])
    assert missing.exit_code == 2
    assert missing.stderr.startswith("corral: missing argument 'PARENT'")
    help_text = CliRunner().invoke(cli, ["--help"]).stdout
    assert "  snapshots " in help_text
    group_help = CliRunner().invoke(cli, ["snapshot", "--help"]).stdout
    for name in ("ls", "tree", "info", "usage", "prepare", "view", "commit", "mounts", "rm", "label"):
        assert f"  {name} " in group_help


def test_a_daemon_that_is_not_there_is_one_line() -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        socket = os.path.join(tmp, "none.sock")
        result = CliRunner().invoke(cli, ["-a", socket, "snapshots", "ls"])
    assert result.exit_code == 1
    assert result.stderr == f"corral: cannot connect to corrald at {socket}: No such file or directory\n"


def test_gc_root_is_a_fresh_timestamp_each_time() -> None:
    fixed = gc_root_labels({"a": "b"}, True, now=NOW + timedelta(microseconds=999))
    assert fixed == {"a": "b", GC_ROOT: "2024-05-01T10:11:12Z"}
    assert gc_root_labels({GC_ROOT: "mine"}, True) == {GC_ROOT: "mine"}
    assert gc_root_labels({}, False) == {}
