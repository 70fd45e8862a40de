"""Writing image archives as containerd's exporter does: an OCI layout in a tar, with docker's
``manifest.json`` beside it unless asked not to.

Planning is pure: from the images and the JSON documents they reach, ``plan_oci_archive``
decides every member (sorted by name, one per name). Streaming the plan reads each blob from
a provider and checks its digest as it is copied. The same inputs always give the same bytes:
ustar headers, mode 0444 for blobs, owner 0, mtime 0, no PAX records unless a value needs one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

from corral.kernel import DataLoss, InvalidArgument, NotFound
from corral.plugins.core.tar import DIRECTORY, END_OF_ARCHIVE, REGULAR, encode_header, padding
from corral.plugins.images import _mediatypes as mt
from corral.plugins.images._digest import parse_digest
from corral.plugins.images._documents import (
    ANNOTATION_IMAGE_NAME,
    ANNOTATION_REF_NAME,
    Descriptor,
    Index,
    parse_index,
    parse_manifest,
)
from corral.plugins.images._json import go_json
from corral.plugins.images._platforms import PlatformMatcher, by_preference
from corral.plugins.images._reader import AsyncReadable, Readable
from corral.plugins.images._reference import familiar_reference, oci_ref_name
from corral.plugins.images._resolve import OCI_LAYOUT_VERSION

COPY_SIZE = 1 << 20


@dataclass(frozen=True)
class ExportImage:
    """An image to export: a manifest or index, and the names to give it (one index entry each)."""

    target: Descriptor
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class PlannedMember:
    """One member of the archive: inline ``data``, a ``blob`` to stream, or a directory."""

    name: str
    mode: int
    size: int = 0
    data: bytes | None = None
    blob: Descriptor | None = None
    directory: bool = False

    def header(self) -> bytes:
        if self.directory:
            return encode_header(self.name, DIRECTORY, mode=self.mode)
        return encode_header(self.name, REGULAR, size=self.size, mode=self.mode)


@dataclass(frozen=True)
class ArchivePlan:
    """Every member of an archive, in order; stream it with ``chunks`` or ``achunks``."""

    members: tuple[PlannedMember, ...]
    index: Index
    """The ``index.json`` written."""
    index_json: bytes
    manifest_json: bytes | None = None
    blobs: tuple[Descriptor, ...] = field(default=())

    def chunks(self, open_blob: Callable[[Descriptor], Readable | Iterable[bytes]]) -> Iterator[bytes]:
        """The archive's bytes; every blob's digest and size are checked while it is copied."""
        for member in self.members:
            yield member.header()
            if member.data is not None:
                yield member.data + padding(member.size)
            elif member.blob is not None:
                check = _Check(member.blob)
                source = open_blob(member.blob)
                try:
                    for chunk in _read_chunks(source):
                        check.update(chunk)
                        yield chunk
                finally:
                    close = getattr(source, "close", None)
                    if callable(close):
                        close()
                check.finish()
                yield padding(member.size)
        yield END_OF_ARCHIVE

    async def achunks(
        self, open_blob: Callable[[Descriptor], Awaitable[AsyncReadable | AsyncIterable[bytes]]]
    ) -> AsyncIterator[bytes]:
        """The archive's bytes, reading blobs from an async provider."""
        for member in self.members:
            yield member.header()
            if member.data is not None:
                yield member.data + padding(member.size)
            elif member.blob is not None:
                check = _Check(member.blob)
                source = await open_blob(member.blob)
                try:
                    async for chunk in _aread_chunks(source):
                        check.update(chunk)
                        yield chunk
                finally:
                    aclose = getattr(source, "aclose", None) or getattr(source, "close", None)
                    if callable(aclose):
                        result = aclose()
                        if isinstance(result, Awaitable):
                            await result
                check.finish()
                yield padding(member.size)
        yield END_OF_ARCHIVE


class _Check:
    def __init__(self, desc: Descriptor) -> None:
        self.desc = desc
        self.hasher = hashlib.new(parse_digest(desc.digest).algorithm)
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.desc.size:
            raise DataLoss(f"blob {self.desc.digest} is longer than its {self.desc.size} bytes")
        self.hasher.update(chunk)

    def finish(self) -> None:
        if self.size != self.desc.size:
            raise DataLoss(f"blob {self.desc.digest} has {self.size} bytes, not {self.desc.size}")
        actual = f"{self.hasher.name}:{self.hasher.hexdigest()}"
        if actual != self.desc.digest:
            raise DataLoss(f"blob {self.desc.digest} read back as {actual}")


def _read_chunks(source: Readable | Iterable[bytes]) -> Iterator[bytes]:
    if isinstance(source, Readable) and not isinstance(source, (bytes, bytearray)):
        while chunk := source.read(COPY_SIZE):
            yield bytes(chunk)
    elif isinstance(source, (bytes, bytearray)):
        yield bytes(source)
    else:
        for chunk in source:
            yield bytes(chunk)


async def _aread_chunks(source: AsyncReadable | AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    if isinstance(source, AsyncReadable):
        while chunk := await source.read(COPY_SIZE):
            yield bytes(chunk)
    else:
        async for chunk in source:
            yield bytes(chunk)


# --- planning ------------------------------------------------------------------------------


def _named_entries(images: Sequence[ExportImage]) -> list[Descriptor]:
    """One index entry per name, annotated as containerd's exporter does; unnamed ones as given."""
    entries: list[Descriptor] = []
    for image in images:
        target = image.target
        if not (mt.is_manifest(target.media_type) or mt.is_index(target.media_type)):
            raise InvalidArgument(f"only manifests and indexes may be exported, not {target.media_type!r}")
        if not image.names:
            entries.append(target)
        for name in image.names:
            annotations = {
                **target.annotations,
                ANNOTATION_IMAGE_NAME: name,
                ANNOTATION_REF_NAME: oci_ref_name(name),
            }
            entries.append(replace(target, annotations=annotations))
    return entries


class _Walk:
    """The blobs each image brings, as containerd's exporter walks them."""

    def __init__(
        self, documents: Mapping[str, bytes], platforms: PlatformMatcher | None, all_platforms: bool
    ):
        self.documents = documents
        self.platforms = platforms
        self.all_platforms = all_platforms
        self.blobs: dict[str, Descriptor] = {}
        self.needed: dict[str, Descriptor] = {}

    def document(self, desc: Descriptor) -> bytes | None:
        data = self.documents.get(desc.digest)
        if data is None:
            self.needed.setdefault(desc.digest, desc)
        return data

    def tree(self, desc: Descriptor) -> None:
        """The descriptor and everything below it, every platform of nested indexes included."""
        parse_digest(desc.digest)
        self.blobs.setdefault(desc.digest, desc)
        if mt.is_manifest(desc.media_type):
            data = self.document(desc)
            if data is None:
                return
            manifest = parse_manifest(data, desc.media_type, f"manifest {desc.digest}")
            for child in (manifest.config, *manifest.layers):
                parse_digest(child.digest)
                self.blobs.setdefault(child.digest, child)
        elif mt.is_index(desc.media_type):
            data = self.document(desc)
            if data is None:
                return
            for child in parse_index(data, desc.media_type, f"index {desc.digest}").manifests:
                self.tree(child)

    def top_index(self, desc: Descriptor) -> list[Descriptor] | None:
        """An exported index: its platform's manifests (all with ``all_platforms``); the matched ones."""
        parse_digest(desc.digest)
        self.blobs.setdefault(desc.digest, desc)
        data = self.document(desc)
        if data is None:
            return None
        matched: list[Descriptor] = []
        for child in parse_index(data, desc.media_type, f"index {desc.digest}").manifests:
            if self.platforms is not None:
                if child.platform is None or self.platforms.match(child.platform):
                    matched.append(child)
                elif not self.all_platforms:
                    continue
            self.tree(child)
        return matched


def missing_documents(
    images: Sequence[ExportImage],
    documents: Mapping[str, bytes],
    *,
    platforms: PlatformMatcher | None = None,
    all_platforms: bool = False,
) -> list[Descriptor]:
    """The manifests and indexes ``plan_oci_archive`` still needs the bytes of; fetch them and ask
    again until the answer is empty (each round reaches one level further down)."""
    walk = _Walk(documents, platforms, all_platforms)
    for entry in _named_entries(images):
        if mt.is_index(entry.media_type):
            walk.top_index(entry)
        else:
            walk.tree(entry)
    return list(walk.needed.values())


def plan_oci_archive(
    images: Sequence[ExportImage],
    documents: Mapping[str, bytes],
    *,
    platforms: PlatformMatcher | None = None,
    all_platforms: bool = False,
    skip_manifest_json: bool = False,
    skip_nondistributable: bool = False,
) -> ArchivePlan:
    """The archive containerd's exporter writes for ``images``.

    ``documents`` holds the bytes of every manifest and index the images reach (NotFound names
    one that is missing; see ``missing_documents``). ``platforms`` picks an index's manifests
    (others are left out unless ``all_platforms``) and the one ``manifest.json`` describes;
    with None every manifest is exported and an index gets no ``manifest.json`` entry.
    """
    walk = _Walk(documents, platforms, all_platforms)
    entries = _named_entries(images)
    docker: dict[str, tuple[Descriptor, list[str]]] = {}
    resolved: dict[str, str] = {}
    for entry in entries:
        name = entry.annotations.get(ANNOTATION_IMAGE_NAME, "")
        if mt.is_manifest(entry.media_type):
            if entry.digest not in docker:
                walk.tree(entry)
                docker[entry.digest] = (entry, [])
            if name:
                docker[entry.digest][1].append(name)
            continue
        if entry.digest not in resolved:
            matched = walk.top_index(entry) or []
            chosen = ""
            if matched and platforms is not None:
                best = by_preference(matched, platforms, lambda d: d.platform)[0]
                chosen = best.digest
                docker[chosen] = (best, [])
            elif platforms is not None and walk.documents.get(entry.digest) is not None:
                raise NotFound(f"index {entry.digest} has no manifest for the requested platform")
            resolved[entry.digest] = chosen
        if resolved[entry.digest] and name:
            docker[resolved[entry.digest]][1].append(name)
    if walk.needed:
        missing = ", ".join(walk.needed)
        raise NotFound(f"the documents of {missing} are needed to export these images")

    blobs = [
        desc
        for desc in walk.blobs.values()
        if not (skip_nondistributable and mt.is_nondistributable(desc.media_type))
    ]
    index = Index(manifests=tuple(entries), media_type=mt.OCI_INDEX)
    index_json = index.encode()
    members: dict[str, PlannedMember] = {}

    def add(member: PlannedMember) -> None:
        members.setdefault(member.name, member)

    layout = go_json({"imageLayoutVersion": OCI_LAYOUT_VERSION})
    add(PlannedMember("oci-layout", 0o444, len(layout), data=layout))
    add(PlannedMember("index.json", 0o644, len(index_json), data=index_json))
    manifest_json = None
    if not skip_manifest_json and docker:
        manifest_json = _manifest_json(docker, documents)
        add(PlannedMember("manifest.json", 0o644, len(manifest_json), data=manifest_json))
    for desc in blobs:
        digest = parse_digest(desc.digest)
        add(PlannedMember(f"blobs/{digest.algorithm}/{digest.encoded}", 0o444, desc.size, blob=desc))
    for algorithm in sorted({parse_digest(desc.digest).algorithm for desc in blobs}):
        add(PlannedMember(f"blobs/{algorithm}/", 0o755, directory=True))
    if blobs:
        add(PlannedMember("blobs/", 0o755, directory=True))
    ordered = tuple(sorted(members.values(), key=lambda m: m.name))
    return ArchivePlan(
        members=ordered,
        index=index,
        index_json=index_json,
        manifest_json=manifest_json,
        blobs=tuple(blobs),
    )


def _blob_path(digest: str) -> str:
    parsed = parse_digest(digest)
    return f"blobs/{parsed.algorithm}/{parsed.encoded}"


def _manifest_json(
    docker: Mapping[str, tuple[Descriptor, list[str]]], documents: Mapping[str, bytes]
) -> bytes:
    """docker's ``manifest.json``: per manifest its config and layer paths and familiar names."""
    entries = []
    for desc, names in docker.values():
        manifest = parse_manifest(documents[desc.digest], desc.media_type, f"manifest {desc.digest}")
        entries.append(
            {
                "Config": _blob_path(manifest.config.digest),
                "RepoTags": [familiar_reference(name) for name in names] or None,
                "Layers": [_blob_path(layer.digest) for layer in manifest.layers] or None,
            }
        )
    return go_json(entries)


# --- convenience ---------------------------------------------------------------------------


def write_oci_archive(
    out: IO[bytes] | str | os.PathLike[str],
    images: Sequence[ExportImage],
    blobs: Mapping[str, bytes] | Callable[[Descriptor], Readable | Iterable[bytes]],
    *,
    platforms: PlatformMatcher | None = None,
    all_platforms: bool = False,
    skip_manifest_json: bool = False,
    skip_nondistributable: bool = False,
) -> ArchivePlan:
    """Write the archive of ``images`` to ``out`` (a path or a binary file), streaming each blob.

    ``blobs`` is a mapping of digest to bytes, or a function that opens a blob for reading.
    Returns the plan that was written (its ``index_json``, ``manifest_json`` and members).
    """
    open_blob = _opener(blobs)
    documents: dict[str, bytes] = {}
    while needed := missing_documents(images, documents, platforms=platforms, all_platforms=all_platforms):
        for desc in needed:
            documents[desc.digest] = b"".join(_read_chunks(open_blob(desc)))
    plan = plan_oci_archive(
        images,
        documents,
        platforms=platforms,
        all_platforms=all_platforms,
        skip_manifest_json=skip_manifest_json,
        skip_nondistributable=skip_nondistributable,
    )
    if isinstance(out, (str, os.PathLike)):
        with Path(out).open("wb") as file:
            for chunk in plan.chunks(open_blob):
                file.write(chunk)
    else:
        for chunk in plan.chunks(open_blob):
            out.write(chunk)
    return plan


def _opener(
    blobs: Mapping[str, bytes] | Callable[[Descriptor], Readable | Iterable[bytes]],
) -> Callable[[Descriptor], Readable | Iterable[bytes]]:
    if callable(blobs):
        return blobs
    store = blobs

    def open_blob(desc: Descriptor) -> Iterable[bytes]:
        data = store.get(desc.digest)
        if data is None:
            raise NotFound(f"blob {desc.digest} ({desc.media_type}) is not available")
        return [data]

    return open_blob
