"""The content store contract: blobs addressed by digest, written through resumable ingests.

Backends (``io.containerd.content.v1``) implement ``ContentStore`` without namespaces or labels;
the metadata plugin wraps a backend in a namespaced view that adds labels, leases and GC
references. Both sides pass the same conformance tests.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

READ_CHUNK = 1 << 20
"""Reads are returned in chunks of at most 1 MiB, as containerd's content service does."""


@dataclass(frozen=True)
class Info:
    """A committed blob."""

    digest: str
    size: int
    created_at: datetime
    updated_at: datetime
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class IngestStatus:
    """An ingest in progress: ``offset`` bytes written so far of ``total`` (0 when unknown)."""

    ref: str
    offset: int
    total: int
    expected: str
    started_at: datetime
    updated_at: datetime


@runtime_checkable
class Writer(Protocol):
    """One ingest, held exclusively by its opener until ``close``."""

    @property
    def ref(self) -> str: ...

    @property
    def offset(self) -> int: ...

    def digest(self) -> str:
        """The digest of the bytes written so far."""
        ...

    async def status(self) -> IngestStatus: ...

    async def write(self, data: bytes) -> int:
        """Append ``data``; returns the new offset. FailedPrecondition once the writer is closed."""
        ...

    async def truncate(self, size: int) -> None:
        """Only 0 is supported: restart the ingest. Any other size is InvalidArgument."""
        ...

    async def commit(self, size: int, expected: str) -> Info:
        """Verify size (when non-zero) and digest (when given), make the blob durable, end the ingest.

        FailedPrecondition on a mismatch (the ingest is left as it was), AlreadyExists when the blob
        is already present (the ingest is removed). Whatever the outcome the writer is finished and
        the ref's lock released, as containerd's: a mismatched ingest is resumed with a new writer.
        """
        ...

    async def close(self) -> None:
        """Release the ref's lock; the ingest stays on disk and can be resumed. Idempotent."""
        ...


@runtime_checkable
class ContentStore(Protocol):
    async def info(self, digest: str) -> Info:
        """NotFound when absent; InvalidArgument for a malformed digest."""
        ...

    def list(self) -> AsyncIterator[Info]: ...

    async def delete(self, digest: str) -> None:
        """NotFound when absent."""
        ...

    def read(self, digest: str, offset: int = 0, size: int = 0) -> AsyncIterator[bytes]:
        """Chunks of at most READ_CHUNK from ``offset``; ``size`` 0 means to the end.

        As containerd's content service: a range running past the end is cut at the end, an offset
        at the end yields nothing, an offset past it is OutOfRange; negative values InvalidArgument.
        Errors surface on the first iteration.
        """
        ...

    async def writer(self, ref: str, total: int = 0, expected: str = "") -> Writer:
        """Open (or resume) the ingest ``ref``. Unavailable while another writer holds it.

        When ``expected`` names a blob that already exists, AlreadyExists (and the ingest is aborted).
        """
        ...

    async def status(self, ref: str) -> IngestStatus:
        """NotFound when there is no such ingest."""
        ...

    async def list_statuses(self) -> builtins.list[IngestStatus]: ...

    async def abort(self, ref: str) -> None:
        """Remove the ingest: NotFound when absent, Unavailable while a writer holds the ref."""
        ...
