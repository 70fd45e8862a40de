"""Writing and reading blobs for the checks: digests, deterministic payloads, whole-blob reads."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from corral.kernel import CorralError
from corral.plugins.content import ContentStore, Info

E = TypeVar("E", bound=CorralError)

EMPTY_DIGEST = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
MALFORMED_DIGESTS = (
    "",
    "abc",
    "sha256:",
    "sha256:xyz",
    "sha256:" + "0" * 63,
    "sha256:" + "0" * 65,
    "sha256:" + "A" * 64,
    "md5:" + "0" * 32,
    ":" + "0" * 64,
)


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes that differ per seed and per position."""
    block = hashlib.sha512(seed.to_bytes(8, "big")).digest() * 64  # 4 KiB
    return (block * (size // len(block) + 1))[:size]


async def expect(kind: type[E], awaitable: Awaitable[object]) -> E:
    """Await ``awaitable`` and return the error of ``kind`` it raised; fail if it raised nothing."""
    try:
        await awaitable
    except kind as exc:
        return exc
    except CorralError as exc:
        raise AssertionError(f"expected {kind.__name__}, got {type(exc).__name__}: {exc}") from exc
    raise AssertionError(f"expected {kind.__name__}, nothing was raised")


async def drain(chunks: AsyncIterator[bytes]) -> list[bytes]:
    try:
        return [chunk async for chunk in chunks]
    finally:
        await close_iterator(chunks)


async def close_iterator(iterator: AsyncIterator[object]) -> None:
    """Close an async generator now rather than when it is garbage-collected."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


async def read_all(store: ContentStore, digest: str, offset: int = 0, size: int = 0) -> bytes:
    return b"".join(await drain(store.read(digest, offset, size)))


async def list_all(store: ContentStore) -> list[Info]:
    infos = store.list()
    try:
        return [info async for info in infos]
    finally:
        await close_iterator(infos)


async def ingest(store: ContentStore, ref: str, data: bytes, chunk: int = 64 * 1024) -> Info:
    """Write ``data`` through ``ref`` in ``chunk``-sized writes and commit it, verified."""
    writer = await store.writer(ref, total=len(data), expected=digest_of(data))
    try:
        for start in range(0, len(data), chunk):
            await writer.write(data[start : start + chunk])
        return await writer.commit(len(data), digest_of(data))
    finally:
        await writer.close()


async def partial_ingest(store: ContentStore, ref: str, data: bytes) -> None:
    writer = await store.writer(ref)
    try:
        await writer.write(data)
    finally:
        await writer.close()
