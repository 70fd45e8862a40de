"""The erofs differ: a layer applied to an erofs snapshot becomes its EROFS image ``layer.erofs``.

As containerd's: only mounts of a snapshot the erofs snapshotter made (``.erofslayer``) are taken;
anything else is Unimplemented, so the diff service falls back to the next differ. An EROFS-native
layer (a media type ending in ``.erofs``) is the image itself; a tar layer is converted — by
``mkfs.erofs --tar=f --aufs`` where erofs-utils can (1.7 and later), otherwise unpacked with OCI
whiteouts as overlay's (the parents' directory attributes kept, as on overlayfs) and imaged with
``mkfs.erofs`` from that directory. Comparing two mounts is the walking differ's work.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Protocol

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import structlog

from corral.kernel import FailedPrecondition, Internal, InvalidArgument, Unimplemented
from corral.plugins.core import MEDIA_TYPE_LAYER, UNCOMPRESSED, Descriptor, Mount
from corral.plugins.core.trees import remove_tree
from corral.plugins.differs._compression import Compression, decompressed, layer_compression
from corral.plugins.differs.differ import LayerContent, ThreadSource, WalkingDiffer
from corral.plugins.snapshots.erofs import (
    APPLY_SCRATCH,
    UPPER,
    check_applicable,
    check_mkfs,
    directory_argv,
    layer_directory,
    layer_uuid,
    mkfs_reads_tar,
    overlay_lowers,
    publish_blob,
    tar_argv,
    temporary_blob,
)

log = structlog.get_logger("corral.differ.erofs")

CHUNK = 1 << 20


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def is_erofs_media_type(media_type: str) -> bool:
    """containerd's rule: an EROFS-native layer's media type ends in ``.erofs``, with no ``+`` suffix."""
    base, plus, _ = media_type.partition("+")
    return not plus and base.endswith(".erofs")


class ErofsDiffer:
    """containerd's erofs differ over a namespaced content store; see the module docstring."""

    def __init__(
        self,
        content: LayerContent,
        *,
        mkfs: str,
        mkfs_options: Sequence[str] = (),
        tar_input: bool | None = None,
    ) -> None:
        self.content = content
        self.walking = WalkingDiffer(content)
        self.mkfs = mkfs
        self.mkfs_options = tuple(mkfs_options)
        self._tar_input = tar_input

    @property
    def tar_input(self) -> bool:
        """Whether mkfs.erofs converts the tar itself (``--tar=f``) rather than a directory: asked of
        mkfs.erofs (``--help``) at the first apply that needs to know, not at start-up."""
        if self._tar_input is None:
            self._tar_input = mkfs_reads_tar(self.mkfs)
        return self._tar_input

    async def apply(self, desc: Descriptor, mounts: Sequence[Mount]) -> Descriptor:
        native = is_erofs_media_type(desc.media_type)
        compression = Compression.NONE
        if not native:
            try:
                compression = layer_compression(desc.media_type)
            except Unimplemented:
                # Refused, not passed on: containerd's erofs differ fails here too.
                raise InvalidArgument(f"currently unsupported media type: {desc.media_type}") from None
        layer = await anyio.to_thread.run_sync(layer_directory, mounts)
        if layer is None:
            raise Unimplemented("mount layer type must be erofs-layer")
        # The same layer's image may be made again (an apply cut short, repeated); a native image
        # carries its own UUID, so it is never taken for a repeat.
        await anyio.to_thread.run_sync(check_applicable, layer, "" if native else layer_uuid(desc.digest))
        if not native and self._tar_input is None:
            self._tar_input = await anyio.to_thread.run_sync(mkfs_reads_tar, self.mkfs)
        started = time.perf_counter()
        if native:
            applied = await self._copy_native(desc, layer)
        elif self.tar_input:
            applied = await self._convert_tar(desc, compression, layer)
        else:
            applied = await self._convert_directory(desc, layer, overlay_lowers(mounts))
        log.info(
            "differ_applied",
            digest=desc.digest,
            diff_id=applied.digest,
            layer=layer.name,
            seconds=round(time.perf_counter() - started, 3),
        )
        return applied

    async def compare(
        self,
        lower: Sequence[Mount],
        upper: Sequence[Mount],
        *,
        media_type: str = "",
        ref: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> Descriptor:
        if await anyio.to_thread.run_sync(lambda: layer_directory(upper, writable=False)) is None:
            raise Unimplemented(
                "unsupported layer for erofsDiff Compare method: mount layer type must be erofs-layer"
            )
        return await self.walking.compare(lower, upper, media_type=media_type, ref=ref, labels=labels)

    # -- the three ways to a layer image --------------------------------------------------------

    async def _copy_native(self, desc: Descriptor, layer: Path) -> Descriptor:
        await self.content.info(desc.digest)  # NotFound before anything is written
        written = await anyio.to_thread.run_sync(temporary_blob, layer)
        try:
            chunks = await self.content.read(desc.digest)
            out = await anyio.open_file(written, "wb")
            async with out:
                async for chunk in chunks:
                    await out.write(chunk)
            await anyio.to_thread.run_sync(publish_blob, written, layer)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(lambda: written.unlink(missing_ok=True))
            raise
        return desc

    async def _expected(self, desc: Descriptor) -> str:
        info = await self.content.info(desc.digest)
        return desc.annotations.get(UNCOMPRESSED) or info.labels.get(UNCOMPRESSED, "")

    async def _convert_directory(self, desc: Descriptor, layer: Path, lowers: Sequence[str]) -> Descriptor:
        work = Path(await anyio.to_thread.run_sync(lambda: tempfile.mkdtemp(prefix=APPLY_SCRATCH, dir=layer)))
        try:
            tree = work / "tree"
            await anyio.to_thread.run_sync(_make_root, tree, layer / UPPER)
            # The walking differ unpacks into an overlay upper directory without mounting it:
            # whiteouts become overlay's, directories the layer only implies take the parents'
            # attributes, the diffID is checked. Then the directory is imaged.
            upper = Mount("overlay", "overlay", (f"upperdir={tree}", "lowerdir=" + ":".join(lowers)))
            applied = await self.walking.apply(desc, [upper])
            await anyio.to_thread.run_sync(self._image_directory, desc, tree, layer)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(remove_tree, work)
        return applied

    def _image_directory(self, desc: Descriptor, tree: Path, layer: Path) -> None:
        written = temporary_blob(layer)
        # From inside the tree: mkfs.erofs names files by paths below its source.
        argv = directory_argv(self.mkfs, written, Path("."), self.mkfs_options, layer_uuid(desc.digest))
        result = subprocess.run(argv, cwd=tree, capture_output=True, check=False)
        try:
            check_mkfs(result)
        except Internal as exc:
            written.unlink(missing_ok=True)
            # The next differ (walking) can still unpack it, and the snapshotter keep it as a
            # directory layer: erofs-utils 1.5, for one, refuses names of 255 bytes.
            raise Unimplemented(f"mkfs.erofs could not make the layer image: {exc.detail}") from None
        publish_blob(written, layer)

    async def _convert_tar(self, desc: Descriptor, compression: Compression, layer: Path) -> Descriptor:
        expected = await self._expected(desc)
        chunks = await self.content.read(desc.digest)
        written = await anyio.to_thread.run_sync(temporary_blob, layer)
        argv = tar_argv(self.mkfs, written, self.mkfs_options, layer_uuid(desc.digest))
        try:
            try:
                digest, size = await anyio.to_thread.run_sync(
                    _stream_into_mkfs, argv, decompressed(compression, ThreadSource(chunks))
                )
            except Internal as exc:
                raise Unimplemented(f"mkfs.erofs could not make the layer image: {exc.detail}") from None
            finally:
                close = getattr(chunks, "aclose", None)
                if close is not None:
                    await close()
            if expected and expected != digest:
                raise FailedPrecondition(
                    f"layer {desc.digest} unpacked to {digest}, but {expected} was expected"
                )
            await anyio.to_thread.run_sync(publish_blob, written, layer)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(lambda: written.unlink(missing_ok=True))
            raise
        return Descriptor(MEDIA_TYPE_LAYER, digest, size)


def _make_root(tree: Path, like: Path) -> None:
    """The image's root takes the snapshot root's owner and mode, as an overlay upper's root does."""
    st = os.stat(like)
    tree.mkdir()
    os.chown(tree, st.st_uid, st.st_gid)
    os.chmod(tree, st.st_mode & 0o7777)


def _stream_into_mkfs(argv: list[str], stream: _Readable) -> tuple[str, int]:
    """Feed the uncompressed tar ``stream`` to ``mkfs.erofs --tar=f``; the stream's digest and size.

    Whatever mkfs does not read (the archive's trailing blocks) is still read and digested."""
    read = stream.read
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdin is not None and proc.stdout is not None
    output: list[bytes] = []
    stdout: IO[bytes] = proc.stdout
    drain = threading.Thread(target=lambda: output.append(stdout.read()), daemon=True)
    drain.start()
    hashed = hashlib.sha256()
    size = 0
    feeding = True
    try:
        while chunk := read(CHUNK):
            hashed.update(chunk)
            size += len(chunk)
            if feeding:
                try:
                    proc.stdin.write(chunk)
                except BrokenPipeError:
                    feeding = False  # mkfs has what it needs, or failed: its status says which
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
    except BaseException:
        proc.kill()
        raise
    finally:
        returncode = proc.wait()
        drain.join()
    check_mkfs(subprocess.CompletedProcess(argv, returncode, b"".join(output), b""))
    return "sha256:" + hashed.hexdigest(), size


__all__ = ["ErofsDiffer", "is_erofs_media_type"]
