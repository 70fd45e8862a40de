"""A fetched blob as an async byte stream, verified against its descriptor while it flows."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Protocol

from corral.kernel import FailedPrecondition, InvalidArgument
from corral.plugins.remotes import _errors
from corral.plugins.remotes._records import Descriptor

if TYPE_CHECKING:
    import httpx  # imported by the session when a registry is first used

READ_CHUNK = 1 << 20


class Hasher(Protocol):
    """The part of a ``hashlib`` object the stream uses."""

    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


def new_hasher(digest: str) -> Hasher:
    algorithm = digest.partition(":")[0]
    if algorithm not in ("sha256", "sha384", "sha512"):
        raise InvalidArgument(f"unsupported digest algorithm in {digest!r}")
    return hashlib.new(algorithm)


class BlobStream:
    """The bytes of ``descriptor`` from ``offset`` on; iterating it raises FailedPrecondition on a mismatch.

    The digest is checked when the whole blob passed through this stream, or when the caller gave
    the hash state of the first ``offset`` bytes (a resumed download); the size always is.
    """

    def __init__(
        self,
        registry: str,
        descriptor: Descriptor,
        response: httpx.Response,
        *,
        offset: int = 0,
        skip: int = 0,
        hasher: Hasher | None = None,
    ) -> None:
        self.registry = registry
        self.descriptor = descriptor
        self.offset = offset
        self._response = response
        self._skip = skip
        self._hasher = (
            hasher if hasher is not None else (new_hasher(descriptor.digest) if offset == 0 else None)
        )
        self._position = offset
        self._consumed = False

    @property
    def position(self) -> int:
        """How far into the blob the bytes handed out so far reach."""
        return self._position

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def read(self) -> bytes:
        """Everything that is left, verified."""
        return b"".join([chunk async for chunk in self])

    async def _chunks(self) -> AsyncIterator[bytes]:
        if self._consumed:
            raise FailedPrecondition(
                f"registry {self.registry}: blob {self.descriptor.digest} was already read"
            )
        self._consumed = True
        size = self.descriptor.size
        try:
            async for chunk in self._verified(size):
                yield chunk
        except _errors.transport_errors() as exc:
            raise _errors.transport_error(self.registry, self._response.request, exc) from exc

    async def _verified(self, size: int) -> AsyncIterator[bytes]:
        async for chunk in self._response.aiter_bytes(READ_CHUNK):
            if self._skip:
                dropped = min(self._skip, len(chunk))
                chunk, self._skip = chunk[dropped:], self._skip - dropped
                if not chunk:
                    continue
            self._position += len(chunk)
            if size >= 0 and self._position > size:
                raise FailedPrecondition(
                    f"registry {self.registry}: blob {self.descriptor.digest} is longer than its {size} bytes"
                )
            if self._hasher is not None:
                self._hasher.update(chunk)
            yield chunk
        if size >= 0 and self._position != size:
            raise FailedPrecondition(
                f"registry {self.registry}: blob {self.descriptor.digest} ended at {self._position} of {size} bytes"
            )
        if self._hasher is not None:
            actual = f"{self.descriptor.digest.partition(':')[0]}:{self._hasher.hexdigest()}"
            if actual != self.descriptor.digest:
                raise FailedPrecondition(
                    f"registry {self.registry}: unexpected digest {actual} for blob {self.descriptor.digest}"
                )
