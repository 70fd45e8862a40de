"""What an archive holds, once its members have been read: an OCI image layout, or a ``docker
save`` archive seen through the OCI index and Docker schema 2 manifests that containerd's
importer synthesises for it, and the image names an import gives.
"""

from __future__ import annotations

import datetime
import enum
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from corral.kernel import CorralError, InvalidArgument
from corral.plugins.images import _mediatypes as mt
from corral.plugins.images._digest import digest_of
from corral.plugins.images._documents import (
    ANNOTATION_IMAGE_NAME,
    ANNOTATION_MANIFEST_SUBJECT,
    ANNOTATION_REF_NAME,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    parse_image_config,
    parse_index,
    parse_manifest,
)
from corral.plugins.images._json import go_json, load_json, load_object
from corral.plugins.images._platforms import PlatformMatcher
from corral.plugins.images._reference import normalize_reference, oci_ref_name

OCI_LAYOUT_VERSION = "1.0.0"
_MAX_DEPTH = 16


@dataclass(frozen=True)
class Member:
    """A regular member that was read: its digest, size, first bytes, and its bytes if JSON."""

    name: str
    digest: str
    size: int
    head: bytes = b""
    data: bytes | None = None


class ArchiveFormat(enum.Enum):
    OCI = "oci"
    """An OCI image layout (``oci-layout``, ``index.json``, ``blobs/``); docker 25+ saves these too."""
    DOCKER = "docker"
    """A ``docker save`` archive (``manifest.json``, ``<id>.json``, ``<id>/layer.tar``)."""


@dataclass(frozen=True)
class ImageName:
    """An image an import creates: its name and the descriptor it points at."""

    name: str
    target: Descriptor


@dataclass(frozen=True)
class ArchiveContents:
    """Everything an archive holds, resolved and checked."""

    format: ArchiveFormat
    index: Index
    """``index.json``, or for a docker archive the index containerd builds for it."""
    index_descriptor: Descriptor
    blobs: Mapping[str, Descriptor]
    """Every member handed out, by name: its digest and size."""
    documents: Mapping[str, bytes] = field(default_factory=dict)
    """Every index, manifest and config reached from the index (and the index), by digest."""
    synthesized: Mapping[str, bytes] = field(default_factory=dict)
    """Documents that are not in the archive but are part of its images (a docker archive's
    manifests and index): the importer stores them next to the archive's blobs."""
    manifests: Mapping[str, Manifest] = field(default_factory=dict)
    indexes: Mapping[str, Index] = field(default_factory=dict)
    configs: Mapping[str, ImageConfig] = field(default_factory=dict)
    absent: tuple[Descriptor, ...] = ()
    """Index entries for platforms the reader was told to leave out, which the archive lacks."""

    def image_names(
        self,
        *,
        base_name: str = "",
        index_name: str = "",
        digests: bool = False,
        skip_digest_for_named: bool = False,
        today: datetime.date | None = None,
    ) -> list[ImageName]:
        """The images ``ctr images import`` creates from this archive, in its order; a later
        entry with the same name replaces an earlier one, as the image store's update does.

        An entry's ``io.containerd.image.name`` annotation is its name as it is. Otherwise its
        ``org.opencontainers.image.ref.name``: a bare tag is appended to ``base_name``
        (``import-YYYY-MM-DD`` when none is given); a full reference is kept, but only when it
        starts with ``base_name`` if one is given. ``digests`` adds ``<base>@<digest>`` for each
        entry (not for referrers, nor for named entries with ``skip_digest_for_named``);
        ``index_name`` names the whole index.
        """
        if skip_digest_for_named and not digests:
            raise InvalidArgument("skip_digest_for_named must be used together with digests")
        prefix = base_name or f"import-{(today or datetime.date.today()).isoformat()}"
        translate = _ref_translator(prefix, check_prefix=bool(base_name))
        names: list[ImageName] = []
        if index_name:
            names.append(ImageName(index_name, self.index_descriptor))
        for entry in self.index.manifests:
            name = entry.annotations.get(ANNOTATION_IMAGE_NAME, "")
            if not name and (ref := entry.annotations.get(ANNOTATION_REF_NAME, "")):
                name = translate(ref)
            if name:
                names.append(ImageName(name, entry))
            if ANNOTATION_MANIFEST_SUBJECT in entry.annotations:
                continue
            if skip_digest_for_named and name:
                continue
            if digests:
                names.append(ImageName(f"{prefix}@{entry.digest}", entry))
        return names


def _ref_translator(image: str, *, check_prefix: bool) -> Callable[[str], str]:
    def translate(ref: str) -> str:
        if any(c in ref for c in "/:@"):
            if check_prefix and not _has_image_prefix(ref, image):
                return ""
            return ref
        return f"{image}:{ref}"

    return translate


def _has_image_prefix(ref: str, prefix: str) -> bool:
    return ref.startswith(prefix) and (len(ref) == len(prefix) or ref[len(prefix)] in "/:@")


# --- resolution ----------------------------------------------------------------------------


def resolve_contents(
    members: Mapping[str, Member],
    internal: Mapping[str, bytes],
    symlinks: Mapping[str, str],
    platforms: PlatformMatcher | None,
    compressed_layers: Mapping[str, Descriptor] | None,
) -> ArchiveContents:
    """OCI layout when ``oci-layout`` is present (as containerd prefers it), else ``docker save``."""
    docker = _docker_entries(internal["manifest.json"]) if "manifest.json" in internal else None
    layout = internal.get("oci-layout")
    if layout is not None:
        version = load_object(layout, "oci-layout").get("imageLayoutVersion")
        if not isinstance(version, str) or not version:
            raise InvalidArgument("oci-layout has no imageLayoutVersion")
        if version != OCI_LAYOUT_VERSION:
            raise InvalidArgument(f"unsupported OCI layout version {version!r} (only {OCI_LAYOUT_VERSION})")
        return _OciResolver(members, platforms).resolve()
    if docker is None:
        raise InvalidArgument(
            "unrecognized image archive: neither an OCI layout (oci-layout, index.json) "
            "nor a docker save archive (manifest.json)"
        )
    return _resolve_docker(members, symlinks, docker, compressed_layers or {})


def _blobs_by_name(members: Mapping[str, Member]) -> dict[str, Descriptor]:
    return {name: Descriptor("", m.digest, m.size) for name, m in members.items()}


class _OciResolver:
    def __init__(self, members: Mapping[str, Member], platforms: PlatformMatcher | None) -> None:
        self.members = members
        self.by_digest = {m.digest: m for m in members.values() if m.name.startswith("blobs/")}
        self.platforms = platforms
        self.documents: dict[str, bytes] = {}
        self.manifests: dict[str, Manifest] = {}
        self.indexes: dict[str, Index] = {}
        self.configs: dict[str, ImageConfig] = {}
        self.absent: list[Descriptor] = []
        self.visited: set[str] = set()

    def resolve(self) -> ArchiveContents:
        member = self.members.get("index.json")
        if member is None:
            raise InvalidArgument(f"OCI layout {OCI_LAYOUT_VERSION} without index.json")
        data = member.data or b""
        index = parse_index(data, "", "index.json")
        self._entries(index, "index.json", 0)
        descriptor = Descriptor(mt.OCI_INDEX, member.digest, member.size)
        self.documents[member.digest] = data
        return ArchiveContents(
            format=ArchiveFormat.OCI,
            index=index,
            index_descriptor=descriptor,
            blobs=_blobs_by_name(self.members),
            documents=self.documents,
            manifests=self.manifests,
            indexes=self.indexes,
            configs=self.configs,
            absent=tuple(self.absent),
        )

    def _entries(self, index: Index, what: str, depth: int) -> None:
        for i, entry in enumerate(index.manifests):
            where = f"{what} manifests[{i}]"
            filtered = (
                self.platforms is not None
                and entry.platform is not None
                and not self.platforms.match(entry.platform)
            )
            if filtered and entry.digest not in self.by_digest:
                self.absent.append(entry)
                continue
            self._visit(entry, where, depth + 1)

    def _member(self, desc: Descriptor, what: str) -> Member:
        member = self.by_digest.get(desc.digest)
        if member is None:
            raise InvalidArgument(f"{what} names blob {desc.digest}, which the archive does not hold")
        if member.size != desc.size:
            raise InvalidArgument(
                f"{what}: descriptor of {desc.digest} says {desc.size} bytes, the blob has {member.size}"
            )
        return member

    def _document(self, desc: Descriptor, what: str) -> bytes:
        member = self._member(desc, what)
        if member.data is None:
            raise InvalidArgument(f"{what}: blob {desc.digest} ({desc.media_type}) is not a JSON document")
        self.documents[desc.digest] = member.data
        return member.data

    def _visit(self, desc: Descriptor, what: str, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise InvalidArgument(f"{what}: indexes nest more than {_MAX_DEPTH} deep")
        if desc.digest in self.visited:
            return
        self.visited.add(desc.digest)
        if mt.is_index(desc.media_type):
            index = parse_index(self._document(desc, what), desc.media_type, f"index {desc.digest}")
            self.indexes[desc.digest] = index
            self._entries(index, f"index {desc.digest}", depth)
        elif mt.is_manifest(desc.media_type):
            self._manifest(desc, what)
        else:
            self._member(desc, what)

    def _manifest(self, desc: Descriptor, what: str) -> None:
        manifest = parse_manifest(self._document(desc, what), desc.media_type, f"manifest {desc.digest}")
        self.manifests[desc.digest] = manifest
        where = f"manifest {desc.digest}"
        if mt.is_config(manifest.config.media_type):
            data = self._document(manifest.config, f"{where} config")
            config = parse_image_config(data, f"config {manifest.config.digest}")
            self.configs[manifest.config.digest] = config
            if len(config.diff_ids) != len(manifest.layers):
                raise InvalidArgument(
                    f"{where}: {len(manifest.layers)} layers, but its config lists {len(config.diff_ids)} diffIDs"
                )
        else:
            self._member(manifest.config, f"{where} config")
        for i, layer in enumerate(manifest.layers):
            if mt.is_nondistributable(layer.media_type) and layer.digest not in self.by_digest:
                continue
            self._member(layer, f"{where} layers[{i}]")


# --- docker save ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _DockerEntry:
    config: str
    repo_tags: tuple[str, ...]
    layers: tuple[str, ...]


def _docker_entries(data: bytes) -> list[_DockerEntry]:
    value: Any = load_json(data, "manifest.json")
    if not isinstance(value, list):
        raise InvalidArgument("manifest.json must be a list of images")
    entries = []
    for i, item in enumerate(value):
        what = f"manifest.json[{i}]"
        if not isinstance(item, dict):
            raise InvalidArgument(f"{what} must be an object")
        config, tags, layers = item.get("Config"), item.get("RepoTags") or [], item.get("Layers")
        if not isinstance(config, str) or not config:
            raise InvalidArgument(f"{what}: Config is required")
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise InvalidArgument(f"{what}: RepoTags must be a list of strings")
        if not isinstance(layers, list) or not all(isinstance(layer, str) for layer in layers):
            raise InvalidArgument(f"{what}: Layers must be a list of strings")
        entries.append(_DockerEntry(config, tuple(tags), tuple(layers)))
    return entries


_GZIP_MAGIC = b"\x1f\x8b\x08"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _docker_layer_type(head: bytes) -> str:
    """containerd names any compressed docker layer ``.tar.gzip``, whatever compressed it."""
    if head.startswith(_GZIP_MAGIC) or head.startswith(_ZSTD_MAGIC):
        return mt.DOCKER_LAYER_GZIP
    if len(head) >= 4 and struct.unpack("<I", head[:4])[0] & 0xFFFFFFF0 == 0x184D2A50:
        return mt.DOCKER_LAYER_GZIP
    return mt.DOCKER_LAYER


def _resolve_docker(
    members: Mapping[str, Member],
    symlinks: Mapping[str, str],
    entries: list[_DockerEntry],
    compressed_layers: Mapping[str, Descriptor],
) -> ArchiveContents:
    if not entries:
        raise InvalidArgument("manifest.json lists no images")
    by_name = dict(members)
    for name, target in symlinks.items():
        if target not in members:
            raise InvalidArgument(f"no target for symlink layer from {name!r} to {target!r}")
        by_name[name] = members[target]
    documents: dict[str, bytes] = {}
    synthesized: dict[str, bytes] = {}
    manifests: dict[str, Manifest] = {}
    configs: dict[str, ImageConfig] = {}
    index_entries: list[Descriptor] = []
    for i, entry in enumerate(entries):
        what = f"manifest.json[{i}]"
        config_member = by_name.get(entry.config)
        if config_member is None:
            raise InvalidArgument(f"{what}: image config {entry.config!r} not found")
        if config_member.data is None:
            raise InvalidArgument(f"{what}: image config {entry.config!r} is not a JSON document")
        config = parse_image_config(config_member.data, f"image config {entry.config!r}")
        config_desc = Descriptor(mt.DOCKER_CONFIG, config_member.digest, config_member.size)
        layers = []
        for name in entry.layers:
            member = by_name.get(name)
            if member is None:
                raise InvalidArgument(f"{what}: layer {name!r} not found")
            known = compressed_layers.get(member.digest)
            if known is not None:
                layers.append(Descriptor(known.media_type or mt.DOCKER_LAYER_GZIP, known.digest, known.size))
            else:
                media_type = _docker_layer_type(member.head) if member.size else mt.DOCKER_LAYER
                layers.append(Descriptor(media_type, member.digest, member.size))
        if len(layers) != len(config.diff_ids):
            raise InvalidArgument(
                f"{what}: {len(layers)} layers, but its config lists {len(config.diff_ids)} diffIDs"
            )
        manifest = Manifest(mt.DOCKER_MANIFEST, config_desc, tuple(layers))
        data = go_json(
            {
                "schemaVersion": 2,
                "mediaType": mt.DOCKER_MANIFEST,
                "config": config_desc.to_json(),
                "layers": [layer.to_json() for layer in layers],
            }
        )
        digest = digest_of(data)
        synthesized[digest] = documents[digest] = data
        documents[config_member.digest] = config_member.data
        manifests[digest] = manifest
        configs[config_member.digest] = config
        desc = Descriptor(mt.DOCKER_MANIFEST, digest, len(data), platform=config.platform)
        if not entry.repo_tags:
            index_entries.append(desc)
        for tag in entry.repo_tags:
            try:
                normalized = normalize_reference(tag)
            except CorralError as err:
                raise InvalidArgument(f"normalize image ref {tag!r}: {err}") from err
            annotations = {ANNOTATION_IMAGE_NAME: normalized, ANNOTATION_REF_NAME: oci_ref_name(normalized)}
            index_entries.append(replace(desc, annotations=annotations))
    # containerd's synthesised index has no mediaType field; it is an OCI index all the same.
    index_data = Index(manifests=tuple(index_entries), media_type="").encode()
    index = Index(manifests=tuple(index_entries))
    index_digest = digest_of(index_data)
    synthesized[index_digest] = documents[index_digest] = index_data
    return ArchiveContents(
        format=ArchiveFormat.DOCKER,
        index=index,
        index_descriptor=Descriptor(mt.OCI_INDEX, index_digest, len(index_data)),
        blobs=_blobs_by_name(members),
        documents=documents,
        synthesized=synthesized,
        manifests=manifests,
        configs=configs,
    )
