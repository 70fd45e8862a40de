"""Network configuration lists as libcni reads them: ``.conf``, ``.conflist`` and ``.json`` files."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.kernel import InvalidArgument, NotFound

CONF_EXTENSIONS = (".conf", ".conflist", ".json")

LOOPBACK_CONFLIST = {"cniVersion": "0.3.1", "name": "cni-loopback", "plugins": [{"type": "loopback"}]}
"""go-cni's loopback network (``WithLoNetwork``), which containerd's CRI sets up first, on ``lo``."""


@dataclass(frozen=True)
class PluginConfig:
    """One plugin of a list: its ``type`` (the binary's name) and its raw JSON object."""

    type: str
    raw: Mapping[str, Any]

    @property
    def capabilities(self) -> frozenset[str]:
        """The runtime capabilities it declares true (``portMappings``, ``ipRanges``, …)."""
        caps = self.raw.get("capabilities") or {}
        return frozenset(k for k, v in caps.items() if v is True) if isinstance(caps, dict) else frozenset()


@dataclass(frozen=True)
class NetworkConfigList:
    """A network: ``name``, ``cniVersion`` and its plugins, run in order on ADD and reversed on DEL."""

    name: str
    cni_version: str
    plugins: tuple[PluginConfig, ...]
    source: str = ""
    disable_check: bool = False
    raw: Mapping[str, Any] | None = None


def _plugin(obj: object, where: str) -> PluginConfig:
    if not isinstance(obj, dict):
        raise InvalidArgument(f"{where}: a plugin must be a JSON object")
    kind = obj.get("type")
    if not isinstance(kind, str) or not kind:
        raise InvalidArgument(f"{where}: a plugin has no type")
    return PluginConfig(kind, obj)


def parse_conflist(data: bytes | str, source: str = "") -> NetworkConfigList:
    """A ``.conflist`` document, or a single plugin's ``.conf`` (which becomes a list of one)."""
    where = source or "network configuration"
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise InvalidArgument(f"{where}: invalid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{where}: not a JSON object")
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"{where}: no network name")
    version = doc.get("cniVersion", "0.1.0")
    if not isinstance(version, str):
        raise InvalidArgument(f"{where}: cniVersion must be a string")
    if "plugins" in doc:
        plugins = doc["plugins"]
        if not isinstance(plugins, list) or not plugins:
            raise InvalidArgument(f"{where}: no plugins in list")
        parsed = tuple(_plugin(p, where) for p in plugins)
    else:
        parsed = (_plugin(doc, where),)
    return NetworkConfigList(name, version, parsed, source, bool(doc.get("disableCheck", False)), doc)


def conf_files(conf_dir: Path) -> list[Path]:
    """libcni's ConfFiles: the directory's configuration files, sorted by name."""
    try:
        entries = sorted(conf_dir.iterdir())
    except FileNotFoundError:
        return []
    return [p for p in entries if p.suffix in CONF_EXTENSIONS and p.is_file()]


def load_networks(conf_dir: Path, max_conf_num: int = 1) -> list[NetworkConfigList]:
    """The first ``max_conf_num`` networks of ``conf_dir`` (0: all), as containerd's CRI loads
    them through go-cni: a chosen file that does not parse fails the load (InvalidArgument naming
    it), none at all is NotFound."""
    found: list[NetworkConfigList] = []
    for path in conf_files(conf_dir):
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InvalidArgument(f"failed to load CNI config file {path}: {exc.strerror}") from None
        found.append(parse_conflist(data, str(path)))
        if max_conf_num and len(found) >= max_conf_num:
            break
    if not found:
        raise NotFound(f"no network config found in {conf_dir}")
    return found


def plugin_stdin(
    network: NetworkConfigList,
    plugin: PluginConfig,
    prev_result: Mapping[str, Any] | None,
    runtime_config: Mapping[str, Any],
) -> bytes:
    """What a plugin reads on stdin: its own object with the list's ``name`` and ``cniVersion``,
    ``prevResult`` when there is one, and ``runtimeConfig`` for the capabilities it declares."""
    conf: dict[str, Any] = dict(plugin.raw)
    conf["name"] = network.name
    conf["cniVersion"] = network.cni_version
    if prev_result is not None:
        conf["prevResult"] = dict(prev_result)
    wanted = {k: v for k, v in runtime_config.items() if k in plugin.capabilities}
    if wanted:
        conf["runtimeConfig"] = wanted
    return json.dumps(conf).encode()


def split_bin_dirs(value: str | Sequence[str]) -> tuple[str, ...]:
    return tuple(value.split(":")) if isinstance(value, str) else tuple(value)
