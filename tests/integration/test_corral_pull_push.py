"""``corral images pull`` and ``push`` through corrald's Transfer service against a real registry
on loopback: progress and summary, wrong credentials, a corrupted blob, a registry gone midway and
the resumed retry, hosts.toml mirrors, multi-arch indexes, and round trips checked by skopeo."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from harness import BIN, Daemon
from registry_fixture import (
    Registry,
    StartRegistry,
    ThrottledProxy,
    assert_round_trip,
    push_layout,
    push_two_arch_index,
    skopeo,
)
from tooling import require_root

from corral.plugins.images.build import (
    Compression,
    LayerEntry,
    build_image,
    build_layer,
)

pytestmark = pytest.mark.root


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def blob_gets(registry: Registry) -> list[str]:
    return [
        a.path.rsplit("/", 1)[-1] for a in registry.accesses() if a.method == "GET" and "/blobs/" in a.path
    ]


def held(d: Daemon) -> list[str]:
    return d.ctr("content", "ls", "-q").stdout.split()


def test_pull_reports_progress_as_json_and_a_second_pull_downloads_nothing(
    daemon: Daemon, registry: Registry, busybox_layout: Path
) -> None:
    require_root()
    push_layout(busybox_layout, registry, "library/busybox:1")
    ref = f"{registry.host}/library/busybox:1"
    out = daemon.corral("images", "pull", "--plain-http", "--format", "json", ref).stdout
    events = json_lines(out)
    kinds = {e["event"] for e in events}
    assert {"waiting", "complete", "saved"} <= kinds, kinds
    summary = events[-1]
    assert summary["event"] == "summary" and summary["images"] == [ref]
    assert summary["transferred"] == 3 and summary["already_present"] == 0  # manifest, config, layer
    assert daemon.corral("images", "ls", "-q").stdout.split() == [ref]
    assert "Committed" in daemon.ctr("snapshots", "ls").stdout
    registry.mark()
    table = daemon.corral("images", "pull", "--plain-http", ref).stdout
    assert table.startswith(f"pulled {ref}: ") and "0 downloaded" in table, table
    assert blob_gets(registry) == []


def test_wrong_credentials_are_one_line_naming_the_registry_and_store_nothing(
    daemon: Daemon, start_registries: StartRegistry, busybox_layout: Path
) -> None:
    require_root()
    registry = start_registries(username="corral", password="s3cret-pass")
    skopeo(
        "copy", "--dest-tls-verify=false", "--dest-creds", "corral:s3cret-pass",
        f"oci:{busybox_layout}:latest", f"docker://{registry.host}/library/busybox:1",
    )  # fmt: skip
    ref = f"{registry.host}/library/busybox:1"
    failed = daemon.corral("images", "pull", "--plain-http", "--user", "corral:wrong", ref, check=False)
    assert failed.returncode == 1
    message = failed.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert registry.host in message and "401" in message, message
    assert daemon.corral("images", "ls", "-q").stdout.split() == []
    assert held(daemon) == []
    daemon.corral("images", "pull", "--plain-http", "--user", "corral:s3cret-pass", ref)
    assert daemon.corral("images", "ls", "-q").stdout.split() == [ref]


def _registry_blob(registry: Registry, digest: str) -> Path:
    hexa = digest.split(":", 1)[1]
    return registry.root / "storage/docker/registry/v2/blobs/sha256" / hexa[:2] / hexa / "data"


def test_a_blob_that_does_not_match_its_digest_is_rejected_and_nothing_is_stored(
    daemon: Daemon, registry: Registry, busybox_layout: Path
) -> None:
    require_root()
    push_layout(busybox_layout, registry, "library/busybox:1")
    manifest = json.loads(
        skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{registry.host}/library/busybox:1").stdout
    )
    layer = manifest["layers"][0]["digest"]
    blob = _registry_blob(registry, layer)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    ref = f"{registry.host}/library/busybox:1"
    failed = daemon.corral("images", "pull", "--plain-http", ref, check=False)
    assert failed.returncode == 1
    assert layer in failed.stderr and "digest" in failed.stderr, failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1
    assert daemon.corral("images", "ls", "-q").stdout.split() == []
    assert held(daemon) == []
    assert daemon.ctr("content", "active").stdout.strip().splitlines()[1:] == []
    assert daemon.ctr("snapshots", "ls").stdout.strip().splitlines()[1:] == []


@pytest.fixture
def layered_layout(tmp_path: Path) -> tuple[Path, list[str], str]:
    """Three small layers and one of 24 MiB of incompressible bytes; (layout, layer digests, big one)."""
    layers = [build_layer([LayerEntry.file(f"small-{i}", os.urandom(4096))]) for i in range(3)]
    layers.append(build_layer([LayerEntry.file("big", os.urandom(24 << 20))], compression=Compression.GZIP))
    image = build_image(layers, cmd=["/big"])
    layout = image.write_oci_layout(tmp_path / "layered", ["latest"])
    digests = [layer.digest for layer in image.manifest.layers]
    return layout, digests, digests[3]


def test_a_registry_gone_midway_is_a_clear_error_and_the_retry_fetches_only_what_is_missing(
    daemon: Daemon, registry: Registry, layered_layout: tuple[Path, list[str], str]
) -> None:
    require_root()
    layout, layers, big = layered_layout
    proxy = ThrottledProxy(registry.port, rate=8 << 20)
    push_layout(layout, registry, "corral/layered:1")
    ref = f"{proxy.host}/corral/layered:1"
    pull = subprocess.Popen(
        [str(BIN / "corral"), "-a", daemon.socket, "images", "pull", "--plain-http", "-q", ref],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=daemon.environ(),
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and big not in daemon.ctr("content", "active").stdout:
        time.sleep(0.05)
    time.sleep(0.5)  # a few MiB of the big layer in
    port = proxy.port
    proxy.stop()
    _, stderr = pull.communicate(timeout=60)
    assert pull.returncode == 1, stderr
    assert proxy.host in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert daemon.corral("images", "ls", "-q").stdout.split() == []
    small_held = [d for d in layers[:3] if d in held(daemon)]
    assert small_held == layers[:3]
    assert big not in held(daemon)
    retry = ThrottledProxy(registry.port, rate=1 << 30, port=port)
    try:
        daemon.corral("images", "pull", "--plain-http", "-q", ref)
    finally:
        retry.stop()
    fetched = [
        (line, ranged) for line, ranged in retry.requests if "/blobs/" in line and line.startswith("GET")
    ]
    assert [line.split()[1].rsplit("/", 1)[-1] for line, _ in fetched] == [big], fetched
    assert fetched[0][1].startswith("bytes=") and not fetched[0][1].startswith("bytes=0-"), fetched
    assert daemon.corral("images", "ls", "-q").stdout.split() == [ref]
    assert "complete" in daemon.ctr("images", "check").stdout


def test_hosts_toml_a_mirror_that_is_down_falls_through_and_one_that_is_up_is_used_first(
    daemon: Daemon, start_registries: StartRegistry, busybox_layout: Path, tmp_path: Path
) -> None:
    require_root()
    upstream = start_registries()
    mirror = start_registries()
    for r in (upstream, mirror):
        push_layout(busybox_layout, r, "library/busybox:1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    hosts = tmp_path / "certs.d"
    (hosts / upstream.host).mkdir(parents=True)
    ref = f"{upstream.host}/library/busybox:1"

    def configure(*mirrors: str) -> None:
        text = f'server = "http://{upstream.host}"\n'
        for m in mirrors:
            text += f'\n[host."http://{m}"]\n  capabilities = ["pull", "resolve"]\n'
        (hosts / upstream.host / "hosts.toml").write_text(text)

    configure(f"127.0.0.1:{dead}")
    upstream.mark()
    daemon.corral("images", "pull", "--hosts-dir", str(hosts), "-q", ref)
    assert blob_gets(upstream), "the down mirror fell through to the registry"
    daemon.corral("images", "rm", ref)
    daemon.ctr("content", "rm", *held(daemon))
    configure(f"127.0.0.1:{dead}", mirror.host)
    upstream.mark()
    mirror.mark()
    daemon.corral("images", "pull", "--hosts-dir", str(hosts), "-q", ref)
    assert blob_gets(mirror) and blob_gets(upstream) == []
    assert any("ns=" in a.query for a in mirror.accesses())


def test_a_multi_arch_index_pulls_only_the_host_platform_unless_all_platforms(
    daemon: Daemon, registry: Registry, tmp_path: Path
) -> None:
    require_root()
    multi = push_two_arch_index(registry, tmp_path, "corral/multi:1")
    ref, host_layer, other_layer = multi.ref, multi.host_layer, multi.other_layer
    registry.mark()
    daemon.corral("images", "pull", "--plain-http", "-q", ref)
    fetched = set(blob_gets(registry))
    assert host_layer in fetched and other_layer not in fetched
    assert multi.other_config in fetched  # the other platform's metadata, as ctr pulls it
    assert other_layer not in held(daemon)
    daemon.corral("images", "rm", ref)
    registry.mark()
    daemon.corral("images", "pull", "--plain-http", "--all-platforms", "-q", ref)
    assert {host_layer, other_layer} <= set(blob_gets(registry))


def test_pushed_by_corral_inspected_and_copied_back_by_skopeo_byte_identical(
    daemon: Daemon, registry: Registry, busybox_layout: Path, tmp_path: Path
) -> None:
    require_root()
    push_layout(busybox_layout, registry, "library/busybox:1")
    source = f"{registry.host}/library/busybox:1"
    daemon.corral("images", "pull", "--plain-http", "-q", source)
    target = f"{registry.host}/corral/copy:2"
    out = daemon.corral("images", "push", "--plain-http", "--format", "json", target, source).stdout
    summary = json_lines(out)[-1]
    assert summary["event"] == "summary" and summary["action"] == "pushed"
    assert_round_trip(source, target, busybox_layout, tmp_path)


def test_layers_are_unpacked_while_later_ones_still_download(
    daemon: Daemon, registry: Registry, layered_layout: tuple[Path, list[str], str]
) -> None:
    require_root()
    layout, layers, big = layered_layout
    push_layout(layout, registry, "corral/layered:1")
    proxy = ThrottledProxy(registry.port, rate=8 << 20)
    try:
        ref = f"{proxy.host}/corral/layered:1"
        events = json_lines(daemon.corral("images", "pull", "--plain-http", "--format", "json", ref).stdout)
    finally:
        proxy.stop()
    order = [(e["event"], e.get("digest")) for e in events]
    first_extracting = order.index(("extracting", layers[0]))
    big_complete = order.index(("complete", big))
    assert first_extracting < big_complete, order
    assert order.index(("extracted", big)) > big_complete


def test_corrald_killed_midway_through_a_pull_leaves_nothing_half_made(
    daemon: Daemon, registry: Registry, layered_layout: tuple[Path, list[str], str]
) -> None:
    require_root()
    layout, _, big = layered_layout
    push_layout(layout, registry, "corral/layered:1")
    proxy = ThrottledProxy(registry.port, rate=8 << 20)
    try:
        ref = f"{proxy.host}/corral/layered:1"
        pull = subprocess.Popen(
            [str(BIN / "corral"), "-a", daemon.socket, "images", "pull", "--plain-http", "-q", ref],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=daemon.environ(),
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and big not in daemon.ctr("content", "active").stdout:
            time.sleep(0.05)
        assert daemon.proc is not None
        daemon.proc.kill()
        daemon.proc.wait()
        pull.communicate(timeout=60)
        assert pull.returncode != 0
        daemon.proc = None
        daemon.start()
        assert daemon.corral("images", "ls", "-q").stdout.split() == []
        assert daemon.ctr("content", "active").stdout.strip().splitlines()[1:] == []
        assert daemon.ctr("leases", "ls").stdout.strip().splitlines()[1:] == []
        daemon.corral("images", "pull", "--plain-http", "-q", ref)
        assert "complete" in daemon.ctr("images", "check").stdout
    finally:
        proxy.stop()


def test_a_tls_registry_is_trusted_through_the_hosts_dirs_ca(
    daemon: Daemon, tls_registry: Registry, busybox_layout: Path, tmp_path: Path
) -> None:
    require_root()
    assert tls_registry.authority is not None
    skopeo(
        "copy", "--dest-tls-verify=false",
        f"oci:{busybox_layout}:latest", f"docker://{tls_registry.host}/library/busybox:1",
    )  # fmt: skip
    ref = f"{tls_registry.host}/library/busybox:1"
    untrusted = daemon.corral("images", "pull", "-q", ref, check=False)
    assert untrusted.returncode == 1 and "certificate" in untrusted.stderr, untrusted.stderr
    hosts = tmp_path / "certs.d"
    (hosts / tls_registry.host).mkdir(parents=True)
    (hosts / tls_registry.host / "hosts.toml").write_text(
        f'server = "https://{tls_registry.host}"\n\n[host."https://{tls_registry.host}"]\n'
        f'  ca = "{tls_registry.authority.ca}"\n'
    )
    daemon.corral("images", "pull", "--hosts-dir", str(hosts), "-q", ref)
    assert daemon.corral("images", "ls", "-q").stdout.split() == [ref]
