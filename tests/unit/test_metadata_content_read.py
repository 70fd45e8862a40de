"""Read through the metadata store: the namespace's record decides, as Info does."""

from __future__ import annotations

import hashlib
from pathlib import Path

import anyio
import pytest

from corral.kernel import InvalidArgument, NotFound
from corral.plugins.content.memory import MemoryContentStore
from corral.plugins.core import namespace
from corral.plugins.metadata import NamespacedContent
from corral.plugins.metadata.sqlite import open_metadata


def test_read_finds_only_what_the_namespace_holds(tmp_path: Path) -> None:
    data = b"read me" * 1000
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    async def main() -> None:
        md = open_metadata(tmp_path / "meta.db", content=MemoryContentStore(), snapshotters={})
        try:
            content = md.view(NamespacedContent)
            with namespace("a"):
                writer = await content.writer("ref")
                await writer.write(data)
                await writer.commit(len(data), digest)
                got = b"".join([chunk async for chunk in await content.read(digest, 7, 14)])
                assert got == data[7:21]
                with pytest.raises(InvalidArgument):
                    await content.read("sha256:xyz")
            with namespace("b"):
                with pytest.raises(NotFound, match=f"content digest {digest}"):
                    await content.read(digest)
                with pytest.raises(NotFound):
                    await content.info(digest)
            with namespace("a"):
                await content.delete(digest)
                with pytest.raises(NotFound, match=f"content digest {digest}"):
                    await content.read(digest)
        finally:
            md.close()

    anyio.run(main)
