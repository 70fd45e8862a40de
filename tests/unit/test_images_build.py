"""The image builder: deterministic layers (entries, directory trees, diffs with whiteouts),
configs, manifests and indexes, the three output forms, the busybox image, and a real
containerd that imports, runs and exports what the builder makes."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard
from containerd_daemon import Containerd
from tooling import require_root, require_tool

from corral.kernel import FailedPrecondition, InvalidArgument, NotFound
from corral.plugins.images import archive, build, oci
from corral.plugins.images.build import Compression, LayerEntry
from corral.plugins.images.oci import Platform


def members_of(tar: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        return t.getmembers()


def names_of(tar: bytes) -> list[str]:
    return [m.name for m in members_of(tar)]


def make_tree(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "etc" / "deep").mkdir(parents=True)
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\necho tool\n")
    (root / "bin" / "tool").chmod(0o755)
    (root / "etc" / "conf").write_text("a=1\n")
    (root / "etc" / "conf").chmod(0o600)
    (root / "etc" / "deep" / "file").write_text("deep\n")
    os.link(root / "etc" / "conf", root / "etc" / "conf.hard")
    (root / "bin" / "link").symlink_to("tool")
    os.mkfifo(root / "fifo")
    for path in [root, *root.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
    return root


# --- layers --------------------------------------------------------------------------------


def test_layer_entries_become_a_sorted_tar_with_fixed_times_and_owners() -> None:
    tar = build.layer_tar(
        [
            LayerEntry.file("z/file", b"z"),
            LayerEntry.file("a/b/c", b"abc", 0o700, uid=5),
            LayerEntry.symlink("a/link", "b/c"),
            LayerEntry.hardlink("a/hard", "a/b/c"),
            LayerEntry.whiteout("old/gone"),
            LayerEntry.opaque("hidden"),
        ]
    )
    members = {m.name: m for m in members_of(tar)}
    assert list(members) == [
        "a", "a/b", "a/b/c", "a/hard", "a/link", "hidden", "hidden/.wh..wh..opq", "old", "old/.wh.gone", "z", "z/file",
    ]  # fmt: skip
    assert members["a"].isdir() and members["a"].mode == 0o755
    assert (members["a/b/c"].mode, members["a/b/c"].uid) == (0o700, 5)
    assert members["a/link"].issym() and members["a/link"].linkname == "b/c"
    assert members["a/hard"].islnk() and members["a/hard"].linkname == "a/b/c"
    assert members["old/.wh.gone"].isreg() and members["old/.wh.gone"].size == 0
    assert {(m.mtime, m.gid, m.uname, m.gname) for m in members.values()} == {(0, 0, "", "")}
    assert all(m.pax_headers == {} for m in members.values())
    assert tar.endswith(bytes(1024)) and len(tar) % 512 == 0


def test_long_names_get_a_pax_record_only_when_ustar_cannot_hold_them() -> None:
    long_name = "d/" + "x" * 150
    tar = build.layer_tar([LayerEntry.file(long_name, b"1"), LayerEntry.file("short", b"2")])
    members = {m.name: m for m in members_of(tar)}
    assert members[long_name].pax_headers == {"path": long_name}
    assert members["short"].pax_headers == {}


@pytest.mark.parametrize(
    "entries",
    [
        [LayerEntry.file("a", b""), LayerEntry.file("a", b"")],
        [LayerEntry.file("a", b""), LayerEntry.file("a/b", b"")],
        [LayerEntry.file("../up", b"")],
        [LayerEntry.file("", b"")],
    ],
)
def test_contradictory_or_escaping_entries_are_refused(entries: list[LayerEntry]) -> None:
    with pytest.raises(InvalidArgument):
        build.layer_tar(entries)


def test_compression_is_deterministic_and_as_the_media_type_says() -> None:
    entries = [LayerEntry.file("f", b"data" * 1000)]
    gz = build.build_layer(entries)
    assert gz.descriptor.media_type == oci.OCI_LAYER_GZIP
    assert gz.blob[:4] == b"\x1f\x8b\x08\x00"  # gzip, no FNAME/FCOMMENT flags
    assert gz.blob[4:8] == bytes(4)  # no timestamp
    assert gz.blob == build.build_layer(entries).blob
    zst = build.build_layer(entries, compression=Compression.ZSTD)
    assert zst.descriptor.media_type == oci.OCI_LAYER_ZSTD
    assert zstandard.decompress(zst.blob) == zst.tar
    plain = build.build_layer(entries, compression=Compression.NONE)
    assert plain.descriptor.media_type == oci.OCI_LAYER and plain.blob == plain.tar
    assert gz.diff_id == zst.diff_id == plain.diff_id == oci.digest_of(plain.tar)
    assert gz.descriptor.digest == oci.digest_of(gz.blob) and gz.descriptor.size == len(gz.blob)


def test_a_directory_tree_becomes_a_layer_regardless_of_times_and_owners(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    first = build.layer_from_directory(tree)
    for path in tree.rglob("*"):
        os.utime(path, (12345, 67890), follow_symlinks=False)
    if os.geteuid() == 0:
        os.lchown(tree / "etc" / "conf", 1000, 1000)
    assert build.layer_from_directory(tree).blob == first.blob
    members = {m.name: m for m in members_of(first.tar)}
    assert list(members) == [
        "bin", "bin/link", "bin/tool", "etc", "etc/conf", "etc/conf.hard", "etc/deep", "etc/deep/file", "fifo",
    ]  # fmt: skip
    assert members["bin/tool"].mode == 0o755 and members["etc/conf"].mode == 0o600
    assert members["etc/conf.hard"].islnk() and members["etc/conf.hard"].linkname == "etc/conf"
    assert members["fifo"].isfifo()
    assert members["bin/link"].issym() and members["bin/link"].linkname == "tool"
    if os.geteuid() == 0:
        kept = build.layer_from_directory(tree, keep_owners=True)
        assert {m.name: m.uid for m in members_of(kept.tar)}["etc/conf"] == 1000


def test_a_directory_layer_can_carry_whiteouts(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    layer = build.layer_from_directory(tree, whiteouts=["usr/old"], opaque=["etc"])
    names = names_of(layer.tar)
    assert "usr/.wh.old" in names and "etc/.wh..wh..opq" in names and "etc/conf" in names


def test_sockets_are_skipped_and_device_nodes_refused(tmp_path: Path) -> None:
    import socket

    tree = tmp_path / "tree"
    tree.mkdir()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tree / "sock"))
        assert names_of(build.layer_from_directory(tree).tar) == []
    require_root()
    os.mknod(tree / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    with pytest.raises(InvalidArgument, match="device"):
        build.layer_from_directory(tree)


def test_the_diff_of_two_trees_holds_changes_and_whiteouts(tmp_path: Path) -> None:
    lower = make_tree(tmp_path / "lower")
    upper = make_tree(tmp_path / "upper")
    (upper / "etc" / "deep" / "file").unlink()
    (upper / "etc" / "deep").rmdir()
    (upper / "bin" / "tool").write_bytes(b"new\n")
    (upper / "fifo").unlink()
    (upper / "new").mkdir(mode=0o755)
    (upper / "new" / "f").write_text("n")
    (upper / "new" / "f").chmod(0o644)
    layer = build.layer_from_diff(lower, upper)
    members = {m.name: m for m in members_of(layer.tar)}
    assert sorted(members) == [".wh.fifo", "bin", "bin/tool", "etc", "etc/.wh.deep", "new", "new/f"]
    assert "etc/deep/.wh.file" not in members  # one whiteout for a removed directory
    with tarfile.open(fileobj=io.BytesIO(layer.tar)) as tar:
        tool = tar.extractfile("bin/tool")
        assert tool is not None and tool.read() == b"new\n"


# --- images --------------------------------------------------------------------------------


def test_an_image_config_and_manifest_describe_the_layers() -> None:
    layers = [
        build.build_layer([LayerEntry.file("a", b"1")]),
        build.build_layer([LayerEntry.file("b", b"2")]),
    ]
    image = build.build_image(
        layers,
        entrypoint=["/bin/sh", "-c"],
        cmd=["echo hi"],
        env=["PATH=/bin", "X=1"],
        working_dir="/w",
        user="1000:1000",
        labels={"k": "v"},
        history=["first", "second"],
    )
    host = Platform.host()
    config = oci.parse_image_config(image.config_bytes)
    assert (config.os, config.architecture, config.variant) == (host.os, host.architecture, host.variant)
    assert config.config.entrypoint == ("/bin/sh", "-c") and config.config.cmd == ("echo hi",)
    assert config.config.env == ("PATH=/bin", "X=1")
    assert (config.config.working_dir, config.config.user, dict(config.config.labels)) == (
        "/w",
        "1000:1000",
        {"k": "v"},
    )
    assert config.diff_ids == tuple(layer.diff_id for layer in layers) == image.diff_ids
    assert [h.created_by for h in config.history] == ["first", "second"]
    assert config.created == build.EPOCH
    manifest = oci.parse_manifest(image.manifest_bytes, oci.OCI_MANIFEST)
    assert manifest.config == oci.Descriptor(
        oci.OCI_CONFIG, oci.digest_of(image.config_bytes), len(image.config_bytes)
    )
    assert manifest.layers == tuple(layer.descriptor for layer in layers)
    assert image.digest == oci.digest_of(image.manifest_bytes)
    assert image.chain_id == oci.chain_id(image.diff_ids)
    assert set(image.blobs) == {image.digest, manifest.config.digest, *(layer.digest for layer in layers)}
    with pytest.raises(InvalidArgument):
        build.build_image(layers, history=["only one"])


def test_a_multi_platform_index_lists_each_image_with_its_platform() -> None:
    layer = build.build_layer([LayerEntry.file("a", b"1")])
    amd = build.build_image([layer], platform=Platform("linux", "amd64"))
    arm = build.build_image([layer], platform=Platform("linux", "arm64", "v8"))
    index = build.build_index([amd, arm])
    parsed = oci.parse_index(index.index_bytes, oci.OCI_INDEX)
    assert [(e.digest, e.platform) for e in parsed.manifests] == [
        (amd.digest, Platform("linux", "amd64")),
        (arm.digest, Platform("linux", "arm64", "v8")),
    ]
    assert set(index.blobs) == {index.digest} | set(amd.blobs) | set(arm.blobs)
    contents, _ = archive.read_archive(io.BytesIO(index.oci_archive(["docker.io/library/multi:1"])))
    assert contents.indexes[index.digest] == index.index
    assert set(contents.manifests) == {amd.digest, arm.digest}


def test_an_oci_layout_directory_holds_every_blob(tmp_path: Path) -> None:
    image = build.build_image([build.build_layer([LayerEntry.file("a", b"1")])])
    root = image.write_oci_layout(tmp_path / "layout", ["docker.io/library/a:1"])
    assert json.loads((root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = oci.parse_index((root / "index.json").read_bytes())
    assert index.manifests[0].digest == image.digest
    for digest, data in image.blobs.items():
        path = root / "blobs" / "sha256" / digest.partition(":")[2]
        assert path.read_bytes() == data and path.stat().st_mtime == 0
    assert not (root / "manifest.json").exists()


def test_a_docker_archive_lays_out_docker_save_format(tmp_path: Path) -> None:
    image = build.build_image([build.build_layer([LayerEntry.file("a", b"1")])])
    data = image.docker_archive(["docker.io/library/a:1"])
    chain = image.chain_ids[0].partition(":")[2]
    config_name = oci.digest_of(image.config_bytes).partition(":")[2] + ".json"
    assert names_of(data) == [chain, f"{chain}/layer.tar", config_name, "manifest.json"]
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert manifest == [{"Config": config_name, "RepoTags": ["a:1"], "Layers": [f"{chain}/layer.tar"]}]
    contents, _ = archive.read_archive(io.BytesIO(data))
    (config,) = contents.configs.values()
    assert config.diff_ids == image.diff_ids
    assert image.write_docker_archive(tmp_path / "d.tar", ["a:1"]).read_bytes() == image.docker_archive(
        ["a:1"]
    )


# --- busybox -------------------------------------------------------------------------------


@pytest.fixture
def busybox() -> Path:
    require_tool("busybox")
    try:
        return build.find_busybox()
    except (NotFound, FailedPrecondition) as err:
        pytest.skip(str(err))


def test_the_busybox_rootfs_has_the_binary_its_applets_and_accounts(tmp_path: Path, busybox: Path) -> None:
    root = build.busybox_rootfs(tmp_path / "rootfs")
    assert (root / "bin" / "busybox").read_bytes() == busybox.read_bytes()
    assert stat.S_IMODE((root / "bin" / "busybox").stat().st_mode) == 0o755
    for applet in (
        "sh",
        "echo",
        "cat",
        "ls",
        "sleep",
        "true",
        "false",
        "env",
        "id",
        "ps",
        "mount",
        "hostname",
    ):
        assert os.readlink(root / "bin" / applet) == "busybox"
    assert (root / "etc" / "passwd").read_text().startswith("root:x:0:0:")
    assert "root:x:0:" in (root / "etc" / "group").read_text()
    for empty in ("proc", "sys", "dev", "tmp"):
        assert list((root / empty).iterdir()) == []
    assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o1777
    with pytest.raises(InvalidArgument, match="not empty"):
        build.busybox_rootfs(root)


def test_only_a_static_busybox_is_accepted(tmp_path: Path, busybox: Path) -> None:
    assert build.is_static_elf(busybox)
    dynamic = Path(require_tool("ls"))
    assert not build.is_static_elf(dynamic)
    with pytest.raises(FailedPrecondition, match="busybox-static"):
        build.find_busybox(dynamic)
    with pytest.raises(NotFound):
        build.find_busybox(tmp_path / "missing")


def test_the_busybox_image_is_byte_identical_when_built_twice(tmp_path: Path, busybox: Path) -> None:
    first = build.build_busybox_image(tmp_path / "one.tar")
    time.sleep(1.1)  # a clock leaking into the bytes would show
    second = build.build_busybox_image()
    assert first.archive == second.archive
    assert first.path is not None and first.path.read_bytes() == first.archive
    assert first.digest == first.image.digest and first.diff_ids == first.image.diff_ids
    contents, _ = archive.read_archive(io.BytesIO(first.archive))
    assert contents.image_names() == [
        archive.ImageName(build.BUSYBOX_IMAGE_NAME, contents.index.manifests[0])
    ]
    assert contents.index.manifests[0].digest == first.digest
    assert contents.configs[first.image.manifest.config.digest].config.cmd == ("sh",)
    docker = build.build_busybox_image(archive_format="docker")
    assert archive.read_archive(io.BytesIO(docker.archive))[0].format is archive.ArchiveFormat.DOCKER
    bare = build.build_busybox_image(archive_format="oci-bare")
    assert "manifest.json" not in names_of(bare.archive)
    with pytest.raises(InvalidArgument):
        build.build_busybox_image(archive_format="zip")


# --- a real containerd ---------------------------------------------------------------------


@pytest.fixture
def containerd(tmp_path: Path) -> Iterator[Containerd]:
    require_root()
    daemon = Containerd(tmp_path / "ctrd").start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.mark.root
def test_containerd_imports_runs_and_exports_the_busybox_image(
    tmp_path: Path, busybox: Path, containerd: Containerd
) -> None:
    require_tool("runc")
    built = build.build_busybox_image(tmp_path / "busybox.tar")
    containerd.ctr("images", "import", "--base-name", "docker.io/library/busybox", str(built.path))
    listing = containerd.ctr("images", "ls").stdout
    row = next(line.split() for line in listing.splitlines() if line.startswith(build.BUSYBOX_IMAGE_NAME))
    assert row[1] == oci.OCI_MANIFEST and row[2] == built.digest
    snapshots = containerd.ctr("snapshots", "ls").stdout
    assert built.image.chain_id in snapshots

    run = containerd.ctr("run", "--rm", build.BUSYBOX_IMAGE_NAME, "t1", "/bin/echo", "hello", check=False)
    assert run.returncode == 0, f"ctr run failed (machine?): {run.stderr}"
    assert run.stdout.strip() == "hello"

    exported = tmp_path / "export.tar"
    containerd.ctr("images", "export", str(exported), build.BUSYBOX_IMAGE_NAME)
    reader = archive.ArchiveReader()
    with exported.open("rb") as file:
        for blob in reader.blobs(file):
            for _ in blob.chunks():
                pass
            assert blob.digest == (blob.expected_digest or blob.digest)
    contents = reader.contents()
    (entry,) = contents.index.manifests
    assert entry.digest == built.digest
    assert entry.annotations[oci.ANNOTATION_IMAGE_NAME] == build.BUSYBOX_IMAGE_NAME
    assert contents.manifests[built.digest] == built.image.manifest
    assert contents.image_names() == [archive.ImageName(build.BUSYBOX_IMAGE_NAME, entry)]


@pytest.mark.root
def test_containerd_synthesises_the_same_manifest_for_a_docker_archive(
    tmp_path: Path, busybox: Path, containerd: Containerd
) -> None:
    built = build.build_busybox_image(tmp_path / "docker.tar", archive_format="docker")
    assert built.path is not None
    contents, _ = archive.read_archive(built.path.open("rb"))
    (entry,) = contents.index.manifests
    containerd.ctr("images", "import", "--index-name", "idx", str(built.path), namespace="docker-check")
    listing = containerd.ctr("images", "ls", namespace="docker-check").stdout
    rows = {line.split()[0]: line.split() for line in listing.splitlines()[1:]}
    assert rows[build.BUSYBOX_IMAGE_NAME][1:3] == [oci.DOCKER_MANIFEST, entry.digest]
    assert rows["idx"][2] == contents.index_descriptor.digest


@pytest.mark.root
def test_containerd_applies_a_whiteout_layer_and_keys_snapshots_by_our_chain_ids(
    tmp_path: Path, busybox: Path, containerd: Containerd
) -> None:
    require_tool("runc")
    rootfs = build.busybox_rootfs(tmp_path / "rootfs")
    base = build.layer_from_directory(rootfs)
    top = build.build_layer(
        [LayerEntry.whiteout("bin/ls"), LayerEntry.file("hello", b"from the top layer\n")]
    )
    image = build.build_image([base, top], cmd=["sh"])
    name = "docker.io/library/two-layers:1"
    path = image.write_oci_archive(tmp_path / "two.tar", [name])
    containerd.ctr("images", "import", str(path))
    snapshots = containerd.ctr("snapshots", "ls").stdout
    assert image.chain_ids[1] in snapshots and image.chain_ids[0] in snapshots
    script = "cat /hello; test -e /bin/ls && echo ls-present || echo ls-gone"
    run = containerd.ctr("run", "--rm", name, "t2", "/bin/sh", "-c", script, check=False)
    assert run.returncode == 0, f"ctr run failed (machine?): {run.stderr}"
    assert run.stdout.split("\n")[:2] == ["from the top layer", "ls-gone"]
