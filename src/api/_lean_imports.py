"""Imported first by ``corrald``: structlog without rich.

structlog's console renderer formats tracebacks with rich whenever rich is importable, and imports
it (with pygments and most of rich) as structlog itself is imported: a third of the daemon's
import time, for tracebacks it prints as plain text just as well. While structlog is first
imported, ``import rich`` fails, so structlog picks its plain traceback formatter; afterwards rich
imports as usual (the ``corral`` CLI draws its tables with it).
"""

from __future__ import annotations

import sys


def import_structlog_without_rich() -> None:
    if "structlog" in sys.modules or "rich" in sys.modules:
        return  # too late to matter, or rich is in use already: leave both as they are
    sys.modules["rich"] = None  # type: ignore[assignment]  # makes `import rich` raise ImportError
    try:
        import structlog  # noqa: F401
    finally:
        del sys.modules["rich"]


import_structlog_without_rich()
