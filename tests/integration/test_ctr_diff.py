"""Layers through the real ctr: `ctr snapshots diff` makes one, Diff/Apply puts it on a fresh snapshot."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest
from harness import Daemon
from tooling import require_root

from corral.api.client import connect
from corral.api.types.containerd import types as ctypes
from corral.api.types.containerd.services.diff import v1 as diff_pb
from corral.api.types.containerd.services.snapshots import v1 as snap_pb

GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


@pytest.fixture(params=["overlayfs", "native"])
def snapshotter(request: pytest.FixtureRequest) -> str:
    require_root()
    return str(request.param)


def mount_cmd(d: Daemon, snapshotter: str, key: str, target: Path) -> list[str]:
    target.mkdir(parents=True, exist_ok=True)
    return (
        d.ctr("snapshots", "--snapshotter", snapshotter, "mounts", str(target), key)
        .stdout.strip()
        .splitlines()
    )


def with_mounted(d: Daemon, snapshotter: str, key: str, target: Path, fn: object) -> None:
    for line in mount_cmd(d, snapshotter, key, target):
        subprocess.run(line, shell=True, check=True)
    try:
        fn(target)  # type: ignore[operator]
    finally:
        subprocess.run(["umount", str(target)], check=True)


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Every entry under root with what a layer must reproduce: type, mode, owner, content, link target."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path), st.st_uid, st.st_gid)
            elif path.is_dir():
                out[rel] = ("dir", st.st_mode, st.st_uid, st.st_gid)
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                out[rel] = ("file", st.st_mode, st.st_uid, st.st_gid, digest, st.st_nlink)
    return out


def build_upper(root: Path) -> None:
    (root / "kept").write_text("changed in child")
    (root / "added").write_bytes(os.urandom(100_000))
    os.chmod(root / "added", 0o4750)
    os.chown(root / "added", 1234, 5678)
    (root / "removed").unlink()
    (root / "dir" / "inner").unlink()
    (root / "link").symlink_to("kept")
    os.link(root / "added", root / "hardlink")
    os.setxattr(root / "kept", "user.note", b"hello")


def build_base(root: Path) -> None:
    (root / "kept").write_text("base")
    (root / "removed").write_text("gone in child")
    (root / "dir").mkdir()
    (root / "dir" / "inner").write_text("inner")


async def apply_layer(address: str, snapshotter: str, key: str, digest: str, size: int) -> str:
    async with connect(address) as client:
        md = {"containerd-namespace": "default"}
        snaps = snap_pb.SnapshotsStub(client.channel, metadata=md)
        mounts = (await snaps.mounts(snap_pb.MountsRequest(snapshotter=snapshotter, key=key))).mounts
        differ = diff_pb.DiffStub(client.channel, metadata=md)
        reply = await differ.apply(
            diff_pb.ApplyRequest(
                diff=ctypes.Descriptor(media_type=GZIP_LAYER, digest=digest, size=size), mounts=mounts
            )
        )
        assert reply.applied is not None
        return reply.applied.digest


def test_diff_then_apply_reproduces_the_tree(daemon: Daemon, snapshotter: str, tmp_path: Path) -> None:
    s = ("snapshots", "--snapshotter", snapshotter)
    daemon.ctr(*s, "prepare", "base")
    with_mounted(daemon, snapshotter, "base", tmp_path / "m", build_base)
    daemon.ctr(*s, "commit", "base-c", "base")
    daemon.ctr(*s, "prepare", "child", "base-c")
    with_mounted(daemon, snapshotter, "child", tmp_path / "m", build_upper)
    expected: dict[str, tuple[object, ...]] = {}
    with_mounted(daemon, snapshotter, "child", tmp_path / "m", lambda root: expected.update(tree(root)))

    made = subprocess.run(["ctr", "-a", daemon.socket, *s, "diff", "--keep", "child"], capture_output=True)
    assert made.returncode == 0, made.stderr.decode() + daemon.log()[-3000:]
    layer = made.stdout
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer))) as tar:
        names = tar.getnames()
    assert "removed" not in names
    assert ".wh.removed" in names
    assert "dir/.wh.inner" in names
    assert "added" in names

    digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    assert digest in daemon.ctr("content", "ls", "-q").stdout.split()
    daemon.ctr(*s, "prepare", "fresh", "base-c")
    anyio.run(apply_layer, daemon.socket, snapshotter, "fresh", digest, len(layer))
    got: dict[str, tuple[object, ...]] = {}
    with_mounted(daemon, snapshotter, "fresh", tmp_path / "m", lambda root: got.update(tree(root)))
    assert got == expected


def opaque_root_layer() -> bytes:
    """A layer that hides everything below at the top: ``.wh..wh..opq`` and one new file."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in ((".wh..wh..opq", b""), ("new", b"only this")):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_600_000_000
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(out.getvalue(), mtime=0)


def upperdir(daemon: Daemon, snapshotter: str, key: str) -> Path:
    line = daemon.ctr("snapshots", "--snapshotter", snapshotter, "mounts", "/unused", key).stdout
    options = line.split(" -o ", 1)[1].split()[0].split(",")
    return Path(next(o for o in options if o.startswith("upperdir=")).split("=", 1)[1])


def test_a_top_level_opaque_whiteout_hides_the_parent_snapshot(
    daemon: Daemon, snapshotter: str, tmp_path: Path
) -> None:
    s = ("snapshots", "--snapshotter", snapshotter)
    daemon.ctr(*s, "prepare", "base")
    with_mounted(daemon, snapshotter, "base", tmp_path / "m", build_base)
    daemon.ctr(*s, "commit", "base-c", "base")
    daemon.ctr(*s, "prepare", "child", "base-c")
    layer = opaque_root_layer()
    digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    subprocess.run(
        ["ctr", "-a", daemon.socket, "content", "ingest", "--expected-digest", digest, "opaque-root"],
        input=layer,
        check=True,
    )
    anyio.run(apply_layer, daemon.socket, snapshotter, "child", digest, len(layer))
    if snapshotter == "overlayfs":
        # containerd's overlay whiteout converter marks the upper directory itself opaque.
        upper = upperdir(daemon, snapshotter, "child")
        assert os.getxattr(upper, "trusted.overlay.opaque") == b"y"
        assert sorted(p.name for p in upper.iterdir()) == ["new"]
    else:
        got: dict[str, tuple[object, ...]] = {}
        with_mounted(daemon, snapshotter, "child", tmp_path / "m", lambda root: got.update(tree(root)))
        assert sorted(got) == ["new"]


def test_diff_over_grpc_bounds_mtimes_by_the_source_date_epoch(daemon: Daemon, tmp_path: Path) -> None:
    require_root()
    s = ("snapshots", "--snapshotter", "native")
    daemon.ctr(*s, "prepare", "base")
    with_mounted(daemon, "native", "base", tmp_path / "m", build_base)
    daemon.ctr(*s, "commit", "base-c", "base")
    daemon.ctr(*s, "view", "base-v", "base-c")
    daemon.ctr(*s, "prepare", "child", "base-c")
    with_mounted(daemon, "native", "child", tmp_path / "m", build_upper)
    epoch = datetime(2020, 1, 1, tzinfo=UTC)

    async def diff() -> str:
        async with connect(daemon.socket) as client:
            md = {"containerd-namespace": "default"}
            snaps = snap_pb.SnapshotsStub(client.channel, metadata=md)
            left = (await snaps.mounts(snap_pb.MountsRequest(snapshotter="native", key="base-v"))).mounts
            right = (await snaps.mounts(snap_pb.MountsRequest(snapshotter="native", key="child"))).mounts
            reply = await diff_pb.DiffStub(client.channel, metadata=md).diff(
                diff_pb.DiffRequest(
                    left=left,
                    right=right,
                    media_type="application/vnd.oci.image.layer.v1.tar",
                    source_date_epoch=epoch,
                    labels={"containerd.io/gc.root": "now"},
                )
            )
            assert reply.diff is not None
            return reply.diff.digest

    digest = anyio.run(diff)
    layer = subprocess.run(
        ["ctr", "-a", daemon.socket, "content", "get", digest], capture_output=True, check=True
    )
    with tarfile.open(fileobj=io.BytesIO(layer.stdout)) as tar:
        mtimes = {m.name: m.mtime for m in tar.getmembers()}
    assert mtimes[".wh.removed"] == 0 and mtimes["added"] == int(epoch.timestamp())
    assert max(mtimes.values()) == int(epoch.timestamp())
