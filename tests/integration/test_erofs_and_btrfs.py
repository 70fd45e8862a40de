"""The erofs and btrfs snapshotters through the real ctr and the Diff service: a busybox image's layers
applied to each give the same files, owners and modes as on overlayfs; skips say why."""

from __future__ import annotations

import gzip
import io
import json
import os
import stat
import struct
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest
from harness import Daemon
from loop_filesystems import assert_no_loop_device_under, loop_btrfs
from tooling import require_root, require_tool

from corral.api.client import connect
from corral.api.types.containerd import types as ctypes
from corral.api.types.containerd.services.diff import v1 as diff_pb
from corral.api.types.containerd.services.snapshots import v1 as snap_pb
from corral.plugins.images.build import (
    Compression,
    EntryKind,
    Layer,
    LayerEntry,
    build_image,
    build_layer,
    busybox_rootfs,
    compress,
    directory_entries,
)
from corral.plugins.snapshots.btrfs import mount_of
from corral.plugins.snapshots.erofs import kernel_has_erofs

SNAPSHOTTERS = ("overlayfs", "erofs", "btrfs")
NO_COLLECTIONS = """
        [plugins."io.containerd.gc.v1.scheduler"]
          deletion_threshold = 1000000
          mutation_threshold = 1000000
"""
"""Snapshots made with ctr have no lease and no root label: a collection (which ctr's own removal of
the view it diffs against triggers) would take them while a test reads them."""


def busybox_layers(workdir: Path) -> tuple[Layer, Layer, Layer]:
    """Busybox with owners, modes and special files of its own; then a layer that deletes, hides,
    re-owns and adds beneath a directory it does not list."""
    root = busybox_rootfs(workdir / "busybox")
    first = build_layer(
        [
            *directory_entries(root),
            LayerEntry.directory("srv", 0o750, uid=33, gid=33),
            LayerEntry.file("srv/index.html", b"<h1>busybox</h1>\n", 0o640, uid=33, gid=33),
            LayerEntry.directory("home", 0o755),
            LayerEntry.directory("home/user", 0o700, uid=1000, gid=1000),
            LayerEntry.file("home/user/.profile", b"export PS1='$ '\n", 0o600, uid=1000, gid=1000),
            LayerEntry.directory("usr", 0o755),
            LayerEntry.directory("usr/bin", 0o755),
            LayerEntry.directory("run", 0o755),
            LayerEntry.file("usr/bin/setuid-tool", b"#!/bin/sh\nid\n", 0o4755),
            LayerEntry.file("tmp/sticky-note", b"note", 0o644),
            LayerEntry.hardlink("usr/bin/tool-link", "usr/bin/setuid-tool"),
            LayerEntry.symlink("usr/bin/sh-link", "../../bin/sh"),
            LayerEntry("run/fifo", EntryKind.FIFO, mode=0o620),
        ]
    )
    second = build_layer(
        [
            LayerEntry.whiteout("tmp/sticky-note"),
            LayerEntry.opaque("home/user"),
            LayerEntry.directory("home/user", 0o700, uid=1000, gid=1000),
            LayerEntry.file("home/user/notes", b"only this remains\n", 0o644, uid=1000, gid=1001),
            LayerEntry.file("srv/new.html", b"added below an unlisted directory\n", 0o644, uid=33, gid=33),
            LayerEntry.file("etc/motd", b"layer two\n", 0o444, uid=0, gid=0),
        ]
    )
    # A layer that only implies a directory its parent has: on overlayfs the directory keeps the
    # parent's owner and mode.
    implied = tarfile.TarInfo("home/user/implied.txt")
    data = b"in a directory the layer does not list\n"
    implied.size, implied.mode, implied.uid, implied.gid, implied.mtime = len(data), 0o644, 33, 33, 1
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(implied, io.BytesIO(data))
    third = Layer(buffer.getvalue(), compress(buffer.getvalue(), Compression.GZIP), Compression.GZIP)
    return first, second, third


def tree(root: Path, *, times: bool = True) -> dict[str, tuple[object, ...]]:
    """Every entry under ``root`` (the root as "."): type, mode, owner, content or target, links,
    xattrs and (with ``times``) the modification time."""
    out: dict[str, tuple[object, ...]] = {}
    paths = [root]
    for directory, dirnames, filenames in os.walk(root):
        paths += [Path(directory) / name for name in dirnames + filenames]
    for path in paths:
        st = path.lstat()
        rel = str(path.relative_to(root)) if path != root else "."
        kind = stat.S_IFMT(st.st_mode)
        xattrs = sorted(os.listxattr(path, follow_symlinks=False)) if not stat.S_ISLNK(st.st_mode) else []
        common = (oct(st.st_mode), st.st_uid, st.st_gid, xattrs)
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", os.readlink(path), *common, st.st_mtime_ns if times else 0)
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", *common)
        elif stat.S_ISREG(st.st_mode):
            out[rel] = ("file", path.read_bytes(), *common, st.st_nlink, st.st_mtime_ns if times else 0)
        else:
            out[rel] = (kind, *common, st.st_rdev, st.st_mtime_ns if times else 0)
    return out


async def apply(address: str, snapshotter: str, key: str, layer: Layer) -> str:
    async with connect(address) as client:
        md = {"containerd-namespace": "default"}
        snaps = snap_pb.SnapshotsStub(client.channel, metadata=md)
        mounts = (await snaps.mounts(snap_pb.MountsRequest(snapshotter=snapshotter, key=key))).mounts
        differ = diff_pb.DiffStub(client.channel, metadata=md)
        desc = layer.descriptor
        reply = await differ.apply(
            diff_pb.ApplyRequest(
                diff=ctypes.Descriptor(media_type=desc.media_type, digest=desc.digest, size=desc.size),
                mounts=mounts,
            )
        )
        assert reply.applied is not None
        return reply.applied.digest


def read_through_ctr(
    d: Daemon, snapshotter: str, key: str, target: Path, *, times: bool = True
) -> dict[str, tuple[object, ...]]:
    """Mount ``key`` with the commands ``ctr snapshots mounts`` prints, read it, unmount it."""
    target.mkdir(parents=True, exist_ok=True)
    lines = d.ctr("snapshots", "--snapshotter", snapshotter, "mounts", str(target), key).stdout.strip()
    for line in lines.splitlines():
        subprocess.run(line, shell=True, check=True, capture_output=True)
    try:
        return tree(target, times=times)
    finally:
        subprocess.run(["umount", str(target)], check=True)


def erofs_active_with_image(d: Daemon) -> set[str]:
    snapshots = d.base / "root" / "io.containerd.snapshotter.v1.erofs" / "snapshots"
    return (
        {p.name for p in snapshots.iterdir() if (p / "layer.erofs").exists()} if snapshots.exists() else set()
    )


def all_three(btrfs_root: Path, extra: str = "") -> str:
    """A config where the erofs differ makes erofs layers and btrfs keeps its root on ``btrfs_root``."""
    return f"""
        version = 3
        [plugins."io.containerd.service.v1.diff-service"]
          default = ["erofs", "walking"]
        [plugins."io.containerd.snapshotter.v1.btrfs"]
          root_path = "{btrfs_root}"
        {extra}
    """


@pytest.fixture
def btrfs_root(tmp_path: Path) -> Iterator[Path]:
    with loop_btrfs(tmp_path / "btrfs") as mounted:
        yield mounted / "snapshots"


@pytest.fixture
def no_loop_device_left(tmp_path: Path) -> Iterator[None]:
    yield
    assert_no_loop_device_under(tmp_path)


def test_busybox_layers_give_the_same_tree_on_erofs_btrfs_and_overlayfs(
    tmp_path: Path, ctr: str, no_loop_device_left: None, btrfs_root: Path
) -> None:
    require_root()
    require_tool("mkfs.erofs")
    first, second, third = busybox_layers(tmp_path)
    d = Daemon(tmp_path / "corral", config=all_three(btrfs_root, NO_COLLECTIONS)).start()
    try:
        for layer in (first, second, third):
            d_ingest(d, layer)
        seen: dict[str, dict[str, dict[str, tuple[object, ...]]]] = {}
        for name in SNAPSHOTTERS:
            s = ("snapshots", "--snapshotter", name)
            images_before = erofs_active_with_image(d)
            d.ctr(*s, "prepare", "l1")
            assert anyio.run(apply, d.socket, name, "l1", first) == first.diff_id
            if name == "erofs":
                # The erofs differ made the image, not the commit's conversion of an upper directory.
                assert len(erofs_active_with_image(d) - images_before) == 1
            d.ctr(*s, "commit", "c1", "l1")
            d.ctr(*s, "prepare", "l2", "c1")
            assert anyio.run(apply, d.socket, name, "l2", second) == second.diff_id
            d.ctr(*s, "commit", "c2", "l2")
            d.ctr(*s, "prepare", "l3", "c2")
            assert anyio.run(apply, d.socket, name, "l3", third) == third.diff_id
            d.ctr(*s, "commit", "c3", "l3")
            d.ctr(*s, "view", "v1", "c1")
            d.ctr(*s, "prepare", "top", "c3")
            seen[name] = {
                "one layer": read_through_ctr(d, name, "v1", tmp_path / "m"),
                "three layers": read_through_ctr(d, name, "top", tmp_path / "m"),
            }
            # Nothing is removed until the end: a removal lets the collector take unrooted snapshots.
        expected = seen["overlayfs"]
        top = expected["three layers"]
        assert "tmp/sticky-note" not in top and "tmp/sticky-note" in expected["one layer"]
        assert sorted(p for p in top if p.startswith("home/user/")) == [
            "home/user/implied.txt",
            "home/user/notes",
        ]
        assert top["home/user"][1:4] == ("0o40700", 1000, 1000)  # kept from below, as overlayfs keeps it
        assert top["srv"][1:4] == ("0o40755", 0, 0)  # as the second layer's tar says
        assert top["home/user/implied.txt"][2:4] == ("0o100644", 33)
        assert top["usr/bin/setuid-tool"][2] == "0o104755" and top["usr/bin/setuid-tool"][6] == 2
        for name in ("erofs", "btrfs"):
            for what in ("one layer", "three layers"):
                got, want = seen[name][what], expected[what]
                differences = {
                    p: (want.get(p), got.get(p)) for p in set(got) | set(want) if got.get(p) != want.get(p)
                }
                assert not differences, f"{name}, {what}: {json.dumps(differences, default=str)[:3000]}"
    finally:
        d.stop()
    assert not [line for line in Path("/proc/self/mounts").read_text().splitlines() if str(d.base) in line]


def test_an_image_imported_into_erofs_and_btrfs_gives_containers_the_rootfs_overlayfs_gives(
    tmp_path: Path, ctr: str, no_loop_device_left: None, btrfs_root: Path
) -> None:
    """`ctr images import --snapshotter X` then `ctr containers create --snapshotter X`: the
    container's rootfs has the same files, owners, modes and times on all three."""
    require_root()
    require_tool("mkfs.erofs")
    image_name = "docker.io/library/layered:1"
    archive = tmp_path / "layered.tar"
    build_image(list(busybox_layers(tmp_path)), entrypoint=["/bin/sh"]).write_oci_archive(
        archive, [image_name]
    )
    d = Daemon(tmp_path / "corral", config=all_three(btrfs_root)).start()
    try:
        seen: dict[str, dict[str, tuple[object, ...]]] = {}
        for name in SNAPSHOTTERS:
            images_before = erofs_active_with_image(d)
            d.ctr("images", "import", "--snapshotter", name, str(archive))
            if name == "erofs":
                assert len(erofs_active_with_image(d) - images_before) == 3  # one EROFS blob a layer
            d.ctr("containers", "create", "--snapshotter", name, image_name, f"c-{name}")
            info = json.loads(d.ctr("containers", "info", f"c-{name}").stdout)
            assert (info["Snapshotter"], info["SnapshotKey"]) == (name, f"c-{name}")
            seen[name] = read_through_ctr(d, name, f"c-{name}", tmp_path / "m")
        expected = seen["overlayfs"]
        assert expected["home/user/notes"][1] == b"only this remains\n"
        assert "tmp/sticky-note" not in expected and "home/user/.profile" not in expected
        for name in ("erofs", "btrfs"):
            got = seen[name]
            differences = {
                p: (expected.get(p), got.get(p))
                for p in set(got) | set(expected)
                if got.get(p) != expected.get(p)
            }
            assert not differences, f"{name}: {json.dumps(differences, default=str)[:3000]}"
        for name in SNAPSHOTTERS:
            d.ctr("containers", "rm", f"c-{name}")
        d.ctr("images", "rm", "--sync", image_name)
        for name in SNAPSHOTTERS:
            assert d.ctr("snapshots", "--snapshotter", name, "ls").stdout.splitlines()[1:] == [], name
    finally:
        d.stop()
    assert not [line for line in Path("/proc/self/mounts").read_text().splitlines() if str(d.base) in line]


def d_ingest(d: Daemon, layer: Layer) -> None:
    desc = layer.descriptor
    result = subprocess.run(
        ["ctr", "-a", d.socket, "content", "ingest", "--expected-size", str(desc.size),
         "--expected-digest", desc.digest, f"ingest-{desc.digest[7:19]}"],
        input=layer.blob, capture_output=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()


def test_plugins_ls_shows_erofs_ok_and_btrfs_skipped_with_the_reason(tmp_path: Path, ctr: str) -> None:
    d = Daemon(tmp_path / "corral").start()
    try:
        rows = {
            tuple(line.split()[:2]): line.split()[-1]
            for line in d.ctr("plugins", "ls").stdout.splitlines()[1:]
        }
        listing = {
            f"{p['type']}.{p['id']}": p
            for p in json.loads(d.corral("plugins", "ls", "--format", "json").stdout)
        }
        if mount_of(tmp_path).fstype != "btrfs":
            assert rows[("io.containerd.snapshotter.v1", "btrfs")] == "skip"
            reason = "must be a btrfs filesystem to be used with the btrfs snapshotter"
            assert reason in d.corral("plugins", "why", "io.containerd.snapshotter.v1.btrfs").stdout
            btrfs = listing["io.containerd.snapshotter.v1.btrfs"]
            assert btrfs["status"] == "skip" and reason in str(btrfs["reason"]), btrfs
        if kernel_has_erofs():
            require_tool("mkfs.erofs")
            assert rows[("io.containerd.snapshotter.v1", "erofs")] == "ok"
            assert rows[("io.containerd.differ.v1", "erofs")] == "ok"
            assert listing["io.containerd.snapshotter.v1.erofs"]["status"] == "ok"
    finally:
        d.stop()


def write_through_ctr(
    d: Daemon, snapshotter: str, key: str, target: Path, change: Callable[[Path], None]
) -> None:
    target.mkdir(parents=True, exist_ok=True)
    lines = d.ctr("snapshots", "--snapshotter", snapshotter, "mounts", str(target), key).stdout.strip()
    for line in lines.splitlines():
        subprocess.run(line, shell=True, check=True, capture_output=True)
    try:
        change(target)
    finally:
        subprocess.run(["umount", str(target)], check=True)


def base_files(root: Path) -> None:
    (root / "kept").write_text("base")
    (root / "removed").write_text("gone in the child")
    (root / "dir").mkdir()
    (root / "dir" / "inner").write_text("inner")
    (root / "replaced").mkdir()
    (root / "replaced" / "old").write_text("old")


def child_changes(root: Path) -> None:
    (root / "kept").write_text("changed in the child")
    (root / "added").write_bytes(os.urandom(100_000))
    os.chmod(root / "added", 0o4750)
    os.chown(root / "added", 1234, 5678)
    (root / "removed").unlink()
    (root / "dir" / "inner").unlink()
    (root / "link").symlink_to("kept")
    os.link(root / "added", root / "hardlink")
    # file capabilities are the one xattr a layer carries (as containerd's differ): cap_net_bind_service
    os.setxattr(root / "kept", "security.capability", struct.pack("<5I", 0x02000001, 1 << 10, 0, 0, 0))
    subprocess.run(["rm", "-rf", str(root / "replaced")], check=True)
    (root / "replaced").mkdir()
    (root / "replaced" / "new").write_text("new")


@pytest.mark.parametrize("name", ["erofs", "btrfs"])
def test_ctr_snapshots_diff_then_apply_reproduces_the_tree(
    name: str, tmp_path: Path, ctr: str, no_loop_device_left: None, btrfs_root: Path
) -> None:
    require_root()
    require_tool("mkfs.erofs")
    d = Daemon(tmp_path / "corral", config=all_three(btrfs_root, NO_COLLECTIONS)).start()
    try:
        s = ("snapshots", "--snapshotter", name)
        d.ctr(*s, "prepare", "base")
        write_through_ctr(d, name, "base", tmp_path / "m", base_files)
        d.ctr(*s, "commit", "base-c", "base")
        d.ctr(*s, "prepare", "child", "base-c")
        write_through_ctr(d, name, "child", tmp_path / "m", child_changes)
        # A layer's tar keeps times to the microsecond at best: the trees are compared without them.
        expected = read_through_ctr(d, name, "child", tmp_path / "m", times=False)

        made = subprocess.run(["ctr", "-a", d.socket, *s, "diff", "--keep", "child"], capture_output=True)
        assert made.returncode == 0, made.stderr.decode() + d.log()[-3000:]
        blob = made.stdout
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
            names = set(tar.getnames())
        assert {".wh.removed", "dir/.wh.inner", "added", "replaced/new"} <= names, sorted(names)
        assert names & {"replaced/.wh..wh..opq", "replaced/.wh.old"}, sorted(names)
        layer = Layer(gzip.decompress(blob), blob, Compression.GZIP)

        d.ctr(*s, "prepare", "fresh", "base-c")
        assert anyio.run(apply, d.socket, name, "fresh", layer) == layer.diff_id
        if name == "btrfs":
            assert read_through_ctr(d, name, "fresh", tmp_path / "m", times=False) == expected
        # On erofs, as in containerd, the applied image is seen once the snapshot is committed.
        d.ctr(*s, "commit", "fresh-c", "fresh")
        d.ctr(*s, "view", "look", "fresh-c")
        assert read_through_ctr(d, name, "look", tmp_path / "m", times=False) == expected
    finally:
        d.stop()
