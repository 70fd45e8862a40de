"""The snapshotter contract: filesystem snapshots in parent chains, handed out as mounts.

A snapshot is *active* (writable, made by ``prepare``), a *view* (read-only, made by ``view``)
or *committed* (immutable, made by ``commit`` from an active one, usable as a parent).
Backends (``io.containerd.snapshotter.v1``) know nothing of namespaces; the metadata plugin
maps each namespace's keys onto backend keys. Every backend, built-in or third-party, must pass
``corral.plugins.snapshots.conformance``.
"""

from __future__ import annotations

import builtins
import enum
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

from corral.plugins.core import Mount


class Kind(enum.Enum):
    """Wire values match containerd's snapshots.v1 Kind enum."""

    UNKNOWN = 0
    VIEW = 1
    ACTIVE = 2
    COMMITTED = 3


@dataclass(frozen=True)
class Info:
    """A snapshot: ``name`` is its key; ``parent`` the committed snapshot it builds on ("" for none)."""

    name: str
    kind: Kind
    parent: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class Usage:
    """Disk used by the snapshot itself (not its parents): bytes and inodes."""

    size: int = 0
    inodes: int = 0


@runtime_checkable
class Snapshotter(Protocol):
    """containerd's Snapshotter; errors are the kernel's kinds (NotFound, AlreadyExists, …)."""

    async def stat(self, key: str) -> Info:
        """NotFound when there is no such snapshot."""
        ...

    async def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        """Only labels can change: ``labels`` or ``labels.KEY``; no paths replaces all labels."""
        ...

    async def usage(self, key: str) -> Usage: ...

    async def mounts(self, key: str) -> builtins.list[Mount]:
        """Mounts of an active snapshot or a view; FailedPrecondition for a committed one."""
        ...

    async def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> builtins.list[Mount]:
        """A new active snapshot on ``parent`` (committed). AlreadyExists if ``key`` is taken;
        NotFound if ``parent`` does not exist; InvalidArgument if it is not committed."""
        ...

    async def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> builtins.list[Mount]:
        """A new read-only view of ``parent``; same errors as ``prepare``."""
        ...

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        """Turn the active snapshot ``key`` into the committed snapshot ``name``; ``key`` is gone.

        NotFound if ``key`` does not exist, FailedPrecondition if it is not active,
        AlreadyExists if ``name`` is taken."""
        ...

    async def remove(self, key: str) -> None:
        """NotFound if absent; FailedPrecondition while other snapshots have it as parent."""
        ...

    def walk(self, filters: Sequence[str] = ()) -> AsyncIterator[Info]:
        """Every snapshot matching any filter (fields: name, parent, kind, labels.KEY)."""
        ...

    async def cleanup(self) -> None:
        """Remove on-disk leftovers no snapshot owns (e.g. after a crash mid-remove)."""
        ...
