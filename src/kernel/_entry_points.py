"""The installed entry points of corral's groups, without importing ``importlib.metadata`` each start.

``importlib.metadata`` is a tenth of what a bare daemon imports (zipfile, email, csv, …), and
listing the entry points reads every distribution's ``entry_points.txt``. What it found is kept
beside corral's bytecode with a fingerprint of what it read: each ``sys.path`` entry (its absolute
path and mtime: a distribution installed, upgraded or removed adds or renames a ``*.dist-info``
there) and, in each directory, every ``*.dist-info`` / ``*.egg-info`` with the mtime and size of its
``entry_points.txt`` (edited in place). A changed fingerprint makes the next start ask
``importlib.metadata`` again; so does a ``sys.meta_path`` finder that could supply distributions of
its own. The cache is
written as bytecode is (not under ``PYTHONDONTWRITEBYTECODE``, nor where the directory is not
writable).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

FORMAT = 1


class EntryPointLike(Protocol):
    """What the kernel uses of an entry point (``importlib.metadata.EntryPoint`` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def value(self) -> str: ...

    def load(self) -> Any: ...


@dataclass(frozen=True)
class EntryPoint:
    """An entry point read from the cache; ``load`` imports it as ``importlib.metadata`` does."""

    name: str
    value: str
    group: str

    def load(self) -> Any:
        module, _, attrs = self.value.partition(":")
        attrs = attrs.partition("[")[0].strip()  # extras are not the object's name
        obj: Any = importlib.import_module(module.strip())
        return functools.reduce(getattr, [a for a in attrs.split(".") if a], obj)


@dataclass(frozen=True)
class Installed:
    """One entry point with the name and version of the distribution that declares it."""

    entry_point: EntryPointLike
    distribution: str
    version: str


def cache_path() -> Path:
    return (
        Path(__file__).resolve().parent.parent
        / "__pycache__"
        / f"entry-points.{sys.implementation.cache_tag}.json"
    )


def fingerprint() -> list[list[Any]] | None:
    """What the entry points depend on, or None when something besides the path finder might
    supply distributions (then nothing is cached)."""
    from importlib.machinery import PathFinder

    for finder in sys.meta_path:
        if finder is not PathFinder and hasattr(finder, "find_distributions"):
            return None
    found: list[list[Any]] = []
    for entry in sys.path:
        path = os.path.abspath(entry or ".")
        try:
            st = os.stat(path)
        except OSError:
            found.append([path])
            continue
        found.append([path, st.st_mtime_ns, st.st_size])
        if not stat.S_ISDIR(st.st_mode):
            continue
        try:
            names = sorted(os.listdir(path))
        except OSError:
            continue
        for name in names:
            if not name.endswith((".dist-info", ".egg-info")):
                continue
            with contextlib.suppress(OSError):
                s = os.stat(os.path.join(path, name, "entry_points.txt"))
                found.append([name, s.st_mtime_ns, s.st_size])
    return found


def _name_and_version(dist: Any) -> tuple[str, str]:
    # ``dist.metadata`` runs the e-mail parser over the whole file, on every access; the two
    # headers needed stand at its top, one line each (core metadata never folds them).
    found: dict[str, str] = {}
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    for line in text.splitlines():
        if not line.strip():
            break  # the headers end at the first blank line
        key, sep, value = line.partition(":")
        if sep and key in ("Name", "Version") and key not in found:
            found[key] = value.strip()
        if len(found) == 2:
            return found["Name"], found["Version"]
    return str(dist.metadata["Name"] or ""), str(dist.version or "")


def scan(groups: Sequence[str]) -> dict[str, list[Installed]]:
    """The groups' entry points as ``importlib.metadata`` lists them (each distribution read once)."""
    import importlib.metadata as md

    seen: dict[int, tuple[str, str]] = {}
    out: dict[str, list[Installed]] = {}
    for group in groups:
        listed = out.setdefault(group, [])
        for ep in md.entry_points(group=group):
            dist = getattr(ep, "dist", None)
            if dist is None:
                name, version = "", ""
            else:
                known = seen.get(id(dist))
                if known is None:
                    known = seen[id(dist)] = _name_and_version(dist)
                name, version = known
            listed.append(Installed(ep, name, version))
    return out


def _read(path: Path, key: list[list[Any]]) -> dict[str, list[Installed]] | None:
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT or data.get("fingerprint") != key:
            return None
        return {
            group: [Installed(EntryPoint(n, v, group), d, ver) for n, v, d, ver in rows]
            for group, rows in data["groups"].items()
        }
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def _write(path: Path, key: list[list[Any]], groups: dict[str, list[Installed]]) -> None:
    data = {
        "format": FORMAT,
        "fingerprint": key,
        "groups": {
            group: [[i.entry_point.name, i.entry_point.value, i.distribution, i.version] for i in rows]
            for group, rows in groups.items()
        },
    }
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(exist_ok=True)
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def installed(group: str, also: Sequence[str] = (), *, path: Path | None = None) -> list[Installed]:
    """The entry points of ``group``, from the cache when nothing they depend on changed; a scan
    (of ``group`` and the ``also`` groups, which the cache then holds too) otherwise."""
    path = cache_path() if path is None else path
    key = fingerprint()
    if key is not None:
        cached = _read(path, key)
        if cached is not None and group in cached:
            return cached[group]
    groups = scan([group, *(g for g in also if g != group)])
    if key is not None and not sys.dont_write_bytecode:
        _write(path, key, groups)
    return groups[group]
