"""The CRI plugins' logic without a socket: config sections (containerd 2.x's, and 1.x's split on
load), registry credentials as containerd's ParseAuth reads them, image id lookup, CNI configs."""

from __future__ import annotations

import base64
import copy
import json
import tomllib
from pathlib import Path

import pytest

from corral.kernel import ConfigError, InvalidArgument, decode, inert_fields
from corral.plugins.cri import CRIImage, CRIRuntimeService, ImageConfig, RuntimeConfig, ServerConfig
from corral.plugins.cri import split_v2_section as split
from corral.plugins.cri._pull import AuthConfig, parse_auth
from corral.plugins.cri.images import AmbiguousImageId, _lookup_id
from corral.plugins.cri.runtime import load_network_configs

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GRPC, IMAGES, RUNTIME = (
    "io.containerd.grpc.v1.cri",
    "io.containerd.cri.v1.images",
    "io.containerd.cri.v1.runtime",
)


def fixture_plugins(name: str) -> dict[str, object]:
    return tomllib.loads((FIXTURES / name).read_text())["plugins"]  # type: ignore[no-any-return]


def test_a_1_6_section_splits_into_containerd_2s_three_sections_and_each_decodes() -> None:
    plugins = fixture_plugins("containerd-1.6-config-default.toml")
    split(2, plugins)
    server = decode(ServerConfig, plugins[GRPC], f'plugins."{GRPC}"')  # type: ignore[arg-type]
    images = decode(ImageConfig, plugins[IMAGES], f'plugins."{IMAGES}"')  # type: ignore[arg-type]
    runtime = decode(RuntimeConfig, plugins[RUNTIME], f'plugins."{RUNTIME}"')  # type: ignore[arg-type]
    assert server.stream_server_address == "127.0.0.1"
    assert images.snapshotter == "overlayfs"
    assert images.pinned_images["sandbox"] == "registry.k8s.io/pause:3.6"
    assert images.max_concurrent_downloads == 3
    assert runtime.containerd.runtimes["runc"].runtime_type == "io.containerd.runc.v2"
    assert runtime.cni.bin_dirs == ("/opt/cni/bin",)
    assert runtime.cni.conf_dir == "/etc/cni/net.d"
    assert runtime.enable_unprivileged_ports is False


def test_the_split_is_idempotent_and_leaves_version_3_alone() -> None:
    plugins = fixture_plugins("containerd-1.6-config-default.toml")
    split(2, plugins)
    once = copy.deepcopy(plugins)
    split(2, plugins)
    assert plugins == once
    v3 = {GRPC: {"sandbox_image": "pause"}}
    split(3, v3)
    assert v3 == {GRPC: {"sandbox_image": "pause"}}


def test_a_key_already_in_the_2x_section_wins_over_the_1x_one() -> None:
    plugins = {
        GRPC: {"cni": {"conf_dir": "/old"}, "containerd": {"snapshotter": "native"}},
        RUNTIME: {"cni": {"conf_dir": "/new"}},
    }
    split(2, plugins)
    assert plugins[RUNTIME]["cni"]["conf_dir"] == "/new"  # type: ignore[index]
    assert plugins[IMAGES] == {"snapshotter": "native"}
    assert plugins[GRPC] == {}


def test_a_1x_sandbox_mode_becomes_sandboxer() -> None:
    plugins = {GRPC: {"containerd": {"runtimes": {"kata": {"sandbox_mode": "shim"}}}}}
    split(2, plugins)
    assert plugins[RUNTIME]["containerd"]["runtimes"]["kata"] == {"sandboxer": "shim"}  # type: ignore[index]


def test_inert_keys_are_named_by_their_path_in_nested_tables() -> None:
    runtime = decode(
        RuntimeConfig,
        {
            "containerd": {
                "runtimes": {"kata": {"runtime_type": "io.containerd.kata.v2", "runtime_root": "/x"}}
            }
        },
    )
    names = [name for name, _ in inert_fields(runtime)]
    assert names == ["containerd.runtimes.kata.runtime_root"]
    assert inert_fields(RuntimeConfig()) == []
    assert inert_fields(ImageConfig()) == []


def test_a_configured_handler_joins_runc_and_the_default_must_exist() -> None:
    runtime = decode(
        RuntimeConfig, {"containerd": {"runtimes": {"crun": {"runtime_type": "io.containerd.runc.v2"}}}}
    )
    assert sorted(runtime.containerd.runtimes) == ["crun", "runc"]
    with pytest.raises(ConfigError, match="default_runtime_name"):
        decode(RuntimeConfig, {"containerd": {"default_runtime_name": "absent"}}, f'plugins."{RUNTIME}"')


def test_unknown_keys_in_the_cri_sections_are_errors_naming_their_path() -> None:
    with pytest.raises(
        ConfigError, match=r'plugins\."io\.containerd\.cri\.v1\.images"\.snapshoter: unknown key'
    ):
        decode(ImageConfig, {"snapshoter": "native"}, f'plugins."{IMAGES}"')


def test_the_cgroup_driver_follows_the_first_runc_handler_default_first() -> None:
    def driver(raw: dict[str, object]) -> str:
        return CRIRuntimeService(decode(RuntimeConfig, raw)).cgroup_driver()

    assert driver({}) == "cgroupfs"
    systemd = {"runtime_type": "io.containerd.runc.v2", "options": {"SystemdCgroup": True}}
    assert driver({"containerd": {"runtimes": {"runc": systemd}}}) == "systemd"
    other = {"runtime_type": "io.containerd.kata.v2", "options": {"SystemdCgroup": False}}
    raw = {"containerd": {"default_runtime_name": "kata", "runtimes": {"kata": other, "runc": systemd}}}
    assert driver(raw) == "systemd"  # kata's options are not runc's: the next handler decides


def test_parse_auth_as_containerd() -> None:
    assert parse_auth(None, "r.example") is None
    assert parse_auth(AuthConfig(username="u", password="p"), "r.example") == ("u", "p")
    assert parse_auth(AuthConfig(identity_token="tok"), "r.example") == ("", "tok")
    encoded = base64.b64encode(b"u:p\x00").decode()
    assert parse_auth(AuthConfig(auth=encoded), "r.example") == ("u", "p")
    assert parse_auth(AuthConfig(username="u", server_address="https://other.example"), "r.example") is None
    assert parse_auth(AuthConfig(username="u", password="p", server_address="https://r.example"), "r.example")
    with pytest.raises(InvalidArgument, match="invalid decoded auth"):
        parse_auth(AuthConfig(auth=base64.b64encode(b"nocolon").decode()), "r.example")
    assert parse_auth(AuthConfig(), "r.example") is None


def image(image_id: str) -> CRIImage:
    return CRIImage(id=image_id, references=(image_id,), chain_id="", size=0, spec={})


def test_image_ids_resolve_exactly_or_by_a_unique_prefix() -> None:
    a, b = image("sha256:" + "ab" * 32), image("sha256:" + "ac" * 32)
    assert _lookup_id([a, b], a.id) is a
    assert _lookup_id([a, b], "abab") is a
    assert _lookup_id([a, b], "sha256:acac") is b
    with pytest.raises(AmbiguousImageId):
        _lookup_id([a, b], "a")
    from corral.kernel import NotFound

    with pytest.raises(NotFound):
        _lookup_id([a, b], "ff")
    with pytest.raises(NotFound):
        _lookup_id([a, b], "sha512:abab")


def test_repo_tags_and_digests_are_told_apart_and_the_user_read_as_containerd() -> None:
    named = CRIImage(
        id="sha256:" + "0" * 64,
        references=("sha256:" + "0" * 64, "docker.io/library/b:1", "docker.io/library/b@sha256:" + "1" * 64),
        chain_id="",
        size=0,
        spec={"config": {"User": "1000:1000"}},
    )
    assert named.repo_tags == ["docker.io/library/b:1"]
    assert named.repo_digests == ["docker.io/library/b@sha256:" + "1" * 64]
    assert named.user == (1000, "")
    assert CRIImage("x", (), "", 0, {"config": {"User": "nobody"}}).user == (None, "nobody")
    assert CRIImage("x", (), "", 0, {}).user == (None, "")


def test_cni_configs_load_in_name_order_and_a_bad_one_fails_the_load(tmp_path: Path) -> None:
    empty = load_network_configs(str(tmp_path), 1)
    assert empty.error == (
        f"cni config load failed: no network config found in {tmp_path}: cni plugin not initialized: "
        "failed to load cni config"
    )
    (tmp_path / "20-b.conflist").write_text(json.dumps({"name": "b", "plugins": [{"type": "bridge"}]}))
    (tmp_path / "10-a.conf").write_text(json.dumps({"name": "a", "type": "bridge"}))
    (tmp_path / "notes.txt").write_text("ignored")
    loaded = load_network_configs(str(tmp_path), 1)
    assert [p.name for p in loaded.files] == ["10-a.conf"] and not loaded.error
    assert [p.name for p in load_network_configs(str(tmp_path), 0).files] == ["10-a.conf", "20-b.conflist"]
    (tmp_path / "05-broken.conflist").write_text(json.dumps({"name": "x", "plugins": []}))
    assert "no plugins in list" in load_network_configs(str(tmp_path), 1).error
