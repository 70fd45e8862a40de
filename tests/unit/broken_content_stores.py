"""Content stores each broken in one way a real one could be: the conformance suite must catch every one.

Each is an opener the suite can take (a class called with the root): the local store, or the
in-memory fake, with one thing done wrong.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

from corral.kernel import InvalidArgument, NotFound
from corral.plugins.content import Info, IngestStatus, Writer
from corral.plugins.content.local import LocalContentStore
from corral.plugins.content.memory import MemoryContentStore, MemoryWriter


class Delegating:
    """The local store on ``root``, every call passed through: the base of the broken ones."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.inner = LocalContentStore(root)

    async def info(self, digest: str) -> Info:
        return await self.inner.info(digest)

    async def list(self) -> AsyncIterator[Info]:
        async for info in self.inner.list():
            yield info

    async def delete(self, digest: str) -> None:
        await self.inner.delete(digest)

    async def read(self, digest: str, offset: int = 0, size: int = 0) -> AsyncIterator[bytes]:
        async for chunk in self.inner.read(digest, offset, size):
            yield chunk

    async def writer(self, ref: str, total: int = 0, expected: str = "") -> Writer:
        return await self.inner.writer(ref, total, expected)

    async def status(self, ref: str) -> IngestStatus:
        return await self.inner.status(ref)

    async def list_statuses(self) -> builtins.list[IngestStatus]:
        return await self.inner.list_statuses()

    async def abort(self, ref: str) -> None:
        await self.inner.abort(ref)

    async def aclose(self) -> None:
        await self.inner.aclose()


class DelegatingWriter:
    """A writer passed through to ``inner``."""

    def __init__(self, inner: Writer) -> None:
        self.inner = inner

    @property
    def ref(self) -> str:
        return self.inner.ref

    @property
    def offset(self) -> int:
        return self.inner.offset

    def digest(self) -> str:
        return self.inner.digest()

    async def status(self) -> IngestStatus:
        return await self.inner.status()

    async def write(self, data: bytes) -> int:
        return await self.inner.write(data)

    async def truncate(self, size: int) -> None:
        await self.inner.truncate(size)

    async def commit(self, size: int, expected: str) -> Info:
        return await self.inner.commit(size, expected)

    async def close(self) -> None:
        await self.inner.close()


class ResumeLosesBytes(Delegating):
    """Notes each ingest's offset when its writer closes, and on resume cuts the data back to the
    note: after a crash (no close) the bytes written since are lost."""

    def _notes(self) -> dict[str, int]:
        try:
            notes: dict[str, int] = json.loads((self.root / "offsets.json").read_text())
        except FileNotFoundError:
            return {}
        return notes

    def _note(self, ref: str, offset: int | None) -> None:
        notes = self._notes()
        if offset is None:
            notes.pop(ref, None)
        else:
            notes[ref] = offset
        (self.root / "offsets.json").write_text(json.dumps(notes))

    async def writer(self, ref: str, total: int = 0, expected: str = "") -> Writer:
        data = self.root / "ingest" / hashlib.sha256(ref.encode()).hexdigest() / "data"
        if ref and data.exists():
            os.truncate(data, min(self._notes().get(ref, 0), data.stat().st_size))
        store = self

        class Noting(DelegatingWriter):
            async def close(self) -> None:
                store._note(ref, self.offset)
                await super().close()

            async def commit(self, size: int, expected: str) -> Info:
                try:
                    return await super().commit(size, expected)
                finally:
                    store._note(ref, None if self.offset == 0 else self.offset)

        return Noting(await self.inner.writer(ref, total, expected))


class AcceptsWrongDigest(Delegating):
    """Commits whatever was written, whatever digest the caller expected."""

    async def writer(self, ref: str, total: int = 0, expected: str = "") -> Writer:
        class Trusting(DelegatingWriter):
            async def commit(self, size: int, expected: str) -> Info:
                return await super().commit(size, "")

        return Trusting(await self.inner.writer(ref, total, expected))


class ReadsWholeBlobs(Delegating):
    """Reads a blob into memory and hands it over in one piece."""

    async def read(self, digest: str, offset: int = 0, size: int = 0) -> AsyncIterator[bytes]:
        chunks = [chunk async for chunk in self.inner.read(digest, offset, size)]
        if chunks:
            yield b"".join(chunks)


class LaxDigests(Delegating):
    """Looks a malformed digest up like any other, and does not find it."""

    async def info(self, digest: str) -> Info:
        try:
            return await self.inner.info(digest)
        except InvalidArgument:
            raise NotFound(f"content digest {digest}") from None


class SharesRefs(MemoryContentStore):
    """Hands out a second writer for a ref that already has one."""

    def __init__(self, root: Path) -> None:
        super().__init__()

    async def writer(self, ref: str, total: int = 0, expected: str = "") -> MemoryWriter:
        self._locked.discard(ref)
        return await super().writer(ref, total, expected)


class KeepsIngestsInMemory(MemoryContentStore):
    """Says it keeps ingests on disk (it is tested as durable), but holds every byte in memory."""

    def __init__(self, root: Path) -> None:
        super().__init__()
