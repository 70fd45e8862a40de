"""``[proxy_plugins.NAME]`` entries as plugins, as containerd's LoadPlugins registers them.

Each entry becomes a plugin of its type with id NAME: exports are the configured ones plus
``address``; platforms the configured one (the host's when empty); capabilities as configured.
Its init makes no connection (containerd dials lazily too), so a proxy started later is fine.
Unlike containerd, which crashes on an unknown type and registers an empty address, corral
refuses such entries as config errors naming the key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from corral.api.proxy._channel import ProxyChannel
from corral.kernel import (
    Candidate,
    ConfigError,
    InitContext,
    InvalidArgument,
    Origin,
    Platform,
    Registration,
    decode,
)
from corral.plugins import types
from corral.plugins.images.oci import Platform as ImagePlatform

CONFIG_KEY = "proxy_plugins"
ORIGIN = "proxy"
"""The distribution named in a proxy plugin's origin: it runs in another process, not from a package."""


@dataclass(frozen=True)
class ProxyPluginConfig:
    """One ``[proxy_plugins.NAME]`` entry, containerd's ProxyPlugin."""

    type: str = ""
    address: str = ""
    platform: str = ""
    exports: Mapping[str, str] = field(default_factory=dict)
    capabilities: tuple[str, ...] = ()


Factory = Callable[[ProxyChannel, str], object]
"""Makes the plugin's instance from its connection and its name."""


def _snapshotter(channel: ProxyChannel, name: str) -> object:
    from corral.api.proxy._snapshots import ProxySnapshotter

    return ProxySnapshotter(channel.address, name, channel=channel)


def _content(channel: ProxyChannel, name: str) -> object:
    from corral.api.proxy._content import ProxyContentStore

    return ProxyContentStore(channel.address, channel=channel)


def _differ(channel: ProxyChannel, name: str) -> object:
    from corral.api.proxy._diff import ProxyDiffer

    return ProxyDiffer(channel.address, channel=channel)


# containerd accepts the short name or the full plugin type.
KINDS: dict[str, tuple[str, Factory]] = {
    "snapshot": (types.SNAPSHOTTER, _snapshotter),
    types.SNAPSHOTTER: (types.SNAPSHOTTER, _snapshotter),
    "content": (types.CONTENT, _content),
    types.CONTENT: (types.CONTENT, _content),
    "diff": (types.DIFFER, _differ),
    types.DIFFER: (types.DIFFER, _differ),
}
UNSUPPORTED = {"sandbox": "io.containerd.sandbox.controller.v1"}


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _path(name: str, key: str = "") -> str:
    """The TOML key path of an entry (or of one of its keys), as config errors name keys."""
    quoted = name if _BARE_KEY.fullmatch(name) else json.dumps(name, ensure_ascii=False)
    return f"{CONFIG_KEY}.{quoted}" + (f".{key}" if key else "")


def proxy_candidates(table: Mapping[str, Any]) -> Sequence[Candidate]:
    """The ``corral.config_plugins`` provider for ``proxy_plugins``: one candidate per entry."""
    found: list[Candidate] = []
    channels: dict[str, ProxyChannel] = {}  # one connection per address, as containerd keeps them
    for name, raw in table.items():
        config = decode(ProxyPluginConfig, raw, _path(name))
        found.append(candidate(name, config, channels))
    return found


def candidate(
    name: str, config: ProxyPluginConfig, channels: dict[str, ProxyChannel] | None = None
) -> Candidate:
    """Check one entry and make its plugin; ConfigError names the key at fault."""
    kind = KINDS.get(config.type)
    if kind is None:
        if config.type in UNSUPPORTED or config.type in UNSUPPORTED.values():
            text = f"proxy plugin type {json.dumps(config.type)} is not supported by corral"
        elif not config.type:
            raise ConfigError(
                f"{_path(name, 'type')}: missing key (snapshot, content or diff)", key=_path(name, "type")
            )
        else:
            text = f"unknown proxy plugin type {json.dumps(config.type)}"
        raise ConfigError(
            f"{_path(name, 'type')}: {text} (expected snapshot, content or diff)", key=_path(name, "type")
        )
    if not config.address:
        raise ConfigError(
            f"{_path(name, 'address')}: missing key (the proxy's unix socket)", key=_path(name, "address")
        )
    if "\x00" in config.address:
        raise ConfigError(f"{_path(name, 'address')}: contains a NUL byte", key=_path(name, "address"))
    platform = Platform.host()
    if config.platform:
        try:
            parsed = ImagePlatform.parse(config.platform)
        except InvalidArgument as exc:
            raise ConfigError(f"{_path(name, 'platform')}: {exc}", key=_path(name, "platform")) from None
        platform = Platform(parsed.os, parsed.architecture, parsed.variant)
    plugin_type, factory = kind
    address = config.address.removeprefix("unix://")
    exports = {**config.exports, "address": config.address}
    capabilities = list(config.capabilities)

    shared = {} if channels is None else channels

    async def init(ic: InitContext) -> object:
        ic.meta.exports.update(exports)
        ic.meta.platforms.append(platform)
        ic.meta.capabilities.extend(capabilities)
        channel = shared.get(address)
        if channel is None:
            channel = shared[address] = ProxyChannel(address)
        return factory(channel, name)

    registration = Registration(
        type=plugin_type,
        id=name,
        init=init,
        description=f"proxy plugin: {config.type} served at {config.address}",
    )
    origin = Origin(ORIGIN, "", _path(name), f"{config.type} at unix://{address}", builtin=False)
    return Candidate(registration.uri, plugin_type, name, origin, registration=registration)


__all__ = ["CONFIG_KEY", "ORIGIN", "ProxyPluginConfig", "candidate", "proxy_candidates"]
