"""containerd 2.x's ctr imports and exports through corral's Transfer service, as against containerd."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from containerd2 import Containerd2, containerd2_bin, ctr2, lines
from harness import Daemon

from corral.plugins.images.build import Compression, build_busybox_image

NAME = "docker.io/library/busybox:latest"


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("archives")
    oci = build_busybox_image(base / "busybox-oci.tar")
    docker = build_busybox_image(base / "busybox-docker.tar", archive_format="docker")
    unnamed = build_busybox_image(base / "busybox-unnamed.tar", names=())
    build_busybox_image(
        base / "busybox-docker-plain.tar", archive_format="docker", compression=Compression.NONE
    )
    assert oci.digest == unnamed.digest and docker.digest
    return {
        "oci": base / "busybox-oci.tar",
        "docker": base / "busybox-docker.tar",
        "unnamed": base / "busybox-unnamed.tar",
        "docker-plain": base / "busybox-docker-plain.tar",
    }


def images(d: Daemon) -> list[str]:
    return lines(ctr2(d.socket, "images", "ls", "-q"))


def snapshots(d: Daemon, snapshotter: str = "overlayfs") -> list[str]:
    rows = lines(ctr2(d.socket, "snapshots", "--snapshotter", snapshotter, "ls"))
    return [row.split()[0] for row in rows[1:]]


def content(d: Daemon) -> dict[str, str]:
    rows = lines(ctr2(d.socket, "content", "ls"))[1:]
    return {row.split()[0]: row.split()[-1] for row in rows}


def collect(d: Daemon) -> None:
    """A synchronous collection, as the reliability suite makes one: a lease removed with --sync."""
    ctr2(d.socket, "leases", "create", "--id", "collect-now")
    ctr2(d.socket, "leases", "rm", "--sync", "collect-now")


def test_ctr2_import_of_an_oci_archive_unpacks_it_and_labels_as_containerd(
    corral: Daemon, archives: dict[str, Path]
) -> None:
    out = ctr2(corral.socket, "images", "import", str(archives["oci"]))
    assert NAME in out.stdout and "saved" in out.stdout
    assert images(corral) == [NAME]
    check = ctr2(corral.socket, "images", "check").stdout
    assert "complete (2/2)" in check and check.rstrip().endswith("true")
    labels = content(corral)
    chain = snapshots(corral)
    assert len(chain) == 1 and chain[0].startswith("sha256:")
    configs = [lab for lab in labels.values() if "gc.ref.snapshot.overlayfs" in lab]
    assert configs == [f"containerd.io/gc.ref.snapshot.overlayfs={chain[0]}"]
    assert any(lab.startswith("containerd.io/uncompressed=") for lab in labels.values())
    assert any("gc.ref.content.config=" in lab and "gc.ref.content.l.0=" in lab for lab in labels.values())
    assert lines(ctr2(corral.socket, "leases", "ls")) == ["ID CREATED AT LABELS"]


def test_ctr2_import_of_a_docker_archive_gives_the_image_a_docker_manifest(
    corral: Daemon, archives: dict[str, Path]
) -> None:
    ctr2(corral.socket, "images", "import", str(archives["docker"]))
    rows = lines(ctr2(corral.socket, "images", "ls"))
    assert NAME in rows[1] and "application/vnd.docker.distribution.manifest.v2+json" in rows[1]
    assert len(snapshots(corral)) == 1


def test_ctr2_import_with_base_name_and_digests_names_as_containerd(
    tmp_path: Path, corral: Daemon, archives: dict[str, Path]
) -> None:
    cd = Containerd2(tmp_path / "containerd").start()
    try:
        args = ("images", "import", "--no-unpack", "--digests", "--base-name", "docker.io/library/busybox")
        for archive in (archives["oci"], archives["unnamed"]):
            ctr2(corral.socket, *args, str(archive))
            cd.ctr(*args, str(archive))
        digest = f"docker.io/library/busybox@{build_busybox_image(names=()).digest}"
        assert images(corral) == lines(cd.ctr("images", "ls", "-q")) == [NAME, digest]
        assert snapshots(corral) == []
    finally:
        cd.stop()


def test_ctr2_export_is_byte_identical_and_reimports_into_containerd(
    tmp_path: Path, corral: Daemon, archives: dict[str, Path]
) -> None:
    ctr2(corral.socket, "images", "import", str(archives["oci"]))
    out = tmp_path / "exported.tar"
    ctr2(corral.socket, "images", "export", str(out), NAME)
    assert out.read_bytes() == archives["oci"].read_bytes()
    cd = Containerd2(tmp_path / "containerd").start()
    try:
        cd.ctr("images", "import", "--no-unpack", str(out))
        assert lines(cd.ctr("images", "ls", "-q")) == [NAME]
        theirs = tmp_path / "theirs.tar"
        cd.ctr("images", "export", str(theirs), NAME)
        assert theirs.read_bytes() == out.read_bytes()
    finally:
        cd.stop()


def test_ctr2_export_of_an_unknown_image_fails_as_containerd(corral: Daemon, tmp_path: Path) -> None:
    result = ctr2(corral.socket, "images", "export", str(tmp_path / "x.tar"), "nope:1", check=False)
    assert result.returncode != 0
    assert 'image "nope:1": not found' in result.stderr


def test_after_rm_and_a_collection_the_images_blobs_and_snapshots_are_gone(
    corral: Daemon, archives: dict[str, Path]
) -> None:
    ctr2(corral.socket, "images", "import", str(archives["oci"]))
    assert content(corral) and snapshots(corral)
    ctr2(corral.socket, "images", "rm", "--sync", NAME)
    collect(corral)
    assert content(corral) == {}
    assert snapshots(corral) == []


def test_a_container_created_by_ctr_finds_the_rootfs_corral_images_import_unpacked(
    corral: Daemon, archives: dict[str, Path], tmp_path: Path
) -> None:
    saved = corral.corral("images", "import", "-q", str(archives["docker"]))
    assert saved.stdout.split() == [NAME]
    corral.ctr("containers", "create", NAME, "box")
    target = tmp_path / "rootfs"
    target.mkdir()
    command = corral.ctr("snapshots", "mounts", str(target), "box").stdout
    subprocess.run(["sh", "-c", command], check=True)
    try:
        assert (target / "bin" / "busybox").is_file()
        assert (target / "bin" / "sh").exists()
    finally:
        subprocess.run(["umount", str(target)], check=False)


def test_corral_images_import_into_another_snapshotter(corral: Daemon, archives: dict[str, Path]) -> None:
    corral.corral("images", "import", "--snapshotter", "native", str(archives["oci"]))
    assert len(snapshots(corral, "native")) == 1
    assert snapshots(corral, "overlayfs") == []
    labels = content(corral)
    assert any(lab.startswith("containerd.io/gc.ref.snapshot.native=") for lab in labels.values())


def test_corral_images_import_of_an_unknown_snapshotter_is_refused_and_leaves_nothing(
    corral: Daemon, archives: dict[str, Path]
) -> None:
    result = corral.corral("images", "import", "--snapshotter", "zfs", str(archives["oci"]), check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == "corral: snapshotter not loaded: zfs: invalid argument"
    assert images(corral) == [] and content(corral) == {}


def test_corral_images_export_writes_the_archive_and_nothing_on_failure(
    corral: Daemon, archives: dict[str, Path], tmp_path: Path
) -> None:
    corral.corral("images", "import", "--no-unpack", str(archives["oci"]))
    out = tmp_path / "out.tar"
    corral.corral("images", "export", str(out), NAME)
    assert out.read_bytes() == archives["oci"].read_bytes()
    missing = tmp_path / "missing.tar"
    result = corral.corral("images", "export", str(missing), "nope:1", check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == 'corral: image "nope:1": not found'
    assert not missing.exists() and sorted(p.name for p in tmp_path.iterdir() if "missing" in p.name) == []


def test_progress_reaches_ctr2_with_the_saved_image(corral: Daemon, archives: dict[str, Path]) -> None:
    out = ctr2(corral.socket, "images", "import", str(archives["oci"])).stdout
    assert "Importing" in out
    assert any(NAME in line and "saved" in line for line in out.splitlines())
    events = json.dumps(out)
    assert "unpack" in events


def test_a_docker_archives_layer_is_the_compressed_blob_already_stored_as_containerd_names_it(
    tmp_path: Path, corral: Daemon, archives: dict[str, Path]
) -> None:
    cd = Containerd2(tmp_path / "containerd").start()
    try:
        for ctr in (lambda *a: ctr2(corral.socket, *a), cd.ctr):
            ctr("images", "import", str(archives["oci"]))
            ctr("images", "import", str(archives["docker-plain"]))
        ours = lines(ctr2(corral.socket, "images", "ls"))[1].split()
        theirs = lines(cd.ctr("images", "ls"))[1].split()
        assert ours[:3] == theirs[:3]
        assert ours[1] == "application/vnd.docker.distribution.manifest.v2+json"
    finally:
        cd.stop()


def test_compress_blobs_gzips_a_docker_archives_uncompressed_layers(
    corral: Daemon, archives: dict[str, Path]
) -> None:
    ctr2(corral.socket, "images", "import", "--compress-blobs", str(archives["docker-plain"]))
    (name, target) = lines(ctr2(corral.socket, "images", "ls"))[1].split()[:3:2]
    assert name == NAME
    manifest = json.loads(ctr2(corral.socket, "content", "get", target).stdout)
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.docker.image.rootfs.diff.tar.gzip"
    labels = content(corral)[layer["digest"]]
    assert labels.startswith("containerd.io/uncompressed=sha256:")
    assert ctr2(corral.socket, "images", "check").stdout.rstrip().endswith("true")


def test_a_pull_from_a_registry_that_does_not_answer_is_one_error_and_stores_nothing(
    corral: Daemon,
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ref = f"127.0.0.1:{port}/library/busybox:latest"
    result = ctr2(corral.socket, "images", "pull", "--plain-http", ref, check=False)
    assert result.returncode == 1
    assert f"failed to resolve image: registry 127.0.0.1:{port}" in result.stderr, result.stderr
    assert result.stderr.rstrip().endswith("unavailable")
    assert images(corral) == []
    assert lines(ctr2(corral.socket, "leases", "ls"))[1:] == []


def test_from_a_multi_platform_index_only_the_hosts_manifest_is_unpacked(
    corral: Daemon, tmp_path: Path
) -> None:
    from corral.plugins.images.build import LayerEntry, build_image, build_index, build_layer
    from corral.plugins.images.oci import Platform, chain_id

    host = build_image([build_layer([LayerEntry.file("etc/which", b"host\n")])])
    foreign = build_image(
        [build_layer([LayerEntry.file("etc/which", b"s390x\n")])], platform=Platform("linux", "s390x")
    )
    index = build_index([foreign, host])
    archive = tmp_path / "multi.tar"
    index.write_oci_archive(archive, ["docker.io/library/multi:1"])
    ctr2(corral.socket, "images", "import", str(archive))
    assert snapshots(corral) == [chain_id(host.diff_ids)]
    row = lines(ctr2(corral.socket, "images", "ls"))[1]
    assert "linux/amd64" in row or str(Platform.host()) in row
    assert "linux/s390x" in row


def test_concurrent_imports_of_the_same_archive_both_succeed_with_one_chain(
    corral: Daemon, archives: dict[str, Path]
) -> None:
    command = [str(containerd2_bin() / "ctr"), "-a", corral.socket, "images", "import"]
    running = [
        subprocess.Popen([*command, str(archives[kind])], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for kind in ("oci", "docker", "oci", "docker-plain")
    ]
    errors = [p.communicate(timeout=120)[1] for p in running]
    assert [p.returncode for p in running] == [0, 0, 0, 0], errors
    assert images(corral) == [NAME]
    assert len(snapshots(corral)) == 1
    assert lines(ctr2(corral.socket, "leases", "ls")) == ["ID CREATED AT LABELS"]


def test_an_archive_imported_into_two_namespaces_is_whole_in_each(
    corral: Daemon, archives: dict[str, Path]
) -> None:
    ctr2(corral.socket, "images", "import", str(archives["oci"]))
    ctr2(corral.socket, "images", "import", str(archives["oci"]), namespace="other")
    for ns in ("default", "other"):
        check = ctr2(corral.socket, "images", "check", namespace=ns).stdout
        assert "complete (2/2)" in check and check.rstrip().endswith("true"), ns
    ctr2(corral.socket, "images", "rm", "--sync", NAME)
    assert "complete (2/2)" in ctr2(corral.socket, "images", "check", namespace="other").stdout
