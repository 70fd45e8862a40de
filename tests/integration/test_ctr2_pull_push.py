"""containerd 2.x's ctr pulls and pushes through corral's Transfer service, against a real registry
on loopback, with skopeo as the independent client on the other side."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from containerd2 import Containerd2, containerd2_bin, ctr2, lines
from harness import Daemon
from registry_fixture import (
    Registry,
    StartRegistry,
    ThrottledProxy,
    assert_round_trip,
    push_layout,
    skopeo,
)
from tooling import require_root

from corral.plugins.images.build import LayerEntry, build_image, build_layer

pytestmark = pytest.mark.root


def test_ctr2_pull_unpacks_and_push_round_trips_byte_identical(
    corral: Daemon, registry: Registry, busybox_layout: Path, tmp_path: Path
) -> None:
    push_layout(busybox_layout, registry, "library/busybox:1")
    ref = f"{registry.host}/library/busybox:1"
    out = ctr2(corral.socket, "images", "pull", "--plain-http", ref)
    assert "saved" in out.stdout or ref in out.stdout, out.stdout
    assert lines(ctr2(corral.socket, "images", "ls", "-q")) == [ref]
    check = ctr2(corral.socket, "images", "check").stdout
    assert "complete" in check
    snapshots = lines(ctr2(corral.socket, "snapshots", "ls"))
    assert any("Committed" in row for row in snapshots[1:])
    target = f"{registry.host}/corral/copy:2"
    ctr2(corral.socket, "images", "tag", ref, target)
    ctr2(corral.socket, "images", "push", "--plain-http", target)
    assert_round_trip(ref, target, busybox_layout, tmp_path)


@pytest.fixture
def containerd(tmp_path: Path) -> Iterator[Containerd2]:
    require_root()
    d = Containerd2(tmp_path / "containerd").start()
    try:
        yield d
    finally:
        d.stop()


def _content_labels(address: str) -> dict[str, set[str]]:
    rows = lines(ctr2(address, "content", "ls"))[1:]
    found = {}
    for row in rows:
        parts = row.split()
        labels = parts[-1] if "=" in parts[-1] else ""
        found[parts[0]] = {label.split("=")[0] for label in labels.split(",") if label}
    return found


def test_ctr2_pull_stores_what_containerd_2_stores(
    corral: Daemon, containerd: Containerd2, registry: Registry, busybox_layout: Path
) -> None:
    push_layout(busybox_layout, registry, "library/busybox:1")
    ref = f"{registry.host}/library/busybox:1"
    outputs = {}
    for address in (corral.socket, containerd.socket):
        outputs[address] = ctr2(address, "images", "pull", "--plain-http", ref).stdout
    ours, theirs = _content_labels(corral.socket), _content_labels(containerd.socket)
    assert ours == theirs, (ours, theirs, outputs)
    assert lines(ctr2(corral.socket, "images", "ls", "-q")) == lines(
        ctr2(containerd.socket, "images", "ls", "-q")
    )
    for address in (corral.socket, containerd.socket):
        assert f"{ref}" in outputs[address] and "saved" in outputs[address]
    assert [row.split()[0] for row in lines(ctr2(corral.socket, "snapshots", "ls"))] == [
        row.split()[0] for row in lines(ctr2(containerd.socket, "snapshots", "ls"))
    ]


def test_ctr2_pull_with_wrong_credentials_fails_as_on_containerd_2_and_stores_nothing(
    corral: Daemon, containerd: Containerd2, start_registries: StartRegistry, busybox_layout: Path
) -> None:
    registry = start_registries(username="corral", password="s3cret-pass")
    skopeo(
        "copy", "--dest-tls-verify=false", "--dest-creds", "corral:s3cret-pass",
        f"oci:{busybox_layout}:latest", f"docker://{registry.host}/library/busybox:1",
    )  # fmt: skip
    ref = f"{registry.host}/library/busybox:1"
    for address in (corral.socket, containerd.socket):
        failed = ctr2(address, "images", "pull", "--plain-http", "--user", "corral:wrong", ref, check=False)
        assert failed.returncode != 0
        assert "401" in failed.stderr or "unauthorized" in failed.stderr.lower(), failed.stderr
        assert lines(ctr2(address, "images", "ls", "-q")) == []
    assert lines(ctr2(corral.socket, "content", "ls", "-q")) == []
    ctr2(corral.socket, "images", "pull", "--plain-http", "--user", "corral:s3cret-pass", ref)
    assert lines(ctr2(corral.socket, "images", "ls", "-q")) == [ref]


@pytest.mark.parametrize("limit", [1, 3])
def test_max_concurrent_downloads_bounds_the_blobs_downloading_at_once(
    tmp_path: Path, registry: Registry, limit: int
) -> None:
    require_root()
    containerd2_bin()
    layers = [build_layer([LayerEntry.file(f"f{i}", os.urandom(6 << 20))]) for i in range(4)]
    image = build_image(layers, cmd=["/f0"])
    layout = image.write_oci_layout(tmp_path / "four", ["latest"])
    push_layout(layout, registry, "corral/four:1")
    proxy = ThrottledProxy(registry.port, rate=6 << 20)
    config = (
        f'version = 3\n[plugins."io.containerd.transfer.v1.local"]\n  max_concurrent_downloads = {limit}\n'
    )
    d = Daemon(tmp_path / "corral", config=config).start()
    try:
        ref = f"{proxy.host}/corral/four:1"
        pull = subprocess.Popen(
            [str(containerd2_bin() / "ctr"), "-a", d.socket, "images", "pull", "--plain-http", ref],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        most = 0
        while pull.poll() is None:
            active = [row for row in lines(ctr2(d.socket, "content", "active"))[1:] if "sha256:" in row]
            most = max(most, len(active))
            time.sleep(0.05)
        assert pull.returncode == 0, pull.stderr.read() if pull.stderr else ""
        assert 1 <= most <= limit
        if limit > 1:
            assert most > 1
    finally:
        d.stop()
        proxy.stop()


DENY_BAD = """\
#!/bin/sh
case "$2" in
  *:bad) echo "images tagged :bad are not allowed here"; exit 3 ;;
esac
echo "fine: $2"
"""


def test_a_verifier_judges_a_pull_before_any_layer_is_downloaded(
    tmp_path: Path, registry: Registry, busybox_layout: Path
) -> None:
    require_root()
    containerd2_bin()
    bin_dir = tmp_path / "verifiers"
    bin_dir.mkdir()
    (bin_dir / "deny-bad").write_text(DENY_BAD)
    (bin_dir / "deny-bad").chmod(0o755)
    config = f'version = 3\n[plugins."io.containerd.image-verifier.v1.bindir"]\n  bin_dir = "{bin_dir}"\n'
    d = Daemon(tmp_path / "corral", config=config).start()
    try:
        push_layout(busybox_layout, registry, "library/busybox:bad")
        push_layout(busybox_layout, registry, "library/busybox:good")
        registry.mark()
        bad = f"{registry.host}/library/busybox:bad"
        denied = ctr2(d.socket, "images", "pull", "--plain-http", bad, check=False)
        assert denied.returncode != 0
        assert f"image verifier bindir blocked pull of {bad}" in denied.stderr, denied.stderr
        assert "images tagged :bad are not allowed here" in denied.stderr
        assert not [a for a in registry.accesses() if "/blobs/" in a.path]
        assert lines(ctr2(d.socket, "images", "ls", "-q")) == []
        assert lines(ctr2(d.socket, "content", "ls", "-q")) == []
        good = f"{registry.host}/library/busybox:good"
        ctr2(d.socket, "images", "pull", "--plain-http", good)
        assert lines(ctr2(d.socket, "images", "ls", "-q")) == [good]
    finally:
        d.stop()


def test_ctr2_pull_unpacks_into_the_snapshotter_asked_for(
    corral: Daemon, registry: Registry, busybox_layout: Path
) -> None:
    push_layout(busybox_layout, registry, "library/busybox:1")
    ref = f"{registry.host}/library/busybox:1"
    ctr2(corral.socket, "images", "pull", "--plain-http", "--snapshotter", "native", ref)
    assert len(lines(ctr2(corral.socket, "snapshots", "--snapshotter", "native", "ls"))) == 2
    assert len(lines(ctr2(corral.socket, "snapshots", "ls"))) == 1  # overlayfs: only the header
    labels = lines(ctr2(corral.socket, "content", "ls"))
    assert any("containerd.io/gc.ref.snapshot.native=" in row for row in labels)
