"""The native and overlayfs snapshotters: the snapshotter conformance suite, plus what each backend promises."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import platform
import shutil
import sqlite3
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import tooling
from tooling import require_root

from corral.kernel import (
    DaemonConfig,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    Kernel,
    NotFound,
    Platform,
    Status,
    builtin_candidate,
)
from corral.plugins.core import Mount
from corral.plugins.core.idmap import supports_idmapped_overlay
from corral.plugins.core.mount import PAGE_SIZE, temporary_mount
from corral.plugins.snapshots import Kind, Snapshotter, native, overlayfs
from corral.plugins.snapshots import conformance as cf
from corral.plugins.snapshots.native import NativeSnapshotter
from corral.plugins.snapshots.overlayfs import OverlaySnapshotter
from corral.plugins.snapshots.storage import DirectoryBackend, disk_usage, remove_tree

pytestmark = pytest.mark.anyio
NATIVE = "io.containerd.snapshotter.v1.native"
OVERLAY = "io.containerd.snapshotter.v1.overlayfs"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def mounts_under(base: Path) -> list[str]:
    with open("/proc/mounts") as mounts:
        return [line for line in mounts if f"{base}/" in line or f"{base} " in line]


@pytest.fixture(autouse=True)
def no_mounts_are_left_behind(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Nothing this test mounted stays mounted. Temporary mounts go under the test's own directory
    (not the shared /tmp), so suites running beside this one on the machine cannot be mistaken for
    its leaks."""
    scratch = tmp_path_factory.mktemp("mounts")
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    yield
    assert mounts_under(tmp_path) + mounts_under(scratch) == []


def open_backend(backend: str, root: Path) -> DirectoryBackend:
    if backend == "native":
        return NativeSnapshotter(root)
    if not overlayfs.overlay_supported():
        pytest.skip("this kernel has no overlayfs")
    return OverlaySnapshotter(root)


@pytest.fixture(params=["native", "overlayfs"])
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


PLUGINS = {"native": native.registration, "overlayfs": overlayfs.registration}


def unable(reason: str) -> None:
    """A check that cannot run here: skipped on a laptop, a failure under CI (which runs as root)."""
    if tooling.ON_CI:
        pytest.fail(f"under CI every check runs: {reason}")
    pytest.skip(reason)


def upper_of(mounts: list[Mount]) -> Path:
    """Where an active snapshot's own files go: the bind source, or the overlay upperdir."""
    (m,) = mounts
    if m.type == "bind":
        return Path(m.source)
    return Path(next(o for o in m.options if o.startswith("upperdir=")).split("=", 1)[1])


# -- the conformance suite ------------------------------------------------------------------------


@pytest.mark.parametrize("check", cf.CHECKS, ids=cf.check_name)
def test_backend_conforms(check: cf.Check, backend: str, tmp_path: Path) -> None:
    cf.run(check, PLUGINS[backend], tmp_path, skip=unable)


def test_checks_that_mount_say_they_need_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert set(cf.CHECKS) > cf.NEEDS_ROOT > set()
    for check in cf.NEEDS_ROOT:
        with pytest.raises(cf.CheckSkipped, match="needs root"):
            cf.run(check, native.registration, tmp_path)
    reasons: list[str] = []
    cf.run(next(iter(cf.NEEDS_ROOT)), native.registration, tmp_path, skip=reasons.append)
    assert reasons and "needs root" in reasons[0]


def test_a_plugin_that_skips_itself_skips_the_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(overlayfs, "overlay_supported", lambda: False)
    with pytest.raises(cf.CheckSkipped, match="overlayfs is not supported by this kernel"):
        cf.run(cf.BY_NAME["prepare_commit_and_view_build_a_chain"], overlayfs.registration, tmp_path)


def test_an_opener_stands_in_for_a_registration(tmp_path: Path) -> None:
    cf.run(cf.BY_NAME["errors_have_containerds_kinds_and_change_nothing"], NativeSnapshotter, tmp_path)


def test_check_snapshotter_runs_every_check_and_names_the_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen = (
        cf.BY_NAME["labels_are_kept_and_updated_by_field_path"],
        cf.BY_NAME["hard_links_within_a_layer_and_into_children"],
    )
    monkeypatch.setattr(cf, "CHECKS", chosen)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    skipped = cf.check_snapshotter(native.registration, tmp_path)
    assert list(skipped) == ["hard_links_within_a_layer_and_into_children"]
    assert "needs root" in skipped["hard_links_within_a_layer_and_into_children"]


# -- what both backends share ------------------------------------------------------------------------


async def test_ids_name_directories_and_are_never_reused(backend: str, tmp_path: Path) -> None:
    snapshotter = open_backend(backend, tmp_path)
    await snapshotter.prepare("first")
    first, _, _ = await snapshotter.store.get_info("first")
    assert snapshotter.directory(first).is_dir()
    await snapshotter.remove("first")
    await snapshotter.prepare("second")
    second, _, _ = await snapshotter.store.get_info("second")
    assert second > first  # a leftover directory of "first" can never pass for "second"
    await snapshotter.aclose()


async def test_commit_keeps_the_id_and_replaces_labels_as_containerd_does(
    backend: str, tmp_path: Path
) -> None:
    snapshotter = open_backend(backend, tmp_path)
    await snapshotter.prepare("active", labels={"inherited": "no"})
    active_id, active, _ = await snapshotter.store.get_info("active")
    await snapshotter.commit("done", "active", labels={"given": "yes"})
    done_id, done, _ = await snapshotter.store.get_info("done")
    assert done_id == active_id
    assert done.labels == {"given": "yes"}
    assert done.created_at is not None and active.created_at is not None
    assert done.created_at >= active.created_at
    await snapshotter.aclose()


async def test_a_restart_finds_every_snapshot_and_cleans_up_after_a_crash(
    backend: str, tmp_path: Path
) -> None:
    crashed = open_backend(backend, tmp_path)
    await crashed.prepare("base-active")
    await crashed.commit("base", "base-active")
    await crashed.prepare("container", "base")
    await crashed.prepare("doomed")
    doomed, _, _ = await crashed.store.get_info("doomed")
    # A crash after a remove's record went and before its directory did:
    with sqlite3.connect(tmp_path / "metadata.db") as db:
        db.execute("DELETE FROM snapshots WHERE key = 'doomed'")
    # ... and one in the middle of a prepare, while the new directory was being filled:
    (tmp_path / "snapshots" / "new-interrupted" / "fs").mkdir(parents=True)
    del crashed

    snapshotter = open_backend(backend, tmp_path)
    assert set(await cf.walk_all(snapshotter)) == {"base", "container"}
    await snapshotter.cleanup()
    assert not snapshotter.directory(doomed).exists()
    assert not (tmp_path / "snapshots" / "new-interrupted").exists()
    (container, _, _) = await snapshotter.store.get_info("container")
    assert sorted(os.listdir(tmp_path / "snapshots")) == sorted(["1", str(container)])
    await snapshotter.aclose()


async def test_an_id_whose_directory_a_crash_left_is_never_given_out(backend: str, tmp_path: Path) -> None:
    # A crash between a new directory's rename and its record's commit leaves the directory under
    # an id the database rolled back, and would give out again.
    first = open_backend(backend, tmp_path)
    await first.prepare("kept")
    await first.aclose()
    (tmp_path / "snapshots" / "2" / "fs").mkdir(parents=True)
    (tmp_path / "snapshots" / "2" / "fs" / "stale").write_text("from before the crash")
    snapshotter = open_backend(backend, tmp_path)
    mounts = await snapshotter.prepare("after-the-crash")
    assert upper_of(mounts).parent.name != "2" and "snapshots/2/" not in upper_of(mounts).as_posix() + "/"
    assert not (upper_of(mounts) / "stale").exists()
    await snapshotter.cleanup()
    assert sorted(os.listdir(tmp_path / "snapshots")) == ["1", "3"]
    await snapshotter.aclose()


def test_usage_walks_paths_longer_than_any_the_host_can_name(tmp_path: Path) -> None:
    components = [f"{n:02d}".ljust(255, "x") for n in range(20)]  # 5,120 bytes below tmp_path
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        for name in components:
            os.mkdir(name, dir_fd=fd)
            inner = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
        file = os.open("deepest", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(file, b"x" * 10_000)
        os.close(file)
    finally:
        os.close(fd)
    usage = disk_usage(tmp_path)
    assert usage.inodes == 1 + len(components) + 1
    assert usage.size >= 10_000
    remove_tree(tmp_path / components[0])


async def test_update_refuses_fields_other_than_labels(backend: str, tmp_path: Path) -> None:
    snapshotter = open_backend(backend, tmp_path)
    await snapshotter.prepare("active", labels={"a": "1"})
    info = await snapshotter.stat("active")
    with pytest.raises(InvalidArgument, match='cannot update "kind" field on snapshot "active"'):
        await snapshotter.update(dataclasses.replace(info, kind=Kind.VIEW), ["kind"])
    assert (await snapshotter.stat("active")).labels == {"a": "1"}
    await snapshotter.aclose()


def test_host_platform_uses_containerds_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    for machine, expected in (
        ("x86_64", Platform("linux", "amd64")),
        ("aarch64", Platform("linux", "arm64", "v8")),
        ("armv7l", Platform("linux", "arm", "v7")),
        ("s390x", Platform("linux", "s390x")),
    ):
        monkeypatch.setattr(platform, "machine", lambda machine=machine: machine)
        assert Platform.host() == expected


def test_both_snapshotters_are_declared_as_entry_points() -> None:
    declared = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="corral.plugins")}
    assert declared[NATIVE] == "corral.plugins.snapshots.native:registration"
    assert declared[OVERLAY] == "corral.plugins.snapshots.overlayfs:registration"


# -- native ---------------------------------------------------------------------------------------


def replace_cp(monkeypatch: pytest.MonkeyPatch, program: str) -> None:
    """Make the native snapshotter run ``program`` where it runs cp."""
    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: program if name == "cp" else which(name))


async def test_native_mounts_are_rbind_of_the_snapshot_directory(tmp_path: Path) -> None:
    snapshotter = NativeSnapshotter(tmp_path)
    snapshots = tmp_path / "snapshots"
    assert await snapshotter.prepare("active") == [Mount("bind", f"{snapshots}/1", ("rbind", "rw"))]
    await snapshotter.commit("base", "active")
    assert await snapshotter.view("view", "base") == [Mount("bind", f"{snapshots}/2", ("rbind", "ro"))]
    assert await snapshotter.prepare("child", "base") == [Mount("bind", f"{snapshots}/3", ("rbind", "rw"))]
    assert await snapshotter.mounts("view") == [Mount("bind", f"{snapshots}/2", ("rbind", "ro"))]
    assert stat.S_IMODE((snapshots / "1").stat().st_mode) == 0o755
    await snapshotter.aclose()


async def test_native_copies_keep_owners_modes_links_devices_xattrs_and_times(tmp_path: Path) -> None:
    require_root()
    snapshotter = NativeSnapshotter(tmp_path)
    parent = upper_of(await snapshotter.prepare("active"))

    def populate() -> None:
        (parent / "bin").mkdir()
        tool = parent / "bin" / "tool"
        tool.write_bytes(b"#!/bin/sh\n")
        os.chown(tool, 1234, 5678)
        tool.chmod(0o4755)
        os.link(tool, parent / "bin" / "hardlink")
        (parent / "symlink").symlink_to("bin/tool")
        os.mknod(parent / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.mkfifo(parent / "fifo", 0o600)
        os.setxattr(parent / "bin", "trusted.overlay.opaque", b"y")
        os.setxattr(tool, "user.origin", b"layer")
        os.utime(tool, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
        os.chown(parent, 42, 42)
        parent.chmod(0o751)

    await anyio.to_thread.run_sync(populate)
    await snapshotter.commit("base", "active")
    child = upper_of(await snapshotter.prepare("child", "base"))

    tool = (child / "bin" / "tool").lstat()
    assert (tool.st_uid, tool.st_gid, stat.S_IMODE(tool.st_mode)) == (1234, 5678, 0o4755)
    assert tool.st_mtime_ns == 1_000_000_000_000_000_000
    assert (child / "bin" / "hardlink").lstat().st_ino == tool.st_ino
    assert tool.st_ino != (parent / "bin" / "tool").lstat().st_ino  # a copy, not the parent's file
    assert os.readlink(child / "symlink") == "bin/tool"
    null = (child / "null").lstat()
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    assert stat.S_ISFIFO((child / "fifo").lstat().st_mode)
    assert os.getxattr(child / "bin", "trusted.overlay.opaque") == b"y"
    assert os.getxattr(child / "bin" / "tool", "user.origin") == b"layer"
    root = child.lstat()
    assert (root.st_uid, root.st_gid, stat.S_IMODE(root.st_mode)) == (42, 42, 0o751)
    await snapshotter.aclose()


async def test_native_remove_deletes_the_directory_with_the_record(tmp_path: Path) -> None:
    snapshotter = NativeSnapshotter(tmp_path)
    directory = upper_of(await snapshotter.prepare("active"))
    (directory / "file").write_bytes(b"data")
    await snapshotter.remove("active")
    assert not directory.exists()
    await snapshotter.aclose()


async def test_native_failed_copy_leaves_no_record_and_no_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshotter = NativeSnapshotter(tmp_path)
    await snapshotter.prepare("active")
    await snapshotter.commit("base", "active")
    replace_cp(monkeypatch, "/bin/false")
    with pytest.raises(Internal, match="copying snapshot 1"):
        await snapshotter.prepare("child", "base")
    with pytest.raises(NotFound):
        await snapshotter.stat("child")
    assert os.listdir(tmp_path / "snapshots") == ["1"]
    await snapshotter.aclose()


async def test_native_prepare_cancelled_mid_copy_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshotter = NativeSnapshotter(tmp_path / "root")
    parent = upper_of(await snapshotter.prepare("active"))
    (parent / "file").write_bytes(b"x")
    await snapshotter.commit("base", "active")
    slow_cp = tmp_path / "slow-cp"  # copies, then dawdles: the cancellation lands mid-"copy"
    slow_cp.write_text('#!/bin/sh\ncp "$@" && exec sleep 30\n')
    slow_cp.chmod(0o755)
    replace_cp(monkeypatch, str(slow_cp))
    with anyio.move_on_after(0.5) as scope:
        await snapshotter.prepare("child", "base")
    assert scope.cancelled_caught
    with pytest.raises(NotFound):
        await snapshotter.stat("child")
    assert os.listdir(tmp_path / "root" / "snapshots") == ["1"]
    monkeypatch.undo()
    assert os.listdir(upper_of(await snapshotter.prepare("child", "base"))) == ["file"]  # the key is free
    await snapshotter.aclose()


# -- overlayfs ------------------------------------------------------------------------------------


@pytest.fixture
def overlay_root(tmp_path: Path) -> Path:
    if not overlayfs.overlay_supported():
        pytest.skip("this kernel has no overlayfs")
    return tmp_path / "overlay"


async def test_overlay_mounts_have_containerds_shapes(overlay_root: Path) -> None:
    snapshotter = OverlaySnapshotter(overlay_root, index_off=True, mount_options=("volatile",))
    s = f"{overlay_root}/snapshots"
    assert await snapshotter.prepare("base-active") == [Mount("bind", f"{s}/1/fs", ("rw", "rbind"))]
    assert await snapshotter.view("empty") == [Mount("bind", f"{s}/2/fs", ("ro", "rbind"))]
    await snapshotter.commit("base", "base-active")
    assert await snapshotter.view("one-parent", "base") == [Mount("bind", f"{s}/1/fs", ("ro", "rbind"))]
    assert await snapshotter.prepare("child", "base") == [
        Mount(
            "overlay",
            "overlay",
            ("index=off", f"workdir={s}/4/work", f"upperdir={s}/4/fs", f"lowerdir={s}/1/fs", "volatile"),
        )
    ]
    await snapshotter.commit("mid", "child")
    assert await snapshotter.prepare("top", "mid") == [
        Mount(
            "overlay",
            "overlay",
            (
                "index=off",
                f"workdir={s}/5/work",
                f"upperdir={s}/5/fs",
                f"lowerdir={s}/4/fs:{s}/1/fs",
                "volatile",
            ),
        )
    ]
    assert await snapshotter.view("two-parents", "mid") == [
        Mount("overlay", "overlay", ("index=off", f"lowerdir={s}/4/fs:{s}/1/fs", "volatile"))
    ]
    assert await snapshotter.mounts("top") == await snapshotter.mounts("top")
    layer = overlay_root / "snapshots" / "5"
    assert sorted(os.listdir(layer)) == ["fs", "work"]
    assert stat.S_IMODE((layer / "fs").stat().st_mode) == 0o755
    assert stat.S_IMODE((layer / "work").stat().st_mode) == 0o711
    await snapshotter.aclose()


async def test_index_off_is_passed_only_when_the_kernel_knows_the_option(
    overlay_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parameter = tmp_path / "parameters" / "index"
    monkeypatch.setattr(overlayfs, "INDEX_PARAMETER", parameter)
    for present in (False, True):
        if present:
            parameter.parent.mkdir()
            parameter.write_text("N\n")
        snapshotter = OverlaySnapshotter(overlay_root / str(present))
        await snapshotter.prepare("base-active")
        await snapshotter.commit("base", "base-active")
        (mount,) = await snapshotter.prepare("child", "base")
        assert ("index=off" in mount.options) is present
        assert mount.options[int(present)].startswith("workdir=")
        await snapshotter.aclose()


async def test_a_200_layer_chain_mounts_through_lowerdir_compaction(overlay_root: Path) -> None:
    require_root()
    snapshotter = OverlaySnapshotter(overlay_root)
    parent = ""
    for n in range(200):
        upper = upper_of(await snapshotter.prepare(f"layer-{n}-active", parent))
        (upper / f"layer-{n}").write_text(str(n))
        (upper / "top").write_text(str(n))
        await snapshotter.commit(f"layer-{n}", f"layer-{n}-active")
        parent = f"layer-{n}"
    mounts = await snapshotter.prepare("container", parent)
    assert len(",".join(mounts[0].options)) > PAGE_SIZE  # too long to mount as it is
    async with temporary_mount(mounts) as root:
        assert (root / "layer-0").read_text() == "0"
        assert (root / "layer-199").read_text() == "199"
        assert (root / "top").read_text() == "199"
        (root / "written").write_text("up")
    assert (upper_of(mounts) / "written").read_text() == "up"
    await snapshotter.aclose()


async def test_500_lower_layers_mount_and_a_501st_is_refused(overlay_root: Path) -> None:
    require_root()
    assert overlayfs.MAX_LOWER_LAYERS == 500  # the kernel's OVL_MAX_STACK
    snapshotter = OverlaySnapshotter(overlay_root)
    parent = ""
    for n in range(501):
        upper = upper_of(await snapshotter.prepare(f"active-{n}", parent))
        (upper / f"layer-{n}").write_text(str(n))
        await snapshotter.commit(f"layer-{n}", f"active-{n}")
        parent = f"layer-{n}"
    mounts = await snapshotter.view("500-lowers", "layer-499")
    async with temporary_mount(mounts) as root:
        assert (root / "layer-0").read_text() == "0"
        assert (root / "layer-499").read_text() == "499"
    entries = sorted(os.listdir(overlay_root / "snapshots"))
    for create in (snapshotter.prepare, snapshotter.view):
        with pytest.raises(
            InvalidArgument, match="mounts at most 500 lower layers; this parent chain has 501"
        ):
            await create("too-deep", "layer-500")
    with pytest.raises(NotFound):
        await snapshotter.stat("too-deep")
    assert sorted(os.listdir(overlay_root / "snapshots")) == entries  # a refusal leaves nothing behind
    await snapshotter.aclose()


async def test_upperdir_label_names_the_layer_directory(overlay_root: Path) -> None:
    labelled = OverlaySnapshotter(overlay_root / "labelled", upperdir_label=True)
    await labelled.prepare("active", labels={"a": "1"})
    fs = str(overlay_root / "labelled" / "snapshots" / "1" / "fs")
    expected = {"a": "1", overlayfs.UPPERDIR_LABEL: fs}
    assert (await labelled.stat("active")).labels == expected
    assert (await cf.walk_all(labelled))["active"].labels == expected
    info = await labelled.update(
        dataclasses.replace(await labelled.stat("active"), labels={"b": "2"}), ["labels.b"]
    )
    assert info.labels == {**expected, "b": "2"}
    await labelled.aclose()

    plain = OverlaySnapshotter(overlay_root / "plain")
    await plain.prepare("active", labels={"a": "1"})
    assert (await plain.stat("active")).labels == {"a": "1"}
    await plain.aclose()


async def test_remove_leaves_the_directory_to_cleanup_unless_sync_remove(overlay_root: Path) -> None:
    deferred = OverlaySnapshotter(overlay_root / "deferred")
    directory = upper_of(await deferred.prepare("active")).parent
    await deferred.remove("active")
    with pytest.raises(NotFound):
        await deferred.stat("active")
    assert directory.exists()
    await deferred.cleanup()
    assert not directory.exists()
    await deferred.aclose()

    synchronous = OverlaySnapshotter(overlay_root / "sync", sync_remove=True)
    directory = upper_of(await synchronous.prepare("active")).parent
    await synchronous.remove("active")
    assert not directory.exists()
    await synchronous.aclose()


async def test_a_layer_counts_only_what_it_adds(overlay_root: Path) -> None:
    snapshotter = OverlaySnapshotter(overlay_root)
    (upper_of(await snapshotter.prepare("base-active")) / "big").write_bytes(os.urandom(1024 * 1024))
    await snapshotter.commit("base", "base-active")
    (upper_of(await snapshotter.prepare("child-active", "base")) / "small").write_bytes(b"x")
    active = await snapshotter.usage("child-active")
    await snapshotter.commit("child", "child-active")
    assert (await snapshotter.usage("child")) == active
    assert active.size < 1024 * 1024 and active.inodes == 2  # fs/ and small
    assert (await snapshotter.usage("base")).size >= 1024 * 1024
    await snapshotter.aclose()


async def test_a_layer_root_takes_its_parents_owner(overlay_root: Path) -> None:
    require_root()
    snapshotter = OverlaySnapshotter(overlay_root)
    os.chown(upper_of(await snapshotter.prepare("base-active")), 1000, 1001)
    await snapshotter.commit("base", "base-active")
    child = upper_of(await snapshotter.prepare("child", "base")).lstat()
    assert (child.st_uid, child.st_gid) == (1000, 1001)
    await snapshotter.aclose()


async def test_mounting_a_committed_snapshot_is_a_failed_precondition(overlay_root: Path) -> None:
    snapshotter = OverlaySnapshotter(overlay_root)
    await snapshotter.prepare("active")
    await snapshotter.commit("base", "active")
    with pytest.raises(FailedPrecondition, match="committed"):
        await snapshotter.mounts("base")
    await snapshotter.aclose()


def test_overlay_support_is_read_from_proc_filesystems(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    filesystems = tmp_path / "filesystems"
    monkeypatch.setattr(overlayfs, "FILESYSTEMS", filesystems)
    assert not overlayfs.overlay_supported()  # unreadable
    filesystems.write_text("nodev\tsysfs\n\text4\nnodev\toverlayfs-not\n")
    assert not overlayfs.overlay_supported()
    filesystems.write_text("nodev\tsysfs\nnodev\toverlay\n\text4\n")
    assert overlayfs.overlay_supported()


def test_d_type_is_detected_on_the_test_filesystem(tmp_path: Path) -> None:
    assert overlayfs.supports_d_type(tmp_path)
    assert os.listdir(tmp_path) == []  # the probe cleans up after itself


# -- the plugins ----------------------------------------------------------------------------------


def kernel_for(tmp_path: Path, uri: str, section: dict[str, object] | None = None) -> Kernel:
    config = DaemonConfig(root=str(tmp_path / "root"), state=str(tmp_path / "state"))
    config = dataclasses.replace(config, plugins={uri: section or {}})
    reg = native.registration if uri == NATIVE else overlayfs.registration
    return Kernel(config, candidates=[builtin_candidate(reg)])


@pytest.mark.parametrize("uri", [NATIVE, OVERLAY])
async def test_the_plugin_exports_its_root_and_serves_the_host_platform(uri: str, tmp_path: Path) -> None:
    if uri == OVERLAY and not overlayfs.overlay_supported():
        pytest.skip("this kernel has no overlayfs")
    kernel = kernel_for(tmp_path, uri)
    async with kernel.running():
        record = kernel.get(uri)
        assert record is not None and record.ok, record
        assert record.meta.exports == {"root": str(tmp_path / "root" / uri)}
        assert record.meta.platforms == [Platform.host()]
        # containerd's overlay snapshotter announces "remap-ids" where the kernel idmaps its layers.
        remaps = uri == OVERLAY and await supports_idmapped_overlay()
        assert record.meta.capabilities == (["remap-ids"] if remaps else [])
        assert isinstance(record.instance, Snapshotter)
        await record.instance.prepare("works")
    assert (tmp_path / "root" / uri / "metadata.db").is_file()


@pytest.mark.parametrize("uri", [NATIVE, OVERLAY])
async def test_root_path_moves_the_snapshots(uri: str, tmp_path: Path) -> None:
    if uri == OVERLAY and not overlayfs.overlay_supported():
        pytest.skip("this kernel has no overlayfs")
    elsewhere = tmp_path / "elsewhere"
    kernel = kernel_for(tmp_path, uri, {"root_path": str(elsewhere)})
    async with kernel.running():
        record = kernel.get(uri)
        assert record is not None and record.ok, record
        assert record.meta.exports["root"] == str(elsewhere)
        await record.instance.prepare("works")
    assert (elsewhere / "metadata.db").is_file()
    assert (elsewhere / "snapshots" / "1").is_dir()


async def test_overlay_config_reaches_the_snapshotter(tmp_path: Path) -> None:
    if not overlayfs.overlay_supported():
        pytest.skip("this kernel has no overlayfs")
    section: dict[str, object] = {"upperdir_label": True, "sync_remove": True, "mount_options": ["volatile"]}
    kernel = kernel_for(tmp_path, OVERLAY, section)
    async with kernel.running():
        record = kernel.get(OVERLAY)
        assert record is not None and record.ok, record
        snapshotter = record.instance
        assert isinstance(snapshotter, OverlaySnapshotter)
        assert (snapshotter.upperdir_label, snapshotter.remove_directories) == (True, True)
        assert snapshotter.mount_options == ("volatile",)


async def test_overlay_is_skipped_where_the_kernel_lacks_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(overlayfs, "overlay_supported", lambda: False)
    kernel = kernel_for(tmp_path, OVERLAY)
    async with kernel.running():
        record = kernel.get(OVERLAY)
        assert record is not None
        assert record.status is Status.SKIP
        assert "overlayfs is not supported by this kernel" in record.reason
    assert not (tmp_path / "root" / OVERLAY / "metadata.db").exists()


async def test_overlay_fails_on_a_filesystem_without_d_type(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(overlayfs, "overlay_supported", lambda: True)
    monkeypatch.setattr(overlayfs, "supports_d_type", lambda path: False)
    kernel = kernel_for(tmp_path, OVERLAY)
    async with kernel.running():
        record = kernel.get(OVERLAY)
        assert record is not None
        assert record.status is Status.ERROR  # broken, not "not for this machine"
        assert "does not support d_type" in record.reason
        assert "ftype=1" in record.reason
