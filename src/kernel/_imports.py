"""Modules imported at their first use, for what only some later call needs.

``api = OnFirstUse("pkg.messages")`` stands for ``pkg.messages``: the first read of one of its
attributes imports the module, and every name read is then kept on the stand-in, so later reads
cost what a module's do. Start-up does not pay for a module (generated messages, a codec, a
registry client) until a call uses it. Under ``TYPE_CHECKING`` the module itself is imported, so
type checkers see the real names.
"""

from __future__ import annotations

import importlib
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
