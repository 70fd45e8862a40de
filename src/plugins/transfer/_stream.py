"""An import stream's bytes, decompressed when they are gzip or zstd (containerd detects both)."""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator

import zstandard

from corral.kernel import InvalidArgument

_GZIP = b"\x1f\x8b"
_ZSTD = b"\x28\xb5\x2f\xfd"


async def decompressed(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``chunks`` as they are, or decompressed when the stream starts with a gzip or zstd magic."""
    head = b""
    async for chunk in chunks:
        head += chunk
        if len(head) >= 4:
            break
    if head.startswith(_GZIP):
        gz = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            yield gz.decompress(head)
            async for chunk in chunks:
                while chunk:
                    yield gz.decompress(chunk)
                    if gz.eof:
                        # concatenated gzip members are one stream, as Go's gzip reader reads them
                        chunk, gz = gz.unused_data, zlib.decompressobj(16 + zlib.MAX_WBITS)
                    else:
                        chunk = b""
            yield gz.flush()
        except zlib.error as exc:
            raise InvalidArgument(f"import stream: gzip: {exc}") from None
        return
    if head.startswith(_ZSTD):
        zs = zstandard.ZstdDecompressor().decompressobj()
        try:
            yield zs.decompress(head)
            async for chunk in chunks:
                yield zs.decompress(chunk)
        except zstandard.ZstdError as exc:
            raise InvalidArgument(f"import stream: zstd: {exc}") from None
        return
    if head:
        yield head
    async for chunk in chunks:
        yield chunk
