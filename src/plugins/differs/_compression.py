"""Layer media types and their compression: gzip through ISA-L, zstd, or none."""

from __future__ import annotations

import enum
import io
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, cast

from corral.kernel import CorralError, InvalidArgument, OnFirstUse, Unimplemented
from corral.plugins.differs._tar import Readable

if TYPE_CHECKING:
    import zstandard
    from isal import igzip, isal_zlib
else:  # the codecs: at the first layer compressed or decompressed, not at start-up
    zstandard = OnFirstUse("zstandard")
    igzip = OnFirstUse("isal.igzip")
    isal_zlib = OnFirstUse("isal.isal_zlib")

OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = OCI_LAYER + "+gzip"
OCI_LAYER_ZSTD = OCI_LAYER + "+zstd"
OCI_LAYER_NONDISTRIBUTABLE = "application/vnd.oci.image.layer.nondistributable.v1.tar"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = DOCKER_LAYER + ".gzip"
DOCKER_FOREIGN_LAYER_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

ZSTD_LEVEL = 3
ZSTD_MAX_WINDOW = 1 << 27
"""zstd's ``--long`` default; a stream asking for a larger window is refused, not allocated."""


class Compression(enum.Enum):
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


def layer_compression(media_type: str) -> Compression:
    """The compression a layer media type names; Unimplemented for anything that is not a layer tar."""
    base, plus, ext = media_type.partition("+")
    if base in (OCI_LAYER, OCI_LAYER_NONDISTRIBUTABLE):
        if not plus:
            return Compression.NONE
        if ext == "gzip":
            return Compression.GZIP
        if ext == "zstd":
            return Compression.ZSTD
    elif media_type in (DOCKER_LAYER_GZIP, DOCKER_FOREIGN_LAYER_GZIP):
        return Compression.GZIP
    elif media_type == DOCKER_LAYER:
        return Compression.NONE
    raise Unimplemented(f"unsupported layer media type {media_type!r}")


class _Checked:
    """A decompressing reader whose format errors are InvalidArgument, naming the compression."""

    def __init__(self, inner: Readable, compression: Compression) -> None:
        self._inner = inner
        self._compression = compression

    def read(self, size: int = -1, /) -> bytes:
        try:
            return self._inner.read(size)
        except CorralError:
            raise
        except (
            OSError,
            EOFError,
            ValueError,
            cast(type[Exception], isal_zlib.error),
            zstandard.ZstdError,
        ) as err:
            raise InvalidArgument(f"layer is not valid {self._compression.value}: {err}") from err


class _FileAdapter(io.RawIOBase):
    """What the decompressors want to pull from: ``readinto`` over a ``Readable``."""

    def __init__(self, source: Readable) -> None:
        self._source = source
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if not self._pending:
            self._pending = memoryview(self._source.read(1 << 20))
            if not self._pending:
                return 0
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def decompressed(compression: Compression, source: Readable) -> Readable:
    """The uncompressed stream of ``source``; multi-member gzip and multi-frame zstd included."""
    if compression is Compression.NONE:
        return source
    raw = _FileAdapter(source)
    if compression is Compression.GZIP:
        open_gzip: Callable[..., Readable] = igzip.IGzipFile
        return _Checked(open_gzip(fileobj=raw, mode="rb"), compression)
    reader = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).stream_reader(
        io.BufferedReader(raw, 1 << 20), read_size=1 << 20, read_across_frames=True
    )
    return _Checked(reader, compression)


class Compressor(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...

    def flush(self) -> bytes: ...


class _Identity:
    def compress(self, data: bytes, /) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


def compressor(compression: Compression) -> Compressor:
    """A streaming compressor; its output is deterministic (gzip header without time or name)."""
    if compression is Compression.GZIP:
        level = isal_zlib.ISAL_DEFAULT_COMPRESSION
        result: Compressor = isal_zlib.compressobj(level, isal_zlib.DEFLATED, 16 + isal_zlib.MAX_WBITS)
        return result
    if compression is Compression.ZSTD:
        zstd: Compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()
        return zstd
    return _Identity()
