"""The walking differ: layers from the content store applied to mounts, and diffs of mounts stored.

The filesystem work runs in a worker thread; content flows to and from it in 1 MiB chunks over
anyio's thread portal. Mounts are used without mounting when that is possible, as containerd
does: a bind mount's source directly, an overlay's upper directory with overlay whiteouts.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Protocol, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import structlog

from corral.kernel import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unimplemented
from corral.plugins.core import (
    MEDIA_TYPE_LAYER,
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_LAYER_ZSTD,
    UNCOMPRESSED,
    Descriptor,
    Mount,
)
from corral.plugins.core.mount import temporary_mount
from corral.plugins.core.tracing import span
from corral.plugins.differs._compression import (
    Compression,
    Compressor,
    compressor,
    decompressed,
    layer_compression,
)
from corral.plugins.differs._tar import check_stop
from corral.plugins.differs._whiteouts import OVERLAY_XATTR_PREFIX, overlay_xattr_prefix

if TYPE_CHECKING:
    from corral.plugins.differs.apply import AppliedLayer, WhiteoutMode

log = structlog.get_logger("corral.differ")

CHUNK = 1 << 20
DIFF_MEDIA_TYPES = {
    MEDIA_TYPE_LAYER: Compression.NONE,
    MEDIA_TYPE_LAYER_GZIP: Compression.GZIP,
    MEDIA_TYPE_LAYER_ZSTD: Compression.ZSTD,
}
"""What Diff writes, as containerd's walking differ: OCI layers only, anything else Unimplemented."""


class BlobInfo(Protocol):
    @property
    def digest(self) -> str: ...

    @property
    def labels(self) -> Mapping[str, str]: ...


class BlobWriter(Protocol):
    async def write(self, data: bytes) -> int: ...

    async def truncate(self, size: int) -> None: ...

    async def commit(self, size: int, expected: str, labels: Mapping[str, str] | None = None) -> BlobInfo: ...

    async def close(self) -> None: ...


class LayerContent(Protocol):
    """What the differ needs of the namespaced content store (the metadata plugin's ``content``)."""

    async def info(self, digest: str) -> BlobInfo: ...

    async def read(self, digest: str, offset: int = 0, size: int = 0) -> AsyncIterator[bytes]: ...

    async def writer(self, ref: str, total: int = 0, expected: str = "") -> BlobWriter: ...

    async def update(self, digest: str, labels: Mapping[str, str], paths: Sequence[str]) -> BlobInfo: ...

    async def abort(self, ref: str) -> None: ...


def mount_options(mount: Mount) -> dict[str, str]:
    return {key: value for key, _, value in (o.partition("=") for o in mount.options)}


@dataclass(frozen=True)
class ApplyTarget:
    """Where a layer goes and which whiteouts it gets there."""

    root: str
    whiteouts: WhiteoutMode
    parents: tuple[str, ...] = ()
    xattr_prefix: str = OVERLAY_XATTR_PREFIX


@asynccontextmanager
async def apply_target(mounts: Sequence[Mount]) -> AsyncIterator[ApplyTarget]:
    """A bind mount's source, an overlay's upper directory, or else a temporary mount."""
    # The layer applier and the change walker load with the first apply or diff, not at start-up.
    from corral.plugins.differs.apply import WhiteoutMode

    if not mounts:
        raise InvalidArgument("no mounts to apply the layer to")
    if len(mounts) == 1:
        m = mounts[0]
        if m.type == "bind":
            if "ro" in m.options:
                raise InvalidArgument(f"cannot apply a layer to the read-only mount of {m.source}")
            yield ApplyTarget(m.source, WhiteoutMode.REMOVE)
            return
        if m.type == "overlay":
            options = mount_options(m)
            upper = options.get("upperdir")
            if not upper:
                raise InvalidArgument("cannot apply a layer to an overlay without an upperdir (read-only)")
            lowers = tuple(d for d in options.get("lowerdir", "").split(":") if d)
            yield ApplyTarget(upper, WhiteoutMode.OVERLAY, lowers, overlay_xattr_prefix(m.options))
            return
    async with temporary_mount(mounts) as where:
        yield ApplyTarget(str(where), WhiteoutMode.REMOVE)


def layer_dirs(mounts: Sequence[Mount]) -> list[str] | None:
    """The directories that make up ``mounts``, top first; None when they are not plain layers."""
    if not mounts:
        return []
    if len(mounts) != 1:
        return None
    m = mounts[0]
    if m.type == "bind":
        return [os.path.normpath(m.source)]
    if m.type == "overlay":
        options = mount_options(m)
        dirs = [options["upperdir"]] if options.get("upperdir") else []
        dirs += [d for d in options.get("lowerdir", "").split(":") if d]
        return [os.path.normpath(d) for d in dirs]
    return None


def readonly(mounts: Sequence[Mount]) -> list[Mount]:
    """The same trees, read-only: an overlay's upper directory becomes its top lower (containerd)."""
    out = []
    for m in mounts:
        if m.type == "overlay":
            options = mount_options(m)
            upper = options.get("upperdir")
            lowers = ([upper] if upper else []) + [d for d in options.get("lowerdir", "").split(":") if d]
            kept = tuple(
                o for o in m.options if not o.startswith(("upperdir=", "workdir=", "lowerdir=")) and o != "rw"
            )
            out.append(replace(m, options=(*kept, "lowerdir=" + ":".join(lowers))))
        else:
            kept = tuple(o for o in m.options if o != "rw")
            out.append(replace(m, options=kept if "ro" in kept else (*kept, "ro")))
    return out


@asynccontextmanager
async def readonly_tree(mounts: Sequence[Mount]) -> AsyncIterator[str]:
    """A directory showing ``mounts`` read-only: a bind mount's source as it is, else a mount."""
    if len(mounts) == 1 and mounts[0].type == "bind":
        yield mounts[0].source
        return
    async with temporary_mount(readonly(mounts)) as where:
        yield str(where)


T = TypeVar("T")


async def run_stoppable(work: Callable[[threading.Event], T]) -> T:
    """``work(stop)`` on a worker thread; if the caller is cancelled (a client's deadline or
    disconnect), ``stop`` is set and the thread waited for, so nothing is written afterwards.

    The thread is abandoned to anyio (the await ends at once) but not to us: a temporary mount
    must not be unmounted, nor a content writer closed, under a thread still using it."""
    stop = threading.Event()
    finished = threading.Event()

    def body() -> T:
        try:
            return work(stop)
        finally:
            finished.set()

    try:
        return await anyio.to_thread.run_sync(body, abandon_on_cancel=True)
    except BaseException:
        stop.set()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(finished.wait)
        raise


class ThreadSource:
    """A blocking ``read`` for a worker thread over the content store's async chunks (stopped by
    ``stop`` when one is set)."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self.stop: threading.Event | None = None
        self._pending = b""
        self._done = False
        # Any thread may read (the apply reads ahead on one of its own), so carry the loop's token.
        self._token = anyio.lowlevel.current_token()

    async def _next(self) -> bytes:
        try:
            return await anext(self._chunks)
        except StopAsyncIteration:
            return b""

    def read(self, size: int = -1, /) -> bytes:
        while not self._pending and not self._done:
            check_stop(self.stop)
            self._pending = anyio.from_thread.run(self._next, token=self._token)
            self._done = not self._pending
        if size < 0 or size >= len(self._pending):
            data, self._pending = self._pending, b""
        else:
            data, self._pending = self._pending[:size], self._pending[size:]
        return data


@dataclass
class _ThreadSink:
    """Compresses the tar stream and hands it to the content writer from the worker thread."""

    writer: BlobWriter
    compressor: Compressor
    stop: threading.Event | None = None
    size: int = 0
    _hash: hashlib._Hash = field(default_factory=hashlib.sha256)

    def __call__(self, data: bytes) -> None:
        check_stop(self.stop)
        self._emit(self.compressor.compress(data))

    def _emit(self, data: bytes) -> None:
        if data:
            self._hash.update(data)
            self.size += len(data)
            anyio.from_thread.run(self.writer.write, data)

    def close(self) -> str:
        self._emit(self.compressor.flush())
        return "sha256:" + self._hash.hexdigest()


def _apply_blocking(
    compression: Compression, source: ThreadSource, target: ApplyTarget, stop: threading.Event
) -> AppliedLayer:
    from corral.plugins.differs.apply import apply_layer

    source.stop = stop
    return apply_layer(
        decompressed(compression, source),
        target.root,
        whiteouts=target.whiteouts,
        parents=target.parents,
        overlay_xattr_prefix=target.xattr_prefix,
        stop=stop,
    )


def _unique_ref() -> str:
    return f"walking-diff-{time.time_ns()}-{secrets.token_hex(4)}"


class WalkingDiffer:
    """containerd's walking differ over a namespaced content store."""

    def __init__(self, content: LayerContent) -> None:
        self.content = content

    async def apply(self, desc: Descriptor, mounts: Sequence[Mount]) -> Descriptor:
        compression = layer_compression(desc.media_type)
        info = await self.content.info(desc.digest)
        expected = desc.annotations.get(UNCOMPRESSED) or info.labels.get(UNCOMPRESSED, "")
        chunks = await self.content.read(desc.digest)
        started = time.perf_counter()
        try:
            async with apply_target(mounts) as target:
                with span("differ.walking.Apply", {"whiteouts": target.whiteouts.value}) as current:
                    applied = await run_stoppable(
                        partial(_apply_blocking, compression, ThreadSource(chunks), target)
                    )
                    current.set_attributes(
                        {"layer.diff_id": applied.digest, "layer.entries": applied.entries}
                    )
        finally:
            close = getattr(chunks, "aclose", None)
            if close is not None:
                with anyio.CancelScope(shield=True):
                    await close()
        log.info(
            "differ_applied",
            digest=desc.digest,
            diff_id=applied.digest,
            entries=applied.entries,
            whiteouts=target.whiteouts.value,
            seconds=round(time.perf_counter() - started, 3),
        )
        if expected and expected != applied.digest:
            raise FailedPrecondition(
                f"layer {desc.digest} unpacked to {applied.digest}, but {expected} was expected"
            )
        return Descriptor(MEDIA_TYPE_LAYER, applied.digest, applied.size)

    async def compare(
        self,
        lower: Sequence[Mount],
        upper: Sequence[Mount],
        *,
        media_type: str = "",
        ref: str = "",
        labels: Mapping[str, str] | None = None,
        source_date_epoch: datetime | None = None,
    ) -> Descriptor:
        media_type = media_type or MEDIA_TYPE_LAYER_GZIP
        # containerd's WithModTimeUpperBound: later mtimes become the epoch (whiteouts stay at 0).
        mtime_bound = _epoch_ns(source_date_epoch) if source_date_epoch is not None else None
        compression = DIFF_MEDIA_TYPES.get(media_type)
        if compression is None:
            raise Unimplemented(f"unsupported diff media type: {media_type}")
        if not upper:
            raise InvalidArgument("no upper mounts to compare")
        # A caller's ref is resumed from nothing (containerd truncates it) and kept on failure.
        generated = not ref
        ref = ref or _unique_ref()
        writer = await self.content.writer(ref)
        try:
            if not generated:
                await writer.truncate(0)
            sink = _ThreadSink(writer, compressor(compression))
            async with AsyncExitStack() as stack:
                work = await _diff_work(stack, lower, upper, sink, mtime_bound)
                with span("differ.walking.Compare", {"layer.media.type": media_type}) as current:
                    diff_id, _ = await run_stoppable(work)
                    current.set_attributes({"layer.diff_id": diff_id})
            digest = await anyio.to_thread.run_sync(sink.close)
            # Only a compressed layer is labelled with its diffID: an uncompressed one's digest is it.
            compressed = compression is not Compression.NONE
            all_labels = {**(labels or {}), **({UNCOMPRESSED: diff_id} if compressed else {})}
            try:
                await writer.commit(sink.size, digest, all_labels)
            except AlreadyExists:
                # The namespace has this very layer already; make sure it says what it holds.
                info = await self.content.info(digest)
                if compressed and UNCOMPRESSED not in info.labels:
                    await self.content.update(digest, {UNCOMPRESSED: diff_id}, [f"labels.{UNCOMPRESSED}"])
        except BaseException:
            with anyio.CancelScope(shield=True):
                await writer.close()
                if generated:
                    with suppress(NotFound):
                        await self.content.abort(ref)
            raise
        await writer.close()
        log.info("differ_compared", digest=digest, diff_id=diff_id, media_type=media_type, size=sink.size)
        return Descriptor(media_type, digest, sink.size)


def _with_stop(
    sink: _ThreadSink, work: partial[tuple[str, int]]
) -> Callable[[threading.Event], tuple[str, int]]:
    def run(stop: threading.Event) -> tuple[str, int]:
        sink.stop = stop
        return work(stop=stop)

    return run


def _epoch_ns(when: datetime) -> int:
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = when - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


async def _diff_work(
    stack: AsyncExitStack,
    lower: Sequence[Mount],
    upper: Sequence[Mount],
    sink: _ThreadSink,
    mtime_bound: int | None = None,
) -> Callable[[threading.Event], tuple[str, int]]:
    """The blocking diff to run: the overlay upper directory alone when it is exactly the change set."""
    from corral.plugins.differs.compare import directory_changes, overlay_changes, write_layer

    below = layer_dirs(lower)
    if len(upper) == 1 and upper[0].type == "overlay":
        options = mount_options(upper[0])
        upperdir = options.get("upperdir")
        lowers = [os.path.normpath(d) for d in options.get("lowerdir", "").split(":") if d]
        if upperdir and below and lowers == below:
            prefix = overlay_xattr_prefix(upper[0].options)
            changes = overlay_changes(upperdir, xattr_prefix=prefix)
            return _with_stop(sink, partial(write_layer, changes, sink, mtime_bound=mtime_bound))
    lower_root = await stack.enter_async_context(readonly_tree(lower)) if lower else None
    upper_root = await stack.enter_async_context(readonly_tree(upper))
    return _with_stop(
        sink, partial(write_layer, directory_changes(lower_root, upper_root), sink, mtime_bound=mtime_bound)
    )
