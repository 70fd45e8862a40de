"""The unpacker, against in-memory fakes: containerd's keys, labels, chain reuse and cleanup."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

import anyio
import pytest

from corral.kernel import AlreadyExists, FailedPrecondition, NotFound
from corral.plugins.core import Descriptor, Mount
from corral.plugins.images import oci
from corral.plugins.images.build import LayerEntry, build_image, build_index, build_layer
from corral.plugins.snapshots import Info, Kind, Usage
from corral.plugins.unpack import (
    LABEL_PARENT_CHAIN_ID,
    LABEL_SNAPSHOT_DIFF_ID,
    LABEL_SNAPSHOT_REF,
    UnpackTarget,
    select_manifest,
    unpack_image,
)


@dataclass
class Blob:
    data: bytes
    labels: dict[str, str] = field(default_factory=dict)


class MemoryContent:
    def __init__(self, blobs: Mapping[str, bytes]) -> None:
        self.blobs = {digest: Blob(data) for digest, data in blobs.items()}

    async def info(self, digest: str) -> Blob:
        if digest not in self.blobs:
            raise NotFound(f"content digest {digest}")
        return self.blobs[digest]

    async def read(self, digest: str, offset: int = 0, size: int = 0) -> AsyncIterator[bytes]:
        blob = await self.info(digest)

        async def chunks() -> AsyncIterator[bytes]:
            yield blob.data

        return chunks()

    async def update(self, digest: str, labels: Mapping[str, str], paths: Sequence[str]) -> Blob:
        blob = await self.info(digest)
        for path in paths:
            key = path.removeprefix("labels.")
            blob.labels[key] = labels[key]
        return blob


class MemorySnapshotter:
    def __init__(self) -> None:
        self.snapshots: dict[str, Info] = {}
        self.calls: list[tuple[str, ...]] = []

    async def stat(self, key: str) -> Info:
        if key not in self.snapshots:
            raise NotFound(f"snapshot {key}")
        return self.snapshots[key]

    async def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        raise NotImplementedError

    async def usage(self, key: str) -> Usage:
        return Usage()

    async def mounts(self, key: str) -> builtins.list[Mount]:
        return [Mount("bind", f"/snapshots/{key}", "", ("rw",))]

    async def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> builtins.list[Mount]:
        self.calls.append(("prepare", key, parent))
        if key in self.snapshots:
            raise AlreadyExists(f"snapshot {key}")
        if parent and parent not in self.snapshots:
            raise NotFound(f"parent snapshot {parent}")
        self.snapshots[key] = Info(key, Kind.ACTIVE, parent, dict(labels or {}))
        return await self.mounts(key)

    async def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> builtins.list[Mount]:
        raise NotImplementedError

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        self.calls.append(("commit", name, key))
        active = self.snapshots.pop(key)
        if name in self.snapshots:
            raise AlreadyExists(f"snapshot {name}")
        self.snapshots[name] = replace(active, name=name, kind=Kind.COMMITTED, labels=dict(labels or {}))

    async def remove(self, key: str) -> None:
        self.calls.append(("remove", key))
        if self.snapshots.pop(key, None) is None:
            raise NotFound(f"snapshot {key}")

    def walk(self, filters: Sequence[str] = ()) -> AsyncIterator[Info]:
        raise NotImplementedError

    async def cleanup(self) -> None:
        return None


class RecordingApplier:
    """Reports each layer's diffID (from the image), or a wrong one for ``wrong``."""

    def __init__(self, diff_ids: Mapping[str, str], wrong: str = "") -> None:
        self.diff_ids = diff_ids
        self.wrong = wrong
        self.applied: list[tuple[str, str]] = []

    async def apply(self, desc: Descriptor, mounts: Sequence[Mount]) -> Descriptor:
        self.applied.append((desc.digest, mounts[0].source))
        digest = "sha256:" + "0" * 64 if desc.digest == self.wrong else self.diff_ids[desc.digest]
        return Descriptor(oci.OCI_LAYER, digest, 1)


def two_layer_image() -> tuple[oci.Descriptor, dict[str, bytes], dict[str, str]]:
    first = build_layer([LayerEntry.file("etc/hostname", b"box\n")])
    second = build_layer([LayerEntry.file("etc/motd", b"hi\n")])
    image = build_image([first, second])
    blobs = dict(image.blobs)
    diff_ids = {layer.digest: layer.diff_id for layer in (first, second)}
    return image.descriptor, blobs, diff_ids


def run_unpack(
    target: oci.Descriptor, content: MemoryContent, snapshotter: MemorySnapshotter, applier: RecordingApplier
) -> object:
    async def go() -> object:
        into = UnpackTarget("overlayfs", snapshotter, applier)
        return await unpack_image(content, target, into)

    return anyio.run(go)


def test_layers_are_committed_as_chain_ids_with_containerds_labels() -> None:
    target, blobs, diff_ids = two_layer_image()
    content, snapshotter = MemoryContent(blobs), MemorySnapshotter()
    result = run_unpack(target, content, snapshotter, RecordingApplier(diff_ids))
    layers = list(diff_ids)
    chain = oci.chain_ids(list(diff_ids.values()))
    assert sorted(snapshotter.snapshots) == sorted(chain)
    bottom, top = snapshotter.snapshots[chain[0]], snapshotter.snapshots[chain[1]]
    assert bottom.kind is Kind.COMMITTED and bottom.parent == ""
    assert top.parent == chain[0]
    assert top.labels == {
        LABEL_SNAPSHOT_REF: chain[1],
        LABEL_SNAPSHOT_DIFF_ID: diff_ids[layers[1]],
        LABEL_PARENT_CHAIN_ID: chain[0],
    }
    prepares = [call for call in snapshotter.calls if call[0] == "prepare"]
    assert [call[1].split(" ")[1] for call in prepares] == chain
    assert all(call[1].startswith("extract-") for call in prepares)
    for layer in layers:
        assert content.blobs[layer].labels == {"containerd.io/uncompressed": diff_ids[layer]}
    config = next(
        d for d, b in content.blobs.items() if b.labels and "gc.ref.snapshot" in next(iter(b.labels))
    )
    assert content.blobs[config].labels == {"containerd.io/gc.ref.snapshot.overlayfs": chain[1]}
    assert result.chain_id == chain[1] and result.applied == 2


def test_a_chain_already_committed_is_reused_without_applying() -> None:
    target, blobs, diff_ids = two_layer_image()
    content, snapshotter = MemoryContent(blobs), MemorySnapshotter()
    run_unpack(target, content, snapshotter, RecordingApplier(diff_ids))
    again = RecordingApplier(diff_ids)
    result = run_unpack(target, content, snapshotter, again)
    assert again.applied == [] and result.applied == 0


def test_a_wrong_diff_id_fails_and_removes_the_extraction_snapshot() -> None:
    target, blobs, diff_ids = two_layer_image()
    content, snapshotter = MemoryContent(blobs), MemorySnapshotter()
    second = list(diff_ids)[1]
    with pytest.raises(FailedPrecondition, match="wrong diff id"):
        run_unpack(target, content, snapshotter, RecordingApplier(diff_ids, wrong=second))
    chain = oci.chain_ids(list(diff_ids.values()))
    assert list(snapshotter.snapshots) == [chain[0]]
    assert snapshotter.calls[-1][0] == "remove" and snapshotter.calls[-1][1].endswith(chain[1])
    config_labels = [
        b.labels for b in content.blobs.values() if any("gc.ref.snapshot" in k for k in b.labels)
    ]
    assert config_labels == []


def test_the_host_manifest_is_chosen_from_an_index() -> None:
    layer = build_layer([LayerEntry.file("a", b"a")])
    host = build_image([layer])
    other = build_image([layer], platform=oci.Platform("linux", "s390x"))
    index = build_index([other, host])
    content = MemoryContent({**index.blobs})

    async def choose() -> tuple[oci.Descriptor, oci.Manifest] | None:
        return await select_manifest(content, index.descriptor, oci.only(oci.Platform.host()))

    found = anyio.run(choose)
    assert found is not None and found[0].digest == host.digest

    async def none() -> tuple[oci.Descriptor, oci.Manifest] | None:
        return await select_manifest(content, index.descriptor, oci.only(oci.Platform("windows", "arm64")))

    assert anyio.run(none) is None
