"""The ``corral`` command: local config commands, rendering from hand-made messages, one-line errors.

Commands that need a daemon run against a fake one: a grpclib server on a unix socket that serves
hand-made messages, so the wire, the client and the CLI are exercised without corrald.
"""

from __future__ import annotations

import asyncio
import importlib.metadata as md
import json
import os
import tempfile
import threading
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from grpclib.const import Status as GRPCStatus
from grpclib.exceptions import GRPCError
from grpclib.server import Server

from corral.api.cli import cli
from corral.api.cli._output import format_labels, to_text
from corral.api.cli._plugin_graph import graph_dot, graph_json, graph_text
from corral.api.cli._plugin_views import explain, plugin_info, plugins_json, plugins_table
from corral.api.cli._session import UsageProblem, parse_labels
from corral.api.cli.config import default_config, effective_config, render
from corral.api.types.containerd.services.namespaces import v1 as namespaces_pb
from corral.api.types.containerd.types import Platform
from corral.api.types.corral.introspection.v1 import (
    IntrospectionBase,
    Origin,
    PluginDetail,
    PluginsRequest,
    PluginsResponse,
)
from corral.api.types.google import protobuf
from corral.kernel import (
    GROUP,
    Candidate,
    DaemonConfig,
    Kernel,
    Registration,
    discover,
    load_config,
    split_uri,
)
from corral.kernel import Origin as KernelOrigin

SQLITE = "io.containerd.metadata.v1.sqlite"
BUILTIN = Origin(
    distribution="corral", version="0.1.0", entry_point="x", value="corral.x:registration", builtin=True
)
ZFS_ORIGIN = Origin(
    distribution="corral-zfs",
    version="1.2.0",
    entry_point="io.containerd.snapshotter.v1.zfs",
    value="corral_zfs:registration",
    builtin=False,
)
ZFS_REASON = (
    "third-party plugin from corral-zfs; enable it with "
    'enabled_plugins = ["io.containerd.snapshotter.v1.zfs"] or enabled_distributions = ["corral-zfs"] in config.toml'
)


def plugin(uri: str, status: str = "ok", **fields: Any) -> PluginDetail:
    plugin_type, plugin_id = split_uri(uri)
    fields.setdefault("origin", BUILTIN)
    return PluginDetail(type=plugin_type, id=plugin_id, status=status, **fields)


def broken_daemon() -> list[PluginDetail]:
    """A daemon whose content store failed, taking metadata and the namespaces service with it."""
    return [
        plugin(
            "io.containerd.content.v1.local",
            "error",
            reason="PermissionError: /var/lib/corral",
            init_seconds=0.002,
        ),
        plugin(
            SQLITE,
            "error",
            reason="requires io.containerd.content.v1, but io.containerd.content.v1.local is error",
            requires=["io.containerd.content.v1"],
            after=["io.containerd.event.v1"],
            blocked_by=["io.containerd.content.v1.local"],
            config_json='{"content_sharing_policy": "shared", "no_sync": false}',
            error_code=2,
        ),
        plugin(
            "io.containerd.service.v1.namespaces-service",
            "skip",
            reason="requires io.containerd.metadata.v1, but io.containerd.metadata.v1.sqlite is error",
            requires=["io.containerd.metadata.v1"],
            blocked_by=[SQLITE],
        ),
        plugin("io.containerd.grpc.v1.version", init_seconds=0.0001),
        plugin("io.containerd.snapshotter.v1.zfs", "not-enabled", reason=ZFS_REASON, origin=ZFS_ORIGIN),
        plugin(
            "io.containerd.snapshotter.v1.native",
            platforms=[Platform(os="linux", architecture="amd64")],
            exports={"root": "/var/lib/corral/native"},
            init_seconds=0.0015,
        ),
        plugin("io.containerd.gc.v1.scheduler", "disabled", reason="listed in disabled_plugins"),
    ]


def rows(text: str) -> dict[str, list[str]]:
    """A table's lines by their second cell (the plugin id), split on runs of spaces."""
    return {cells[1]: cells for cells in (line.split() for line in text.splitlines()[1:])}


# ------------------------------------------------------------------------------ plugins: rendering


def test_plugins_table_shows_platforms_status_init_milliseconds_and_origin() -> None:
    text = to_text(plugins_table(broken_daemon()))
    assert text.splitlines()[0].split() == ["TYPE", "ID", "PLATFORMS", "STATUS", "INIT", "ORIGIN"]
    table = rows(text)
    assert table["native"] == [
        "io.containerd.snapshotter.v1",
        "native",
        "linux/amd64",
        "ok",
        "1.50",
        "builtin",
    ]
    assert table["local"][3:5] == ["error", "2.00"]
    assert table["zfs"][2:] == ["-", "not-enabled", "-", "corral-zfs", "1.2.0"]
    assert table["namespaces-service"][3:5] == ["skip", "-"]


def test_plugins_json_has_stable_keys_and_decoded_config() -> None:
    data = json.loads(json.dumps(plugins_json(broken_daemon())))
    assert list(data[1]) == [
        "uri", "type", "id", "status", "reason", "requires", "after", "dependents", "blocked_by",
        "platforms", "exports", "capabilities", "origin", "init_seconds", "config", "error_code", "order",
    ]  # fmt: skip
    assert data[1]["uri"] == SQLITE
    assert data[1]["config"] == {"content_sharing_policy": "shared", "no_sync": False}
    assert data[4]["origin"]["distribution"] == "corral-zfs"
    assert data[4]["origin"]["builtin"] is False


def test_plugin_info_shows_origin_entry_point_config_and_error() -> None:
    text = to_text(plugin_info(broken_daemon()[1]))
    assert "requires:      io.containerd.content.v1" in text
    assert "blocked by:    io.containerd.content.v1.local" in text
    assert "origin:        corral 0.1.0 (builtin)" in text
    assert "entry point:   x = corral.x:registration" in text
    assert '"no_sync": false' in text
    assert "error:         UNKNOWN (code 2)" in text


def test_why_follows_blocked_by_down_to_the_root_cause() -> None:
    text = explain("io.containerd.service.v1.namespaces-service", broken_daemon())
    assert text.splitlines() == [
        "io.containerd.service.v1.namespaces-service [skip]: requires io.containerd.metadata.v1, "
        "but io.containerd.metadata.v1.sqlite is error",
        "  blocked by io.containerd.metadata.v1.sqlite [error]: requires io.containerd.content.v1, "
        "but io.containerd.content.v1.local is error",
        "    blocked by io.containerd.content.v1.local [error]: PermissionError: /var/lib/corral",
        "root cause: io.containerd.content.v1.local [error]: PermissionError: /var/lib/corral",
    ]


def test_why_says_an_ok_plugin_is_ok() -> None:
    assert (
        explain("io.containerd.grpc.v1.version", broken_daemon()) == "io.containerd.grpc.v1.version is ok\n"
    )


def test_why_tells_how_to_enable_a_not_enabled_plugin() -> None:
    text = explain("io.containerd.snapshotter.v1.zfs", broken_daemon())
    assert text.startswith(
        "io.containerd.snapshotter.v1.zfs [not-enabled]: third-party plugin from corral-zfs"
    )
    assert 'enabled_distributions = ["corral-zfs"]' in text


def test_why_tells_how_to_start_a_disabled_plugin() -> None:
    text = explain("io.containerd.gc.v1.scheduler", broken_daemon())
    assert "remove it from disabled_plugins" in text


def test_why_stops_at_blockers_seen_before_and_names_unknown_ones() -> None:
    details = [
        plugin("a.v1.x", "skip", reason="r", blocked_by=["b.v1.y", "gone.v1.z"]),
        plugin("b.v1.y", "skip", reason="r", blocked_by=["a.v1.x"]),
    ]
    lines = explain("a.v1.x", details).splitlines()
    assert "    blocked by a.v1.x (see above)" in lines
    assert "  blocked by gone.v1.z: not known to the daemon" in lines
    assert lines[-1] == "root cause: gone.v1.z is not installed"


def test_graph_text_lists_each_plugins_dependencies_marking_after() -> None:
    text = graph_text(broken_daemon())
    assert (
        "io.containerd.metadata.v1.sqlite [error]\n"
        "├── io.containerd.content.v1.local [error] (requires)\n"
        "└── io.containerd.event.v1 (after): no plugin of this type\n"
    ) in text
    assert "io.containerd.service.v1.namespaces-service [skip]\n└── io.containerd.metadata.v1.sqlite" in text


def test_graph_json_has_nodes_in_start_order_and_typed_edges() -> None:
    data = graph_json(broken_daemon())
    uris = [n["uri"] for n in data["nodes"]]  # type: ignore[index]
    assert uris.index("io.containerd.content.v1.local") < uris.index("io.containerd.metadata.v1.sqlite")
    edges = data["edges"]
    assert {"from": "io.containerd.metadata.v1.sqlite", "to": "io.containerd.content.v1.local",
            "type": "io.containerd.content.v1", "kind": "requires"} in edges  # type: ignore[operator]  # fmt: skip
    assert {"from": "io.containerd.metadata.v1.sqlite", "to": None,
            "type": "io.containerd.event.v1", "kind": "after"} in edges  # type: ignore[operator]  # fmt: skip


def test_every_format_choice_a_command_offers_works_and_json_is_promised_only_where_offered() -> None:
    help_text = corral("plugins", "graph", "--help").stdout
    assert "[text|dot|json]" in help_text
    assert "json: machine-readable" in help_text
    assert "machine-readable" not in corral("plugins", "why", "--help").stdout


def test_graph_dot_points_from_dependent_to_dependency_and_styles_failures() -> None:
    dot = graph_dot(broken_daemon())
    assert dot.startswith("digraph plugins {") and dot.rstrip().endswith("}")
    assert '"io.containerd.metadata.v1.sqlite" -> "io.containerd.content.v1.local";' in dot
    assert (
        '"io.containerd.metadata.v1.sqlite" -> "io.containerd.event.v1" [style=dashed, label="after"];' in dot
    )
    nodes = {line.split(" [")[0].strip(): line for line in dot.splitlines() if "[label=" in line}
    assert 'color="red"' in nodes['"io.containerd.content.v1.local"']
    assert "style=dashed" in nodes['"io.containerd.service.v1.namespaces-service"']
    assert "style" not in nodes['"io.containerd.grpc.v1.version"']
    assert 'label="io.containerd.grpc.v1.version\\nok"' in nodes['"io.containerd.grpc.v1.version"']


# ------------------------------------------------------------------------------ a fake daemon


class FakeIntrospection(IntrospectionBase):
    """corral's introspection with hand-made details; disabled ones only when asked for all."""

    def __init__(self, details: list[PluginDetail]) -> None:
        self.details = details

    async def plugins(self, message: PluginsRequest) -> PluginsResponse:
        shown = [d for d in self.details if message.all or d.status != "disabled"]
        return PluginsResponse(plugins=shown)


class FakeNamespaces(namespaces_pb.NamespacesBase):
    def __init__(self, names: set[str]) -> None:
        self.names = names

    async def delete(self, message: namespaces_pb.DeleteNamespaceRequest) -> protobuf.Empty:
        if message.name not in self.names:
            raise GRPCError(GRPCStatus.NOT_FOUND, f'namespace "{message.name}": not found')
        self.names.remove(message.name)
        return protobuf.Empty()


@contextmanager
def fake_daemon(*services: Any) -> Iterator[str]:
    """Serve ``services`` on a fresh unix socket from a thread of its own; yields the socket path."""
    # A short directory: unix socket paths are limited to about 100 bytes.
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        path = os.path.join(tmp, "corral.sock")
        loop = asyncio.new_event_loop()
        listening = threading.Event()
        servers: list[Server] = []

        async def serve() -> None:
            server = Server(list(services))
            servers.append(server)
            await server.start(path=path)
            listening.set()
            await server.wait_closed()

        thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
        thread.start()
        assert listening.wait(10)
        try:
            yield path
        finally:
            loop.call_soon_threadsafe(servers[0].close)
            thread.join(10)
            loop.close()


def corral(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner(env=env).invoke(cli, list(args), catch_exceptions=False)


def test_plugins_ls_shows_not_enabled_plugins_and_disabled_ones_only_with_all() -> None:
    with fake_daemon(FakeIntrospection(broken_daemon())) as sock:
        default = corral("-a", sock, "plugins", "ls")
        everything = corral("-a", sock, "plugins", "ls", "--all", "--format", "json")
    assert default.exit_code == 0, default.output
    assert "not-enabled" in rows(default.stdout)["zfs"]
    assert "scheduler" not in rows(default.stdout)
    assert "io.containerd.gc.v1.scheduler" in {p["uri"] for p in json.loads(everything.stdout)}


def test_plugins_why_exits_0_for_a_plugin_that_is_not_ok() -> None:
    with fake_daemon(FakeIntrospection(broken_daemon())) as sock:
        result = corral("-a", sock, "plugins", "why", "io.containerd.gc.v1.scheduler")
    assert result.exit_code == 0
    assert result.stdout.startswith("io.containerd.gc.v1.scheduler [disabled]")


def test_plugins_info_of_an_unknown_plugin_is_one_line_and_exit_1() -> None:
    with fake_daemon(FakeIntrospection(broken_daemon())) as sock:
        result = corral("-a", sock, "plugins", "info", "io.containerd.nope.v1.x")
    assert result.exit_code == 1
    assert result.stderr == "corral: plugin io.containerd.nope.v1.x not found\n"
    assert result.stdout == ""


def test_address_comes_from_corral_address() -> None:
    with fake_daemon(FakeIntrospection(broken_daemon())) as sock:
        result = corral("plugins", "info", SQLITE, "--format", "json", env={"CORRAL_ADDRESS": sock})
    assert json.loads(result.stdout)["status"] == "error"


def test_namespaces_rm_of_a_missing_namespace_fails_after_removing_the_others() -> None:
    service = FakeNamespaces({"a", "b"})
    with fake_daemon(service) as sock:
        result = corral("-a", sock, "ns", "rm", "a", "missing", "b")
    assert result.exit_code == 1
    assert result.stdout == "a\nb\n"
    assert result.stderr == 'corral: namespace "missing": not found\n'
    assert service.names == set()


# ------------------------------------------------------------------------------ errors


def test_an_unreachable_socket_is_one_line_naming_it_and_exit_1(tmp_path: Path) -> None:
    sock = str(tmp_path / "nobody-listens.sock")
    result = corral("-a", sock, "plugins", "ls")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"corral: cannot connect to corrald at {sock}: ")
    assert "Traceback" not in result.output


def test_a_usage_error_is_one_line_and_exit_2() -> None:
    result = corral("plugins", "info")
    assert result.exit_code == 2
    assert result.stderr == "corral: missing argument 'TYPE.ID' (see 'corral plugins info --help')\n"


def test_unknown_format_is_a_usage_error() -> None:
    result = corral("plugins", "ls", "--format", "yaml")
    assert result.exit_code == 2
    assert result.stderr.startswith("corral: invalid value for '--format'")


def test_ns_is_an_alias_of_namespaces_and_not_listed_twice() -> None:
    assert corral("ns", "--help").exit_code == 0
    assert "  ns " not in corral("--help").stdout


def test_labels_are_read_as_ctr_reads_them() -> None:
    assert parse_labels(["a=b", "c=", "d", "e=f=g"]) == {"a": "b", "c": "", "d": "true", "e": "f=g"}
    with pytest.raises(UsageProblem):
        parse_labels(["=v"])
    assert format_labels({"b": "2", "a": "1"}) == "a=1,b=2"


# ------------------------------------------------------------------------------ config (local)


@pytest.fixture(autouse=True)
def isolated_config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the config of the user running them."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg-run"))


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_config_default_is_version_3_toml_with_every_builtin_plugins_defaults() -> None:
    result = corral("config", "default")
    assert result.exit_code == 0, result.stderr
    data = tomllib.loads(result.stdout)
    assert data["version"] == 3
    assert data["plugins"][SQLITE] == {"content_sharing_policy": "shared", "no_sync": False}


def test_config_default_writes_the_socket_mode_in_octal() -> None:
    text = corral("config", "default").stdout
    assert "mode = 0o660\n" in text
    assert tomllib.loads(text)["grpc"]["mode"] == 0o660


def test_config_default_is_accepted_by_the_daemons_loader(tmp_path: Path) -> None:
    path = write(tmp_path / "config.toml", corral("config", "default").stdout)
    loaded = load_config(path, defaults=DaemonConfig())
    ordered, configs = Kernel(loaded.config).prepare()
    assert SQLITE in {r.uri for r in ordered}
    assert configs[SQLITE].no_sync is False


@dataclass(frozen=True)
class GreetingConfig:
    greeting: str = "hello"


def third_party(uri: str, **origin: Any) -> Candidate:
    plugin_type, plugin_id = split_uri(uri)
    fields = {"distribution": "corral-example", "version": "1.0", "entry_point": uri, "value": "x:y"}
    fields.update(origin)
    return Candidate(uri, plugin_type, plugin_id, KernelOrigin(builtin=False, **fields))


def test_config_default_includes_third_party_defaults_that_dump_leaves_out(tmp_path: Path) -> None:
    async def init(ic: Any) -> None:
        return None

    reg = Registration(type="io.example.greeting.v1", id="hello", init=init, config=GreetingConfig)
    greeter = Candidate(reg.uri, reg.type, reg.id, third_party(reg.uri).origin, registration=reg)
    candidates = [*discover(), greeter]
    defaults = tomllib.loads(render(default_config(candidates)))
    assert defaults["plugins"][reg.uri] == {"greeting": "hello"}
    assert defaults["enabled_distributions"] == []  # printing defaults enables nothing
    config = write(tmp_path / "config.toml", "version = 3\n")
    assert reg.uri not in tomllib.loads(render(effective_config(config, candidates)))["plugins"]


def test_config_default_reports_a_plugin_that_fails_to_import_and_goes_on() -> None:
    uri = "io.example.broken.v1.oops"
    entry_point = md.EntryPoint(name=uri, value="corral_no_such_module_here:registration", group=GROUP)
    broken = Candidate(uri, *split_uri(uri), third_party(uri).origin, entry_point=entry_point)
    prepared = default_config([*discover(), broken])
    assert any(w.startswith(f"{uri}: ") and "corral_no_such_module_here" in w for w in prepared.warnings)
    assert SQLITE in tomllib.loads(render(prepared))["plugins"]


def test_config_validate_names_the_bad_key_path_and_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path / "config.toml", f'version = 3\n[plugins."{SQLITE}"]\nno_synk = true\n')
    result = corral("config", "validate", "--config", str(path))
    assert result.exit_code == 2
    assert result.stderr == f'corral: config error: {path}: plugins."{SQLITE}".no_synk: unknown key\n'


def test_config_validate_reports_how_many_plugins_are_configured(tmp_path: Path) -> None:
    path = write(tmp_path / "config.toml", f'version = 3\n[plugins."{SQLITE}"]\nno_sync = true\n')
    result = corral("config", "validate", "-c", str(path))
    assert result.exit_code == 0
    assert result.stdout == f"config ok: {len(discover())} plugins configured\n"


def test_config_validate_of_a_missing_file_exits_2(tmp_path: Path) -> None:
    result = corral("config", "validate", "-c", str(tmp_path / "absent.toml"))
    assert result.exit_code == 2
    assert result.stderr == f"corral: config error: {tmp_path / 'absent.toml'}: no such file\n"


def test_config_migrate_prints_only_what_the_file_sets_at_version_3(tmp_path: Path) -> None:
    path = write(
        tmp_path / "config.toml",
        'version = 2\noom_score = -10\n[plugins."io.containerd.metadata.v1.bolt"]\nno_sync = true\n',
    )
    result = corral("config", "migrate", "--config", str(path))
    assert result.exit_code == 0, result.stderr
    data = tomllib.loads(result.stdout)
    # As containerd config migrate: the operator's own settings, no defaults filled in. The bolt
    # section keeps its containerd name, which configures corral's store in any version.
    assert data == {
        "version": 3,
        "oom_score": -10,
        "plugins": {"io.containerd.metadata.v1.bolt": {"no_sync": True}},
    }
    migrated = write(tmp_path / "migrated.toml", result.stdout)
    dumped = tomllib.loads(corral("config", "dump", "--config", str(migrated)).stdout)
    assert dumped["plugins"][SQLITE]["no_sync"] is True


def test_config_migrate_without_a_file_fails_clearly(tmp_path: Path) -> None:
    result = corral("config", "migrate", "--config", str(tmp_path / "absent.toml"))
    assert result.exit_code == 1
    assert (
        result.stderr.strip()
        == f"corral: no config file to migrate: {tmp_path / 'absent.toml'} does not exist"
    )


def test_config_dump_keeps_sections_of_unknown_plugins_as_written_and_warns(tmp_path: Path) -> None:
    path = write(
        tmp_path / "config.toml", 'version = 3\n[plugins."io.containerd.monitor.v1.cgroups"]\nx = 1\n'
    )
    result = corral("config", "dump", "-c", str(path))
    assert tomllib.loads(result.stdout)["plugins"]["io.containerd.monitor.v1.cgroups"] == {"x": 1}
    assert result.stderr.startswith(
        '# warning: plugins."io.containerd.monitor.v1.cgroups": no installed plugin'
    )


def test_validate_names_a_plugin_key_that_is_accepted_without_effect(tmp_path: Path) -> None:
    path = write(
        tmp_path / "config.toml",
        'version = 3\n[plugins."io.containerd.snapshotter.v1.overlayfs"]\nslow_chown = true\n',
    )
    result = corral("config", "validate", "--config", str(path))
    assert result.exit_code == 0
    assert (
        '# warning: plugins."io.containerd.snapshotter.v1.overlayfs".slow_chown: accepted, but has no effect'
        in result.stderr
    )
