"""Image archives: what the builder writes reads back with every blob verified, ``docker save``
archives are seen as containerd's importer sees them, every malformation is refused, the
writer is deterministic, and real tools (tar, skopeo, containerd's ctr) agree with both sides."""

from __future__ import annotations

import datetime
import gzip
import hashlib
import io
import json
import subprocess
import tarfile
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard
from tooling import require_tool

from corral.kernel import DataLoss, FailedPrecondition, InvalidArgument, NotFound
from corral.plugins.images import archive, build, oci
from corral.plugins.images.archive import ArchiveFormat, ArchiveReader, ExportImage
from corral.plugins.images.build import BuiltImage, LayerEntry
from corral.plugins.images.oci import Platform

AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64", "v8")
NAME = "docker.io/library/hello:1"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def small_image(text: bytes = b"hi\n", platform: Platform = AMD64) -> BuiltImage:
    layer = build.build_layer([LayerEntry.file("hello", text), LayerEntry.directory("etc")])
    return build.build_image([layer], platform=platform, cmd=["/hello"])


def read_fully(data: bytes, **options: Any) -> tuple[archive.ArchiveContents, dict[str, bytes]]:
    """Every blob read and hashed; the contents resolved."""
    reader = ArchiveReader()
    blobs: dict[str, bytes] = {}
    for blob in reader.blobs(io.BytesIO(data)):
        payload = b"".join(blob.chunks())
        assert oci.digest_of(payload, blob.digest.partition(":")[0]) == blob.digest
        assert len(payload) == blob.size
        blobs[blob.name] = payload
    return reader.contents(**options), blobs


def tar_of(*members: tuple[str, Any]) -> bytes:
    """A tar written by Python's tarfile: (name, bytes) files, (name, None) directories,
    (name, ("symlink", target)) links."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(content, tuple):
                info.type, info.linkname = tarfile.SYMTYPE, content[1]
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


def blob_name(digest: str) -> str:
    algorithm, _, encoded = digest.partition(":")
    return f"blobs/{algorithm}/{encoded}"


def layout_members(
    blobs: dict[str, bytes], index: dict[str, Any], version: str = "1.0.0"
) -> list[tuple[str, Any]]:
    members: list[tuple[str, Any]] = [("oci-layout", json.dumps({"imageLayoutVersion": version}).encode())]
    members += [(blob_name(d), data) for d, data in blobs.items()]
    members.append(("index.json", json.dumps(index).encode()))
    return members


def index_of(*entries: oci.Descriptor) -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": [e.to_json() for e in entries]}


# --- reading what the builder writes -------------------------------------------------------


def test_an_oci_archive_reads_back_with_every_blob_verified() -> None:
    image = small_image()
    contents, blobs = read_fully(image.oci_archive([NAME]))
    assert contents.format is ArchiveFormat.OCI
    by_digest = {oci.digest_of(data): data for name, data in blobs.items()}
    for digest, data in image.blobs.items():
        assert by_digest[digest] == data
    assert set(blobs) == {blob_name(d) for d in image.blobs} | {"index.json"}
    assert contents.manifests[image.digest] == image.manifest
    assert contents.configs[image.manifest.config.digest] == image.config
    assert contents.index_descriptor.digest == oci.digest_of(blobs["index.json"])
    assert contents.index_descriptor.media_type == oci.OCI_INDEX
    (entry,) = contents.index.manifests
    assert entry.annotations == {oci.ANNOTATION_IMAGE_NAME: NAME, oci.ANNOTATION_REF_NAME: "1"}
    assert contents.image_names() == [archive.ImageName(NAME, entry)]
    assert contents.synthesized == {}


def test_blobs_come_in_tar_order_with_the_digest_their_name_promises() -> None:
    image = small_image()
    reader = ArchiveReader()
    seen = []
    for blob in reader.blobs(io.BytesIO(image.oci_archive([NAME]))):
        with pytest.raises(FailedPrecondition):
            _ = blob.digest
        data = blob.read_all()
        seen.append(blob.name)
        if blob.name.startswith("blobs/"):
            assert blob.expected_digest == blob.digest == oci.digest_of(data)
        else:
            assert blob.expected_digest is None
    assert seen == sorted(seen)
    assert reader.contents().index.manifests[0].digest == image.digest


@pytest.mark.parametrize("read_size", [1, 7, 512, 513, 1 << 20])
def test_any_chunking_of_the_stream_gives_the_same_contents(read_size: int) -> None:
    data = small_image().oci_archive([NAME])
    expected, expected_blobs = read_fully(data)
    reader = ArchiveReader(read_size=read_size)
    blobs = {blob.name: b"".join(blob.chunks()) for blob in reader.blobs(io.BytesIO(data))}
    assert blobs == expected_blobs
    assert reader.contents() == expected


@pytest.mark.anyio
async def test_an_async_source_reads_the_same() -> None:
    data = small_image().oci_archive([NAME])
    expected, expected_blobs = read_fully(data)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 1000):
            yield data[i : i + 1000]

    class AsyncFile:
        def __init__(self) -> None:
            self.stream = io.BytesIO(data)

        async def read(self, size: int = -1, /) -> bytes:
            return self.stream.read(size)

    for source in (chunks(), AsyncFile()):
        reader = ArchiveReader()
        blobs = {}
        async for blob in reader.ablobs(source):
            blobs[blob.name] = await blob.aread_all()
        assert blobs == expected_blobs
        assert reader.contents() == expected


def test_a_large_blob_streams_through_without_being_held_in_memory() -> None:
    from corral.plugins.core.tar import END_OF_ARCHIVE, encode_header

    size, chunk = 48 << 20, bytes(1 << 20)
    hasher = hashlib.sha256()
    for _ in range(size // len(chunk)):
        hasher.update(chunk)
    digest = "sha256:" + hasher.hexdigest()

    def source() -> Iterator[bytes]:
        yield encode_header(blob_name(digest), size=size)
        for _ in range(size // len(chunk)):
            yield chunk
        yield END_OF_ARCHIVE

    reader = ArchiveReader()
    tracemalloc.start()
    try:
        for blob in reader.blobs(source()):
            assert (blob.name, blob.size) == (blob_name(digest), size)
            seen = sum(len(part) for part in blob.chunks())
            assert seen == size and blob.digest == digest
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"{peak} bytes held while streaming {size}"
    with pytest.raises(InvalidArgument, match="unrecognized"):
        reader.contents()


def test_blobs_left_unread_are_skipped_and_still_verified() -> None:
    image = small_image()
    data = image.oci_archive([NAME])
    reader = ArchiveReader()
    names = [blob.name for blob in reader.blobs(io.BytesIO(data))]
    assert len(names) == 4
    assert reader.contents().manifests[image.digest] == image.manifest

    layer = image.layers[0]
    tampered = data.replace(layer.blob, bytes([layer.blob[0] ^ 1]) + layer.blob[1:])
    with pytest.raises(InvalidArgument, match="digest"):
        for _ in ArchiveReader().blobs(io.BytesIO(tampered)):
            pass


def test_contents_before_the_end_is_a_precondition_error() -> None:
    reader = ArchiveReader()
    iterator = reader.blobs(io.BytesIO(small_image().oci_archive()))
    next(iterator)
    with pytest.raises(FailedPrecondition):
        reader.contents()


def test_a_whole_small_archive_reads_into_memory() -> None:
    image = small_image()
    contents, data = archive.read_archive(io.BytesIO(image.oci_archive([NAME])))
    assert image.blobs.items() <= data.items()
    assert contents.index_descriptor.digest in data


# --- docker save ---------------------------------------------------------------------------


def expected_docker_manifest(config: oci.Descriptor, layers: list[oci.Descriptor]) -> bytes:
    """The bytes containerd's importer writes, spelt out by hand."""

    def desc(d: oci.Descriptor) -> str:
        return f'{{"mediaType":"{d.media_type}","digest":"{d.digest}","size":{d.size}}}'

    return (
        '{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",'
        f'"config":{desc(config)},"layers":[{",".join(desc(layer) for layer in layers)}]}}'
    ).encode()


def test_a_docker_save_archive_is_seen_as_containerd_synthesises_it() -> None:
    image = small_image()
    contents, blobs = read_fully(image.docker_archive(["hello:1", "me/hello"]))
    assert contents.format is ArchiveFormat.DOCKER
    config = oci.Descriptor(oci.DOCKER_CONFIG, oci.digest_of(image.config_bytes), len(image.config_bytes))
    layer_tar = image.layers[0].tar
    layer = oci.Descriptor(oci.DOCKER_LAYER, oci.digest_of(layer_tar), len(layer_tar))
    manifest_bytes = expected_docker_manifest(config, [layer])
    manifest_digest = oci.digest_of(manifest_bytes)
    assert contents.synthesized[manifest_digest] == manifest_bytes
    first, second = contents.index.manifests
    assert first.digest == second.digest == manifest_digest
    assert first.media_type == oci.DOCKER_MANIFEST and first.platform == AMD64
    assert first.annotations == {
        oci.ANNOTATION_IMAGE_NAME: "docker.io/library/hello:1",
        oci.ANNOTATION_REF_NAME: "1",
    }
    assert second.annotations[oci.ANNOTATION_IMAGE_NAME] == "docker.io/me/hello:latest"
    index_bytes = contents.synthesized[contents.index_descriptor.digest]
    assert index_bytes.startswith(b'{"schemaVersion":2,"manifests":[{"mediaType":')
    assert oci.parse_index(index_bytes) == contents.index
    assert [n.name for n in contents.image_names()] == [
        "docker.io/library/hello:1",
        "docker.io/me/hello:latest",
    ]
    assert contents.manifests[manifest_digest].layers == (layer,)
    assert layer_tar in blobs.values()


def docker_archive(
    layers: list[tuple[str, Any]],
    layer_names: list[str],
    *,
    tags: Any = ("a:1",),
    diff_ids: list[str] | None = None,
) -> bytes:
    config = oci.go_json(
        {
            "architecture": "arm64",
            "variant": "v8",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids or [f"sha256:{'0' * 64}"] * len(layer_names)},
        }
    )
    manifest = [
        {"Config": "c.json", "RepoTags": list(tags) if tags is not None else None, "Layers": layer_names}
    ]
    return tar_of(("manifest.json", json.dumps(manifest).encode()), ("c.json", config), *layers)


def test_docker_layers_are_typed_by_their_first_bytes_as_containerd_does() -> None:
    plain = tar_of(("f", b"x"))
    layers = [("gz/layer.tar", gzip.compress(plain, mtime=0)), ("zst/layer.tar", zstandard.compress(plain))]
    layers += [("plain/layer.tar", plain), ("empty/layer.tar", b"")]
    data = docker_archive(layers, [name for name, _ in layers])
    contents, _ = read_fully(data)
    (manifest,) = contents.manifests.values()
    # containerd calls any compressed docker layer gzip, zstd included.
    assert [layer.media_type for layer in manifest.layers] == [
        oci.DOCKER_LAYER_GZIP,
        oci.DOCKER_LAYER_GZIP,
        oci.DOCKER_LAYER,
        oci.DOCKER_LAYER,
    ]
    # The config's platform, normalised, goes on the index entry.
    assert contents.index.manifests[0].platform == Platform("linux", "arm64")


def test_a_symlinked_docker_layer_resolves_to_its_target() -> None:
    plain = tar_of(("f", b"x"))
    layers = [("a/layer.tar", plain), ("b/layer.tar", ("symlink", "../a/layer.tar"))]
    contents, _ = read_fully(docker_archive(layers, ["a/layer.tar", "b/layer.tar"]))
    (manifest,) = contents.manifests.values()
    assert manifest.layers[0] == manifest.layers[1]
    assert manifest.layers[0].digest == oci.digest_of(plain)


def test_an_untagged_docker_image_has_an_unnamed_entry() -> None:
    contents, _ = read_fully(docker_archive([("l.tar", tar_of(("f", b"")))], ["l.tar"], tags=None))
    (entry,) = contents.index.manifests
    assert entry.annotations == {}
    assert contents.image_names(base_name="docker.io/library/x") == []


def test_a_compressed_blob_already_stored_replaces_the_docker_layer() -> None:
    plain = tar_of(("f", b"x"))
    stored = oci.Descriptor(oci.DOCKER_LAYER_GZIP, oci.digest_of(b"gz"), 2)
    reader = ArchiveReader()
    for _ in reader.blobs(io.BytesIO(docker_archive([("l.tar", plain)], ["l.tar"]))):
        pass
    contents = reader.contents(compressed_layers={oci.digest_of(plain): stored})
    (manifest,) = contents.manifests.values()
    assert manifest.layers == (stored,)


def test_an_archive_with_both_layouts_is_read_as_oci_as_containerd_prefers() -> None:
    image = small_image()
    data = image.oci_archive([NAME])  # oci-layout, index.json and manifest.json, as docker 25 saves
    contents, _ = read_fully(data)
    assert contents.format is ArchiveFormat.OCI
    assert contents.index.manifests[0].digest == image.digest


# --- names an import gives -----------------------------------------------------------------


def named_archive(*annotations: dict[str, str]) -> archive.ArchiveContents:
    image = small_image()
    entries = [
        oci.Descriptor(oci.OCI_MANIFEST, image.digest, len(image.manifest_bytes), a) for a in annotations
    ]
    data = tar_of(*layout_members(dict(image.blobs), index_of(*entries)))
    return read_fully(data)[0]


DAY = datetime.date(2024, 1, 2)
ENTRIES: tuple[dict[str, str], ...] = (
    {oci.ANNOTATION_IMAGE_NAME: "docker.io/library/a:1", oci.ANNOTATION_REF_NAME: "1"},
    {oci.ANNOTATION_REF_NAME: "latest"},
    {oci.ANNOTATION_REF_NAME: "other.io/b:2"},
    {oci.ANNOTATION_REF_NAME: "docker.io/library/x:3"},
    {},
)


def test_image_names_follow_ctr_import() -> None:
    contents = named_archive(*ENTRIES)
    d = contents.index.manifests[0].digest
    x = "docker.io/library/x"

    def names(**options: Any) -> list[str]:
        return [n.name for n in contents.image_names(today=DAY, **options)]

    assert names() == [
        "docker.io/library/a:1",
        "import-2024-01-02:latest",
        "other.io/b:2",
        "docker.io/library/x:3",
    ]
    assert names(base_name=x) == ["docker.io/library/a:1", f"{x}:latest", f"{x}:3"]
    assert names(base_name=x, index_name="idx") == ["idx", "docker.io/library/a:1", f"{x}:latest", f"{x}:3"]
    assert names(base_name=x, digests=True) == [
        "docker.io/library/a:1", f"{x}@{d}", f"{x}:latest", f"{x}@{d}", f"{x}@{d}", f"{x}:3", f"{x}@{d}", f"{x}@{d}",
    ]  # fmt: skip
    assert names(base_name=x, digests=True, skip_digest_for_named=True) == [
        "docker.io/library/a:1", f"{x}:latest", f"{x}@{d}", f"{x}:3", f"{x}@{d}",
    ]  # fmt: skip


def test_skipping_digests_for_named_images_needs_digests() -> None:
    with pytest.raises(InvalidArgument, match="digests"):
        named_archive({}).image_names(skip_digest_for_named=True)


def test_the_index_name_points_at_the_whole_index() -> None:
    contents = named_archive(*ENTRIES)
    first = contents.image_names(index_name="idx")[0]
    assert first == archive.ImageName("idx", contents.index_descriptor)


def test_a_base_name_is_a_prefix_only_at_a_separator() -> None:
    contents = named_archive({oci.ANNOTATION_REF_NAME: "docker.io/library/xy:1"})
    assert contents.image_names(base_name="docker.io/library/x") == []


# --- malformations -------------------------------------------------------------------------


def good_layout() -> tuple[BuiltImage, list[tuple[str, Any]]]:
    image = small_image()
    return image, layout_members(dict(image.blobs), index_of(image.descriptor))


def replace_member(members: list[tuple[str, Any]], name: str, content: Any) -> list[tuple[str, Any]]:
    return [(n, content if n == name else c) for n, c in members]


def drop_member(members: list[tuple[str, Any]], name: str) -> list[tuple[str, Any]]:
    return [(n, c) for n, c in members if n != name]


def malformed() -> Iterator[tuple[str, bytes, str]]:
    image, members = good_layout()
    good = tar_of(*members)
    layer = image.layers[0]
    config_digest = image.manifest.config.digest
    yield "truncated in a member", good[: len(good) // 2], "truncated"
    exact = image.oci_archive()  # ends with exactly the two zero blocks, no record padding
    assert exact.endswith(bytes(1024)) and not exact.endswith(bytes(1536))
    yield "truncated at a member boundary", exact[:-1024], "truncated"
    yield "truncated inside a header", good[:700], "truncated"
    yield "absolute name", tar_of(*members, ("/etc/passwd", b"x")), "absolute"
    yield "parent traversal", tar_of(*members, ("../evil", b"x")), r"'\.\.'"
    yield "traversal inside", tar_of(*members, ("blobs/../../evil", b"x")), r"'\.\.'"
    yield "symlink escaping", tar_of(*members, ("x", ("symlink", "../../etc"))), "leaves the archive"
    yield "absolute symlink", tar_of(*members, ("x", ("symlink", "/etc/passwd"))), "leaves the archive"
    yield (
        "blob not matching its name",
        tar_of(*replace_member(members, blob_name(layer.digest), layer.blob + b"!")),
        "digest",
    )
    yield "layer missing", tar_of(*drop_member(members, blob_name(layer.digest))), "does not hold"
    yield "config missing", tar_of(*drop_member(members, blob_name(config_digest))), "does not hold"
    yield "manifest missing", tar_of(*drop_member(members, blob_name(image.digest))), "does not hold"
    yield "duplicate index.json", tar_of(*members, ("index.json", b"{}")), "more than once"
    yield "duplicate blob", tar_of(*members, (blob_name(layer.digest), layer.blob)), "more than once"
    yield "duplicate through ./", tar_of(*members, ("./oci-layout", b"{}")), "more than once"
    version_2 = replace_member(members, "oci-layout", b'{"imageLayoutVersion":"2.0.0"}')
    yield "unknown layout version", tar_of(*version_2), "unsupported OCI layout version"
    yield (
        "layout without version",
        tar_of(*replace_member(members, "oci-layout", b"{}")),
        "no imageLayoutVersion",
    )
    yield "layout not JSON", tar_of(*replace_member(members, "oci-layout", b"1.0.0")), "not valid JSON"
    yield "no index.json", tar_of(*drop_member(members, "index.json")), "without index.json"
    not_index = replace_member(members, "index.json", b'{"schemaVersion":2}')
    yield "index.json not an index", tar_of(*not_index), "manifests is required"
    yield (
        "upper-case blob name",
        tar_of(*members, ("blobs/sha256/" + "A" * 64, b"")),
        "invalid checksum digest format",
    )
    yield "md5 blob", tar_of(*members, ("blobs/md5/" + "a" * 32, b"")), "unsupported digest algorithm"
    yield "short blob name", tar_of(*members, ("blobs/sha256/abc", b"")), "invalid checksum digest length"
    yield "blob outside its algorithm", tar_of(*members, ("blobs/extra", b"")), "blobs/<algorithm>/<encoded>"
    yield "neither format", tar_of(("hello", b"x")), "unrecognized image archive"
    corrupt = bytearray(good)
    corrupt[10] ^= 0x20
    yield "corrupt header", bytes(corrupt), "checksum"
    yield (
        "zero block then a header",
        exact[:-1024] + bytes(512) + exact[:512],
        "zero block followed by a header",
    )
    yield "not UTF-8", tar_of(*members, ("caf\udce9", b"")), "not UTF-8"

    wrong_size = oci.Descriptor(oci.OCI_MANIFEST, image.digest, len(image.manifest_bytes) + 1)
    sized = replace_member(members, "index.json", json.dumps(index_of(wrong_size)).encode())
    yield "descriptor size", tar_of(*sized), "says"
    binary = b"\x00\x01 not json"
    fake = oci.Descriptor(oci.OCI_MANIFEST, oci.digest_of(binary), len(binary))
    yield (
        "manifest that is not JSON",
        tar_of(*layout_members({**image.blobs, fake.digest: binary}, index_of(fake))),
        "not a JSON document",
    )
    two_layers = oci.Manifest(oci.OCI_MANIFEST, image.manifest.config, (layer.descriptor, layer.descriptor))
    mb = two_layers.encode()
    md = oci.Descriptor(oci.OCI_MANIFEST, oci.digest_of(mb), len(mb))
    yield (
        "layers and diffIDs disagree",
        tar_of(*layout_members({**image.blobs, md.digest: mb}, index_of(md))),
        "diffIDs",
    )
    nested = oci.Index(manifests=(oci.Descriptor(oci.OCI_MANIFEST, oci.digest_of(b"gone"), 4),)).encode()
    nd = oci.Descriptor(oci.OCI_INDEX, oci.digest_of(nested), len(nested))
    yield (
        "nested index pointing at a missing manifest",
        tar_of(*layout_members({**image.blobs, nd.digest: nested}, index_of(nd))),
        "does not hold",
    )

    plain = tar_of(("f", b"x"))
    yield (
        "docker config missing",
        tar_of(("manifest.json", b'[{"Config":"c.json","Layers":[]}]')),
        "not found",
    )
    yield "docker layer missing", docker_archive([], ["l.tar"]), "layer 'l.tar' not found"
    yield (
        "docker dangling symlink",
        docker_archive([("l.tar", ("symlink", "gone.tar"))], []),
        "no target for symlink",
    )
    one_diff_id = [f"sha256:{'0' * 64}"]
    yield (
        "docker diffIDs disagree",
        docker_archive([("l.tar", plain)], ["l.tar", "l.tar"], diff_ids=one_diff_id),
        "diffIDs",
    )
    yield (
        "docker bad tag",
        docker_archive([("l.tar", plain)], ["l.tar"], tags=["UPPER:1"]),
        "normalize image ref",
    )
    yield "docker manifest.json not a list", tar_of(("manifest.json", b"{}")), "must be a list"
    yield "docker manifest.json empty", tar_of(("manifest.json", b"[]")), "lists no images"
    binary_config = tar_of(("manifest.json", b'[{"Config":"c","Layers":[]}]'), ("c", b"\x00"))
    yield "docker config not JSON", binary_config, "not a JSON document"


MALFORMED = list(malformed())


@pytest.mark.parametrize(
    ("data", "message"), [(d, m) for _, d, m in MALFORMED], ids=[n for n, _, _ in MALFORMED]
)
def test_malformed_archives_are_refused_with_a_clear_message(data: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        read_fully(data)


def test_a_stream_may_end_after_one_zero_block_or_carry_padding() -> None:
    _, members = good_layout()
    good = tar_of(*members)  # tarfile pads to a 10 KiB record
    assert read_fully(good)[0].format is ArchiveFormat.OCI
    stripped = good.rstrip(b"\0")
    stripped += bytes(-len(stripped) % 512)
    assert read_fully(stripped + bytes(512))[0].format is ArchiveFormat.OCI


def test_members_under_dot_slash_and_plain_directories_are_accepted() -> None:
    _, members = good_layout()
    data = tar_of(
        ("./", None), ("./blobs/", None), ("./blobs/sha256/", None), *[("./" + n, c) for n, c in members]
    )
    contents, blobs = read_fully(data)
    assert contents.format is ArchiveFormat.OCI
    assert all(not name.startswith(".") for name in blobs)


def test_content_for_other_platforms_may_be_absent_only_when_they_are_left_out() -> None:
    index = build.build_index([small_image(b"amd64\n", AMD64), small_image(b"arm64\n", ARM64)])
    out = io.BytesIO()
    archive.write_oci_archive(
        out, [ExportImage(index.descriptor, (NAME,))], index.blobs, platforms=oci.only_strict(AMD64)
    )
    with pytest.raises(InvalidArgument, match="does not hold"):
        read_fully(out.getvalue())
    contents, _ = read_fully(out.getvalue(), platforms=oci.only(AMD64))
    assert [d.platform for d in contents.absent] == [ARM64]
    assert set(contents.manifests) == {index.images[0].digest}


# --- writing -------------------------------------------------------------------------------


def test_the_writer_is_deterministic_and_writes_what_containerd_writes() -> None:
    image = small_image()
    first, second = io.BytesIO(), io.BytesIO()
    archive.write_oci_archive(first, [ExportImage(image.descriptor, (NAME,))], dict(image.blobs))
    archive.write_oci_archive(second, [ExportImage(image.descriptor, (NAME,))], dict(image.blobs))
    assert first.getvalue() == second.getvalue()
    with tarfile.open(fileobj=io.BytesIO(first.getvalue())) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert names[:2] == ["blobs", "blobs/sha256"]
    assert names[-3:] == ["index.json", "manifest.json", "oci-layout"]
    for member in members:
        assert (member.mtime, member.uid, member.gid, member.uname, member.gname) == (0, 0, 0, "", "")
        assert member.pax_headers == {}
        expected_mode = {"index.json": 0o644, "manifest.json": 0o644}.get(member.name, 0o444)
        assert member.mode == (0o755 if member.isdir() else expected_mode)


def test_index_json_and_manifest_json_carry_the_names() -> None:
    image = small_image()
    plan = archive.plan_oci_archive(
        [ExportImage(image.descriptor, ("docker.io/library/hello:1", "ghcr.io/me/hello:2"))], image.blobs
    )
    assert [e.annotations for e in plan.index.manifests] == [
        {oci.ANNOTATION_IMAGE_NAME: "docker.io/library/hello:1", oci.ANNOTATION_REF_NAME: "1"},
        {oci.ANNOTATION_IMAGE_NAME: "ghcr.io/me/hello:2", oci.ANNOTATION_REF_NAME: "2"},
    ]
    assert plan.index_json.startswith(
        b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"'
    )
    assert plan.manifest_json is not None
    assert json.loads(plan.manifest_json) == [
        {
            "Config": blob_name(image.manifest.config.digest),
            "RepoTags": ["hello:1", "ghcr.io/me/hello:2"],
            "Layers": [blob_name(image.layers[0].digest)],
        }
    ]
    bare = archive.plan_oci_archive(
        [ExportImage(image.descriptor, (NAME,))], image.blobs, skip_manifest_json=True
    )
    assert "manifest.json" not in [m.name for m in bare.members] and bare.manifest_json is None


def test_an_exported_index_keeps_its_platforms_and_describes_the_best_to_docker() -> None:
    amd, arm = small_image(b"amd64\n", AMD64), small_image(b"arm64\n", ARM64)
    index = build.build_index([arm, amd])
    target = [ExportImage(index.descriptor, (NAME,))]
    everything = archive.plan_oci_archive(target, index.blobs)
    assert {b.digest for b in everything.blobs} == set(index.blobs)
    assert everything.manifest_json is None  # without a platform, an index has no docker view
    strict = archive.plan_oci_archive(target, index.blobs, platforms=oci.only_strict(AMD64))
    assert arm.layers[0].digest not in {b.digest for b in strict.blobs}
    assert strict.manifest_json is not None
    assert json.loads(strict.manifest_json)[0]["Layers"] == [blob_name(amd.layers[0].digest)]
    wide = archive.plan_oci_archive(target, index.blobs, platforms=oci.only(ARM64), all_platforms=True)
    assert {b.digest for b in wide.blobs} == set(index.blobs)
    assert wide.manifest_json is not None
    assert json.loads(wide.manifest_json)[0]["Layers"] == [blob_name(arm.layers[0].digest)]
    with pytest.raises(NotFound, match="platform"):
        archive.plan_oci_archive(target, index.blobs, platforms=oci.only(Platform("linux", "s390x")))


def test_documents_are_fetched_level_by_level() -> None:
    index = build.build_index([small_image()])
    target = [ExportImage(index.descriptor)]
    documents: dict[str, bytes] = {}
    rounds = 0
    while needed := archive.missing_documents(target, documents):
        documents.update({d.digest: index.blobs[d.digest] for d in needed})
        rounds += 1
    assert rounds == 2
    with pytest.raises(NotFound):
        archive.plan_oci_archive(target, {index.digest: index.index_bytes})


def test_a_blob_that_reads_back_wrong_is_never_written_silently() -> None:
    image = small_image()
    blobs = dict(image.blobs)
    blobs[image.layers[0].digest] = image.layers[0].blob[:-1] + b"?"
    with pytest.raises(DataLoss):
        archive.write_oci_archive(io.BytesIO(), [ExportImage(image.descriptor)], blobs)
    with pytest.raises(InvalidArgument, match="only manifests"):
        archive.plan_oci_archive([ExportImage(image.layers[0].descriptor)], blobs)


@pytest.mark.anyio
async def test_an_async_provider_streams_the_same_bytes() -> None:
    image = small_image()
    plan = archive.plan_oci_archive([ExportImage(image.descriptor, (NAME,))], image.blobs)

    async def open_blob(desc: oci.Descriptor) -> AsyncIterator[bytes]:
        async def chunks() -> AsyncIterator[bytes]:
            yield image.blobs[desc.digest]

        return chunks()

    data = b"".join([chunk async for chunk in plan.achunks(open_blob)])
    assert data == image.oci_archive([NAME])


# --- outside checks ------------------------------------------------------------------------


def test_tar_lists_the_archive_as_written(tmp_path: Path) -> None:
    tar = require_tool("tar")
    image = small_image()
    path = image.write_oci_archive(tmp_path / "a.tar", [NAME])
    listing = subprocess.run([tar, "-tvf", str(path)], capture_output=True, text=True, check=True).stdout
    lines = [line.split() for line in listing.splitlines()]
    assert [line[-1] for line in lines] == [
        "blobs/",
        "blobs/sha256/",
        *sorted(blob_name(d) for d in image.blobs),
        "index.json",
        "manifest.json",
        "oci-layout",
    ]
    assert {line[1] for line in lines} == {"0/0"}
    assert {line[3] for line in lines} == {"1970-01-01"}


def skopeo(*args: str) -> str:
    binary = require_tool("skopeo")
    result = subprocess.run([binary, "--insecure-policy", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_skopeo_reads_the_oci_archive(tmp_path: Path) -> None:
    image = small_image()
    path = image.write_oci_archive(tmp_path / "oci.tar", [NAME])
    info = json.loads(skopeo("inspect", f"oci-archive:{path}"))
    assert info["Digest"] == image.digest
    assert info["Layers"] == [image.layers[0].digest]
    assert (info["Architecture"], info["Os"]) == ("amd64", "linux")
    raw = json.loads(skopeo("inspect", "--raw", f"oci-archive:{path}"))
    assert oci.go_json(raw) == image.manifest_bytes


def test_skopeo_reads_the_docker_archive(tmp_path: Path) -> None:
    image = small_image()
    path = image.write_docker_archive(tmp_path / "docker.tar", ["hello:1"])
    info = json.loads(skopeo("inspect", f"docker-archive:{path}"))
    assert info["Layers"] == [image.layers[0].diff_id]
    config = json.loads(skopeo("inspect", "--config", f"docker-archive:{path}"))
    assert config["rootfs"]["diff_ids"] == list(image.diff_ids)


def test_what_skopeo_copies_out_of_our_archive_reads_back(tmp_path: Path) -> None:
    tar = require_tool("tar")
    image = small_image()
    path = image.write_oci_archive(tmp_path / "oci.tar", [NAME])
    skopeo("copy", f"oci-archive:{path}", f"oci:{tmp_path / 'dir'}:hello")
    packed = tmp_path / "dir.tar"
    subprocess.run([tar, "-C", str(tmp_path / "dir"), "-cf", str(packed), "."], check=True)
    contents, blobs = read_fully(packed.read_bytes())
    assert contents.format is ArchiveFormat.OCI
    (entry,) = contents.index.manifests
    assert entry.annotations[oci.ANNOTATION_REF_NAME] == "hello"
    manifest = contents.manifests[entry.digest]
    assert [layer.digest for layer in manifest.layers] == [image.layers[0].digest]
    assert blobs[blob_name(image.layers[0].digest)] == image.layers[0].blob
