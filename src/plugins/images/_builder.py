"""Images from layers, deterministically: config, manifest, multi-platform index, and their output
as an OCI layout directory, an OCI archive or a ``docker save`` archive."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from corral.kernel import InvalidArgument
from corral.plugins.core.tar import DIRECTORY, END_OF_ARCHIVE, REGULAR, encode_header, padding
from corral.plugins.images import _mediatypes as mt
from corral.plugins.images._digest import chain_id, chain_ids, digest_of
from corral.plugins.images._documents import (
    ContainerConfig,
    Descriptor,
    HistoryEntry,
    ImageConfig,
    Index,
    Manifest,
)
from corral.plugins.images._json import go_json
from corral.plugins.images._layers import Layer
from corral.plugins.images._platforms import Platform
from corral.plugins.images._reference import familiar_reference
from corral.plugins.images._writer import ExportImage, plan_oci_archive

EPOCH = "1970-01-01T00:00:00Z"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class _Outputs:
    """What every built image or index can be written as."""

    blobs: Mapping[str, bytes]

    def export_target(self) -> Descriptor:
        raise NotImplementedError

    def _plan(self, names: Sequence[str], skip_manifest_json: bool) -> list[bytes]:
        image = ExportImage(self.export_target(), tuple(names))
        plan = plan_oci_archive([image], self.blobs, skip_manifest_json=skip_manifest_json)
        return list(plan.chunks(lambda desc: [self.blobs[desc.digest]]))

    def oci_archive(self, names: Sequence[str] = (), *, skip_manifest_json: bool = False) -> bytes:
        """An OCI archive as containerd exports one: each name an ``index.json`` entry, and
        docker's ``manifest.json`` unless ``skip_manifest_json``."""
        return b"".join(self._plan(names, skip_manifest_json))

    def write_oci_archive(
        self, path: str | os.PathLike[str], names: Sequence[str] = (), *, skip_manifest_json: bool = False
    ) -> Path:
        target = Path(path)
        with target.open("wb") as file:
            for chunk in self._plan(names, skip_manifest_json):
                file.write(chunk)
        return target

    def write_oci_layout(self, directory: str | os.PathLike[str], names: Sequence[str] = ()) -> Path:
        """An OCI image layout directory (``oci-layout``, ``index.json``, ``blobs/``), mtimes 0."""
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        image = ExportImage(self.export_target(), tuple(names))
        plan = plan_oci_archive([image], self.blobs, skip_manifest_json=True)
        for member in plan.members:
            path = root / member.name
            if member.directory:
                path.mkdir(exist_ok=True)
                path.chmod(member.mode)
                continue
            if member.data is not None:
                path.write_bytes(member.data)
            elif member.blob is not None:
                path.write_bytes(self.blobs[member.blob.digest])
            path.chmod(member.mode)
        for member in reversed(plan.members):
            os.utime(root / member.name, (0, 0))
        return root


@dataclass(frozen=True)
class BuiltImage(_Outputs):
    """One image for one platform: config, manifest and layers, with every blob's bytes."""

    config: ImageConfig
    config_bytes: bytes
    manifest: Manifest
    manifest_bytes: bytes
    layers: tuple[Layer, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)
    blobs: Mapping[str, bytes] = field(init=False)

    def __post_init__(self) -> None:
        blobs = {digest_of(self.config_bytes): self.config_bytes, self.digest: self.manifest_bytes}
        blobs.update({layer.digest: layer.blob for layer in self.layers})
        object.__setattr__(self, "blobs", blobs)

    @property
    def digest(self) -> str:
        """The manifest's digest: what the image is known by."""
        return digest_of(self.manifest_bytes)

    @property
    def descriptor(self) -> Descriptor:
        """The manifest's descriptor (no platform: as an image's target, or an archive's entry)."""
        return Descriptor(
            mt.OCI_MANIFEST, self.digest, len(self.manifest_bytes), annotations=dict(self.annotations)
        )

    @property
    def platform(self) -> Platform:
        """As the config states it (``linux/arm64/v8``), not normalised."""
        c = self.config
        return Platform(c.os, c.architecture, c.variant, c.os_version, c.os_features)

    @property
    def diff_ids(self) -> tuple[str, ...]:
        return self.config.diff_ids

    @property
    def chain_ids(self) -> list[str]:
        return chain_ids(self.config.diff_ids)

    @property
    def chain_id(self) -> str:
        """The chain ID of the whole stack: the key of its top snapshot once unpacked."""
        return chain_id(self.config.diff_ids)

    def export_target(self) -> Descriptor:
        return self.descriptor

    def docker_archive(self, names: Sequence[str] = ()) -> bytes:
        """A ``docker save`` archive (format 1.2): ``manifest.json``, ``<config>.json`` and each
        layer's uncompressed tar at ``<id>/layer.tar``, the id being its chain ID's hex."""
        config_name = digest_of(self.config_bytes).partition(":")[2] + ".json"
        layer_dirs = [chain.partition(":")[2] for chain in self.chain_ids]
        manifest = [
            {
                "Config": config_name,
                "RepoTags": [familiar_reference(name) for name in names] or None,
                "Layers": [f"{d}/layer.tar" for d in layer_dirs],
            }
        ]
        files: dict[str, bytes | None] = {"manifest.json": go_json(manifest), config_name: self.config_bytes}
        for directory, layer in zip(layer_dirs, self.layers, strict=True):
            files[directory + "/"] = None
            files[directory + "/layer.tar"] = layer.tar
        out = bytearray()
        for name in sorted(files):
            data = files[name]
            if data is None:
                out += encode_header(name, DIRECTORY, mode=0o755)
            else:
                out += encode_header(name, REGULAR, size=len(data), mode=0o644) + data + padding(len(data))
        out += END_OF_ARCHIVE
        return bytes(out)

    def write_docker_archive(self, path: str | os.PathLike[str], names: Sequence[str] = ()) -> Path:
        target = Path(path)
        target.write_bytes(self.docker_archive(names))
        return target


@dataclass(frozen=True)
class BuiltIndex(_Outputs):
    """A multi-platform image: an OCI index over built images, each entry with its platform."""

    index: Index
    index_bytes: bytes
    images: tuple[BuiltImage, ...]
    blobs: Mapping[str, bytes] = field(init=False)

    def __post_init__(self) -> None:
        blobs: dict[str, bytes] = {self.digest: self.index_bytes}
        for image in self.images:
            blobs.update(image.blobs)
        object.__setattr__(self, "blobs", blobs)

    @property
    def digest(self) -> str:
        return digest_of(self.index_bytes)

    @property
    def descriptor(self) -> Descriptor:
        return Descriptor(mt.OCI_INDEX, self.digest, len(self.index_bytes))

    def export_target(self) -> Descriptor:
        return self.descriptor


def build_image(
    layers: Sequence[Layer],
    *,
    platform: Platform | None = None,
    entrypoint: Sequence[str] = (),
    cmd: Sequence[str] = (),
    env: Sequence[str] = (DEFAULT_PATH,),
    working_dir: str = "",
    user: str = "",
    labels: Mapping[str, str] | None = None,
    history: Sequence[str] | None = None,
    created: str = EPOCH,
    annotations: Mapping[str, str] | None = None,
    stop_signal: str = "",
) -> BuiltImage:
    """An image of ``layers`` (bottom first) for ``platform`` (this host by default).

    ``history`` gives each layer's ``created_by`` (by default the layer's position). Nothing
    depends on the clock: ``created`` is the epoch unless given.
    """
    target = platform or Platform.host()
    if history is not None and len(history) != len(layers):
        raise InvalidArgument(f"{len(history)} history entries for {len(layers)} layers")
    steps = history if history is not None else [f"layer {i}" for i in range(len(layers))]
    config = ImageConfig(
        architecture=target.architecture,
        os=target.os,
        variant=target.variant,
        os_version=target.os_version,
        os_features=target.os_features,
        diff_ids=tuple(layer.diff_id for layer in layers),
        config=ContainerConfig(
            user=user,
            env=tuple(env),
            entrypoint=tuple(entrypoint),
            cmd=tuple(cmd),
            working_dir=working_dir,
            labels=dict(labels or {}),
            stop_signal=stop_signal,
        ),
        created=created,
        history=tuple(HistoryEntry(created=created, created_by=step) for step in steps),
    )
    config_bytes = config.encode()
    manifest = Manifest(
        media_type=mt.OCI_MANIFEST,
        config=Descriptor(mt.OCI_CONFIG, digest_of(config_bytes), len(config_bytes)),
        layers=tuple(layer.descriptor for layer in layers),
        annotations=dict(annotations or {}),
    )
    return BuiltImage(config, config_bytes, manifest, manifest.encode(), tuple(layers))


def build_index(images: Sequence[BuiltImage], *, annotations: Mapping[str, str] | None = None) -> BuiltIndex:
    """An OCI index over ``images``, each entry carrying its image's platform."""
    if not images:
        raise InvalidArgument("an index needs at least one image")
    entries = tuple(
        Descriptor(mt.OCI_MANIFEST, image.digest, len(image.manifest_bytes), platform=image.platform)
        for image in images
    )
    index = Index(manifests=entries, media_type=mt.OCI_INDEX, annotations=dict(annotations or {}))
    return BuiltIndex(index, index.encode(), tuple(images))
