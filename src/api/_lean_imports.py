"""Imported first by ``corrald``: structlog without rich.

structlog's console renderer formats tracebacks with rich whenever rich is importable, and imports
it (with pygments and most of rich) as structlog itself is imported: a third of the daemon's
import time, for tracebacks it prints as plain text just as well. While structlog is first
imported, ``import rich`` fails, so structlog picks its plain traceback formatter; afterwards rich
imports as usual (the ``corral`` CLI draws its tables with it).

betterproto2 asks ``importlib.metadata`` for its own version as it is imported, and importing that
(zipfile, email, csv, …) is a tenth of a bare daemon's imports, which nothing else at start needs
(the kernel lists entry points from its cache). While betterproto2 is first imported, its version
comes from the name of its ``dist-info`` directory; when that is not one unambiguous directory,
betterproto2 is imported as usual.
"""

from __future__ import annotations

import os
import sys
import types
from importlib.machinery import PathFinder


def import_structlog_without_rich() -> None:
    if "structlog" in sys.modules or "rich" in sys.modules:
        return  # too late to matter, or rich is in use already: leave both as they are
    sys.modules["rich"] = None  # type: ignore[assignment]  # makes `import rich` raise ImportError
    try:
        import structlog  # noqa: F401
    finally:
        del sys.modules["rich"]


def _installed_version(package: str) -> str | None:
    """The version in the name of the package's one ``NAME-VERSION.dist-info`` beside it, or None."""
    spec = PathFinder.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    site = os.path.dirname(next(iter(spec.submodule_search_locations)))
    prefix = f"{package}-"
    try:
        found = [n for n in os.listdir(site) if n.startswith(prefix) and n.endswith(".dist-info")]
    except OSError:
        return None
    if len(found) != 1:
        return None
    version = found[0][len(prefix) : -len(".dist-info")]
    return version if version and "-" not in version else None


def import_betterproto2_without_metadata() -> None:
    if "betterproto2" in sys.modules or "importlib.metadata" in sys.modules:
        return  # too late to matter, or importlib.metadata is loaded anyway
    version = _installed_version("betterproto2")
    if version is None:
        return

    def version_of(name: str) -> str:
        if name != "betterproto2":
            raise LookupError(name)  # nothing else is asked while betterproto2 is imported
        return version

    stand_in = types.ModuleType("importlib.metadata")
    stand_in.version = version_of  # type: ignore[attr-defined]
    sys.modules["importlib.metadata"] = stand_in
    try:
        import betterproto2  # noqa: F401
    finally:
        del sys.modules["importlib.metadata"]
        import importlib

        if getattr(importlib, "metadata", None) is stand_in:
            del importlib.metadata


import_structlog_without_rich()
import_betterproto2_without_metadata()
