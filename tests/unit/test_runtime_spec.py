"""The runtime spec module builds containerd's Linux default spec and applies its options faithfully."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from corral.kernel import InvalidArgument, NotFound, Unimplemented
from corral.plugins.runtimes import spec as oci
from corral.plugins.runtimes.spec import IDMapping, RunFlags

CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]  # fmt: skip


def fresh() -> dict[str, Any]:
    return oci.default_spec("default", "c1")


# The default spec, field by field, as containerd 2.1 defines it.


def test_default_spec_top_level_is_containerds() -> None:
    # pkg/oci/spec.go populateDefaultUnixSpec; runtime-spec v1.2.1 is what containerd 2.1 vendors.
    spec = fresh()
    assert set(spec) == {"ociVersion", "process", "root", "mounts", "linux"}
    assert spec["ociVersion"] == "1.2.1"
    assert spec["root"] == {"path": "rootfs"}


def test_default_process_has_no_env_or_args_and_containerds_caps_and_limits() -> None:
    # pkg/oci/spec.go: Cwd "/", NoNewPrivileges, uid/gid 0, defaultUnixCaps() in bounding,
    # permitted and effective (no inheritable set), one RLIMIT_NOFILE 1024/1024. The PATH env is
    # not part of the default: WithImageConfig or WithDefaultPathEnv adds it.
    process = fresh()["process"]
    assert process == {
        "user": {"uid": 0, "gid": 0},
        "cwd": "/",
        "capabilities": {"bounding": CAPS, "effective": CAPS, "permitted": CAPS},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": True,
    }


def test_default_mounts_are_containerds_list_in_order() -> None:
    # pkg/oci/mounts.go defaultMounts()
    assert fresh()["mounts"] == [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/run", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    ]  # fmt: skip


def test_default_linux_section_is_containerds() -> None:
    # pkg/oci/spec.go: masked paths (2.x adds /sys/devices/virtual/powercap), read-only paths,
    # cgroupsPath filepath.Join("/", ns, id), one deny-all device rule, five namespaces.
    assert fresh()["linux"] == {
        "maskedPaths": [
            "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
            "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
            "/sys/devices/virtual/powercap", "/proc/scsi",
        ],
        "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        "cgroupsPath": "/default/c1",
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}],
    }  # fmt: skip


def test_default_spec_needs_a_namespace_and_an_id() -> None:
    with pytest.raises(InvalidArgument):
        oci.default_spec("", "c1")
    with pytest.raises(InvalidArgument):
        oci.default_spec("default", "")


def test_cgroups_path_is_cleaned_like_filepath_join() -> None:
    assert oci.default_spec("k8s.io", "a//b/../c")["linux"]["cgroupsPath"] == "/k8s.io/a/c"


def test_each_default_spec_is_a_fresh_copy() -> None:
    first = fresh()
    first["mounts"][0]["options"].append("ro")
    first["process"]["capabilities"]["bounding"].clear()
    assert fresh()["mounts"][0]["options"] == ["nosuid", "noexec", "nodev"]
    assert fresh()["process"]["capabilities"]["bounding"] == CAPS


def test_spec_json_is_compact_json_that_reads_back(tmp_path: Path) -> None:
    spec = oci.generate_spec("default", "c1", oci.with_process_args("/bin/echo", "héllo"))
    data = oci.spec_json(spec)
    assert b"\n" not in data and b": " not in data
    (tmp_path / "config.json").write_bytes(data)
    assert oci.read_spec(tmp_path / "config.json") == spec


def test_generate_spec_applies_options_in_order() -> None:
    spec = oci.generate_spec(
        "default",
        "c1",
        oci.with_process_cwd("/a"),
        oci.compose(oci.with_process_cwd("/b"), oci.with_hostname("h")),
    )
    assert spec["process"]["cwd"] == "/b"
    assert spec["hostname"] == "h"


def test_with_default_spec_resets_whatever_was_there() -> None:
    spec: dict[str, Any] = {"hostname": "old", "process": {"args": ["x"]}}
    oci.with_default_spec("default", "c1")(spec)
    assert spec == fresh()


# Environment.


def test_env_overrides_replace_by_key_in_place_and_append_new_keys() -> None:
    merged = oci.replace_or_append_env(
        ["PATH=/bin", "FOO=1", "BAR=2"], ["FOO=override", "NEW=x", "PATH=/usr/bin"]
    )
    assert merged == ["PATH=/usr/bin", "FOO=override", "BAR=2", "NEW=x"]


def test_env_bare_key_unsets_and_unknown_bare_key_is_ignored() -> None:
    assert oci.replace_or_append_env(["A=1", "B=2"], ["A", "C"]) == ["B=2"]


def test_env_value_may_hold_equals_signs_and_be_empty() -> None:
    assert oci.replace_or_append_env(["A=1"], ["A=x=y", "E="]) == ["A=x=y", "E="]


def test_with_env_merges_into_the_process_env_and_empty_is_a_no_op() -> None:
    spec = fresh()
    oci.with_env([])(spec)
    assert "env" not in spec["process"]
    oci.with_default_path_env(spec)
    oci.with_env(["FOO=1", "PATH=/bin"])(spec)
    assert spec["process"]["env"] == ["PATH=/bin", "FOO=1"]


def test_with_default_path_env_is_containerds_path() -> None:
    spec = fresh()
    oci.with_default_path_env(spec)
    assert spec["process"]["env"] == ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]


def test_env_file_lines_are_merged(tmp_path: Path) -> None:
    path = tmp_path / "env"
    path.write_text("A=1\r\nB=2\n")
    spec = fresh()
    oci.with_env_file(path)(spec)
    assert spec["process"]["env"] == ["A=1", "B=2"]


# Process.


def test_process_args_replace_and_drop_a_windows_command_line() -> None:
    spec = fresh()
    spec["process"]["commandLine"] = "cmd /c"
    oci.with_process_args("/bin/sh", "-c", "true")(spec)
    assert spec["process"]["args"] == ["/bin/sh", "-c", "true"]
    assert "commandLine" not in spec["process"]


def test_tty_sets_terminal_and_appends_term() -> None:
    spec = oci.generate_spec("default", "c1", oci.with_env(["TERM=vt100"]), oci.with_tty)
    assert spec["process"]["terminal"] is True
    assert spec["process"]["env"] == ["TERM=vt100", "TERM=xterm"]  # appended, as containerd does


def test_terminal_size_is_the_console_box() -> None:
    spec = oci.generate_spec("default", "c1", oci.with_terminal_size(120, 40))
    assert spec["process"]["consoleSize"] == {"height": 40, "width": 120}


def test_new_and_no_new_privileges_toggle_the_flag() -> None:
    spec = oci.generate_spec("default", "c1", oci.with_new_privileges)
    assert "noNewPrivileges" not in spec["process"]
    oci.with_no_new_privileges(spec)
    assert spec["process"]["noNewPrivileges"] is True


def test_rlimits_replace_by_type_and_unknown_types_are_refused() -> None:
    spec = oci.generate_spec(
        "default", "c1", oci.with_process_rlimits({"RLIMIT_NOFILE": (4096, 8192), "RLIMIT_NPROC": (10, 20)})
    )
    assert spec["process"]["rlimits"] == [
        {"type": "RLIMIT_NOFILE", "hard": 8192, "soft": 4096},
        {"type": "RLIMIT_NPROC", "hard": 20, "soft": 10},
    ]
    with pytest.raises(InvalidArgument):
        oci.with_rlimit("RLIMIT_BOGUS", 1, 1)
    with pytest.raises(InvalidArgument):
        oci.with_rlimit("RLIMIT_NOFILE", 2, 1)


# Users, from a fake rootfs.


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\n"
        "\n"
        "  daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin  \n"
        "app:x:1000:1001::/home/app:/bin/sh\n"
        "broken:x:notanumber:7::/:/bin/sh\n"
    )
    (root / "etc" / "group").write_text(
        "root:x:0:\n"
        "# a comment line\n"
        "daemon:x:1:\n"
        "app:x:1001:app\n"
        "staff:x:50:other,app\n"
        "wheel:x:10:root,app\n"
        "video:x:44:\n"
    )
    return root


def user_of(spec: dict[str, Any]) -> dict[str, Any]:
    return dict(spec["process"]["user"])


def test_numeric_uid_takes_its_gid_from_passwd(rootfs: Path) -> None:
    spec = oci.generate_spec("default", "c1", oci.with_user("1000", rootfs))
    assert user_of(spec) == {"uid": 1000, "gid": 1001, "additionalGids": [1001]}


def test_numeric_uid_missing_from_passwd_gets_gid_0(rootfs: Path) -> None:
    spec = oci.generate_spec("default", "c1", oci.with_user("4242", rootfs))
    assert user_of(spec) == {"uid": 4242, "gid": 0, "additionalGids": [0]}


def test_numeric_uid_without_any_passwd_gets_gid_0(tmp_path: Path) -> None:
    spec = oci.generate_spec("default", "c1", oci.with_user("7", tmp_path))
    assert user_of(spec) == {"uid": 7, "gid": 0, "additionalGids": [0]}


def test_username_resolves_uid_and_gid(rootfs: Path) -> None:
    spec = oci.generate_spec("default", "c1", oci.with_user("daemon", rootfs))
    assert user_of(spec) == {"uid": 1, "gid": 1, "additionalGids": [1]}


def test_unknown_username_is_not_found(rootfs: Path) -> None:
    with pytest.raises(NotFound):
        oci.generate_spec("default", "c1", oci.with_user("nobody", rootfs))


def test_uid_gid_pair_needs_no_files(tmp_path: Path) -> None:
    spec = oci.generate_spec("default", "c1", oci.with_user("12:34", tmp_path / "absent"))
    assert user_of(spec) == {"uid": 12, "gid": 34, "additionalGids": [34]}


def test_user_and_group_names_resolve_separately(rootfs: Path) -> None:
    spec = oci.generate_spec("default", "c1", oci.with_user("app:wheel", rootfs))
    assert user_of(spec) == {"uid": 1000, "gid": 10, "additionalGids": [10]}
    spec = oci.generate_spec("default", "c1", oci.with_user("5:staff", rootfs))
    assert user_of(spec) == {"uid": 5, "gid": 50, "additionalGids": [50]}
    spec = oci.generate_spec("default", "c1", oci.with_user("app:3", rootfs))
    assert user_of(spec) == {"uid": 1000, "gid": 3, "additionalGids": [3]}


def test_unknown_group_name_is_not_found(rootfs: Path) -> None:
    with pytest.raises(NotFound):
        oci.generate_spec("default", "c1", oci.with_user("app:nogroup", rootfs))


def test_a_uid_past_int32_is_treated_as_a_name(rootfs: Path) -> None:
    with pytest.raises(NotFound):
        oci.generate_spec("default", "c1", oci.with_user("2147483648", rootfs))


def test_three_part_user_is_invalid(rootfs: Path) -> None:
    with pytest.raises(InvalidArgument):
        oci.generate_spec("default", "c1", oci.with_user("a:b:c", rootfs))


def test_without_rootfs_the_spec_root_must_be_absolute(rootfs: Path) -> None:
    with pytest.raises(InvalidArgument, match="absolute"):
        oci.generate_spec("default", "c1", oci.with_user("app"))
    spec = oci.generate_spec("default", "c1", oci.with_rootfs_path(str(rootfs)), oci.with_user("app"))
    assert user_of(spec)["uid"] == 1000


def test_additional_gids_are_the_groups_listing_the_user(rootfs: Path) -> None:
    # Groups named after the user are not supplementary; the primary gid is put first.
    spec = oci.generate_spec(
        "default", "c1", oci.with_user("app", rootfs), oci.with_additional_gids("app", rootfs)
    )
    assert user_of(spec) == {"uid": 1000, "gid": 1001, "additionalGids": [1001, 50, 10]}
    spec = oci.generate_spec(
        "default", "c1", oci.with_user("1000", rootfs), oci.with_additional_gids("1000", rootfs)
    )
    assert user_of(spec)["additionalGids"] == [1001, 50, 10]


def test_additional_gids_without_group_file_are_the_primary_gid(tmp_path: Path) -> None:
    spec = oci.generate_spec("default", "c1", oci.with_additional_gids("root", tmp_path))
    assert user_of(spec) == {"uid": 0, "gid": 0, "additionalGids": [0]}


def test_append_additional_groups_takes_names_and_numbers(rootfs: Path) -> None:
    spec = oci.generate_spec("default", "c1", oci.with_append_additional_groups("video", "77", rootfs=rootfs))
    assert user_of(spec)["additionalGids"] == [0, 44, 77]
    with pytest.raises(NotFound):
        oci.generate_spec("default", "c1", oci.with_append_additional_groups("nogroup", rootfs=rootfs))


def test_passwd_symlinks_resolve_inside_the_rootfs(tmp_path: Path) -> None:
    # An absolute link in the image points into the image, never at the host's /etc/passwd.
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "data" / "users").write_text("svc:x:321:654::/:/bin/sh\n")
    (root / "etc" / "passwd").symlink_to("/../../../data/users")
    spec = oci.generate_spec("default", "c1", oci.with_user("svc", root))
    assert user_of(spec) == {"uid": 321, "gid": 654, "additionalGids": [654]}
    (root / "etc" / "passwd").unlink()
    (root / "etc" / "passwd").symlink_to("/etc/passwd")  # a loop inside the rootfs
    with pytest.raises(InvalidArgument, match="symlinks"):
        oci.generate_spec("default", "c1", oci.with_user("root", root))


# Image config.

IMAGE = {
    "architecture": "amd64",
    "os": "linux",
    "config": {
        "Env": ["PATH=/bin", "FOO=image"],
        "Entrypoint": ["/bin/entry"],
        "Cmd": ["--serve"],
        "WorkingDir": "/srv",
        "User": "app",
        "StopSignal": "SIGINT",
    },
}


def test_image_config_sets_env_args_cwd_and_user(rootfs: Path) -> None:
    spec = oci.generate_spec(
        "default", "c1", oci.with_env(["FOO=cli"]), oci.with_image_config(IMAGE, rootfs=rootfs)
    )
    process = spec["process"]
    assert process["env"] == ["PATH=/bin", "FOO=cli"]
    assert process["args"] == ["/bin/entry", "--serve"]
    assert process["cwd"] == "/srv"
    assert process["user"] == {"uid": 1000, "gid": 1001, "additionalGids": [1001, 50, 10]}


def test_image_config_args_replace_cmd_but_keep_the_entrypoint(rootfs: Path) -> None:
    spec = oci.generate_spec("default", "c1", oci.with_image_config(IMAGE, ["--check"], rootfs))
    assert spec["process"]["args"] == ["/bin/entry", "--check"]


def test_bare_image_config_gets_default_path_root_cwd_and_roots_groups(rootfs: Path) -> None:
    spec = oci.generate_spec("default", "c1", oci.with_image_config({"config": {}}, rootfs=rootfs))
    process = spec["process"]
    assert process["env"] == list(oci.DEFAULT_UNIX_ENV)
    assert "args" not in process
    assert process["cwd"] == "/"
    assert process["user"] == {"uid": 0, "gid": 0, "additionalGids": [0, 10]}


def test_image_config_needs_a_linux_section(rootfs: Path) -> None:
    spec = fresh()
    del spec["linux"]
    with pytest.raises(InvalidArgument):
        oci.with_image_config(IMAGE, rootfs=rootfs)(spec)


def test_stop_signal_comes_from_the_image_or_the_default() -> None:
    assert oci.image_stop_signal(IMAGE) == "SIGINT"
    assert oci.image_stop_signal({"config": {}}) == "SIGTERM"
    assert oci.STOP_SIGNAL_LABEL == "io.containerd.image.config.stop-signal"


# Exec processes.


def test_process_spec_is_the_containers_process_with_new_args(rootfs: Path) -> None:
    spec = oci.generate_spec("default", "c1", oci.with_image_config(IMAGE, rootfs=rootfs), oci.with_tty)
    before = json.dumps(spec)
    proc = oci.process_spec(spec, ["/bin/sh"], cwd="/tmp", user="daemon", rootfs=rootfs)
    assert proc["args"] == ["/bin/sh"]
    assert "terminal" not in proc
    assert proc["cwd"] == "/tmp"
    assert proc["user"] == {"uid": 1, "gid": 1, "additionalGids": [1]}
    assert proc["env"] == spec["process"]["env"]
    assert json.dumps(spec) == before
    assert oci.process_spec(spec, ["top"], tty=True)["terminal"] is True


# Namespaces.


def test_host_namespace_drops_that_namespace() -> None:
    spec = oci.generate_spec("default", "c1", oci.with_host_namespace("network"))
    assert [ns["type"] for ns in spec["linux"]["namespaces"]] == ["pid", "ipc", "uts", "mount"]


def test_linux_namespace_joins_a_path_replacing_the_same_type() -> None:
    spec = oci.generate_spec(
        "default",
        "c1",
        oci.with_linux_namespace("network", "/var/run/netns/pod"),
        oci.with_linux_namespace("cgroup"),
    )
    assert spec["linux"]["namespaces"][4] == {"type": "network", "path": "/var/run/netns/pod"}
    assert spec["linux"]["namespaces"][5] == {"type": "cgroup"}
    with pytest.raises(InvalidArgument):
        oci.with_linux_namespace("bogus")


def test_user_namespace_is_added_once_and_maps_accumulate() -> None:
    spec = oci.generate_spec(
        "default",
        "c1",
        oci.with_user_namespace([IDMapping(0, 666, 1000)], [IDMapping(0, 666, 1000)]),
        oci.with_user_namespace([IDMapping(1000, 6666, 64536)], [IDMapping(1000, 6666, 64536)]),
    )
    assert [ns["type"] for ns in spec["linux"]["namespaces"]].count("user") == 1
    assert spec["linux"]["uidMappings"] == [
        {"containerID": 0, "hostID": 666, "size": 1000},
        {"containerID": 1000, "hostID": 6666, "size": 64536},
    ]
    assert spec["linux"]["gidMappings"] == spec["linux"]["uidMappings"]


def test_user_namespace_refuses_maps_the_kernel_would() -> None:
    spec = oci.generate_spec(
        "default", "c1", oci.with_user_namespace([IDMapping(0, 1000, 10)], [IDMapping(0, 1, 1)])
    )
    with pytest.raises(InvalidArgument, match="overlap"):
        oci.with_user_namespace([IDMapping(5, 5000, 10)], [])(spec)
    with pytest.raises(InvalidArgument, match="both"):
        oci.generate_spec("default", "c1", oci.with_user_namespace([IDMapping(0, 1, 1)], []))


# ID maps.


def test_id_map_parses_non_contiguous_ranges() -> None:
    assert oci.parse_id_map("0:666:1000,1000:6666:64536") == (
        IDMapping(0, 666, 1000),
        IDMapping(1000, 6666, 64536),
    )
    assert oci.parse_id_map(["0:666:1000", "1000:6666:64536"]) == oci.parse_id_map(
        "0:666:1000,1000:6666:64536"
    )
    assert oci.format_id_map(oci.parse_id_map("0:666:1000,1000:6666:64536")) == "0:666:1000,1000:6666:64536"


def test_id_numbers_use_go_base_prefixes() -> None:
    assert oci.parse_id_mapping("0x10:0o17:010") == IDMapping(16, 15, 8)
    assert oci.parse_id_mapping("0b11:1_000:0") == IDMapping(3, 1000, 0)


@pytest.mark.parametrize(
    "text",
    [
        "0:666",  # two parts
        "0:666:1000:1",  # four parts
        "a:1:1",  # not a number
        "-1:1:1",  # ParseUint has no sign
        "+1:1:1",
        "1:4294967296:1",  # past uint32
        "1__0:1:1",  # misplaced underscore
        "_1:1:1",
        "0x:1:1",
        "08:1:1",  # 8 is no octal digit
        " 1:1:1x",
        "",
    ],
)
def test_id_map_bad_syntax_is_invalid_argument(text: str) -> None:
    with pytest.raises(InvalidArgument):
        oci.parse_id_map(text)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("0:666:1000,999:6666:10", "container side"),
        ("0:666:1000,1000:1665:10", "host side"),
        ("0:666:0", "empty"),
        ("4294967290:0:10", "past the last id"),
        ("0:4294967295:1", "past the last id"),
    ],
)
def test_id_map_ranges_the_kernel_refuses_are_invalid_argument(text: str, reason: str) -> None:
    with pytest.raises(InvalidArgument, match=reason):
        oci.parse_id_map(text)


def test_id_map_has_at_most_340_ranges() -> None:
    assert len(oci.parse_id_map([f"{i}:{i}:1" for i in range(340)])) == 340
    with pytest.raises(InvalidArgument, match="340"):
        oci.parse_id_map([f"{i}:{i}:1" for i in range(341)])


# ctr's --mount.


def test_mount_flag_parses_like_ctr() -> None:
    assert oci.parse_mount("type=bind,src=/a,dst=/b,options=rbind:ro") == {
        "destination": "/b",
        "type": "bind",
        "source": "/a",
        "options": ["rbind", "ro"],
    }
    assert oci.parse_mount("destination=/d,source=s,type=tmpfs") == {
        "destination": "/d",
        "type": "tmpfs",
        "source": "s",
    }


def test_mount_flag_is_one_csv_record_so_quotes_hold_commas() -> None:
    assert oci.parse_mount('type=bind,"src=/a,b",dst=/c') == {
        "destination": "/c",
        "type": "bind",
        "source": "/a,b",
    }
    assert oci.parse_mount('"dst=/say ""hi"""') == {"destination": '/say "hi"'}


def test_mount_flag_keeps_go_splits_of_empty_options() -> None:
    assert oci.parse_mount("dst=/x,options=")["options"] == [""]


@pytest.mark.parametrize(
    ("flag", "reason"),
    [
        ("type=bind,src", "expected key=val"),
        ("type=bind,uid=1", "not supported"),
        ('type=bind,src=/a"b', "bare"),
        ('"type=bind"x,dst=/a', "quoted-field"),
        ('"type=bind', "quoted-field"),
        ("", "empty"),
    ],
)
def test_bad_mount_flags_are_invalid_argument(flag: str, reason: str) -> None:
    with pytest.raises(InvalidArgument, match=reason):
        oci.parse_mount(flag)


def test_mount_flags_replace_default_mounts_at_the_same_destination() -> None:
    spec = oci.generate_spec(
        "default", "c1", oci.with_mount_flags(["type=tmpfs,src=tmpfs,dst=/run,options=size=1k"])
    )
    runs = [m for m in spec["mounts"] if m["destination"] == "/run"]
    assert runs == [{"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["size=1k"]}]
    assert spec["mounts"][-1] == runs[0]


def test_with_mounts_appends_copies_and_without_mounts_cleans_destinations() -> None:
    mount = {"destination": "/data/", "type": "bind", "source": "/srv", "options": ["rbind"]}
    spec = oci.generate_spec("default", "c1", oci.with_mounts([mount]))
    mount["options"].append("ro")
    assert spec["mounts"][-1]["options"] == ["rbind"]
    oci.without_mounts("/data", "/dev/shm")(spec)
    assert [m["destination"] for m in spec["mounts"]] == [
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/mqueue",
        "/sys",
        "/run",
    ]
    oci.without_run_mount(spec)
    assert "/run" not in [m["destination"] for m in spec["mounts"]]


def test_host_files_are_read_only_bind_mounts() -> None:
    spec = oci.generate_spec(
        "default", "c1", oci.with_host_hosts_file, oci.with_host_resolvconf, oci.with_host_localtime
    )
    assert spec["mounts"][-3:] == [
        {"destination": p, "type": "bind", "source": p, "options": ["rbind", "ro"]}
        for p in ("/etc/hosts", "/etc/resolv.conf", "/etc/localtime")
    ]


def test_dev_shm_size_replaces_its_size_option() -> None:
    spec = oci.generate_spec("default", "c1", oci.with_dev_shm_size(1024))
    shm = next(m for m in spec["mounts"] if m["destination"] == "/dev/shm")
    assert shm["options"] == ["nosuid", "noexec", "nodev", "mode=1777", "size=1024k"]
    oci.without_mounts("/dev/shm")(spec)
    with pytest.raises(NotFound):
        oci.with_dev_shm_size(1)(spec)


def test_bind_mount_follows_cri_rules_for_ro_rro_and_propagation() -> None:
    spec = oci.generate_spec(
        "default",
        "c1",
        oci.with_bind_mount("/host/a", "/a", readonly=True, recursive_read_only=True),
        oci.with_bind_mount("/host/b", "/b", propagation="host-to-container"),
        oci.with_bind_mount("/host/c", "/run", readonly=True),
    )
    assert spec["mounts"][-3:] == [
        {"destination": "/a", "type": "bind", "source": "/host/a", "options": ["rbind", "rprivate", "rro"]},
        {"destination": "/b", "type": "bind", "source": "/host/b", "options": ["rbind", "rslave", "rw"]},
        {"destination": "/run", "type": "bind", "source": "/host/c", "options": ["rbind", "rprivate", "ro"]},
    ]
    assert [m["destination"] for m in spec["mounts"]].count("/run") == 1
    assert spec["linux"]["rootfsPropagation"] == "rslave"
    oci.with_bind_mount("/host/d", "/d", propagation="bidirectional")(spec)
    assert spec["linux"]["rootfsPropagation"] == "rshared"
    with pytest.raises(InvalidArgument, match="RW"):
        oci.with_bind_mount("/h", "/x", recursive_read_only=True)
    with pytest.raises(InvalidArgument, match="private"):
        oci.with_bind_mount("/h", "/x", readonly=True, recursive_read_only=True, propagation="bidirectional")


def test_rro_support_needs_the_runtime_option_and_kernel_5_12() -> None:
    assert oci.supports_recursive_read_only({"mountOptions": ["ro", "rro"]}, "6.1.0-18-amd64")
    assert not oci.supports_recursive_read_only({"mountOptions": ["ro", "rro"]}, "5.11.0")
    assert not oci.supports_recursive_read_only({"mountOptions": ["ro"]}, "6.1.0")
    assert not oci.supports_recursive_read_only({}, "6.1.0")


# Cgroups.


def test_cgroup_mount_is_cris_read_only_one_and_writable_flips_it() -> None:
    spec = oci.generate_spec("default", "c1", oci.with_cgroup_mount())
    cgroup = {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
              "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}  # fmt: skip
    assert spec["mounts"][-1] == cgroup
    oci.with_cgroup_writable(spec)
    assert [m for m in spec["mounts"] if m["type"] == "cgroup"] == [
        {**cgroup, "options": ["nosuid", "noexec", "nodev", "relatime", "rw"]}
    ]


def test_writable_cgroupfs_and_sysfs_only_change_ro() -> None:
    spec = oci.generate_spec(
        "default", "c1", oci.with_cgroup_mount(), oci.with_writable_cgroupfs, oci.with_writable_sysfs
    )
    by_type = {m["type"]: m["options"] for m in spec["mounts"]}
    assert by_type["cgroup"][-1] == "rw"
    assert by_type["sysfs"] == ["nosuid", "noexec", "nodev", "rw"]
    assert by_type["proc"] == ["nosuid", "noexec", "nodev"]


def test_cgroup_path_options() -> None:
    assert oci.generate_spec("default", "c1", oci.with_cgroup("/x/y"))["linux"]["cgroupsPath"] == "/x/y"
    assert "cgroupsPath" not in oci.generate_spec("default", "c1", oci.with_cgroup(""))["linux"]
    assert (
        oci.generate_spec("d", "c", oci.with_namespaced_cgroup("k8s.io", "p"))["linux"]["cgroupsPath"]
        == "/k8s.io/p"
    )


# Resources and devices.


def test_resource_limits_land_in_linux_resources() -> None:
    spec = oci.generate_spec(
        "default",
        "c1",
        oci.with_memory_limit(64 << 20),
        oci.with_memory_swap(-1),
        oci.with_cpu_shares(512),
        oci.with_cpu_cfs(50000, 100000),
        oci.with_cpuset_cpus("0-1"),
        oci.with_cpuset_mems("0"),
        oci.with_cpu_burst(10),
        oci.with_cpu_rt(950000, 1000000),
        oci.with_pids_limit(100),
    )
    res = spec["linux"]["resources"]
    assert res["memory"] == {"limit": 64 << 20, "swap": -1}
    assert res["cpu"] == {
        "shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0", "burst": 10,
        "realtimeRuntime": 950000, "realtimePeriod": 1000000,
    }  # fmt: skip
    assert res["pids"] == {"limit": 100}
    assert res["devices"] == [{"allow": False, "access": "rwm"}]


def test_cpu_count_is_ctrs_cpus_flag() -> None:
    spec = oci.generate_spec("default", "c1", oci.with_cpu_count(1.5))
    assert spec["linux"]["resources"]["cpu"] == {"quota": 150000, "period": 100000}
    with pytest.raises(InvalidArgument):
        oci.with_cpu_count(0)
    with pytest.raises(InvalidArgument):
        oci.with_memory_limit(-1)


def test_memory_limit_needs_a_linux_section() -> None:
    spec = fresh()
    del spec["linux"]
    oci.with_memory_limit(1)(spec)
    assert "linux" not in spec


def test_default_unix_devices_follow_deny_all() -> None:
    # pkg/oci/spec_opts.go WithDefaultUnixDevices, which ctr always adds.
    spec = oci.generate_spec("default", "c1", oci.with_default_unix_devices)
    rules = spec["linux"]["resources"]["devices"]
    assert rules[0] == {"allow": False, "access": "rwm"}
    assert [(r["major"], r.get("minor")) for r in rules[1:]] == [
        (1, 3), (1, 8), (1, 7), (5, 0), (1, 5), (1, 9), (5, 1), (136, None), (5, 2)
    ]  # fmt: skip
    assert all(r["allow"] and r["type"] == "c" and r["access"] == "rwm" for r in rules[1:])


def test_devices_add_nodes_and_cgroup_rules() -> None:
    st = os.stat("/dev/null")
    spec = oci.generate_spec("default", "c1", oci.with_devices("/dev/null", "/dev/mynull", "rw"))
    assert spec["linux"]["devices"] == [
        {"path": "/dev/mynull", "type": "c", "major": 1, "minor": 3, "fileMode": st.st_mode & 0o7777,
         "uid": st.st_uid, "gid": st.st_gid}
    ]  # fmt: skip
    assert spec["linux"]["resources"]["devices"][-1] == {
        "allow": True,
        "type": "c",
        "major": 1,
        "minor": 3,
        "access": "rw",
    }
    with pytest.raises(NotFound):
        oci.generate_spec("default", "c1", oci.with_devices("/dev/does-not-exist"))
    with pytest.raises(InvalidArgument):
        oci.generate_spec("default", "c1", oci.with_linux_device("/etc/hostname"))


def test_device_directories_are_walked_by_name_skipping_pts_and_shm(tmp_path: Path) -> None:
    spec = oci.generate_spec("default", "c1", oci.with_devices("/dev", "/hostdev"))
    paths = [d["path"] for d in spec["linux"]["devices"]]
    assert "/hostdev/null" in paths
    assert not any(p.startswith(("/hostdev/pts/", "/hostdev/shm/")) for p in paths)
    assert "/hostdev/console" not in paths


def test_device_rule_options() -> None:
    spec = oci.generate_spec("default", "c1", oci.with_all_devices_allowed)
    assert spec["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    oci.with_parent_cgroup_devices(spec)
    assert "devices" not in spec["linux"]["resources"]


# Capabilities and confinement.


def test_added_and_dropped_capabilities() -> None:
    spec = oci.generate_spec(
        "default",
        "c1",
        oci.with_ambient_capabilities(["CAP_NET_RAW", "CAP_SYS_ADMIN"]),
        oci.with_added_capabilities(["CAP_SYS_ADMIN", "CAP_SYS_ADMIN", "CAP_KILL"]),
        oci.with_dropped_capabilities(["CAP_NET_RAW"]),
    )
    caps = spec["process"]["capabilities"]
    for name in ("bounding", "effective", "permitted"):
        assert caps[name] == [c for c in CAPS if c != "CAP_NET_RAW"] + ["CAP_SYS_ADMIN"]
    assert caps["inheritable"] == ["CAP_SYS_ADMIN"]  # 2.x drops from inheritable too
    assert caps["ambient"] == ["CAP_NET_RAW", "CAP_SYS_ADMIN"]
    with pytest.raises(InvalidArgument, match="CAP_"):
        oci.with_added_capabilities(["SYS_ADMIN"])(spec)


def test_with_capabilities_filters_inheritable_and_empty_clears_it() -> None:
    spec = oci.generate_spec("default", "c1", oci.with_ambient_capabilities(["CAP_KILL", "CAP_BPF"]))
    oci.with_capabilities(["CAP_KILL"])(spec)
    assert spec["process"]["capabilities"]["inheritable"] == ["CAP_KILL"]
    oci.with_capabilities([])(spec)
    assert spec["process"]["capabilities"] == {"ambient": ["CAP_KILL", "CAP_BPF"]}


def test_capabilities_from_the_callers_status(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapEff:\t0000000000200001\n")
    from corral.plugins.runtimes._spec_host import current_capabilities

    assert current_capabilities(status) == ["CAP_CHOWN", "CAP_SYS_ADMIN"]
    assert len(oci.KNOWN_CAPABILITIES) == 41


def test_privileged_unmasks_everything_and_takes_current_caps() -> None:
    spec = oci.generate_spec(
        "default", "c1", oci.with_cgroup_mount(), oci.with_apparmor_profile("x"), oci.with_privileged
    )
    assert "maskedPaths" not in spec["linux"]
    assert "readonlyPaths" not in spec["linux"]
    assert "apparmorProfile" not in spec["process"]
    assert spec["process"]["capabilities"]["bounding"] == oci.current_capabilities()
    assert all("ro" not in m["options"] for m in spec["mounts"] if m["type"] in ("sysfs", "cgroup"))


def test_masked_and_readonly_paths_are_replaced() -> None:
    spec = oci.generate_spec("default", "c1", oci.with_masked_paths(["/proc/x"]), oci.with_readonly_paths([]))
    assert spec["linux"]["maskedPaths"] == ["/proc/x"]
    assert "readonlyPaths" not in spec["linux"]


def test_root_hostname_sysctls_and_annotations() -> None:
    spec = oci.generate_spec(
        "default",
        "c1",
        oci.with_rootfs_path("/var/lib/c1/rootfs"),
        oci.with_readonly_rootfs,
        oci.with_rootfs_propagation("rslave"),
        oci.with_hostname("box"),
        oci.with_domainname("example.org"),
        oci.with_sysctls({"net.ipv4.ip_forward": "1"}),
        oci.with_sysctls({"kernel.msgmax": "8192"}),
        oci.with_annotations({"a": "1"}),
        oci.with_annotations({"a": "2", "b": "3"}),
        oci.with_selinux_label("system_u:system_r:container_t:s0"),
    )
    assert spec["root"] == {"path": "/var/lib/c1/rootfs", "readonly": True}
    assert spec["linux"]["rootfsPropagation"] == "rslave"
    assert (spec["hostname"], spec["domainname"]) == ("box", "example.org")
    assert spec["linux"]["sysctl"] == {"net.ipv4.ip_forward": "1", "kernel.msgmax": "8192"}
    assert spec["annotations"] == {"a": "2", "b": "3"}
    assert spec["process"]["selinuxLabel"] == "system_u:system_r:container_t:s0"
    with pytest.raises(InvalidArgument):
        oci.with_rootfs_propagation("sideways")
    empty = oci.generate_spec("default", "c1", oci.with_annotations({}))
    assert "annotations" not in empty


# ctr's flags, in ctr's order.


def test_run_spec_applies_flags_like_ctr(rootfs: Path) -> None:
    flags = RunFlags(
        args=("/bin/sh",), env=("FOO=cli",), tty=True, read_only=True, cwd="/w", user="daemon",
        mounts=("type=bind,src=/h,dst=/m,options=rbind:rro",), labels=("tier",), annotations=("k=v",),
        cap_add=("CAP_SYS_ADMIN",), memory_limit=1 << 20, cgroup="", with_ns=("network:/proc/1/ns/net",),
        uidmap=("0:100000:65536",), gidmap=("0:100000:65536",),
    )  # fmt: skip
    spec = oci.run_spec("default", "c1", flags, image=IMAGE, rootfs=rootfs)
    process = spec["process"]
    assert process["args"] == ["/bin/sh"]
    assert process["env"] == ["PATH=/bin", "FOO=cli", "TERM=xterm"]
    assert process["cwd"] == "/w"
    assert process["user"] == {"uid": 1, "gid": 1, "additionalGids": [1]}
    assert spec["root"]["readonly"] is True
    assert spec["mounts"][-1]["options"] == ["rbind", "rro"]
    assert spec["annotations"] == {"k": "v", "tier": "true"}
    assert "CAP_SYS_ADMIN" in process["capabilities"]["bounding"]
    assert spec["linux"]["resources"]["memory"] == {"limit": 1 << 20}
    assert len(spec["linux"]["resources"]["devices"]) == 10
    assert "cgroupsPath" not in spec["linux"]
    assert {"type": "network", "path": "/proc/1/ns/net"} in spec["linux"]["namespaces"]
    assert spec["linux"]["uidMappings"] == [{"containerID": 0, "hostID": 100000, "size": 65536}]


@pytest.mark.parametrize(
    "flags",
    [
        RunFlags(cap_add=("SYS_ADMIN",)),
        RunFlags(cpus=1.0, cpu_quota=1000),
        RunFlags(with_ns=("network",)),
        RunFlags(with_ns=("time:/x",)),
        RunFlags(privileged_without_host_devices=True),
        RunFlags(annotations=("novalue",)),
        RunFlags(uidmap=("0:1",), gidmap=("0:1:1",)),
    ],
)
def test_bad_run_flags_are_invalid_argument(flags: RunFlags) -> None:
    with pytest.raises(InvalidArgument):
        oci.run_spec("default", "c1", flags, image=IMAGE, rootfs="/nonexistent")


def test_cdi_devices_are_not_supported() -> None:
    with pytest.raises(Unimplemented):
        oci.run_spec_opts(RunFlags(devices=("vendor.com/gpu=all",)))


def test_the_spec_facade_exports_exactly_its_all() -> None:
    public = {name for name in dir(oci) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(oci, name)).__name__ == "module"}
    assert public - modules == set(oci.__all__)
