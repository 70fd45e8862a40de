"""config.toml: typed decoding, Go durations, and containerd's load/merge/import/migration rules."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import pytest

from corral.kernel._config import (
    DaemonConfig,
    DebugConfig,
    GRPCConfig,
    LoadedConfig,
    decode,
    encode,
    format_duration,
    load_config,
    migrate_plugins,
    parse_duration,
    render_toml,
    toml_path,
)
from corral.kernel._errors import ConfigError, InvalidArgument

DEFAULTS = DaemonConfig(root="/var/lib/corral", state="/run/corral")
SCHEDULER = 'plugins."io.containerd.gc.v1.scheduler"'


@dataclass(frozen=True)
class Limits:
    max_items: int = 10
    ratio: float = 0.5


@dataclass(frozen=True)
class SampleConfig:
    pause_threshold: float = 0.02
    schedule_delay: timedelta = timedelta(0)
    mode: Literal["fast", "slow"] = "fast"
    tags: tuple[str, ...] = ()
    extra: list[int] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=lambda: Limits(max_items=99))
    note: str | None = None
    enabled: bool = True
    options: Any = None


@dataclass(frozen=True)
class NeedsName:
    name: str
    size: int = 1


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def load(path: Path, defaults: DaemonConfig = DEFAULTS) -> LoadedConfig:
    return load_config(path, defaults=defaults)


# --- Go durations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10s", timedelta(seconds=10)),
        ("100ms", timedelta(milliseconds=100)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("4h0m0s", timedelta(hours=4)),
        ("1.5s", timedelta(seconds=1.5)),
        ("-2m", timedelta(minutes=-2)),
        ("+3us", timedelta(microseconds=3)),
        ("7\u00b5s", timedelta(microseconds=7)),
        ("1500ns", timedelta(microseconds=2)),
        ("0", timedelta(0)),
    ],
)
def test_parse_duration_reads_go_syntax(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", 'invalid duration ""'),
        ("10", 'missing unit in duration "10"'),
        ("5x", 'unknown unit "x" in duration "5x"'),
        ("s", 'invalid duration "s"'),
        ("1h-2m", 'unknown unit "h-" in duration "1h-2m"'),
    ],
)
def test_parse_duration_rejects_malformed_text_like_go(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_duration(text)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (timedelta(0), "0s"),
        (timedelta(seconds=10), "10s"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(milliseconds=100), "100ms"),
        (timedelta(microseconds=1500), "1.5ms"),
        (timedelta(microseconds=5), "5\u00b5s"),
        (timedelta(hours=4), "4h0m0s"),
        (timedelta(hours=1, seconds=0.25), "1h0m0.25s"),
        (timedelta(minutes=-2), "-2m0s"),
    ],
)
def test_format_duration_matches_go_duration_string(value: timedelta, expected: str) -> None:
    assert format_duration(value) == expected
    assert parse_duration(expected) == value


# --- decode / encode ----------------------------------------------------------------------------


def test_decode_builds_plugin_config_with_nested_table_tuple_duration_and_literal() -> None:
    raw = {
        "pause_threshold": 1,
        "schedule_delay": "1m30s",
        "mode": "slow",
        "tags": ["a", "b"],
        "extra": [1, 2],
        "labels": {"k": "v"},
        "limits": {"ratio": 2},
        "note": "hi",
        "enabled": False,
        "options": {"free": ["form"]},
    }
    cfg = decode(SampleConfig, raw, SCHEDULER)
    assert cfg == SampleConfig(
        pause_threshold=1.0,
        schedule_delay=timedelta(seconds=90),
        mode="slow",
        tags=("a", "b"),
        extra=[1, 2],
        labels={"k": "v"},
        limits=Limits(max_items=99, ratio=2.0),  # keeps the field's own default, not Limits()
        note="hi",
        enabled=False,
        options={"free": ["form"]},
    )
    assert isinstance(cfg.pause_threshold, float)


def test_decode_keeps_defaults_for_missing_keys() -> None:
    assert decode(SampleConfig, {}, SCHEDULER) == SampleConfig()


def test_decode_starts_from_a_base_instance_when_given() -> None:
    base = SampleConfig(mode="slow", tags=("x",))
    assert decode(SampleConfig, {"enabled": False}, base=base) == dataclasses.replace(base, enabled=False)


def test_unknown_key_error_names_the_full_toml_path() -> None:
    with pytest.raises(ConfigError) as info:
        decode(SampleConfig, {"limits": {"max_itemz": 1}}, SCHEDULER)
    assert info.value.detail == f"{SCHEDULER}.limits.max_itemz: unknown key"
    assert isinstance(info.value, InvalidArgument)


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        ({"pause_threshold": "x"}, f"{SCHEDULER}.pause_threshold: expected float, got string 'x'"),
        ({"pause_threshold": True}, f"{SCHEDULER}.pause_threshold: expected float, got boolean true"),
        ({"limits": {"max_items": 1.5}}, f"{SCHEDULER}.limits.max_items: expected integer, got float 1.5"),
        (
            {"limits": {"max_items": False}},
            f"{SCHEDULER}.limits.max_items: expected integer, got boolean false",
        ),
        ({"enabled": 1}, f"{SCHEDULER}.enabled: expected boolean, got integer 1"),
        ({"tags": "a"}, f"{SCHEDULER}.tags: expected array, got string 'a'"),
        ({"tags": ["a", 2]}, f"{SCHEDULER}.tags[1]: expected string, got integer 2"),
        ({"labels": {"a.b": 3}}, f'{SCHEDULER}.labels."a.b": expected string, got integer 3'),
        ({"limits": 3}, f"{SCHEDULER}.limits: expected table, got integer 3"),
        ({"mode": "medium"}, f'{SCHEDULER}.mode: expected one of "fast", "slow", got string \'medium\''),
        ({"schedule_delay": 5}, f"{SCHEDULER}.schedule_delay: expected duration string, got integer 5"),
        ({"schedule_delay": "5"}, f'{SCHEDULER}.schedule_delay: missing unit in duration "5"'),
        ({"note": 5}, f"{SCHEDULER}.note: expected string, got integer 5"),
    ],
)
def test_wrong_type_error_names_the_full_toml_path(raw: dict[str, Any], detail: str) -> None:
    with pytest.raises(ConfigError) as info:
        decode(SampleConfig, raw, SCHEDULER)
    assert info.value.detail == detail
    assert str(info.value) == f"{detail}: invalid argument"


def test_decode_reports_a_missing_required_field() -> None:
    with pytest.raises(ConfigError, match=r"plugins\.x\.name: missing key"):
        decode(NeedsName, {"size": 2}, "plugins.x")
    assert decode(NeedsName, {"name": "n"}) == NeedsName("n")


def test_toml_path_quotes_only_non_bare_keys() -> None:
    assert toml_path("plugins", "io.containerd.gc.v1.scheduler", "pause_threshold") == SCHEDULER + (
        ".pause_threshold"
    )
    assert toml_path("a b", 'q"', "ok-key_1") == '"a b"."q\\"".ok-key_1'


def test_encode_produces_plain_toml_data() -> None:
    cfg = SampleConfig(schedule_delay=timedelta(milliseconds=100), tags=("a",))
    assert encode(cfg) == {
        "pause_threshold": 0.02,
        "schedule_delay": "100ms",
        "mode": "fast",
        "tags": ["a"],
        "extra": [],
        "labels": {},
        "limits": {"max_items": 99, "ratio": 0.5},
        "enabled": True,
    }
    assert decode(SampleConfig, encode(cfg)) == cfg


# --- load_config: basics ------------------------------------------------------------------------


def test_no_path_gives_the_defaults(tmp_path: Path) -> None:
    assert load_config(None, defaults=DEFAULTS) == LoadedConfig(DEFAULTS, (), 3)


def test_load_reads_a_version_3_file_over_the_defaults(tmp_path: Path) -> None:
    main = write(
        tmp_path / "config.toml",
        'version = 3\nroot = "/srv/corral"\n[grpc]\naddress = "/run/c.sock"\nuid = 5\n'
        '[plugins."io.containerd.gc.v1.scheduler"]\npause_threshold = 0.1\n',
    )
    loaded = load(main)
    assert loaded.files == (main,)
    assert loaded.migrated_from == 3
    cfg = loaded.config
    assert cfg.version == 3
    assert cfg.root == "/srv/corral"
    assert cfg.state == "/run/corral"
    assert cfg.grpc == GRPCConfig(address="/run/c.sock", uid=5)
    assert cfg.plugins == {"io.containerd.gc.v1.scheduler": {"pause_threshold": 0.1}}


def test_unknown_top_level_key_names_the_key_and_file(tmp_path: Path) -> None:
    main = write(tmp_path / "config.toml", "version = 3\nplugin_dirr = 'x'\n")
    with pytest.raises(ConfigError) as info:
        load(main)
    assert info.value.detail == f"{main}: plugin_dirr: unknown key"


def test_unknown_nested_key_names_the_toml_path(tmp_path: Path) -> None:
    main = write(tmp_path / "config.toml", "version = 3\n[grpc]\nadress = 'x'\n")
    with pytest.raises(ConfigError, match=r"grpc\.adress: unknown key"):
        load(main)


def test_wrong_type_in_file_names_the_toml_path(tmp_path: Path) -> None:
    main = write(tmp_path / "config.toml", "version = 3\n[grpc]\nuid = '0'\n")
    with pytest.raises(ConfigError) as info:
        load(main)
    assert info.value.detail == f"{main}: grpc.uid: expected integer, got string '0'"


def test_malformed_toml_names_file_line_and_column(tmp_path: Path) -> None:
    main = write(tmp_path / "config.toml", "version = 3\n\nroot = \n")
    with pytest.raises(ConfigError) as info:
        load(main)
    assert info.value.detail == f"{main}: line 3, column 8: Invalid value"


def test_truncated_toml_reports_the_end_of_the_document(tmp_path: Path) -> None:
    main = write(tmp_path / "config.toml", 'version = 3\nroot = "abc')
    with pytest.raises(ConfigError, match=r": line 2, column 12: Unterminated string"):
        load(main)


def test_missing_main_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load(tmp_path / "nope.toml")


def test_version_above_3_is_rejected(tmp_path: Path) -> None:
    main = write(tmp_path / "config.toml", "version = 4\n")
    with pytest.raises(ConfigError, match="expected config version equal to or less than 3, got 4"):
        load(main)


@pytest.mark.parametrize("kind", ["disabled", "required"])
def test_plugin_lists_of_a_versioned_file_need_full_uris(tmp_path: Path, kind: str) -> None:
    main = write(tmp_path / "config.toml", f"version = 2\n{kind}_plugins = ['cri']\n")
    with pytest.raises(ConfigError, match=f'invalid {kind} plugin URI "cri" expect io.containerd.x.vx'):
        load(main)


@pytest.mark.parametrize(
    ("section", "message"),
    [("level = 'loud'", 'debug.level: invalid log level "loud"'), ("format = 'xml'", "debug.format")],
)
def test_debug_level_and_format_are_validated(tmp_path: Path, section: str, message: str) -> None:
    main = write(tmp_path / "config.toml", f"version = 3\n[debug]\n{section}\n")
    with pytest.raises(ConfigError, match=message):
        load(main)


def test_empty_grpc_address_is_left_for_the_daemon(tmp_path: Path) -> None:
    main = write(tmp_path / "config.toml", "version = 3\n")
    assert load(main, DaemonConfig()).config.grpc.address == ""


# --- merge rules --------------------------------------------------------------------------------


def test_scalars_from_a_later_file_win_only_when_non_zero(tmp_path: Path) -> None:
    main = write(
        tmp_path / "config.toml",
        "version = 3\nimports = ['b.toml']\nroot = '/a'\noom_score = -500\n"
        "[metrics]\ngrpc_histogram = true\n[debug]\nlevel = 'warn'\nformat = 'json'\n",
    )
    write(
        tmp_path / "b.toml",
        "version = 3\nroot = ''\noom_score = 0\nstate = '/b'\n"
        "[metrics]\ngrpc_histogram = false\n[debug]\nlevel = 'debug'\n",
    )
    cfg = load(main).config
    assert (cfg.root, cfg.state, cfg.oom_score) == ("/a", "/b", -500)
    assert cfg.metrics.grpc_histogram is True
    assert cfg.debug == DebugConfig(level="debug", format="json")


def test_top_level_lists_are_unioned_in_order(tmp_path: Path) -> None:
    write(
        tmp_path / "b.toml",
        "version = 3\ndisabled_plugins = ['io.x.b', 'io.x.a']\nrequired_plugins = ['io.r.two']\n"
        "enabled_plugins = ['*']\nenabled_distributions = ['corral-extra', 'corral-more']\n",
    )
    main = write(
        tmp_path / "config.toml",
        "version = 3\nimports = ['b.toml']\ndisabled_plugins = ['io.x.a']\nrequired_plugins = ['io.r.one']\n"
        "enabled_distributions = ['corral-extra']\n",
    )
    defaults = dataclasses.replace(DEFAULTS, disabled_plugins=("io.x.default",))
    cfg = load(main, defaults).config
    assert cfg.disabled_plugins == ("io.x.default", "io.x.a", "io.x.b")
    assert cfg.required_plugins == ("io.r.one", "io.r.two")
    assert cfg.enabled_plugins == ("*",)
    assert cfg.enabled_distributions == ("corral-extra", "corral-more")
    assert cfg.imports == ("b.toml",)


def test_map_entries_from_a_later_file_replace_whole_entries(tmp_path: Path) -> None:
    write(
        tmp_path / "b.toml",
        "version = 3\n[timeouts]\n'io.containerd.timeout.shim.load' = '10s'\n"
        "[proxy_plugins.snap]\naddress = '/b.sock'\n"
        "[stream_processors.dec]\npath = 'other'\n",
    )
    main = write(
        tmp_path / "config.toml",
        "version = 3\nimports = ['b.toml']\n[timeouts]\n'io.containerd.timeout.shim.load' = '5s'\n"
        "'io.containerd.timeout.task.state' = '2s'\n"
        "[proxy_plugins.snap]\ntype = 'snapshot'\naddress = '/a.sock'\n"
        "[proxy_plugins.other]\ntype = 'content'\n"
        "[stream_processors.dec]\naccepts = ['x']\npath = 'ctd-decoder'\n",
    )
    cfg = load(main).config
    assert cfg.timeouts == {
        "io.containerd.timeout.shim.load": "10s",
        "io.containerd.timeout.task.state": "2s",
    }
    assert cfg.proxy_plugins == {"snap": {"address": "/b.sock"}, "other": {"type": "content"}}
    assert cfg.stream_processors == {"dec": {"path": "other"}}


def test_plugin_sections_deep_merge_and_replace_arrays(tmp_path: Path) -> None:
    write(
        tmp_path / "b.toml",
        "version = 3\n[plugins.'io.containerd.cri.v1.runtime']\nenable_selinux = false\n"
        "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.kata]\nruntime_type = 'kata'\n"
        "[plugins.'io.containerd.cri.v1.runtime'.cni]\nbin_dirs = ['/b']\n",
    )
    main = write(
        tmp_path / "config.toml",
        "version = 3\nimports = ['b.toml']\n[plugins.'io.containerd.cri.v1.runtime']\nenable_selinux = true\n"
        "max_container_log_line_size = 16384\n"
        "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]\nruntime_type = 'runc'\n"
        "[plugins.'io.containerd.cri.v1.runtime'.cni]\nbin_dirs = ['/a1', '/a2']\nconf_dir = '/etc/cni'\n",
    )
    cfg = load(main).config
    assert cfg.plugins == {
        "io.containerd.cri.v1.runtime": {
            "enable_selinux": False,
            "max_container_log_line_size": 16384,
            "containerd": {"runtimes": {"runc": {"runtime_type": "runc"}, "kata": {"runtime_type": "kata"}}},
            "cni": {"bin_dirs": ["/b"], "conf_dir": "/etc/cni"},
        }
    }


def test_effective_version_is_the_last_non_zero_version(tmp_path: Path) -> None:
    write(tmp_path / "b.toml", "version = 2\n")
    main = write(tmp_path / "config.toml", "version = 3\nimports = ['b.toml']\n")
    loaded = load(main)
    assert loaded.config.version == 2
    assert loaded.migrated_from == 2


# --- imports ------------------------------------------------------------------------------------


def test_imports_load_breadth_first_relative_to_the_importing_file(tmp_path: Path) -> None:
    main = write(tmp_path / "config.toml", "version = 3\nimports = ['sub/a.toml', 'b.toml']\n")
    a = write(tmp_path / "sub" / "a.toml", "version = 3\nimports = ['c.toml']\nroot = '/a'\n")
    b = write(tmp_path / "b.toml", "version = 3\nroot = '/b'\n")
    c = write(tmp_path / "sub" / "c.toml", "version = 3\nroot = '/c'\n")
    loaded = load(main)
    assert loaded.files == (main, a, b, c)
    assert loaded.config.root == "/c"


def test_absolute_imports_are_used_as_is(tmp_path: Path) -> None:
    other = write(tmp_path / "elsewhere" / "x.toml", "version = 3\noom_score = 7\n")
    main = write(tmp_path / "etc" / "config.toml", f"version = 3\nimports = ['{other}']\n")
    assert load(main).config.oom_score == 7


def test_glob_imports_load_matches_in_sorted_order(tmp_path: Path) -> None:
    write(tmp_path / "conf.d" / "20-b.toml", "version = 3\nroot = '/20'\n")
    write(tmp_path / "conf.d" / "10-a.toml", "version = 3\nroot = '/10'\nstate = '/s10'\n")
    write(tmp_path / "conf.d" / "skip.txt", "not toml = = =")
    main = write(tmp_path / "config.toml", "version = 3\nimports = ['conf.d/*.toml', 'none.d/*.toml']\n")
    loaded = load(main)
    assert [f.name for f in loaded.files] == ["config.toml", "10-a.toml", "20-b.toml"]
    assert (loaded.config.root, loaded.config.state) == ("/20", "/s10")


def test_circular_imports_load_each_file_once(tmp_path: Path) -> None:
    main = write(tmp_path / "config.toml", "version = 3\nimports = ['b.toml', './config.toml']\n")
    b = write(tmp_path / "b.toml", "version = 3\nimports = ['config.toml', 'b.toml']\noom_score = 1\n")
    loaded = load(main)
    assert loaded.files == (main, b)
    assert loaded.config.oom_score == 1


def test_missing_import_is_an_error_naming_it(tmp_path: Path) -> None:
    main = write(tmp_path / "config.toml", "version = 3\nimports = ['missing.toml']\n")
    with pytest.raises(ConfigError, match=r'imports: "missing\.toml": no such file'):
        load(main)


def test_errors_in_an_imported_file_name_that_file(tmp_path: Path) -> None:
    bad = write(tmp_path / "b.toml", "version = 3\n[ttrpc]\nuid = true\n")
    main = write(tmp_path / "config.toml", "version = 3\nimports = ['b.toml']\n")
    with pytest.raises(ConfigError) as info:
        load(main)
    assert info.value.detail == f"{bad}: ttrpc.uid: expected integer, got boolean true"


# --- version 1 migration ------------------------------------------------------------------------


def test_unversioned_file_gets_v1_plugin_names_migrated(tmp_path: Path) -> None:
    main = write(
        tmp_path / "config.toml",
        "disabled_plugins = ['cri', 'aufs', 'io.containerd.x.v1.keep']\nrequired_plugins = ['diff-service']\n"
        "[plugins.scheduler]\npause_threshold = 0.1\n[plugins.bolt]\ncontent_sharing_policy = 'isolated'\n"
        "[plugins.overlayfs]\nroot_path = '/x'\n[plugins.custom]\na = 1\n[plugins.windows]\nb = 2\n"
        "[proxy_plugins.cri]\ntype = 'snapshot'\n",
    )
    loaded = load(main)
    cfg = loaded.config
    assert loaded.migrated_from == 1
    assert cfg.version == 3
    assert cfg.disabled_plugins == (
        "io.containerd.grpc.v1.cri",
        "io.containerd.snapshotter.v1.aufs",
        "io.containerd.x.v1.keep",
    )
    assert cfg.required_plugins == ("io.containerd.service.v1.diff-service",)
    assert list(cfg.plugins) == [
        "io.containerd.gc.v1.scheduler",
        "io.containerd.metadata.v1.bolt",
        "io.containerd.snapshotter.v1.overlayfs",
        "io.containerd.grpc.v1.custom",
        "io.containerd.snapshotter.v1.windows",
    ]
    assert cfg.proxy_plugins == {"cri": {"type": "snapshot"}}


def test_unversioned_import_is_migrated_without_changing_the_effective_version(tmp_path: Path) -> None:
    write(tmp_path / "old.toml", "[plugins.cri]\nsandbox_image = 'pause'\n")
    main = write(tmp_path / "config.toml", "version = 2\nimports = ['old.toml']\n")
    loaded = load(main)
    assert loaded.config.version == 2
    assert loaded.migrated_from == 1
    assert loaded.config.plugins == {"io.containerd.grpc.v1.cri": {"sandbox_image": "pause"}}


def test_versioned_file_keeps_plugin_names_as_written(tmp_path: Path) -> None:
    main = write(tmp_path / "config.toml", "version = 2\n[plugins.cri]\na = 1\n")
    assert load(main).config.plugins == {"cri": {"a": 1}}


# --- plugin migrations --------------------------------------------------------------------------


def test_migrate_plugins_runs_each_step_in_order_on_a_copy() -> None:
    calls: list[tuple[str, int]] = []

    def move_cgroups(version: int, plugins: dict[str, Any]) -> None:
        calls.append(("move", version))
        if version < 3 and "io.containerd.monitor.v1.cgroups" in plugins:
            plugins["io.containerd.monitor.task.v1.cgroups"] = plugins.pop("io.containerd.monitor.v1.cgroups")

    def mark(version: int, plugins: dict[str, Any]) -> None:
        calls.append(("mark", version))
        plugins["io.containerd.monitor.task.v1.cgroups"]["seen"] = True

    original = {"io.containerd.monitor.v1.cgroups": {"no_prometheus": True}}
    result = migrate_plugins(2, original, [move_cgroups, mark])
    assert result == {"io.containerd.monitor.task.v1.cgroups": {"no_prometheus": True, "seen": True}}
    assert original == {"io.containerd.monitor.v1.cgroups": {"no_prometheus": True}}
    assert calls == [("move", 2), ("mark", 2)]
    assert migrate_plugins(1, {"x": {}}, [lambda v, p: calls.append(("v", v))]) == {"x": {}}
    assert calls[-2:] == [("v", 1), ("v", 2)]
    assert migrate_plugins(3, original, [mark]) == original


# --- rendering ----------------------------------------------------------------------------------


def test_render_puts_version_first_and_tables_last() -> None:
    text = render_toml({"root": "/r", "grpc": {"address": "/s"}, "version": 3, "imports": ["a"]})
    lines = text.splitlines()
    assert lines[0] == "version = 3"
    assert lines.index('root = "/r"') < lines.index("[grpc]")
    assert render_toml({}).strip() == "version = 3"


def test_rendered_defaults_load_back_to_the_same_config(tmp_path: Path) -> None:
    defaults = dataclasses.replace(
        DEFAULTS,
        disabled_plugins=("io.containerd.x.v1.y",),
        grpc=GRPCConfig(address="/run/corral/corral.sock"),
        debug=DebugConfig(level="debug", format="json"),
        plugins={
            "io.containerd.gc.v1.scheduler": encode(SampleConfig(schedule_delay=timedelta(seconds=90))),
            "io.containerd.snapshotter.v1.overlayfs": {"root_path": "", "mount_options": []},
        },
        timeouts={"io.containerd.timeout.shim.load": "5s"},
        stream_processors={
            "io.containerd.ocicrypt.decoder.v1.tar": {"accepts": ["a"], "path": "ctd-decoder"}
        },
    )
    main = write(tmp_path / "config.toml", render_toml(encode(defaults)))
    loaded = load(main, defaults)
    assert loaded.config == defaults
    raw = loaded.config.plugins["io.containerd.gc.v1.scheduler"]
    assert decode(SampleConfig, raw, SCHEDULER).schedule_delay == timedelta(seconds=90)
