"""Serve any corral ``Snapshotter`` over containerd's Snapshots API on a unix socket.

What containerd's ``contrib/snapshotservice`` does for Go snapshotters: the process behind a
``[proxy_plugins.NAME]`` entry, for corrald or for containerd itself. The requests' ``snapshotter``
field is ignored (the daemon sends its proxy plugin's name); errors map to containerd's codes.
"""

from __future__ import annotations

import builtins
import contextlib
import signal
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, cast

import anyio
import structlog

from corral.api.grpc import GRPCServices
from corral.api.grpc.server import GRPCServer as Server
from corral.api.grpc.server import build_mapping, serve_unix
from corral.api.grpc.snapshots import SnapshotsGRPC
from corral.api.proxy._serve_content import serve_content_store
from corral.kernel import (
    DaemonConfig,
    Kernel,
    Origin,
    PluginRecord,
    Registration,
    Status,
    builtin_candidate,
    discover,
)
from corral.plugins import types
from corral.plugins.content import ContentStore
from corral.plugins.metadata import NamespacedSnapshots, NamespacedSnapshotter
from corral.plugins.snapshots import Snapshotter

log = structlog.get_logger("corral.proxy")


class _OneSnapshotter:
    """The lookup the Snapshots service adapter expects, answering every name with one snapshotter."""

    def __init__(self, snapshotter: Snapshotter) -> None:
        self._snapshotter = snapshotter

    @property
    def names(self) -> builtins.list[str]:
        return []

    def get(self, name: str) -> NamespacedSnapshotter:
        return cast(NamespacedSnapshotter, self._snapshotter)


@contextlib.asynccontextmanager
async def serve_snapshotter(
    snapshotter: Snapshotter, address: str, *, mode: int = 0o660
) -> AsyncIterator[Server]:
    """Serve ``snapshotter`` on the unix socket ``address`` until the block ends."""
    service = SnapshotsGRPC(cast(NamespacedSnapshots, _OneSnapshotter(snapshotter)))
    origin = Origin("corral", "", "proxy", "serve_snapshotter", builtin=True)
    record = PluginRecord(
        f"{types.GRPC}.snapshots",
        types.GRPC,
        "snapshots",
        origin,
        Status.OK,
        instance=GRPCServices((service,)),
    )
    async with serve_unix(build_mapping([record]), address, mode=mode) as server:
        yield server


def find_registration(uri: str) -> Registration:
    """The installed plugin ``uri`` (built-in or third-party), by its entry point."""
    for candidate in discover():
        if candidate.uri == uri:
            loaded = candidate.entry_point.load() if candidate.entry_point else candidate.registration
            if not isinstance(loaded, Registration):
                raise LookupError(f"entry point {uri} is not a corral.kernel.Registration")
            return loaded
    raise LookupError(f"no installed plugin is {uri}")


@contextlib.asynccontextmanager
async def started_plugin(
    registration: Registration,
    root: Path,
    state: Path,
    plugins: Mapping[str, Mapping[str, Any]] | None = None,
) -> AsyncIterator[object]:
    """Start one plugin under a kernel of its own, as corrald would, with daemon root ``root``;
    ``plugins`` holds its ``[plugins."URI"]`` section as a config.toml would."""
    config = DaemonConfig(root=str(root), state=str(state), plugins=dict(plugins or {}))
    candidates = [builtin_candidate(registration, distribution="(proxy)")]
    kernel = Kernel(config, candidates=candidates, config_sources=[])
    async with kernel.running():
        record = kernel.get(registration.uri)
        assert record is not None
        if not record.ok:
            raise RuntimeError(f"{registration.uri} did not start: {record.status.value}: {record.reason}")
        yield record.instance


async def run_proxy_server(
    registration: Registration,
    root: Path,
    address: str,
    state: Path | None = None,
    mode: int = 0o660,
    plugins: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Start the plugin and serve it until SIGTERM or SIGINT (``python -m corral.api.proxy``): a
    snapshotter over the Snapshots API, a content store over the Content API."""
    async with started_plugin(registration, root, state or root / "state", plugins) as instance:
        served: contextlib.AbstractAsyncContextManager[Server]
        if isinstance(instance, Snapshotter):
            served = serve_snapshotter(instance, address, mode=mode)
        elif isinstance(instance, ContentStore):
            served = serve_content_store(instance, address, mode=mode)
        else:
            raise RuntimeError(f"{registration.uri} is neither a snapshotter nor a content store")
        async with served:
            log.info("proxy_ready", plugin=registration.uri, address=address)
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info("proxy_stopping", signal=signal.Signals(signum).name)
                    break
