"""`ctr images pull` and `push` (containerd 1.6's client-side transfers) against corrald and a real
registry on loopback, with skopeo as the independent client on the other side of each round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from harness import Daemon
from registry_fixture import (
    Registry,
    StartRegistry,
    assert_round_trip,
    push_layout,
    push_two_arch_index,
    skopeo,
)
from tooling import require_root

pytestmark = pytest.mark.root


def test_pushed_by_skopeo_pulled_by_ctr_and_unpacked(
    daemon: Daemon, registry: Registry, busybox_layout: Path
) -> None:
    require_root()
    push_layout(busybox_layout, registry, "library/busybox:1")
    ref = f"{registry.host}/library/busybox:1"
    daemon.ctr("images", "pull", "--plain-http", ref)
    listed = daemon.ctr("images", "ls", "-q").stdout.split()
    assert listed == [ref]
    manifest = json.loads(skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{ref}").stdout)
    layer = manifest["layers"][0]["digest"]
    assert layer in daemon.ctr("content", "ls", "-q").stdout.split()
    # unpacked: the committed snapshot is the layer's chain ID, as ctr's unpacker names it
    snapshots = daemon.ctr("snapshots", "ls").stdout
    assert "Committed" in snapshots
    checked = daemon.ctr("images", "check").stdout
    assert "complete" in checked


def test_pushed_by_ctr_inspected_and_copied_back_by_skopeo_byte_identical(
    daemon: Daemon, registry: Registry, busybox_layout: Path, tmp_path: Path
) -> None:
    require_root()
    push_layout(busybox_layout, registry, "library/busybox:1")
    source = f"{registry.host}/library/busybox:1"
    daemon.ctr("images", "pull", "--plain-http", source)
    target = f"{registry.host}/corral/copy:2"
    daemon.ctr("images", "push", "--plain-http", target, source)
    assert_round_trip(source, target, busybox_layout, tmp_path)


def test_a_multi_arch_index_pulls_only_the_host_platform_unless_all_platforms(
    daemon: Daemon, registry: Registry, tmp_path: Path
) -> None:
    require_root()
    multi = push_two_arch_index(registry, tmp_path, "corral/multi:1")
    ref, host_layer, other_layer = multi.ref, multi.host_layer, multi.other_layer
    registry.mark()
    daemon.ctr("images", "pull", "--plain-http", ref)
    fetched = {
        a.path.rsplit("/", 1)[-1] for a in registry.accesses() if a.method == "GET" and "/blobs/" in a.path
    }
    assert host_layer in fetched and other_layer not in fetched
    held = daemon.ctr("content", "ls", "-q").stdout.split()
    assert host_layer in held and other_layer not in held
    daemon.ctr("images", "rm", "--sync", ref)
    registry.mark()
    daemon.ctr("images", "pull", "--plain-http", "--all-platforms", ref)
    fetched = {
        a.path.rsplit("/", 1)[-1] for a in registry.accesses() if a.method == "GET" and "/blobs/" in a.path
    }
    assert {host_layer, other_layer} <= fetched


def test_wrong_credentials_are_one_error_and_store_nothing(
    daemon: Daemon, start_registries: StartRegistry, busybox_layout: Path
) -> None:
    require_root()
    registry = start_registries(username="corral", password="s3cret-pass")
    skopeo(
        "copy", "--dest-tls-verify=false", "--dest-creds", "corral:s3cret-pass",
        f"oci:{busybox_layout}:latest", f"docker://{registry.host}/library/busybox:1",
    )  # fmt: skip
    ref = f"{registry.host}/library/busybox:1"
    failed = daemon.ctr("images", "pull", "--plain-http", "--user", "corral:wrong", ref, check=False)
    assert failed.returncode != 0
    assert "401" in failed.stderr or "unauthorized" in failed.stderr.lower()
    assert daemon.ctr("images", "ls", "-q").stdout.split() == []
    daemon.ctr("images", "pull", "--plain-http", "--user", "corral:s3cret-pass", ref)
    assert daemon.ctr("images", "ls", "-q").stdout.split() == [ref]
