"""The btrfs snapshotter on a loop-mounted btrfs: the snapshotter conformance suite, and its skip."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import tooling
from loop_filesystems import assert_no_loop_device_under, loop_btrfs

from corral.plugins.core.mount import temporary_mount
from corral.plugins.snapshots import conformance as cf
from corral.plugins.snapshots.btrfs import BtrfsSnapshotter, mount_of, subvolumes
from corral.plugins.snapshots.btrfs import plugin as btrfs_plugin


def unable(reason: str) -> None:
    if tooling.ON_CI:
        pytest.fail(f"under CI every check runs: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def btrfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    where = tmp_path_factory.mktemp("btrfs")
    with loop_btrfs(where) as mounted:
        yield mounted
    assert_no_loop_device_under(where)


@pytest.fixture
def scratch(btrfs: Path, request: pytest.FixtureRequest) -> Path:
    path = btrfs / request.node.name.replace("/", "_")[:100]
    path.mkdir()
    return path


@pytest.mark.parametrize("check", cf.CHECKS, ids=cf.check_name)
def test_btrfs_conforms(check: cf.Check, scratch: Path) -> None:
    cf.run(check, btrfs_plugin.registration, scratch, skip=unable)


# -- skipped, and why ---------------------------------------------------------------------------------


def skip_reason(tmp_path: Path) -> str:
    reasons: list[str] = []
    cf.run(cf.BY_NAME["closing_twice_is_harmless"], btrfs_plugin.registration, tmp_path, skip=reasons.append)
    assert reasons, "the btrfs snapshotter started"
    return reasons[0]


def test_skipped_where_the_root_is_not_on_btrfs(tmp_path: Path) -> None:
    fstype = mount_of(tmp_path).fstype
    if fstype == "btrfs":
        pytest.skip(f"{tmp_path} is on btrfs")
    reason = skip_reason(tmp_path)
    assert f"({fstype}) must be a btrfs filesystem to be used with the btrfs snapshotter" in reason


def test_skipped_where_the_kernel_has_no_btrfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    filesystems = tmp_path / "filesystems"
    filesystems.write_text("nodev\tsysfs\n\text4\n\terofs\n")
    monkeypatch.setattr(subvolumes, "FILESYSTEMS", filesystems)
    monkeypatch.setenv("PATH", str(tmp_path / "no-modprobe-here"))
    assert "btrfs is not supported by this kernel" in skip_reason(tmp_path)


def test_skipped_without_btrfs_progs(scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(scratch / "no-btrfs-here"))
    assert "btrfs not found in PATH (Debian's btrfs-progs)" in skip_reason(scratch)


# -- what btrfs adds --------------------------------------------------------------------------------


def test_mounts_name_the_device_and_subvolume_and_usage_counts_only_a_childs_own_changes(
    scratch: Path,
) -> None:
    mib = 1 << 20

    async def scenario() -> None:
        device = mount_of(scratch).source
        sn = BtrfsSnapshotter(scratch / "root", device)
        try:
            (active,) = await sn.prepare("base-active")
            assert (active.type, active.source) == ("btrfs", device)
            assert active.options[0].startswith("subvolid=") and "ro" not in active.options
            async with temporary_mount([active]) as root:
                (root / "big").write_bytes(os.urandom(4 * mib))
            await sn.commit("base", "base-active")
            await sn.prepare("child", "base")
            async with temporary_mount(await sn.mounts("child")) as root:
                assert (root / "big").stat().st_size == 4 * mib
                (root / "small").write_bytes(os.urandom(mib))
            usage = await sn.usage("child")
            assert mib <= usage.size < 2 * mib, usage  # the parent's 4 MiB are not the child's
            assert usage.inodes >= 1
            await sn.commit("child-layer", "child")
            assert (await sn.usage("child-layer")) == usage
            (view,) = await sn.view("look", "child-layer")
            assert "ro" in view.options
            async with temporary_mount([view]) as root:
                with pytest.raises(OSError, match="Read-only file system"):
                    (root / "nope").write_bytes(b"x")
        finally:
            await sn.aclose()

    anyio.run(scenario)
