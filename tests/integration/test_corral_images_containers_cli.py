"""``corral images`` and ``corral containers`` against a real corrald, beside the real ctr."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from harness import Daemon
from tooling import require_root

from corral.plugins.images.build import BusyboxImage, build_busybox_image

NAME = "docker.io/library/busybox:cli"


@pytest.fixture(scope="module")
def busybox(tmp_path_factory: pytest.TempPathFactory) -> BusyboxImage:
    return build_busybox_image(tmp_path_factory.mktemp("cli") / "busybox.tar", names=[NAME])


@pytest.fixture
def imported(daemon: Daemon, busybox: BusyboxImage) -> Daemon:
    require_root()
    assert busybox.path is not None
    daemon.ctr("images", "import", str(busybox.path))
    return daemon


def test_images_ls_check_label_and_rm(imported: Daemon, busybox: BusyboxImage) -> None:
    d = imported
    listed = json.loads(d.corral("images", "ls", "--format", "json").stdout)
    assert [(i["name"], i["target"]["digest"]) for i in listed] == [(NAME, busybox.digest)]
    assert listed[0]["platforms"] == [f"linux/{json.loads(busybox.image.config_bytes)['architecture']}"]
    assert listed[0]["size"] == sum(len(b) for b in busybox.image.blobs.values())
    table = d.corral("images", "ls").stdout.splitlines()
    assert table[0].split() == ["REF", "TYPE", "DIGEST", "SIZE", "PLATFORMS", "LABELS"]
    assert table[1].split()[:3] == [NAME, "application/vnd.oci.image.manifest.v1+json", busybox.digest]
    assert d.corral("images", "ls", "-q").stdout == f"{NAME}\n"

    check = d.corral("images", "check").stdout.splitlines()[1].split()
    ctr_check = d.ctr("images", "check").stdout.splitlines()[1].split()
    assert check[:5] == ctr_check[:5]  # REF TYPE DIGEST complete (2/2)
    assert check[-1] == ctr_check[-1] == "true"
    native = json.loads(d.corral("images", "check", "--snapshotter", "native", "--format", "json").stdout)
    assert native[0]["complete"] is True and native[0]["unpacked"] is False

    assert d.corral("images", "label", NAME, "team=web", "gone=x").stdout == "gone=x,team=web\n"
    assert d.corral("images", "label", NAME, "gone=").stdout == "team=web\n"
    assert d.ctr("images", "ls").stdout.splitlines()[1].split()[-1] == "team=web"
    assert d.corral("images", "ls", "-q", "labels.team==web").stdout == f"{NAME}\n"
    assert d.corral("images", "ls", "-q", "labels.team==db").stdout == ""

    missing = d.corral("images", "rm", "nope:1", check=False)
    assert (missing.returncode, missing.stderr) == (1, 'corral: image "nope:1": not found\n')
    bad = d.corral("images", "ls", "name==", check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("corral: filters: parse error")
    assert d.corral("images", "rm", "--sync", NAME).stdout == f"{NAME}\n"
    assert d.corral("images", "ls", "-q").stdout == ""
    assert d.ctr("content", "ls", "-q").stdout == ""
    assert d.ctr("snapshots", "ls").stdout.splitlines()[1:] == []


def test_containers_create_info_label_and_rm(imported: Daemon, busybox: BusyboxImage) -> None:
    d = imported
    assert (
        d.corral("containers", "create", "--label", "role=web", NAME, "web", "echo", "hi").stdout == "web\n"
    )
    d.ctr("containers", "create", NAME, "by-ctr", "echo", "hi")
    info = json.loads(d.corral("containers", "info", "web").stdout)
    assert info["image"] == NAME and info["snapshotter"] == "overlayfs" and info["snapshot_key"] == "web"
    assert info["runtime"] == {
        "name": "io.containerd.runc.v2",
        "options": {"type_url": "containerd.runc.v1.Options", "value": ""},
    }
    assert info["labels"] == {"io.containerd.image.config.stop-signal": "SIGTERM", "role": "web"}
    # The spec is the one ctr makes for the same image and arguments.
    theirs = json.loads(d.ctr("containers", "info", "by-ctr").stdout)["Spec"]
    ours = info["spec"]
    assert ours["process"] == theirs["process"] | {"args": ["echo", "hi"]}
    assert ours["root"] == theirs["root"] and ours["mounts"] == theirs["mounts"]
    ctr_view = json.loads(d.ctr("containers", "info", "web").stdout)
    assert ctr_view["Spec"] == ours and ctr_view["SnapshotKey"] == "web"

    rows = d.corral("containers", "ls").stdout.splitlines()
    assert [r.split()[0] for r in rows[1:]] == ["by-ctr", "web"]
    assert d.corral("containers", "ls", "-q", "labels.role==web").stdout == "web\n"
    listed = json.loads(d.corral("containers", "ls", "--format", "json").stdout)
    assert [c["id"] for c in listed] == ["by-ctr", "web"]

    assert d.corral("containers", "label", "web", "team=a", "role=").stdout == (
        "io.containerd.image.config.stop-signal=SIGTERM,team=a\n"
    )
    snapshots = {line.split()[0] for line in d.ctr("snapshots", "ls").stdout.splitlines()[1:]}
    assert {"web", "by-ctr"} <= snapshots

    dup = d.corral("containers", "create", NAME, "web", check=False)
    assert dup.returncode == 1 and dup.stderr == 'corral: snapshot "web": already exists\n'
    assert json.loads(d.corral("containers", "info", "web").stdout)["labels"]["team"] == "a"
    missing = d.corral("containers", "create", "docker.io/library/nope:1", "x", check=False)
    assert (missing.returncode, missing.stderr) == (
        1,
        'corral: image "docker.io/library/nope:1": not found\n',
    )
    assert "x" not in {line.split()[0] for line in d.ctr("snapshots", "ls").stdout.splitlines()[1:]}

    assert d.corral("containers", "rm", "web", "by-ctr").stdout == "web\nby-ctr\n"
    assert d.corral("containers", "ls", "-q").stdout == ""
    left = {line.split()[0] for line in d.ctr("snapshots", "ls").stdout.splitlines()[1:]}
    assert left == {busybox.image.chain_id}
    gone = d.corral("containers", "info", "web", check=False)
    assert (gone.returncode, gone.stderr) == (
        1,
        'corral: container "web" in namespace "default": not found\n',
    )


def test_a_failed_container_create_leaves_no_snapshot(imported: Daemon, tmp_path: Path) -> None:
    d = imported
    bad = d.corral("containers", "create", "--runtime", "", NAME, "norun", check=False)
    assert bad.returncode == 1 and "container.Runtime.Name must be set" in bad.stderr
    assert "norun" not in {line.split()[0] for line in d.ctr("snapshots", "ls").stdout.splitlines()[1:]}
    assert d.ctr("leases", "ls").stdout.splitlines()[1:] == []
