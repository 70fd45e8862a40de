"""Images and containers through the real ctr, side by side with Debian's containerd.

ctr 1.6 imports and exports client-side: it writes the archive's blobs through Content, names them
through Images, unpacks through Snapshots and Diff, and reads everything back for ls, check and
export. Each test runs the same ctr commands against corrald and containerd and compares.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from containerd_daemon import Containerd
from harness import Daemon
from tooling import require_root

from corral.plugins.images.build import (
    BusyboxImage,
    build_busybox_image,
    build_image,
    build_index,
    layer_from_directory,
)
from corral.plugins.images.oci import Platform

OCI_NAME = "docker.io/library/busybox:oci"
DOCKER_NAME = "docker.io/library/busybox:docker"


@dataclass(frozen=True)
class Archives:
    oci: BusyboxImage
    docker: BusyboxImage


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Archives:
    base = tmp_path_factory.mktemp("archives")
    return Archives(
        oci=build_busybox_image(base / "busybox-oci.tar", names=[OCI_NAME]),
        docker=build_busybox_image(base / "busybox-docker.tar", archive_format="docker", names=[DOCKER_NAME]),
    )


Ctr = Daemon | Containerd


def rows(output: str) -> list[list[str]]:
    """A ctr listing without its header, each row split on whitespace."""
    return [line.split() for line in output.splitlines()[1:] if line.strip()]


def import_both(both: tuple[Daemon, Containerd], archives: Archives) -> None:
    for d in both:
        for archive in (archives.oci, archives.docker):
            assert archive.path is not None
            out = d.ctr("images", "import", str(archive.path)).stdout
            assert "unpacking" in out and "done" in out


def blobs_on_disk(d: Daemon) -> list[str]:
    return sorted(p.name for p in (d.base / "root").glob("io.containerd.content.v1.content/blobs/*/*"))


def wait_for(check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


# -- images -------------------------------------------------------------------------------------


def test_imported_archives_list_and_check_as_in_containerd(
    both: tuple[Daemon, Containerd], archives: Archives
) -> None:
    import_both(both, archives)
    corral, containerd = both
    listed = rows(corral.ctr("images", "ls").stdout)
    assert [r[0] for r in listed] == [DOCKER_NAME, OCI_NAME]
    assert listed == rows(containerd.ctr("images", "ls").stdout)
    checked = rows(corral.ctr("images", "check").stdout)
    assert all("complete" in r and r[-1] == "true" for r in checked), checked
    assert checked == rows(containerd.ctr("images", "check").stdout)
    # The image's target is the archive's manifest, by digest.
    assert rows(corral.ctr("images", "ls", f"name=={OCI_NAME}").stdout)[0][2] == archives.oci.digest
    assert corral.ctr("images", "ls", "-q").stdout == containerd.ctr("images", "ls", "-q").stdout
    snapshots = rows(corral.ctr("snapshots", "ls").stdout)
    assert snapshots == rows(containerd.ctr("snapshots", "ls").stdout)
    assert [s[-1] for s in snapshots] == ["Committed"]


def test_export_gives_containerds_archive_and_reimports_into_containerd(
    both: tuple[Daemon, Containerd], archives: Archives, tmp_path: Path
) -> None:
    import_both(both, archives)
    corral, containerd = both
    ours, theirs = tmp_path / "corral-export.tar", tmp_path / "containerd-export.tar"
    corral.ctr("images", "export", str(ours), OCI_NAME, DOCKER_NAME)
    containerd.ctr("images", "export", str(theirs), OCI_NAME, DOCKER_NAME)
    with tarfile.open(ours) as a, tarfile.open(theirs) as b:
        assert a.getnames() == b.getnames()
        for name in a.getnames():
            fa, fb = a.extractfile(name), b.extractfile(name)
            ma, mb = (fa.read() if fa else None), (fb.read() if fb else None)
            if name == "manifest.json" and ma and mb:
                # containerd writes docker's manifest.json in map order: compare its entries.
                assert sorted(json.loads(ma), key=str) == sorted(json.loads(mb), key=str)
            else:
                assert ma == mb, name
    containerd.ctr("images", "rm", "--sync", OCI_NAME, DOCKER_NAME)
    assert rows(containerd.ctr("images", "ls").stdout) == []
    containerd.ctr("images", "import", str(ours))
    checked = rows(containerd.ctr("images", "check").stdout)
    assert [r[0] for r in checked] == [DOCKER_NAME, OCI_NAME]
    assert all("complete" in r for r in checked)


def test_label_then_rm_and_collection_as_in_containerd(
    both: tuple[Daemon, Containerd], archives: Archives
) -> None:
    import_both(both, archives)
    corral, containerd = both
    for d in both:
        assert sorted(d.ctr("images", "label", OCI_NAME, "team=web", "tier=1").stdout.strip().split(",")) == [
            "team=web",
            "tier=1",
        ]
        assert d.ctr("images", "label", OCI_NAME, "tier=").stdout.strip() == "team=web"
    assert rows(corral.ctr("images", "ls").stdout) == rows(containerd.ctr("images", "ls").stdout)
    assert rows(corral.ctr("images", "ls", "labels.team==web").stdout)[0][0] == OCI_NAME

    # The two images share their layer's snapshot; removing one leaves what the other holds.
    for d in both:
        assert d.ctr("images", "rm", "--sync", OCI_NAME).stdout.strip() == OCI_NAME
    assert rows(corral.ctr("snapshots", "ls").stdout) == rows(containerd.ctr("snapshots", "ls").stdout)
    assert len(rows(corral.ctr("snapshots", "ls").stdout)) == 1
    remaining = {r[0] for r in rows(corral.ctr("content", "ls").stdout)}
    assert remaining == {r[0] for r in rows(containerd.ctr("content", "ls").stdout)}
    assert archives.oci.digest not in remaining
    # Left: the docker image's own manifest, and the config and layer both images shared.
    assert set(archives.docker.image.blobs) - {archives.oci.digest} < remaining
    assert len(remaining) == 3
    assert set(blobs_on_disk(corral)) == {d.partition(":")[2] for d in remaining}

    for d in both:
        d.ctr("images", "rm", "--sync", DOCKER_NAME)
        assert rows(d.ctr("images", "ls").stdout) == []
        assert rows(d.ctr("content", "ls").stdout) == []
        assert rows(d.ctr("snapshots", "ls").stdout) == []
    assert blobs_on_disk(corral) == []
    assert list((corral.base / "root").glob("io.containerd.snapshotter.v1.overlayfs/snapshots/*")) == []


def test_missing_images_fail_as_in_containerd(both: tuple[Daemon, Containerd]) -> None:
    for args in (("images", "rm", "nope:1"), ("images", "label", "nope:1", "a=b"), ("images", "check")):
        ours = both[0].ctr(*args, check=False)
        theirs = both[1].ctr(*args, check=False)
        assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout), args
        assert ours.stderr.split("msg=")[-1] == theirs.stderr.split("msg=")[-1], args


# -- containers ---------------------------------------------------------------------------------


def info(d: Ctr, container_id: str) -> dict[str, object]:
    data: dict[str, object] = json.loads(d.ctr("containers", "info", container_id).stdout)
    for key in ("CreatedAt", "UpdatedAt"):
        assert data.pop(key)
    return data


def test_containers_create_ls_info_label_rm_as_in_containerd(
    both: tuple[Daemon, Containerd], archives: Archives
) -> None:
    import_both(both, archives)
    corral, containerd = both
    for d in both:
        d.ctr("containers", "create", "--label", "role=web", OCI_NAME, "web", "echo", "hi")
        d.ctr("containers", "create", DOCKER_NAME, "plain")
    assert rows(corral.ctr("containers", "ls").stdout) == rows(containerd.ctr("containers", "ls").stdout)
    assert [r[0] for r in rows(corral.ctr("containers", "ls").stdout)] == ["plain", "web"]
    assert rows(corral.ctr("containers", "ls", "labels.role==web").stdout)[0][0] == "web"
    ours, theirs = info(corral, "web"), info(containerd, "web")
    assert ours == theirs
    assert ours["Runtime"] == {
        "Name": "io.containerd.runc.v2",
        "Options": {"type_url": "containerd.runc.v1.Options"},
    }
    spec = ours["Spec"]
    assert isinstance(spec, dict) and spec["process"]["args"] == ["echo", "hi"]
    assert ours["SnapshotKey"] == "web" and ours["Snapshotter"] == "overlayfs"

    for d in both:
        assert "team=a" in d.ctr("containers", "label", "web", "team=a").stdout.strip().split(",")
    assert info(corral, "web") == info(containerd, "web")

    for d in both:
        d.ctr("containers", "rm", "web")
    assert rows(corral.ctr("containers", "ls").stdout) == rows(containerd.ctr("containers", "ls").stdout)
    assert rows(corral.ctr("snapshots", "ls").stdout) == rows(containerd.ctr("snapshots", "ls").stdout)
    missing = [d.ctr("containers", "info", "web", check=False) for d in both]
    assert missing[0].returncode == missing[1].returncode == 1
    assert (
        missing[0].stderr == missing[1].stderr == 'ctr: container "web" in namespace "default": not found\n'
    )
    dup = [d.ctr("containers", "create", DOCKER_NAME, "plain", check=False) for d in both]
    assert dup[0].returncode != 0 and dup[0].stderr == dup[1].stderr
    unknown = [d.ctr("containers", "create", "docker.io/library/nope:1", "x", check=False) for d in both]
    assert unknown[0].returncode != 0 and unknown[0].stderr == unknown[1].stderr


def test_a_containers_snapshot_survives_collection_until_the_container_goes(
    daemon: Daemon, archives: Archives
) -> None:
    require_root()
    assert archives.oci.path is not None
    daemon.ctr("images", "import", str(archives.oci.path))
    daemon.ctr("containers", "create", OCI_NAME, "keeper")
    daemon.ctr("images", "rm", "--sync", OCI_NAME)
    # The image's blobs go; the container's rootfs and the layer under it stay.
    assert rows(daemon.ctr("content", "ls").stdout) == []
    kinds = {r[0]: r[-1] for r in rows(daemon.ctr("snapshots", "ls").stdout)}
    assert kinds["keeper"] == "Active" and sorted(kinds.values()) == ["Active", "Committed"]
    daemon.restart()
    daemon.ctr("leases", "ls")
    assert "keeper" in {r[0] for r in rows(daemon.ctr("snapshots", "ls").stdout)}
    daemon.ctr("containers", "rm", "keeper")
    on_disk = daemon.base / "root" / "io.containerd.snapshotter.v1.overlayfs" / "snapshots"
    # The collection that follows the removal takes the layer's record, then its directory.
    wait_for(lambda: rows(daemon.ctr("snapshots", "ls").stdout) == [] and not any(on_disk.iterdir()))


def test_image_and_container_events_are_containerds(daemon: Daemon, archives: Archives) -> None:
    require_root()
    assert archives.oci.path is not None
    events = subprocess.Popen(
        ["ctr", "-a", daemon.socket, "events"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        time.sleep(0.5)
        daemon.ctr("images", "import", str(archives.oci.path))
        daemon.ctr("images", "label", OCI_NAME, "a=b")
        daemon.ctr("containers", "create", OCI_NAME, "ev")
        daemon.ctr("containers", "label", "ev", "x=y")
        daemon.ctr("containers", "rm", "ev")
        daemon.ctr("images", "rm", OCI_NAME)
        time.sleep(0.5)
    finally:
        events.terminate()
        out, _ = events.communicate(timeout=10)
    # Each line: date, time, zone offset, zone, namespace, topic, event as JSON.
    topics = [line.split()[5] for line in out.splitlines() if len(line.split()) > 6]
    wanted = ["/images/create", "/images/update", "/containers/create", "/containers/update",
              "/containers/delete", "/images/delete"]  # fmt: skip
    assert [t for t in topics if t in wanted] == wanted
    assert f'"name":"{OCI_NAME}"' in out
    assert '"runtime":{"name":"io.containerd.runc.v2"' in out


def test_a_multi_platform_index_lists_and_checks_as_in_containerd(
    both: tuple[Daemon, Containerd], tmp_path: Path
) -> None:
    host = Platform.host()
    other = Platform("linux", "arm64" if host.architecture != "arm64" else "amd64")
    layers = [layer_from_directory(_tree(tmp_path / "tree"))]
    index = build_index([build_image(layers, platform=host), build_image(layers, platform=other, cmd=["x"])])
    archive = index.write_oci_archive(tmp_path / "index.tar", ["docker.io/library/multi:1"])
    for d in both:
        d.ctr("images", "import", str(archive))
        d.ctr("images", "import", "--all-platforms", "--no-unpack", "--base-name", "docker.io/library/multi",
              str(archive))  # fmt: skip
    corral, containerd = both
    listed = rows(corral.ctr("images", "ls").stdout)
    assert listed == rows(containerd.ctr("images", "ls").stdout)
    assert listed[0][1] == "application/vnd.oci.image.index.v1+json"
    assert {f"linux/{host.architecture}", f"linux/{other.architecture}"} <= set(listed[0][5].split(","))
    assert rows(corral.ctr("images", "check").stdout) == rows(containerd.ctr("images", "check").stdout)
    # what the imports' leases held goes at the next collection, which each daemon runs in its own
    # time after ctr returns: compare after one that both have finished
    for d in both:
        d.ctr("leases", "create", "--id", "collect-now")
        d.ctr("leases", "rm", "--sync", "collect-now")
    assert rows(corral.ctr("content", "ls", "-q").stdout) == rows(
        containerd.ctr("content", "ls", "-q").stdout
    )
    filtered = "target.mediatype==application/vnd.oci.image.index.v1+json"
    assert corral.ctr("images", "ls", "-q", filtered).stdout == "docker.io/library/multi:1\n"


def _tree(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hello").write_text("hi\n")
    return root


def test_import_and_create_on_the_native_snapshotter_as_in_containerd(
    both: tuple[Daemon, Containerd], archives: Archives
) -> None:
    assert archives.docker.path is not None
    for d in both:
        d.ctr("images", "import", "--snapshotter", "native", str(archives.docker.path))
        d.ctr("containers", "create", "--snapshotter", "native", DOCKER_NAME, "n1")
    corral, containerd = both
    native = ("snapshots", "--snapshotter", "native", "ls")
    assert rows(corral.ctr(*native).stdout) == rows(containerd.ctr(*native).stdout)
    assert {r[0] for r in rows(corral.ctr(*native).stdout)} == {"n1", archives.docker.image.chain_id}
    assert rows(corral.ctr("snapshots", "ls").stdout) == []  # nothing on overlayfs
    assert info(corral, "n1") == info(containerd, "n1")
    assert info(corral, "n1")["Snapshotter"] == "native"
    for d in both:
        d.ctr("containers", "rm", "n1")
        d.ctr("images", "rm", "--sync", DOCKER_NAME)
    assert rows(corral.ctr(*native).stdout) == rows(containerd.ctr(*native).stdout) == []
