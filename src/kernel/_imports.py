"""Modules imported at their first use, for what only some later call needs.

``api = OnFirstUse("pkg.messages")`` stands for ``pkg.messages``: the first read of one of its
attributes imports the module, and every name read is then kept on the stand-in, so later reads
cost what a module's do. Start-up does not pay for a module (generated messages, a codec, a
registry client) until a call uses it. Under ``TYPE_CHECKING`` the module itself is imported, so
type checkers see the real names.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


class OnFirstUse:
    """A module's stand-in that imports it when one of its names is first read."""

    def __init__(self, module: str) -> None:
        self.__dict__["_OnFirstUse__module"] = module

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # probes (copy, inspect, pickle) must not import it
            raise AttributeError(name)
        value = getattr(importlib.import_module(self.__module), name)
        self.__dict__[name] = value
        return value

    def __repr__(self) -> str:
        return f"<module {self.__module!r}, imported at first use>"


def names_on_first_use(module: str, sources: Mapping[str, str]) -> Callable[[str], Any]:
    """A package's ``__getattr__`` (PEP 562) for names loaded at their first read: each name in
    ``sources`` (name → the module defining it) is imported then and kept as the package's own
    attribute, so later reads cost what any attribute's do."""

    def load(name: str) -> Any:
        source = sources.get(name)
        if source is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(source), name)
        setattr(sys.modules[module], name, value)
        return value

    return load
