"""Snapshots through the real ctr, for overlayfs and native: the printed mounts work by hand."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from harness import Daemon
from tooling import require_root

SNAPSHOTTERS = ["overlayfs", "native"]


@pytest.fixture(params=SNAPSHOTTERS)
def snapshotter(request: pytest.FixtureRequest) -> str:
    require_root()
    return str(request.param)


def snap(d: Daemon, snapshotter: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return d.ctr("snapshots", "--snapshotter", snapshotter, *args, check=check)


class Mounted:
    """Mount a snapshot with the command line ctr prints, as an operator would."""

    def __init__(self, d: Daemon, snapshotter: str, key: str, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        self.command = snap(d, snapshotter, "mounts", str(target), key).stdout.strip()
        self.target = target

    def __enter__(self) -> Path:
        for line in self.command.splitlines():
            subprocess.run(line, shell=True, check=True, capture_output=True)
        return self.target

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["umount", str(self.target)], check=True)


@pytest.fixture
def mnt(tmp_path: Path) -> Path:
    return tmp_path / "mnt"


def test_prepare_commit_view_chain_with_mounts_run_by_hand(
    daemon: Daemon, snapshotter: str, mnt: Path
) -> None:
    snap(daemon, snapshotter, "prepare", "base")
    with Mounted(daemon, snapshotter, "base", mnt) as root:
        (root / "from-base").write_text("base layer")
        (root / "dir").mkdir()
        (root / "dir" / "gone").write_text("to be deleted")
    snap(daemon, snapshotter, "commit", "base-c", "base")
    snap(daemon, snapshotter, "prepare", "child", "base-c")
    with Mounted(daemon, snapshotter, "child", mnt) as root:
        assert (root / "from-base").read_text() == "base layer"
        (root / "dir" / "gone").unlink()
        (root / "from-child").write_text("child layer")
    snap(daemon, snapshotter, "commit", "child-c", "child")
    snap(daemon, snapshotter, "view", "look", "child-c")
    with Mounted(daemon, snapshotter, "look", mnt) as root:
        assert (root / "from-base").read_text() == "base layer"
        assert (root / "from-child").read_text() == "child layer"
        assert not (root / "dir" / "gone").exists()
        with pytest.raises(OSError, match="Read-only file system"):
            (root / "readonly").write_text("x")

    rows = {line.split()[0]: line.split() for line in snap(daemon, snapshotter, "ls").stdout.splitlines()[1:]}
    assert rows["base-c"][-1] == "Committed"
    assert rows["child-c"][1:] == ["base-c", "Committed"]
    assert rows["look"][1:] == ["child-c", "View"]
    tree = snap(daemon, snapshotter, "tree").stdout
    assert "base-c" in tree and "\\_ child-c" in tree and "\\_ look" in tree


def test_info_label_usage_and_remove_rules(daemon: Daemon, snapshotter: str, mnt: Path) -> None:
    snap(daemon, snapshotter, "prepare", "a")
    with Mounted(daemon, snapshotter, "a", mnt) as root:
        (root / "blob").write_bytes(b"x" * 300_000)
    snap(daemon, snapshotter, "commit", "a-c", "a")
    snap(daemon, snapshotter, "prepare", "b", "a-c")
    info = json.loads(snap(daemon, snapshotter, "info", "a-c").stdout)
    assert info["Name"] == "a-c"
    assert "containerd.io/gc.root" in info["Labels"]
    # As containerd: a commit makes a new record, created and updated at the same instant.
    assert info["Created"] == info["Updated"]
    snap(daemon, snapshotter, "label", "a-c", "team=storage")
    assert json.loads(snap(daemon, snapshotter, "info", "a-c").stdout)["Labels"]["team"] == "storage"
    usage = {line.split()[0]: line for line in snap(daemon, snapshotter, "usage").stdout.splitlines()[1:]}
    assert "KiB" in usage["a-c"] or "MiB" in usage["a-c"]
    busy = snap(daemon, snapshotter, "rm", "a-c", check=False)
    assert busy.returncode != 0
    assert "failed precondition" in busy.stderr
    missing = snap(daemon, snapshotter, "rm", "nonexist", check=False)
    assert missing.returncode != 0
    assert "snapshot nonexist does not exist: not found" in missing.stderr
    snap(daemon, snapshotter, "rm", "b")
    snap(daemon, snapshotter, "rm", "a-c")
    assert snap(daemon, snapshotter, "ls").stdout.splitlines()[1:] == []


def test_prepare_on_missing_parent_and_duplicate_key_fail_cleanly(daemon: Daemon, snapshotter: str) -> None:
    missing = snap(daemon, snapshotter, "prepare", "x", "no-such-parent", check=False)
    assert missing.returncode != 0
    assert "not found" in missing.stderr
    snap(daemon, snapshotter, "prepare", "dup")
    dup = snap(daemon, snapshotter, "prepare", "dup", check=False)
    assert dup.returncode != 0
    assert "already exists" in dup.stderr
    assert [line.split()[0] for line in snap(daemon, snapshotter, "ls").stdout.splitlines()[1:]] == ["dup"]


def test_snapshots_are_per_namespace(daemon: Daemon, snapshotter: str) -> None:
    snap(daemon, snapshotter, "prepare", "mine")
    other = daemon.ctr(
        "snapshots", "--snapshotter", snapshotter, "ls", namespace="other"
    ).stdout.splitlines()[1:]
    assert other == []
