"""Proxy plugins: snapshotters, content stores and differs in other processes, over containerd's own APIs.

``[proxy_plugins.NAME]`` in config.toml (``type``, ``address``, ``platform``, ``exports``,
``capabilities``) becomes a plugin with id NAME whose instance is a gRPC client to the process at
``address`` — the same wire a third-party Go snapshotter (stargz, …) speaks to containerd. The other
way round, ``serve_snapshotter`` (and ``python -m corral.api.proxy snapshotter URI``) serves any
corral snapshotter to corrald or to containerd as such a proxy.
"""

from __future__ import annotations

from corral.api.proxy._channel import ProxyChannel
from corral.api.proxy._config import CONFIG_KEY, ORIGIN, ProxyPluginConfig, proxy_candidates
from corral.api.proxy._content import ProxyContentStore
from corral.api.proxy._diff import ProxyDiffer
from corral.api.proxy._serve import (
    find_registration,
    run_proxy_server,
    serve_snapshotter,
    started_plugin,
)
from corral.api.proxy._serve_content import serve_content_store
from corral.api.proxy._snapshots import ProxySnapshotter

__all__ = [
    "CONFIG_KEY",
    "ORIGIN",
    "ProxyChannel",
    "ProxyContentStore",
    "ProxyDiffer",
    "ProxyPluginConfig",
    "ProxySnapshotter",
    "find_registration",
    "proxy_candidates",
    "run_proxy_server",
    "serve_content_store",
    "serve_snapshotter",
    "started_plugin",
]
