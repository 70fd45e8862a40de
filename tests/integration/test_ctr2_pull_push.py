"""containerd 2.x's ctr pulls and pushes through corral's Transfer service, against a real registry
on loopback, with skopeo as the independent client on the other side."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from containerd2 import containerd2_bin, ctr2
from harness import Daemon
from registry_fixture import Registry
from test_ctr_pull_push import push_layout, skopeo
from tooling import require_root

from corral.plugins.images.build import build_busybox_image

pytestmark = pytest.mark.root


@pytest.fixture
def corral(tmp_path: Path) -> Iterator[Daemon]:
    require_root()
    containerd2_bin()
    d = Daemon(tmp_path / "corral").start()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def busybox_layout(tmp_path: Path) -> Path:
    image = build_busybox_image()
    return image.image.write_oci_layout(tmp_path / "busybox-layout", ["latest"])


def lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


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
    raw_source = skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{ref}").stdout
    raw_target = skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{target}").stdout
    assert raw_target == raw_source
    back = tmp_path / "back"
    skopeo("copy", "--src-tls-verify=false", f"docker://{target}", f"oci:{back}:copy")
    index = json.loads((back / "index.json").read_text())
    original = json.loads((busybox_layout / "index.json").read_text())
    assert index["manifests"][0]["digest"] == original["manifests"][0]["digest"]
