"""A plugin's registration: what it is, what it needs, how to configure and start it."""

from __future__ import annotations

import dataclasses
import platform
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

AnyType = type[Any]

if TYPE_CHECKING:
    from corral.kernel._context import InitContext

ALL_TYPES = "*"
"""In ``requires``: this plugin depends on every plugin of every other type."""

InitFn = Callable[["InitContext"], Awaitable[Any]]
Migration = Callable[[int, dict[str, Any]], None]
"""Upgrades the raw ``[plugins]`` map (keyed by URI) from the given config version, in place."""


class RegistrationError(ValueError):
    """A registration that can never be loaded: raised when it is created, not at start-up."""


@dataclass(frozen=True)
class Platform:
    """An OS/architecture a plugin serves, as containerd reports it."""

    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        parts = [self.os, self.architecture] + ([self.variant] if self.variant else [])
        return "/".join(parts)

    @classmethod
    def host(cls) -> Platform:
        """This machine as containerd's platforms package names it (``linux/amd64``, ``linux/arm64/v8``)."""
        machine = platform.machine().lower()
        architecture, variant = _ARCHITECTURES.get(machine, (machine, ""))
        return cls(platform.system().lower(), architecture, variant)


# uname -m -> (GOARCH, variant), as containerd normalises them.
_ARCHITECTURES = {
    "x86_64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", ""),
    "i686": ("386", ""),
    "ppc64le": ("ppc64le", ""),
    "s390x": ("s390x", ""),
    "riscv64": ("riscv64", ""),
}


@dataclass(frozen=True)
class Registration:
    """One plugin: its ``type`` and ``id`` form its URI ``type.id``.

    ``requires`` names types this plugin cannot work without: it starts after every plugin of
    those types and is skipped (or fails) when none of them is ok. ``after`` names types it only
    wants to start after, and may look up, but does without. ``config`` is a dataclass with
    defaults, decoded from ``[plugins."<uri>"]``.
    """

    type: str
    id: str
    init: InitFn
    requires: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    config: AnyType | None = None
    migrate: Migration | None = None
    description: str = ""
    config_aliases: tuple[str, ...] = ()
    """Other URIs whose ``[plugins."<uri>"]`` sections configure this plugin, in any config
    version (containerd's ``io.containerd.metadata.v1.bolt`` for corral's sqlite store); this
    plugin's own section wins key by key."""
    hooks: object | None = field(default=None, compare=False)
    """An object with pluggy hook implementations (see ``corral.kernel.hookimpl``)."""

    def __post_init__(self) -> None:
        if not self.type:
            raise RegistrationError("plugin: no type")
        if not self.id:
            raise RegistrationError(f"{self.type}: plugin: no id")
        for name, deps in (("requires", self.requires), ("after", self.after)):
            if isinstance(deps, str):
                raise RegistrationError(f"{self.uri}: {name} must be a tuple of types, not a string")
            if ALL_TYPES in deps and len(deps) > 1:
                raise RegistrationError(f"{self.uri}: invalid {name}: '*' must be the only entry")
            if self.type in deps:
                raise RegistrationError(f"{self.uri}: invalid {name}: a plugin cannot depend on its own type")
        if self.config is not None and not dataclasses.is_dataclass(self.config):
            raise RegistrationError(f"{self.uri}: config must be a dataclass type")

    @property
    def uri(self) -> str:
        return f"{self.type}.{self.id}"

    @property
    def ordering_types(self) -> tuple[str, ...]:
        """Every type this plugin starts after: hard requirements and ordering hints."""
        return self.requires + tuple(t for t in self.after if t not in self.requires)

    def default_config(self) -> Any:
        return self.config() if self.config is not None else None
