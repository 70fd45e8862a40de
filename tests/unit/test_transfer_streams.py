"""The byte flows of a transfer: containerd's window protocol, import decompression, image naming."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel
import pytest
import zstandard

from corral.api.grpc.transfer import (
    DATA,
    MAX_DATA,
    RECEIVE_WINDOW,
    WINDOW_UPDATE,
    WindowedSink,
    receive_bytes,
)
from corral.api.types.containerd.types import transfer as tt
from corral.kernel import InvalidArgument
from corral.plugins.images import oci
from corral.plugins.metadata import AnyValue
from corral.plugins.transfer import ImageReference, ImageStoreTarget
from corral.plugins.transfer._names import REF_SOURCE, image_names
from corral.plugins.transfer._stream import decompressed


class ScriptedStream:
    """A client's side of a stream: what it will send, and what it was sent."""

    def __init__(self, incoming: list[AnyValue]) -> None:
        self.incoming = list(incoming)
        self.sent: list[AnyValue] = []
        self.closed = False

    async def send(self, message: AnyValue) -> None:
        if self.closed:
            raise EOFError
        self.sent.append(message)

    async def recv(self) -> AnyValue | None:
        await anyio.lowlevel.checkpoint()
        return self.incoming.pop(0) if self.incoming else None

    async def close(self) -> None:
        self.closed = True


def data(payload: bytes) -> AnyValue:
    return AnyValue(DATA, bytes(tt.Data(data=payload)))


def grant(n: int) -> AnyValue:
    return AnyValue(WINDOW_UPDATE, bytes(tt.WindowUpdate(update=n)))


def test_an_import_grants_window_before_reading_and_closes_the_stream_at_the_end() -> None:
    stream = ScriptedStream([data(b"abc"), AnyValue("containerd.types.transfer.Other", b""), data(b"def")])

    async def read() -> bytes:
        return b"".join([chunk async for chunk in receive_bytes(stream)])

    assert anyio.run(read) == b"abcdef"
    assert stream.sent[0].type_url == WINDOW_UPDATE
    assert tt.WindowUpdate.parse(stream.sent[0].value).update == RECEIVE_WINDOW
    assert stream.closed


def test_an_export_never_sends_more_than_granted_nor_more_than_32_kib_at_once() -> None:
    stream = ScriptedStream([grant(40_000), grant(100_000)])
    sink = WindowedSink(stream)
    payload = bytes(range(256)) * 400  # 102 400 bytes

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(sink.follow_grants)
            await sink.write(payload)

    anyio.run(run)
    sizes = [len(tt.Data.parse(m.value).data) for m in stream.sent]
    assert max(sizes) <= MAX_DATA
    assert sum(sizes) == len(payload)
    assert b"".join(tt.Data.parse(m.value).data for m in stream.sent) == payload


def test_an_export_to_a_client_that_stopped_reading_fails_instead_of_hanging() -> None:
    from corral.kernel import Unavailable

    stream = ScriptedStream([grant(10)])
    sink = WindowedSink(stream)

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(sink.follow_grants)
            with anyio.fail_after(5):
                await sink.write(b"x" * 100)

    with pytest.raises(BaseExceptionGroup) as caught:
        anyio.run(run)
    assert caught.group_contains(Unavailable, match="stopped reading")


async def _chunks(data: bytes, size: int = 7) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def _undo(data: bytes) -> bytes:
    async def run() -> bytes:
        return b"".join([chunk async for chunk in decompressed(_chunks(data))])

    return anyio.run(run)


@pytest.mark.parametrize(
    "packed",
    [
        pytest.param(b"plain tar bytes" * 100, id="plain"),
        pytest.param(gzip.compress(b"plain tar bytes" * 100), id="gzip"),
        pytest.param(
            gzip.compress(b"plain tar bytes" * 50) + gzip.compress(b"plain tar bytes" * 50), id="gzip-members"
        ),
        pytest.param(zstandard.ZstdCompressor().compress(b"plain tar bytes" * 100), id="zstd"),
    ],
)
def test_an_import_stream_is_decompressed_when_it_is_gzip_or_zstd(packed: bytes) -> None:
    assert _undo(packed) == b"plain tar bytes" * 100


def test_a_broken_gzip_import_stream_is_invalid_argument() -> None:
    broken = bytearray(gzip.compress(b"x" * 1000))
    broken[12:20] = b"\xff" * 8
    with pytest.raises(InvalidArgument, match="gzip"):
        _undo(bytes(broken))


INDEX = oci.Descriptor(oci.OCI_INDEX, "sha256:" + "1" * 64, 300)


def entry(digest: str, **annotations: str) -> oci.Descriptor:
    return oci.Descriptor(oci.OCI_MANIFEST, digest, 400, {**annotations, REF_SOURCE: "annotation"})


def names(store: ImageStoreTarget, *entries: oci.Descriptor) -> list[str]:
    return [image.name for image in image_names(INDEX, entries, store)]


A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64


def test_bare_tags_get_the_prefix_and_full_names_are_kept_when_overwrite_is_allowed() -> None:
    store = ImageStoreTarget(
        extra_references=(ImageReference("import-2026-12-03", is_prefix=True, allow_overwrite=True),)
    )
    got = names(
        store,
        entry(A, **{oci.ANNOTATION_REF_NAME: "v1"}),
        entry(B, **{oci.ANNOTATION_IMAGE_NAME: "docker.io/library/busybox:latest"}),
    )
    assert got == ["import-2026-12-03:v1", "docker.io/library/busybox:latest"]


def test_a_base_name_filters_names_that_do_not_start_with_it() -> None:
    store = ImageStoreTarget(extra_references=(ImageReference("docker.io/library/busybox", is_prefix=True),))
    got = names(
        store,
        entry(A, **{oci.ANNOTATION_IMAGE_NAME: "docker.io/library/alpine:3"}),
        entry(B, **{oci.ANNOTATION_IMAGE_NAME: "docker.io/library/busybox:1"}),
    )
    assert got == ["docker.io/library/busybox:1"]


def test_digest_references_name_unnamed_entries_and_named_ones_unless_skipped() -> None:
    digests = ImageReference("base", is_prefix=True, add_digest=True)
    both = names(
        ImageStoreTarget(extra_references=(digests,)), entry(A, **{oci.ANNOTATION_REF_NAME: "v1"}), entry(B)
    )
    assert both == ["base:v1", f"base@{A}", f"base@{B}"]
    skipping = ImageReference("base", is_prefix=True, add_digest=True, skip_named_digest=True)
    assert names(
        ImageStoreTarget(extra_references=(skipping,)), entry(A, **{oci.ANNOTATION_REF_NAME: "v1"})
    ) == ["base:v1"]


def test_an_index_name_and_complete_references_name_the_index_itself() -> None:
    store = ImageStoreTarget(name="whole", labels={"k": "v"}, extra_references=(ImageReference("other:1"),))
    made = image_names(INDEX, (), store)
    assert [(i.name, i.target.digest, dict(i.labels)) for i in made] == [
        ("whole", INDEX.digest, {"k": "v"}),
        ("other:1", INDEX.digest, {"k": "v"}),
    ]


def test_the_import_annotation_never_reaches_the_image_target() -> None:
    store = ImageStoreTarget(extra_references=(ImageReference("p", is_prefix=True, allow_overwrite=True),))
    (image,) = image_names(INDEX, (entry(A, **{oci.ANNOTATION_REF_NAME: "v1"}),), store)
    assert REF_SOURCE not in image.target.annotations
