"""io.corral.greeter.v1.greeter — greets people, and the namespaces in the metadata store."""

from __future__ import annotations

from dataclasses import dataclass

from corral.kernel import InitContext, Registration, SkipPlugin
from corral.plugins.metadata import Metadata, NamespaceStore
from corral_greeter import types


@dataclass(frozen=True)
class GreeterConfig:
    """``[plugins."io.corral.greeter.v1.greeter"]`` in config.toml."""

    greeting: str = "hello"
    """Empty means "not on this daemon": the plugin is skipped, not failed."""
    shout: bool = False
    max_names: int = 16
    """At most this many namespaces are greeted by ``greet_namespaces``."""

    def __post_init__(self) -> None:
        # The kernel reports a ValueError here as a ConfigError naming this plugin's section.
        if self.max_names < 1:
            raise ValueError(f"max_names must be at least 1, got {self.max_names}")


class Greeter:
    """The plugin's instance, as other plugins get it from ``ic.get_single("io.corral.greeter.v1")``."""

    def __init__(self, config: GreeterConfig, namespaces: NamespaceStore) -> None:
        self._config = config
        self._namespaces = namespaces

    async def greet(self, name: str) -> str:
        text = f"{self._config.greeting}, {name}"
        return text.upper() if self._config.shout else text

    async def greet_namespaces(self) -> list[str]:
        """One greeting per namespace, in name order, at most ``max_names`` of them."""
        namespaces = await self._namespaces.list()
        return [await self.greet(ns.name) for ns in namespaces[: self._config.max_names]]


async def init(ic: InitContext) -> Greeter:
    config: GreeterConfig = ic.config
    if not config.greeting:
        raise SkipPlugin("no greeting configured")
    # Declared in ``requires``: the kernel starts the store first, and skips or fails this plugin
    # (saying why) if no metadata plugin is ok, so the lookup cannot come up empty here. The
    # contract (``Metadata``) is checked and types the result; ``view`` hands out one part of it.
    namespaces = ic.get_single(types.METADATA, Metadata).view(NamespaceStore)
    ic.meta.exports["greeting"] = config.greeting
    return Greeter(config, namespaces)


registration = Registration(
    type=types.GREETER,
    id="greeter",
    init=init,
    requires=(types.METADATA,),
    config=GreeterConfig,
    description="greets people, and the namespaces in the metadata store",
)
