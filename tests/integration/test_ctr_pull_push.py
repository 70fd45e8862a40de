"""`ctr images pull` and `push` (containerd 1.6's client-side transfers) against corrald and a real
registry on loopback, with skopeo as the independent client on the other side of each round trip."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from harness import Daemon
from registry_fixture import Registry, StartRegistry
from tooling import require_root, require_tool

from corral.plugins.images.build import build_busybox_image, build_image, build_index, layer_from_directory
from corral.plugins.images.oci import Platform

pytestmark = pytest.mark.root


def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([require_tool("skopeo"), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"skopeo {' '.join(args)}: {result.stderr}"
    return result


def push_layout(layout: Path, registry: Registry, repo: str, *, all_images: bool = False) -> None:
    flags = ["--all"] if all_images else []
    skopeo(
        "copy", *flags, "--dest-tls-verify=false", f"oci:{layout}:latest", f"docker://{registry.host}/{repo}"
    )


@pytest.fixture
def busybox_layout(tmp_path: Path) -> Path:
    image = build_busybox_image()
    return image.image.write_oci_layout(tmp_path / "busybox-layout", ["latest"])


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
    raw_source = skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{source}").stdout
    raw_target = skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{target}").stdout
    assert raw_target == raw_source
    back = tmp_path / "back"
    skopeo("copy", "--src-tls-verify=false", f"docker://{target}", f"oci:{back}:copy")
    index = json.loads((back / "index.json").read_text())
    original = json.loads((busybox_layout / "index.json").read_text())
    assert index["manifests"][0]["digest"] == original["manifests"][0]["digest"]


def test_a_multi_arch_index_pulls_only_the_host_platform_unless_all_platforms(
    daemon: Daemon, registry: Registry, tmp_path: Path
) -> None:
    require_root()
    trees = {}
    images = []
    for arch in ("amd64", "arm64"):
        tree = tmp_path / f"tree-{arch}"
        tree.mkdir()
        (tree / "arch").write_text(arch + "\n")
        image = build_image([layer_from_directory(tree)], platform=Platform("linux", arch), cmd=["/bin/true"])
        trees[arch] = image
        images.append(image)
    index = build_index(images)
    layout = index.write_oci_layout(tmp_path / "multi", ["latest"])
    push_layout(layout, registry, "corral/multi:1", all_images=True)
    ref = f"{registry.host}/corral/multi:1"
    host = Platform.host().architecture
    other = "arm64" if host == "amd64" else "amd64"
    host_layer = trees[host].manifest.layers[0].digest
    other_layer = trees[other].manifest.layers[0].digest
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
