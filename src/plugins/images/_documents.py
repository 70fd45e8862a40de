"""Descriptors, manifests, indexes and image configs: strict parsing from JSON, and encoding.

Parsing checks what containerd and the image spec require (schema version 2, a media type that
agrees with the descriptor, valid digests and sizes, the fields a document of its kind must
have) and raises InvalidArgument naming the document and field. Encoding writes Go's field order,
so a document built here has the digest containerd would give the same document.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from corral.kernel import InvalidArgument
from corral.plugins.images import _mediatypes as mt
from corral.plugins.images._digest import validate_digest
from corral.plugins.images._json import go_json, load_object, sorted_map
from corral.plugins.images._platforms import Platform

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
"""containerd's own annotation on an index entry: the image's full name."""
ANNOTATION_MANIFEST_SUBJECT = "io.containerd.manifest.subject"
"""Set by containerd's exporter on referrers it adds to ``index.json``."""


class _Fields:
    """Typed access to a JSON object's members, with errors that say where."""

    def __init__(self, obj: Mapping[str, Any], what: str) -> None:
        self.obj = obj
        self.what = what

    def _fail(self, key: str, message: str) -> InvalidArgument:
        return InvalidArgument(f"{self.what}: {key} {message}")

    def string(self, key: str, *, required: bool = False) -> str:
        value = self.obj.get(key)
        if value is None:
            if required:
                raise self._fail(key, "is required")
            return ""
        if not isinstance(value, str):
            raise self._fail(key, f"must be a string, not {type(value).__name__}")
        if required and not value:
            raise self._fail(key, "must not be empty")
        return value

    def integer(self, key: str, *, required: bool = False) -> int:
        value = self.obj.get(key)
        if value is None:
            if required:
                raise self._fail(key, "is required")
            return 0
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(key, f"must be an integer, not {type(value).__name__}")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.obj.get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._fail(key, "must be a list of strings")
        return tuple(value)

    def string_map(self, key: str) -> dict[str, str]:
        value = self.obj.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise self._fail(key, "must be an object of strings")
        return dict(value)

    def key_set(self, key: str) -> tuple[str, ...]:
        """Docker's ``{"80/tcp": {}}`` sets (ExposedPorts, Volumes), as their sorted keys."""
        value = self.obj.get(key)
        if value is None:
            return ()
        if not isinstance(value, dict):
            raise self._fail(key, "must be an object")
        return tuple(sorted(value))

    def objects(self, key: str, *, required: bool = False) -> list[Mapping[str, Any]]:
        value = self.obj.get(key)
        if value is None:
            if required:
                raise self._fail(key, "is required")
            return []
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self._fail(key, "must be a list of objects")
        return value

    def object(self, key: str, *, required: bool = False) -> Mapping[str, Any] | None:
        value = self.obj.get(key)
        if value is None:
            if required:
                raise self._fail(key, "is required")
            return None
        if not isinstance(value, dict):
            raise self._fail(key, "must be an object")
        return value


# --- descriptors ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor, with the index-entry fields (platform, urls, artifact type)."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    urls: tuple[str, ...] = ()
    platform: Platform | None = None
    artifact_type: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if not self.media_type:
            del out["mediaType"]
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = sorted_map(self.annotations)
        if self.platform is not None:
            out["platform"] = platform_to_json(self.platform)
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out


def platform_to_json(platform: Platform) -> dict[str, Any]:
    out: dict[str, Any] = {"architecture": platform.architecture, "os": platform.os}
    if platform.os_version:
        out["os.version"] = platform.os_version
    if platform.os_features:
        out["os.features"] = list(platform.os_features)
    if platform.variant:
        out["variant"] = platform.variant
    return out


def platform_from_json(obj: Mapping[str, Any], what: str) -> Platform:
    fields = _Fields(obj, what)
    return Platform(
        os=fields.string("os", required=True),
        architecture=fields.string("architecture", required=True),
        variant=fields.string("variant"),
        os_version=fields.string("os.version"),
        os_features=fields.strings("os.features"),
    )


def descriptor_from_json(obj: Mapping[str, Any], what: str) -> Descriptor:
    """One descriptor; media type, a valid digest and a non-negative size are required."""
    fields = _Fields(obj, what)
    media_type = fields.string("mediaType", required=True)
    digest = validate_digest(fields.string("digest", required=True), f"{what}: digest")
    if "size" not in obj:
        raise InvalidArgument(f"{what}: size is required")
    size = fields.integer("size", required=True)
    if size < 0:
        raise InvalidArgument(f"{what}: size {size} is negative")
    platform_obj = fields.object("platform")
    return Descriptor(
        media_type=media_type,
        digest=digest,
        size=size,
        annotations=fields.string_map("annotations"),
        urls=fields.strings("urls"),
        platform=platform_from_json(platform_obj, f"{what}: platform") if platform_obj is not None else None,
        artifact_type=fields.string("artifactType"),
    )


# --- manifests and indexes -----------------------------------------------------------------


def _check_kind(
    obj: Mapping[str, Any], what: str, declared: str, expected: str, wanted: frozenset[str]
) -> str:
    """The document's media type: it must be of the ``wanted`` kind and agree with the descriptor's."""
    fields = _Fields(obj, what)
    version = fields.integer("schemaVersion", required=True)
    if version != 2:
        raise InvalidArgument(f"{what}: schemaVersion {version} is not supported (only 2)")
    inner = fields.string("mediaType")
    if declared and declared not in wanted:
        raise InvalidArgument(f"{what}: media type {declared!r} is not {expected}")
    if inner and inner not in wanted:
        raise InvalidArgument(f"{what}: mediaType {inner!r} is not {expected}")
    if declared and inner and declared != inner:
        raise InvalidArgument(f"{what}: mediaType {inner!r} does not match its descriptor's {declared!r}")
    return inner or declared


@dataclass(frozen=True)
class Manifest:
    """An image manifest (OCI or Docker schema 2): one config and its layers, bottom first."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)
    subject: Descriptor | None = None
    artifact_type: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schemaVersion": 2, "mediaType": self.media_type}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        out["config"] = self.config.to_json()
        out["layers"] = [layer.to_json() for layer in self.layers]
        if self.subject is not None:
            out["subject"] = self.subject.to_json()
        if self.annotations:
            out["annotations"] = sorted_map(self.annotations)
        return out

    def encode(self) -> bytes:
        return go_json(self.to_json())


def parse_manifest(data: bytes, media_type: str = "", what: str = "manifest") -> Manifest:
    """A manifest from its bytes; ``media_type`` is what its descriptor said ("" when unknown)."""
    obj = load_object(data, what)
    kind = _check_kind(obj, what, media_type, "an image manifest", mt.MANIFEST_TYPES)
    if "manifests" in obj:
        raise InvalidArgument(f"{what}: an index (it has manifests), not a manifest")
    fields = _Fields(obj, what)
    config = fields.object("config", required=True)
    assert config is not None
    if "layers" not in obj or obj["layers"] is None:
        raise InvalidArgument(f"{what}: layers is required")
    layers = tuple(
        descriptor_from_json(layer, f"{what}: layers[{i}]")
        for i, layer in enumerate(fields.objects("layers", required=True))
    )
    subject = fields.object("subject")
    return Manifest(
        media_type=kind or mt.OCI_MANIFEST,
        config=descriptor_from_json(config, f"{what}: config"),
        layers=layers,
        annotations=fields.string_map("annotations"),
        subject=descriptor_from_json(subject, f"{what}: subject") if subject is not None else None,
        artifact_type=fields.string("artifactType"),
    )


@dataclass(frozen=True)
class Index:
    """An image index (OCI) or manifest list (Docker): manifests, usually one per platform."""

    manifests: tuple[Descriptor, ...]
    media_type: str = mt.OCI_INDEX
    annotations: Mapping[str, str] = field(default_factory=dict)
    subject: Descriptor | None = None
    artifact_type: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schemaVersion": 2}
        if self.media_type:
            out["mediaType"] = self.media_type
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        out["manifests"] = [m.to_json() for m in self.manifests]
        if self.subject is not None:
            out["subject"] = self.subject.to_json()
        if self.annotations:
            out["annotations"] = sorted_map(self.annotations)
        return out

    def encode(self) -> bytes:
        return go_json(self.to_json())


def parse_index(data: bytes, media_type: str = "", what: str = "index") -> Index:
    """An index from its bytes; ``media_type`` is what its descriptor said ("" when unknown)."""
    obj = load_object(data, what)
    kind = _check_kind(obj, what, media_type, "an image index", mt.INDEX_TYPES)
    if "config" in obj or "layers" in obj:
        raise InvalidArgument(f"{what}: a manifest (it has config or layers), not an index")
    fields = _Fields(obj, what)
    if "manifests" not in obj or obj["manifests"] is None:
        raise InvalidArgument(f"{what}: manifests is required")
    manifests = tuple(
        descriptor_from_json(entry, f"{what}: manifests[{i}]")
        for i, entry in enumerate(fields.objects("manifests", required=True))
    )
    subject = fields.object("subject")
    return Index(
        manifests=manifests,
        media_type=kind or mt.OCI_INDEX,
        annotations=fields.string_map("annotations"),
        subject=descriptor_from_json(subject, f"{what}: subject") if subject is not None else None,
        artifact_type=fields.string("artifactType"),
    )


# --- image configs -------------------------------------------------------------------------


@dataclass(frozen=True)
class ContainerConfig:
    """How a container of the image runs by default (the config's ``config`` object)."""

    user: str = ""
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    working_dir: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    exposed_ports: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    stop_signal: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.user:
            out["User"] = self.user
        if self.exposed_ports:
            out["ExposedPorts"] = {port: {} for port in sorted(self.exposed_ports)}
        if self.env:
            out["Env"] = list(self.env)
        if self.entrypoint:
            out["Entrypoint"] = list(self.entrypoint)
        if self.cmd:
            out["Cmd"] = list(self.cmd)
        if self.volumes:
            out["Volumes"] = {volume: {} for volume in sorted(self.volumes)}
        if self.working_dir:
            out["WorkingDir"] = self.working_dir
        if self.labels:
            out["Labels"] = sorted_map(self.labels)
        if self.stop_signal:
            out["StopSignal"] = self.stop_signal
        return out


@dataclass(frozen=True)
class HistoryEntry:
    created: str = ""
    created_by: str = ""
    author: str = ""
    comment: str = ""
    empty_layer: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in (
            ("created", self.created),
            ("created_by", self.created_by),
            ("author", self.author),
            ("comment", self.comment),
        ):
            if value:
                out[key] = value
        if self.empty_layer:
            out["empty_layer"] = True
        return out


@dataclass(frozen=True)
class ImageConfig:
    """An image config: the platform it is for, how it runs, and the diffIDs of its layers."""

    architecture: str
    os: str
    diff_ids: tuple[str, ...]
    config: ContainerConfig = ContainerConfig()
    variant: str = ""
    os_version: str = ""
    os_features: tuple[str, ...] = ()
    created: str = ""
    author: str = ""
    history: tuple[HistoryEntry, ...] = ()

    @property
    def platform(self) -> Platform:
        """The platform as containerd reads it from a config: normalised."""
        return Platform(
            self.os, self.architecture, self.variant, self.os_version, self.os_features
        ).normalized()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.created:
            out["created"] = self.created
        if self.author:
            out["author"] = self.author
        out["architecture"] = self.architecture
        if self.variant:
            out["variant"] = self.variant
        out["os"] = self.os
        if self.os_version:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = list(self.os_features)
        out["config"] = self.config.to_json()
        out["rootfs"] = {"type": "layers", "diff_ids": list(self.diff_ids)}
        if self.history:
            out["history"] = [entry.to_json() for entry in self.history]
        return out

    def encode(self) -> bytes:
        return go_json(self.to_json())


def parse_image_config(data: bytes, what: str = "image config") -> ImageConfig:
    """An image config from its bytes: os, architecture and ``rootfs`` of type layers required."""
    obj = load_object(data, what)
    fields = _Fields(obj, what)
    rootfs = fields.object("rootfs", required=True)
    assert rootfs is not None
    rootfs_fields = _Fields(rootfs, f"{what}: rootfs")
    kind = rootfs_fields.string("type", required=True)
    if kind != "layers":
        raise InvalidArgument(f"{what}: rootfs type {kind!r} is not 'layers'")
    diff_ids = tuple(
        validate_digest(d, f"{what}: rootfs.diff_ids[{i}]")
        for i, d in enumerate(rootfs_fields.strings("diff_ids"))
    )
    run = fields.object("config")
    run_fields = _Fields(run or {}, f"{what}: config")
    history = tuple(
        HistoryEntry(
            created=h.string("created"),
            created_by=h.string("created_by"),
            author=h.string("author"),
            comment=h.string("comment"),
            empty_layer=_boolean(entry, "empty_layer", what),
        )
        for i, entry in enumerate(fields.objects("history"))
        for h in (_Fields(entry, f"{what}: history[{i}]"),)
    )
    return ImageConfig(
        architecture=fields.string("architecture", required=True),
        os=fields.string("os", required=True),
        diff_ids=diff_ids,
        config=ContainerConfig(
            user=run_fields.string("User"),
            env=run_fields.strings("Env"),
            entrypoint=run_fields.strings("Entrypoint"),
            cmd=run_fields.strings("Cmd"),
            working_dir=run_fields.string("WorkingDir"),
            labels=run_fields.string_map("Labels"),
            exposed_ports=run_fields.key_set("ExposedPorts"),
            volumes=run_fields.key_set("Volumes"),
            stop_signal=run_fields.string("StopSignal"),
        ),
        variant=fields.string("variant"),
        os_version=fields.string("os.version"),
        os_features=fields.strings("os.features"),
        created=fields.string("created"),
        author=fields.string("author"),
        history=history,
    )


def _boolean(obj: Mapping[str, Any], key: str, what: str) -> bool:
    value = obj.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidArgument(f"{what}: history {key} must be a boolean")
    return value
