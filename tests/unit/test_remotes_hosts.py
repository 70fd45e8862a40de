"""Registry host configuration: hosts.toml keys and order, certs.d layout, defaults, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.kernel import ConfigError, InvalidArgument
from corral.plugins.remotes.hosts import (
    Capability,
    RegistryHost,
    default_hosts,
    find_host_directory,
    host_directory_names,
    load_hosts,
    parse_hosts_file,
)

ALL = Capability.PULL | Capability.RESOLVE | Capability.PUSH | Capability.REFERRERS


def hosts_dir(root: Path, name: str, text: str) -> Path:
    directory = root / name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hosts.toml").write_text(text)
    return directory


# --- defaults ------------------------------------------------------------------------------------


def test_docker_hub_is_served_by_registry_1_over_https() -> None:
    assert default_hosts("docker.io") == [
        RegistryHost(host="registry-1.docker.io", scheme="https", path="/v2")
    ]


def test_a_registry_without_configuration_is_its_own_https_host() -> None:
    [host] = load_hosts("registry.example.com:5000")
    assert (host.url, host.capabilities) == ("https://registry.example.com:5000/v2", ALL)


def test_plain_http_is_used_only_when_asked() -> None:
    assert load_hosts("127.0.0.1:5000")[0].scheme == "https"
    assert load_hosts("127.0.0.1:5000", plain_http=True)[0].scheme == "http"


def test_no_directory_for_the_registry_means_the_default_host(tmp_path: Path) -> None:
    hosts_dir(tmp_path, "other.example.com", 'server = "https://other.example.com"\n')
    assert load_hosts("registry.example.com", tmp_path) == default_hosts("registry.example.com")


# --- directory naming ----------------------------------------------------------------------------


def test_host_directories_are_tried_with_port_mangled_then_verbatim_then_default() -> None:
    assert host_directory_names("127.0.0.1:5000") == ["127.0.0.1_5000_", "127.0.0.1:5000", "_default"]
    assert host_directory_names("docker.io") == ["docker.io", "_default"]


def test_a_host_with_a_port_is_found_in_its_colon_named_directory(tmp_path: Path) -> None:
    directory = hosts_dir(tmp_path, "127.0.0.1:5000", 'server = "http://127.0.0.1:5000"\n')
    assert find_host_directory("127.0.0.1:5000", tmp_path) == directory
    assert load_hosts("127.0.0.1:5000", tmp_path)[0].url == "http://127.0.0.1:5000/v2"


def test_the_underscore_port_directory_wins_over_the_colon_one(tmp_path: Path) -> None:
    hosts_dir(tmp_path, "127.0.0.1:5000", 'server = "http://127.0.0.1:5000"\n')
    mangled = hosts_dir(tmp_path, "127.0.0.1_5000_", 'server = "https://127.0.0.1:5000"\n')
    assert find_host_directory("127.0.0.1:5000", tmp_path) == mangled


def test_default_directory_applies_to_registries_without_their_own(tmp_path: Path) -> None:
    hosts_dir(tmp_path, "_default", '[host."https://mirror.example.com"]\ncapabilities = ["pull"]\n')
    hosts = load_hosts("registry.example.com", tmp_path)
    assert [h.url for h in hosts] == ["https://mirror.example.com/v2", "https://registry.example.com/v2"]


def test_roots_are_searched_in_order_and_a_string_may_join_them_with_colons(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    hosts_dir(second, "registry.example.com", 'server = "https://second.example.com"\n')
    hosts_dir(first, "_default", 'server = "https://first-default.example.com"\n')
    assert load_hosts("registry.example.com", f"{first}:{second}")[0].host == "first-default.example.com"
    assert load_hosts("registry.example.com", [second, first])[0].host == "second.example.com"


# --- hosts.toml ----------------------------------------------------------------------------------


def test_mirrors_come_in_file_order_before_the_server(tmp_path: Path) -> None:
    text = """
server = "https://registry.example.com"

[host."https://zeta.example.com"]
  capabilities = ["pull"]

[host."https://alpha.example.com"]
  capabilities = ["pull", "resolve"]

[host."https://zeta.example.com".header]
  x-late = "defined after alpha, still zeta's"
"""
    hosts = parse_hosts_file(text, base_dir=tmp_path)
    assert [h.host for h in hosts] == ["zeta.example.com", "alpha.example.com", "registry.example.com"]
    assert hosts[0].header == {"x-late": ("defined after alpha, still zeta's",)}


def test_capabilities_are_parsed_case_insensitively_and_default_to_all(tmp_path: Path) -> None:
    text = """
[host."https://a.example.com"]
  capabilities = ["Pull", "RESOLVE"]
[host."https://b.example.com"]
  capabilities = ["push"]
[host."https://c.example.com"]
"""
    a, b, c, server = parse_hosts_file(text, base_dir=tmp_path)
    assert a.capabilities == Capability.PULL | Capability.RESOLVE
    assert a.can(Capability.PULL) and not a.can(Capability.PUSH)
    assert b.capabilities == Capability.PUSH
    assert c.capabilities == ALL and server.capabilities == ALL


def test_every_host_key_is_read(tmp_path: Path) -> None:
    text = """
server = "https://registry.example.com"
ca = "/etc/pki/root.pem"
skip_verify = false
dial_timeout = "2.5s"

[host."https://mirror.example.com:8443"]
  capabilities = ["pull", "resolve"]
  ca = ["ca-one.pem", "/abs/ca-two.pem"]
  client = [["client.cert", "client.key"], "combined.pem"]
  skip_verify = true
  dial_timeout = "1m30s"
  [host."https://mirror.example.com:8443".header]
    x-custom = "one"
    x-multi = ["a", "b"]
"""
    mirror, server = parse_hosts_file(text, base_dir=tmp_path)
    assert mirror == RegistryHost(
        host="mirror.example.com:8443",
        scheme="https",
        path="/v2",
        capabilities=Capability.PULL | Capability.RESOLVE,
        ca=(tmp_path / "ca-one.pem", Path("/abs/ca-two.pem")),
        client_certs=((tmp_path / "client.cert", tmp_path / "client.key"), (tmp_path / "combined.pem", None)),
        skip_verify=True,
        header={"x-custom": ("one",), "x-multi": ("a", "b")},
        dial_timeout=90.0,
    )
    assert server.ca == (Path("/etc/pki/root.pem"),)
    assert server.skip_verify is False
    assert server.dial_timeout == 2.5


def test_a_single_client_path_holds_certificate_and_key(tmp_path: Path) -> None:
    [server] = parse_hosts_file('server = "https://r.example.com"\nclient = "both.pem"\n', base_dir=tmp_path)
    assert server.client_certs == ((tmp_path / "both.pem", None),)


def test_server_scheme_decides_plain_http(tmp_path: Path) -> None:
    [mirror, server] = parse_hosts_file(
        'server = "http://registry.example.com:5000"\n[host."mirror.example.com"]\n', base_dir=tmp_path
    )
    assert server.url == "http://registry.example.com:5000/v2"
    assert mirror.url == "https://mirror.example.com/v2"


def test_server_paths_get_v2_unless_override_path(tmp_path: Path) -> None:
    text = """
[host."https://a.example.com/mirror/"]
[host."https://b.example.com/already/v2"]
[host."https://c.example.com/custom/api"]
  override_path = true
[host."https://d.example.com"]
  override_path = true
"""
    a, b, c, d, _ = parse_hosts_file(text, base_dir=tmp_path)
    assert (a.path, b.path, c.path, d.path) == ("/mirror/v2", "/already/v2", "/custom/api", "")


def test_a_file_without_server_ends_with_the_registry_itself(tmp_path: Path) -> None:
    hosts_dir(
        tmp_path, "docker.io", '[host."https://mirror.example.com"]\ncapabilities = ["pull", "resolve"]\n'
    )
    hosts = load_hosts("docker.io", tmp_path)
    assert [h.url for h in hosts] == ["https://mirror.example.com/v2", "https://registry-1.docker.io/v2"]
    assert hosts[-1].capabilities == ALL


def test_plain_http_applies_to_the_implicit_server_only(tmp_path: Path) -> None:
    hosts_dir(tmp_path, "127.0.0.1:5000", '[host."https://mirror.example.com"]\nskip_verify = true\n')
    mirror, server = load_hosts("127.0.0.1:5000", tmp_path, plain_http=True)
    assert (mirror.scheme, server.url) == ("https", "http://127.0.0.1:5000/v2")


def test_top_level_tls_settings_belong_to_the_server_entry(tmp_path: Path) -> None:
    hosts_dir(tmp_path, "registry.example.com", 'ca = "ca.pem"\n[host."https://m.example.com"]\n')
    mirror, server = load_hosts("registry.example.com", tmp_path)
    assert mirror.ca == ()
    assert server.ca == (tmp_path / "registry.example.com" / "ca.pem",)
    assert server.host == "registry.example.com"


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('server = "https://r.example.com"\ncapabilities = ["pull", "fly"]\n', "'capabilities'"),
        (
            '[host."https://m.example.com"]\ncapabilities = "pull"\n',
            "'host.\"https://m.example.com\".capabilities'",
        ),
        ('[host."https://m.example.com"]\nskip_verify = "yes"\n', "skip_verify"),
        ('[host."https://m.example.com"]\nca = 3\n', "ca"),
        ('[host."https://m.example.com"]\nclient = [["only-one"]]\n', "client"),
        ('[host."https://m.example.com"]\ndial_timeout = "soon"\n', "dial_timeout"),
        ('[host."https://m.example.com"]\ndial_timeout = 10\n', "dial_timeout"),
        ('[host."https://m.example.com"]\noverride_path = "yes"\n', "override_path"),
        ('[host."https://m.example.com".header]\nx-bad = 1\n', "header.x-bad"),
        ('[host."https://m.example.com"]\ncapabilites = ["pull"]\n', "capabilites"),
        ("mirrors = []\n", "mirrors"),
        ("server = 5\n", "'server'"),
        ('server = "https://r.example.com:notaport"\n', "'server'"),
        ('[host."https://m.example.com:99999999"]\n', "'host.\"https://m.example.com:99999999\"'"),
        ('host = "m.example.com"\n', "'host'"),
    ],
)
def test_a_malformed_hosts_file_is_an_invalid_argument_naming_file_and_key(
    tmp_path: Path, text: str, key: str
) -> None:
    directory = hosts_dir(tmp_path, "registry.example.com", text)
    with pytest.raises(ConfigError) as failure:
        load_hosts("registry.example.com", tmp_path)
    assert isinstance(failure.value, InvalidArgument)
    assert str(directory / "hosts.toml") in str(failure.value)
    assert key in str(failure.value)


def test_a_hosts_file_that_is_not_toml_names_the_file_and_line(tmp_path: Path) -> None:
    directory = hosts_dir(tmp_path, "registry.example.com", 'server = "https://r.example.com"\n[host."x"\n')
    with pytest.raises(ConfigError, match=r"hosts\.toml: .*line 2"):
        load_hosts("registry.example.com", tmp_path)
    assert (directory / "hosts.toml").exists()


# --- legacy certs.d ------------------------------------------------------------------------------


def test_legacy_certificate_files_configure_the_default_host(tmp_path: Path) -> None:
    directory = tmp_path / "registry.example.com:5000"
    directory.mkdir()
    for name in ("ca.crt", "extra.crt", "client.cert", "client.key", "lonely.cert", "notes.txt"):
        (directory / name).write_text(name)
    (directory / "subdir.crt").mkdir()
    [host] = load_hosts("registry.example.com:5000", tmp_path)
    assert host.url == "https://registry.example.com:5000/v2"
    assert host.ca == (directory / "ca.crt", directory / "extra.crt")
    assert host.client_certs == (
        (directory / "client.cert", directory / "client.key"),
        (directory / "lonely.cert", None),
    )
    assert host.capabilities == ALL


def test_an_empty_hosts_file_falls_back_to_the_certificate_files(tmp_path: Path) -> None:
    directory = hosts_dir(tmp_path, "registry.example.com", "\n")
    (directory / "ca.crt").write_text("pem")
    [host] = load_hosts("registry.example.com", tmp_path)
    assert host.ca == (directory / "ca.crt",)
