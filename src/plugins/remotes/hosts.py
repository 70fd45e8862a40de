"""Registry host configuration, read as containerd reads ``config_path`` (certs.d) directories.

For a registry name (``docker.io``, ``127.0.0.1:5000``) the first directory found among
``<root>/<host>_<port>_``, ``<root>/<host:port>`` and ``<root>/_default`` in each root is read:
its ``hosts.toml`` when present, else Docker's legacy certificate files (``*.crt`` CAs, ``*.cert``
and ``*.key`` client pairs). The result is the ordered list of hosts to try: the ``[host."…"]``
mirrors in file order, then the ``server`` (or the registry itself).
"""

from __future__ import annotations

import dataclasses
import enum
import posixpath
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from corral.kernel import ConfigError, parse_duration
from corral.plugins.remotes.reference import DOCKER_HUB, DOCKER_HUB_REGISTRY

__all__ = [
    "HOSTS_FILE",
    "Capability",
    "RegistryHost",
    "default_hosts",
    "find_host_directory",
    "host_directory_names",
    "load_host_directory",
    "load_hosts",
    "parse_hosts_file",
]

HOSTS_FILE = "hosts.toml"
DEFAULT_DIRECTORY = "_default"


class Capability(enum.Flag):
    """What a host may be used for; a mirror without RESOLVE is asked only for content by digest."""

    PULL = enum.auto()
    RESOLVE = enum.auto()
    PUSH = enum.auto()
    REFERRERS = enum.auto()


ALL_CAPABILITIES = Capability.PULL | Capability.RESOLVE | Capability.PUSH | Capability.REFERRERS
_CAPABILITY_NAMES = {c.name.lower(): c for c in Capability if c.name}


@dataclass(frozen=True)
class RegistryHost:
    """One endpoint to try: where it is, what it may do, and how to reach it."""

    host: str
    """``host[:port]`` as it goes in the URL."""
    scheme: str = "https"
    path: str = "/v2"
    """The API root; ``/v2`` unless ``override_path`` said otherwise."""
    capabilities: Capability = ALL_CAPABILITIES
    ca: tuple[Path, ...] = ()
    """CA bundles trusted on top of the system's."""
    client_certs: tuple[tuple[Path, Path | None], ...] = ()
    """(certificate, key) pairs; no key means the certificate file holds it too."""
    skip_verify: bool | None = None
    header: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Extra request headers, each with one or more values."""
    dial_timeout: float | None = None
    """Seconds a connect may take; None keeps the client's default."""

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}{self.path}"

    def can(self, capability: Capability) -> bool:
        return capability in self.capabilities


def host_directory_names(name: str) -> list[str]:
    """The directory names tried for ``name``: ``host_port_`` first (when there is a port), then ``name``."""
    index = name.rfind(":")
    names = [f"{name[:index]}_{name[index + 1 :]}_"] if index > 0 else []
    return [*names, name, DEFAULT_DIRECTORY]


def _roots(config_path: str | Path | Sequence[str | Path]) -> list[Path]:
    if isinstance(config_path, str | Path):
        return [Path(p) for p in str(config_path).split(":") if p]
    return [Path(p) for p in config_path]


def find_host_directory(name: str, config_path: str | Path | Sequence[str | Path]) -> Path | None:
    """The first existing host directory for ``name`` under the roots (a str may join them with ``:``)."""
    for root in _roots(config_path):
        for candidate in host_directory_names(name):
            directory = root / candidate
            if directory.exists():
                return directory
    return None


def default_hosts(name: str, *, plain_http: bool = False) -> list[RegistryHost]:
    """The single host used when no configuration exists: the registry itself (Docker Hub's real host)."""
    return [_default_server(RegistryHost(host=""), name, plain_http)]


def _default_server(entry: RegistryHost, name: str, plain_http: bool) -> RegistryHost:
    if name == DOCKER_HUB:
        return dataclasses.replace(entry, host=DOCKER_HUB_REGISTRY, scheme="https", path="/v2")
    return dataclasses.replace(entry, host=name, scheme="http" if plain_http else "https", path="/v2")


def load_hosts(
    name: str,
    config_path: str | Path | Sequence[str | Path] | None = None,
    *,
    plain_http: bool = False,
) -> list[RegistryHost]:
    """The ordered hosts for registry ``name``; ``plain_http`` applies only to the default server.

    ConfigError (an InvalidArgument) naming the file and key for a malformed ``hosts.toml``.
    """
    directory = find_host_directory(name, config_path) if config_path is not None else None
    if directory is None:
        return default_hosts(name, plain_http=plain_http)
    entries = load_host_directory(directory)
    if entries and not entries[-1].host:
        entries[-1] = _default_server(entries[-1], name, plain_http)
    return entries


def load_host_directory(directory: Path) -> list[RegistryHost]:
    """Read one host directory; the last entry has an empty ``host`` when the file names no ``server``."""
    hosts_file = directory / HOSTS_FILE
    try:
        data = hosts_file.read_bytes()
    except FileNotFoundError:
        data = b""
    except OSError as exc:
        raise ConfigError(f"{hosts_file}: cannot read: {exc.strerror}") from exc
    if not data.strip():
        return [load_certificate_files(directory)]
    return parse_hosts_file(data, base_dir=directory, source=hosts_file)


def load_certificate_files(directory: Path) -> RegistryHost:
    """Docker's layout: ``*.crt`` are CAs, ``*.cert`` client certificates with an optional ``.key`` beside."""
    ca: list[Path] = []
    pairs: list[tuple[Path, Path | None]] = []
    try:
        files = sorted(p for p in directory.iterdir() if not p.is_dir())
    except FileNotFoundError:
        files = []
    for path in files:
        if path.name.endswith(".crt"):
            ca.append(path)
        elif path.name.endswith(".cert"):
            key = path.with_name(path.name[: -len(".cert")] + ".key")
            pairs.append((path, key if key.exists() else None))
    return RegistryHost(host="", ca=tuple(ca), client_certs=tuple(pairs))


_HOST_KEYS = {"capabilities", "ca", "client", "skip_verify", "header", "override_path", "dial_timeout"}


def parse_hosts_file(
    data: bytes | str, *, base_dir: Path, source: Path | str = HOSTS_FILE
) -> list[RegistryHost]:
    """Parse a ``hosts.toml``: the ``[host."…"]`` entries in file order, then the top-level server."""
    text = data.decode() if isinstance(data, bytes) else data
    try:
        document = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    for key in document:
        if key not in _HOST_KEYS | {"server", "host"}:
            raise ConfigError(f"{source}: unknown key {key!r}")
    mirrors = document.get("host", {})
    if not isinstance(mirrors, dict):
        raise ConfigError(f"{source}: key 'host' must be a table of hosts")
    entries = []
    for server, table in mirrors.items():
        where = f"host.{_toml_key(server)}"
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: key {where!r} must be a table")
        entries.append(_parse_entry(server, table, base_dir, source, where + "."))
    server = document.get("server", "")
    if not isinstance(server, str):
        raise ConfigError(f"{source}: key 'server' must be a string")
    top = {k: v for k, v in document.items() if k in _HOST_KEYS}
    entries.append(_parse_entry(server, top, base_dir, source, ""))
    return entries


def _toml_key(key: str) -> str:
    return key if key.replace("-", "").replace("_", "").isalnum() else f'"{key}"'


_Fail = Callable[[str, str], ConfigError]


def _parse_entry(
    server: str, table: dict[str, Any], base_dir: Path, source: Path | str, prefix: str
) -> RegistryHost:
    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(f"{source}: key {prefix + key!r}: {message}")

    for key in table:
        if key not in _HOST_KEYS:
            raise fail(key, "unknown key")
    override_path = table.get("override_path", False)
    if not isinstance(override_path, bool):
        raise fail("override_path", "must be a boolean")
    scheme, host, path = "https", "", "/v2"
    if server:
        where = prefix.rstrip(".") or "server"
        invalid = ConfigError(f"{source}: key {where!r}: invalid server URL {server!r}")
        scheme, host, path = _parse_server(server, override_path, invalid)
    capabilities = ALL_CAPABILITIES
    if "capabilities" in table:
        capabilities = _parse_capabilities(table["capabilities"], fail)
    skip_verify = table.get("skip_verify")
    if skip_verify is not None and not isinstance(skip_verify, bool):
        raise fail("skip_verify", "must be a boolean")
    dial_timeout = None
    if "dial_timeout" in table:
        value = table["dial_timeout"]
        if not isinstance(value, str):
            raise fail("dial_timeout", 'must be a duration string such as "10s"')
        try:
            dial_timeout = parse_duration(value).total_seconds()
        except ValueError as exc:
            raise fail("dial_timeout", str(exc)) from None
        if dial_timeout <= 0:
            raise fail("dial_timeout", "must be positive")
    return RegistryHost(
        host=host,
        scheme=scheme,
        path=path,
        capabilities=capabilities,
        ca=_parse_ca(table.get("ca"), base_dir, fail),
        client_certs=_parse_client(table.get("client"), base_dir, fail),
        skip_verify=skip_verify,
        header=_parse_header(table.get("header"), fail),
        dial_timeout=dial_timeout,
    )


def _parse_server(server: str, override_path: bool, invalid: ConfigError) -> tuple[str, str, str]:
    url = server if server.startswith("http") else f"https://{server}"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise invalid from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise invalid
    path = parts.path
    if path:
        path = posixpath.normpath(path)
        if not path.endswith("/v2") and not override_path:
            path = path.rstrip("/") + "/v2"
    elif not override_path:
        path = "/v2"
    return parts.scheme, parts.netloc, path


def _parse_capabilities(value: Any, fail: _Fail) -> Capability:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise fail("capabilities", "must be a list of strings")
    if not value:
        return ALL_CAPABILITIES
    result = Capability(0)
    for name in value:
        capability = _CAPABILITY_NAMES.get(name.lower())
        if capability is None:
            raise fail("capabilities", f"unknown capability {name!r} (pull, resolve, push, referrers)")
        result |= capability
    return result


def _absolute(path: str, base_dir: Path) -> Path:
    candidate = Path(path)
    return candidate if candidate.is_absolute() else base_dir / candidate


def _parse_ca(value: Any, base_dir: Path, fail: _Fail) -> tuple[Path, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (_absolute(value, base_dir),)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(_absolute(v, base_dir) for v in value)
    raise fail("ca", "must be a path or a list of paths")


def _parse_client(value: Any, base_dir: Path, fail: _Fail) -> tuple[tuple[Path, Path | None], ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return ((_absolute(value, base_dir), None),)
    if not isinstance(value, list):
        raise fail("client", "must be a path, a list of paths or a list of [cert, key] pairs")
    pairs: list[tuple[Path, Path | None]] = []
    for item in value:
        if isinstance(item, str):
            pairs.append((_absolute(item, base_dir), None))
        elif isinstance(item, list) and len(item) == 2 and all(isinstance(v, str) for v in item):
            pairs.append((_absolute(item[0], base_dir), _absolute(item[1], base_dir)))
        else:
            raise fail("client", f"invalid entry {item!r}: a path or a [cert, key] pair")
    return tuple(pairs)


def _parse_header(value: Any, fail: _Fail) -> dict[str, tuple[str, ...]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise fail("header", "must be a table")
    header: dict[str, tuple[str, ...]] = {}
    for name, values in value.items():
        if isinstance(values, str):
            header[name] = (values,)
        elif isinstance(values, list) and all(isinstance(v, str) for v in values):
            header[name] = tuple(values)
        else:
            raise fail(f"header.{name}", "must be a string or a list of strings")
    return header
