"""Imported first by ``corrald``: the functions dataclasses generate, compiled once, not at every start.

``@dataclass`` writes ``__init__``, ``__eq__``, ``__setattr__`` … of each class as source text and
``exec``s it; compiling that text is most of the cost of a dataclass, and corrald defines some 370 at
start-up (every generated protobuf message, every record and config): about a third of its import
time. The text depends only on the class's fields, so its code object can be kept like a module's
bytecode: ``dataclasses`` looks ``exec`` up in its module globals first, and the ``exec`` put there
runs a cached code object for text it has compiled before, and compiles (and remembers) the rest.
Semantics are exactly ``exec``'s: the same text compiled with the same file name, run with the
globals and locals the caller gave.

The cache is two marshal files beside corral's bytecode (``corral/__pycache__``), tagged with the
interpreter's bytecode magic number: the texts the last start used before it was ready, read at
every start, and the rest (classes of modules imported later, or by other configurations), read at
the first text the first file lacks. ``save`` writes both when something new was compiled, when the
start needed the second file, or when more than a third of the first went unused, and Python may
write bytecode (``PYTHONDONTWRITEBYTECODE`` unset, the directory writable); a file that is missing,
unreadable or from another interpreter is ignored. ``python -m corral.api._dataclass_cache``
writes them regardless, as ``compileall`` writes bytecode.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import marshal
import os
import sys
from collections.abc import Callable
from importlib.util import MAGIC_NUMBER
from pathlib import Path
from types import CodeType
from typing import Any

_FILENAME = "<string>"  # what exec gives code compiled from a str
MAX_ENTRIES = 8000
_exec = builtins.exec


def cache_path() -> Path:
    return (
        Path(__file__).resolve().parent.parent
        / "__pycache__"
        / f"dataclasses.{sys.implementation.cache_tag}.bin"
    )


def later_path() -> Path:
    """The texts a start did not need before it was ready, each code object marshalled on its own:
    reading the file costs little, and a text is unmarshalled when it is first used."""
    return cache_path().with_name(f"dataclasses-later.{sys.implementation.cache_tag}.bin")


class CachingExec:
    """``exec`` that compiles each source text once (``known``: text → code); ``later`` supplies
    the texts kept apart from the start's (text → marshalled code), once, at the first text
    ``known`` lacks."""

    def __init__(
        self, known: dict[str, CodeType], later: Callable[[], dict[str, bytes]] | None = None
    ) -> None:
        self.known = known
        self.started_with = frozenset(known)
        self.used: set[str] = set()
        self.new = 0
        self._later = later
        self._blobs: dict[str, bytes] = {}
        self.read_later = False
        """Whether a text this process used came from ``later`` (or was compiled)."""
        self.at_start: frozenset[str] | None = None
        """The texts used by the time of the first ``save`` (the daemon's start): the start's file."""

    def _from_later(self, source: str) -> CodeType | None:
        if self._later is not None:
            later, self._later = self._later, None
            self._blobs = later()
        blob = self._blobs.pop(source, None)
        if blob is None:
            return None
        try:
            code = marshal.loads(blob)
        except (EOFError, ValueError, TypeError):
            return None
        return code if isinstance(code, CodeType) else None

    def load_later(self) -> None:
        """Everything ``later`` holds into ``known`` (before the whole cache is written)."""
        self._from_later("")
        for text in list(self._blobs):
            code = self._from_later(text)
            if code is not None:
                self.known.setdefault(text, code)

    def __call__(self, source: Any, globals: Any = None, locals: Any = None, /) -> None:
        if isinstance(source, str):
            code = self.known.get(source)
            if code is None:
                code = self._from_later(source)
                self.read_later = True
                if code is not None:
                    self.known[source] = code
            if code is None:
                code = self.known[source] = compile(source, _FILENAME, "exec")
                self.new += 1
            self.used.add(source)
            source = code
        _exec(source, globals, locals)

    def outdated(self) -> bool:
        """Whether the files no longer fit: something was compiled; before the first ``save`` also
        a text that came from the other file, or more than a third of the start's unused."""
        if self.at_start is not None:
            return bool(self.new)
        unused = len(self.started_with - self.used)
        return bool(self.new) or self.read_later or unused > len(self.used) // 2

    def keep(self) -> dict[str, CodeType]:
        """What to write: everything known, unless texts no longer used have piled up (classes
        edited or removed), then only what this process used."""
        if len(self.known) <= MAX_ENTRIES:
            return self.known
        return {text: code for text, code in self.known.items() if text in self.used}


def read(path: Path) -> dict[str, CodeType]:
    """The cached code objects by source text; empty if missing, unreadable or another interpreter's."""
    try:
        data = path.read_bytes()
    except OSError:
        return {}
    if not data.startswith(MAGIC_NUMBER):
        return {}
    try:
        known = marshal.loads(data[len(MAGIC_NUMBER) :])
    except (EOFError, ValueError, TypeError):
        return {}
    return known if isinstance(known, dict) else {}


def read_blobs(path: Path) -> dict[str, bytes]:
    """The marshalled code objects by source text (``later_path``'s file), as ``read`` reads."""
    known: dict[Any, Any] = read(path)
    return {text: blob for text, blob in known.items() if isinstance(blob, bytes)}


_installed: CachingExec | None = None


def install() -> None:
    """Make ``dataclasses`` run cached code; idempotent."""
    global _installed
    if _installed is not None or getattr(dataclasses, "exec", None) is not None:
        return
    _installed = CachingExec(read(cache_path()), lambda: read_blobs(later_path()))
    dataclasses.exec = _installed  # type: ignore[attr-defined]


def save(*, force: bool = False) -> bool:
    """Write the cache when it no longer fits (and bytecode may be written), or always with
    ``force``: the texts used by the first call (corrald's start) in the start's file, the rest in
    the other. corrald calls it a second after it is ready and again as it stops, for what it compiled since."""
    if _installed is None:
        return False
    outdated = _installed.outdated()
    if _installed.at_start is None:
        _installed.at_start = frozenset(_installed.used)
    if not outdated and not force:
        return False
    if sys.dont_write_bytecode and not force:
        return False
    _installed.load_later()
    kept, at_start = _installed.keep(), _installed.at_start
    start = {text: code for text, code in kept.items() if text in at_start}
    rest = {text: marshal.dumps(code) for text, code in kept.items() if text not in at_start}
    # The other file first: a start that reads the new start's file finds the rest there.
    if not write(later_path(), rest) or not write(cache_path(), start):
        return False
    _installed.new = 0
    return True


def write(path: Path, known: dict[str, CodeType] | dict[str, bytes]) -> bool:
    """Replace the cache file atomically (a concurrent reader sees the old file or the new one)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(exist_ok=True)
        tmp.write_bytes(MAGIC_NUMBER + marshal.dumps(known))
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        return False
    return True


install()


if __name__ == "__main__":
    # Everything corrald defines at start-up: its modules and every installed plugin's.
    from corral.api import daemon  # noqa: F401
    from corral.kernel import DaemonConfig, Kernel

    Kernel(DaemonConfig()).load_registrations()
    print(cache_path() if save(force=True) else "nothing written")
