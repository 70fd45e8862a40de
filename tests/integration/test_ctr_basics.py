"""The real ctr against corrald: version, plugins, namespaces, unknown services."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from harness import Daemon

UUID = re.compile(r"UUID: ([0-9a-f-]{36})")


def test_ctr_version_prints_the_server_version_and_a_stable_uuid(daemon: Daemon) -> None:
    out = daemon.ctr("version").stdout
    assert "Server:" in out and "Version:  0.1.0" in out
    first = UUID.search(out)
    assert first is not None
    daemon.restart()
    again = UUID.search(daemon.ctr("version").stdout)
    assert again is not None and again.group(1) == first.group(1)


def test_ctr_plugins_ls_lists_every_plugin_with_its_status(daemon: Daemon) -> None:
    out = daemon.ctr("plugins", "ls").stdout.splitlines()
    assert out[0].split() == ["TYPE", "ID", "PLATFORMS", "STATUS"]
    rows = {tuple(line.split()[:2]): line.split()[-1] for line in out[1:]}
    for expected in [
        ("io.containerd.metadata.v1", "sqlite"),
        ("io.containerd.service.v1", "namespaces-service"),
        ("io.containerd.service.v1", "introspection-service"),
        ("io.containerd.grpc.v1", "introspection"),
        ("io.containerd.grpc.v1", "version"),
        ("io.containerd.grpc.v1", "namespaces"),
        ("io.containerd.grpc.v1", "healthcheck"),
    ]:
        assert rows[expected] == "ok"


def test_ctr_plugins_ls_detailed_shows_requires_and_exports(daemon: Daemon) -> None:
    out = daemon.ctr("plugins", "ls", "-d", "id==sqlite").stdout
    assert "Type:         io.containerd.metadata.v1" in out
    assert "Requires:" in out and "io.containerd.content.v1" in out
    assert re.search(r"path\s+.*/root/io\.containerd\.metadata\.v1\.sqlite/meta\.db", out)


def test_ctr_plugins_ls_filters_by_type(daemon: Daemon) -> None:
    lines = daemon.ctr("plugins", "ls", "type==io.containerd.grpc.v1").stdout.splitlines()[1:]
    assert lines and all(line.startswith("io.containerd.grpc.v1 ") for line in lines)
    assert len(daemon.ctr("plugins", "ls", "-q", "id~=^name").stdout.split()) == 2


def test_bad_filter_is_invalid_argument(daemon: Daemon) -> None:
    result = daemon.ctr("plugins", "ls", "id==", check=False)
    assert result.returncode != 0
    assert "expected value or quoted" in result.stderr and "invalid argument" in result.stderr


def test_namespaces_behave_as_against_containerd(daemon: Daemon) -> None:
    daemon.ctr("namespaces", "create", "ns1", "a=b")
    daemon.ctr("namespaces", "label", "ns1", "c=d")
    listing = daemon.ctr("namespaces", "ls").stdout.splitlines()
    assert listing[0].split() == ["NAME", "LABELS"]
    assert listing[1].split() == ["ns1", "a=b,c=d"]
    daemon.ctr("namespaces", "label", "ns1", "a=")
    assert daemon.ctr("namespaces", "ls", "-q").stdout.split() == ["ns1"]
    assert (
        "c=d" in daemon.ctr("namespaces", "ls").stdout and "a=b" not in daemon.ctr("namespaces", "ls").stdout
    )
    dup = daemon.ctr("namespaces", "create", "ns1", check=False)
    assert dup.returncode != 0 and "already exists" in dup.stderr
    daemon.ctr("namespaces", "rm", "ns1")
    assert daemon.ctr("namespaces", "ls", "-q").stdout.split() == []


def test_labelling_a_namespace_that_does_not_exist_creates_it(daemon: Daemon) -> None:
    daemon.ctr("namespaces", "label", "testing", "k=v")
    assert daemon.ctr("namespaces", "ls").stdout.splitlines()[1].split() == ["testing", "k=v"]


def test_invalid_namespace_name_is_invalid_argument(daemon: Daemon) -> None:
    result = daemon.ctr("namespaces", "create", "Bad_NS!", check=False)
    assert result.returncode != 0
    assert 'identifier "Bad_NS!" must match' in result.stderr and "invalid argument" in result.stderr
    assert daemon.ctr("namespaces", "ls", "-q").stdout.split() == []


def test_namespaces_survive_a_restart(daemon: Daemon) -> None:
    daemon.ctr("namespaces", "create", "keep", "x=y")
    daemon.restart()
    assert "x=y" in daemon.ctr("namespaces", "ls").stdout


def test_unknown_service_is_unimplemented_not_a_transport_error(tmp_path: Path, ctr: str) -> None:
    # ctr falls back from Containers/ListStream to List on Unimplemented; both are unknown here.
    config = 'version = 3\ndisabled_plugins = ["io.containerd.grpc.v1.containers"]\n'
    daemon = Daemon(tmp_path / "corral", config).start()
    try:
        result = daemon.ctr("containers", "ls", check=False)
    finally:
        daemon.stop()
    assert result.returncode == 1
    assert "unknown service containerd.services.containers.v1.Containers: not implemented" in result.stderr
    assert "transport" not in result.stderr


def test_socket_is_not_world_accessible(daemon: Daemon) -> None:
    mode = stat.S_IMODE(os.stat(daemon.socket).st_mode)
    assert mode == 0o660


def test_sigterm_stops_gracefully_and_removes_the_socket(daemon: Daemon) -> None:
    assert daemon.stop() == 0
    assert not os.path.exists(daemon.socket)
