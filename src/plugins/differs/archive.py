"""A directory as an uncompressed tar in the content store, and back: containerd's ``archive.Diff``
of a tree against nothing and its ``archive.Apply``, for what is not an image layer (a task's
checkpoint, which the tasks service stores and restores).

The same walker and applier as the walking differ's, on a worker thread that stops when the
caller is cancelled; the tar is streamed to the writer and from the reader in 1 MiB chunks.
"""

from __future__ import annotations

import os
from contextlib import suppress
from functools import partial

from corral.kernel import AlreadyExists
from corral.plugins.differs._compression import Compression, compressor
from corral.plugins.differs.differ import (
    ApplyTarget,
    BlobWriter,
    LayerContent,
    ThreadSource,
    _apply_blocking,
    _ThreadSink,
    _with_stop,
    run_stoppable,
)


async def write_tree(writer: BlobWriter, root: str | os.PathLike[str]) -> tuple[str, int]:
    """Write the tree under ``root`` to ``writer`` as a tar (every entry an addition) and commit
    it; the blob's digest and size. AlreadyExists from the commit is the blob already held."""
    from corral.plugins.differs.compare import directory_changes, write_layer

    sink = _ThreadSink(writer, compressor(Compression.NONE))
    work = partial(write_layer, directory_changes(None, os.fspath(root)), sink)
    digest, size = await run_stoppable(_with_stop(sink, work))
    with suppress(AlreadyExists):
        await writer.commit(size, digest)
    return digest, size


async def read_tree(content: LayerContent, digest: str, root: str | os.PathLike[str]) -> None:
    """Unpack the tar ``digest`` into the directory ``root``, refusing names that leave it: the
    walking differ's apply of an uncompressed layer to a plain directory."""
    from corral.plugins.differs.apply import WhiteoutMode

    source = ThreadSource(await content.read(digest))
    target = ApplyTarget(os.fspath(root), WhiteoutMode.REMOVE)
    await run_stoppable(partial(_apply_blocking, Compression.NONE, source, target))
