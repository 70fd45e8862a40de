"""The conformance suites through the proxy: a plugin served over containerd's API and reached by
the proxy client, so every check crosses the wire containerd's proxies use::

    @pytest.mark.parametrize("check", conformance.CHECKS, ids=conformance.check_name)
    def test_conforms_over_the_wire(check, tmp_path):
        conformance.run(check, OverProxy(registration), tmp_path, skip=pytest.skip)

``OverProxy`` for a snapshotter (Snapshots API), ``ContentOverProxy`` for a content store (Content
API). The served plugin runs in the opening process (its own kernel, a real unix socket), so the
crash checks' kills land inside its filesystem calls as they would in a proxy process.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from corral.api.proxy._content import ProxyContentStore
from corral.api.proxy._serve import serve_snapshotter
from corral.api.proxy._serve_content import serve_content_store
from corral.api.proxy._snapshots import ProxySnapshotter
from corral.plugins.content import conformance as content_conformance
from corral.plugins.snapshots.conformance import Plugin, Subject

SOCKET_NAME = "snapshots.sock"


class ServedProxySnapshotter(ProxySnapshotter):
    """A ``ProxySnapshotter`` that owns the server it talks to; ``aclose`` stops both."""

    def __init__(self, address: str, name: str, stack: contextlib.AsyncExitStack) -> None:
        super().__init__(address, name)
        self._stack = stack

    async def aclose(self) -> None:
        self.close()
        await self._stack.aclose()


@dataclass(frozen=True)
class OverProxy:
    """An opener for the conformance suite: ``plugin`` served on a socket, used through a proxy."""

    plugin: Plugin
    name: str = "proxied"
    """The ``snapshotter`` every request names (the proxy plugin's id)."""

    async def __call__(self, root: Path) -> ServedProxySnapshotter:
        stack = contextlib.AsyncExitStack()
        try:
            # a short directory of its own: unix socket paths are limited to 107 bytes
            sockets = Path(tempfile.mkdtemp(prefix="corral-proxy-"))
            stack.callback(shutil.rmtree, sockets, ignore_errors=True)
            served = await stack.enter_async_context(Subject(self.plugin, root).open(root))
            address = str(sockets / SOCKET_NAME)
            await stack.enter_async_context(serve_snapshotter(served, address))
        except BaseException:
            await stack.aclose()
            raise
        return ServedProxySnapshotter(address, self.name, stack)


class ServedProxyContentStore(ProxyContentStore):
    """A ``ProxyContentStore`` that owns the server it talks to; ``aclose`` stops both."""

    def __init__(self, address: str, stack: contextlib.AsyncExitStack) -> None:
        super().__init__(address)
        self._stack = stack

    async def aclose(self) -> None:
        await super().aclose()
        await self._stack.aclose()


@dataclass(frozen=True)
class ContentOverProxy:
    """An opener for the content conformance suite: ``plugin`` served on a socket, used through a proxy."""

    plugin: content_conformance.Plugin

    async def __call__(self, root: Path) -> ServedProxyContentStore:
        stack = contextlib.AsyncExitStack()
        try:
            sockets = Path(tempfile.mkdtemp(prefix="corral-proxy-"))
            stack.callback(shutil.rmtree, sockets, ignore_errors=True)
            served = await stack.enter_async_context(
                content_conformance.Subject(self.plugin, root).open(root)
            )
            address = str(sockets / "content.sock")
            await stack.enter_async_context(serve_content_store(served, address))
        except BaseException:
            await stack.aclose()
            raise
        return ServedProxyContentStore(address, stack)


__all__ = ["ContentOverProxy", "OverProxy", "ServedProxyContentStore", "ServedProxySnapshotter"]
