"""The erofs snapshotter: the snapshotter conformance suite, plus what EROFS layers promise."""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import tooling
from loop_filesystems import assert_no_loop_device_under
from tooling import require_root

from corral.kernel import DaemonConfig, Kernel, PluginRecord, Registration, Status, builtin_candidate
from corral.plugins.snapshots import conformance as cf
from corral.plugins.snapshots.erofs import ErofsSnapshotter, layers
from corral.plugins.snapshots.erofs import plugin as erofs_plugin


def unable(reason: str) -> None:
    if tooling.ON_CI:
        pytest.fail(f"under CI every check runs: {reason}")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def no_mount_or_loop_device_outlives_a_test(tmp_path: Path) -> Iterator[None]:
    yield
    mounts = [line for line in Path("/proc/self/mounts").read_text().splitlines() if str(tmp_path) in line]
    assert not mounts, mounts
    assert_no_loop_device_under(tmp_path)


@pytest.mark.parametrize("check", cf.CHECKS, ids=cf.check_name)
def test_erofs_conforms(check: cf.Check, tmp_path: Path) -> None:
    cf.run(check, erofs_plugin.registration, tmp_path, skip=unable)


# -- skipped, and why ---------------------------------------------------------------------------------


def skip_reason(registration: Registration, tmp_path: Path) -> str:
    """What ``registration`` said when it skipped itself (fails if it started)."""
    reasons: list[str] = []
    cf.run(cf.BY_NAME["closing_twice_is_harmless"], registration, tmp_path, skip=reasons.append)
    assert reasons, f"{registration.uri} started"
    return reasons[0]


def test_skipped_where_the_kernel_has_no_erofs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    filesystems = tmp_path / "filesystems"
    filesystems.write_text("nodev\tsysfs\nnodev\toverlay\n\text4\n")
    monkeypatch.setattr(layers, "FILESYSTEMS", filesystems)
    monkeypatch.setenv("PATH", str(tmp_path / "no-modprobe-here"))
    reason = skip_reason(erofs_plugin.registration, tmp_path)
    assert "EROFS unsupported, please `modprobe erofs`" in reason


def test_skipped_without_mkfs_erofs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not layers.kernel_has_erofs():
        pytest.skip("this kernel has no EROFS")
    monkeypatch.setenv("PATH", str(tmp_path / "no-mkfs-here"))
    assert "mkfs.erofs not found" in skip_reason(erofs_plugin.registration, tmp_path)


async def start(tmp_path: Path, **config: object) -> PluginRecord:
    daemon = DaemonConfig(
        root=str(tmp_path / "root"),
        state=str(tmp_path / "state"),
        plugins={erofs_plugin.registration.uri: dict(config)},
    )
    async with Kernel(daemon, candidates=[builtin_candidate(erofs_plugin.registration)]).running() as kernel:
        record = kernel.get(erofs_plugin.registration.uri)
        assert record is not None
        return record


def test_fsverity_where_the_file_system_has_none_is_an_error_not_a_skip(tmp_path: Path) -> None:
    if not layers.kernel_has_erofs() or layers.mkfs_path() is None:
        unable("needs EROFS and mkfs.erofs")
    if layers.verity_supported(tmp_path):
        pytest.skip(f"{tmp_path} supports fs-verity")
    record = anyio.run(lambda: start(tmp_path, enable_fsverity=True))
    assert record.status is Status.ERROR
    assert "fsverity is not supported on the filesystem of" in record.reason


# -- immutable layers -------------------------------------------------------------------------------


def flags(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        buffer = bytearray(8)
        fcntl.ioctl(fd, layers.FS_IOC_GETFLAGS, buffer)
        return int(struct.unpack("<i", buffer[:4])[0])
    finally:
        os.close(fd)


def test_set_immutable_seals_committed_images_and_removal_unseals_them(tmp_path: Path) -> None:
    require_root()
    mkfs = layers.mkfs_path()
    if mkfs is None:
        unable("mkfs.erofs is not installed")
        return

    async def scenario() -> None:
        sn = ErofsSnapshotter(tmp_path / "root", mkfs=mkfs, set_immutable=True)
        try:
            (mounts,) = await sn.prepare("active")
            (Path(mounts.source) / "file").write_bytes(b"sealed")  # a bind mount of the upper directory
            await sn.commit("layer", "active")
            snapshot_id, _, _ = await sn.store.get_info("layer")
            image = sn.directory(snapshot_id) / layers.LAYER_BLOB
            assert flags(image) & layers.FS_IMMUTABLE_FL
            with pytest.raises(PermissionError):
                image.unlink()
            await sn.remove("layer")
            assert not sn.directory(snapshot_id).exists()

            # What a crash between a removal's record and its directory leaves, cleanup removes.
            await sn.prepare("again")
            await sn.commit("sealed", "again")
            snapshot_id, _, _ = await sn.store.get_info("sealed")
            await sn.store.remove("sealed")
            assert flags(sn.directory(snapshot_id) / layers.LAYER_BLOB) & layers.FS_IMMUTABLE_FL
            await sn.cleanup()
            assert not sn.directory(snapshot_id).exists()
        finally:
            await sn.aclose()

    anyio.run(scenario)


def test_without_file_backed_mounts_a_loop_device_goes_with_its_mount(tmp_path: Path) -> None:
    require_root()
    mkfs = layers.mkfs_path()
    if mkfs is None or not layers.kernel_has_erofs():
        unable("needs EROFS and mkfs.erofs")
        return
    source, target, blob = tmp_path / "source", tmp_path / "target", tmp_path / "layer.erofs"
    source.mkdir()
    target.mkdir()
    (source / "file").write_bytes(b"through a loop device")
    subprocess.run([mkfs, "--quiet", str(blob), str(source)], check=True)
    layers.mount_blob(blob, target, file_backed=False)
    try:
        attached = subprocess.run(["losetup", "-j", str(blob)], capture_output=True, text=True).stdout
        assert attached.strip(), "no loop device backs the mount"
        assert (target / "file").read_bytes() == b"through a loop device"
    finally:
        assert layers.unmount_detached(target)
    for _ in range(100):  # detached shortly after the last mount goes
        if not subprocess.run(["losetup", "-j", str(blob)], capture_output=True, text=True).stdout.strip():
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"the loop device of {blob} outlived its mount")
    assert not layers.unmount_detached(target)  # nothing mounted any more
