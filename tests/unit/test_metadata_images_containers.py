"""Images and containers in the sqlite metadata store: containerd's validation, field masks, filters,
errors, events, and what each holds against garbage collection."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from corral.kernel import AlreadyExists, InvalidArgument, NotFound
from corral.plugins.content.memory import MemoryContentStore
from corral.plugins.core import GC_EXPIRE, Descriptor, bound_lease, namespace
from corral.plugins.events.types import (
    ContainerCreate,
    ContainerDelete,
    ContainerUpdate,
    Envelope,
    Event,
    ImageCreate,
    ImageDelete,
    ImageUpdate,
)
from corral.plugins.metadata import (
    AnyValue,
    Container,
    ContainerRuntime,
    ContainerStore,
    Image,
    ImageStore,
    LeaseStore,
    NamespacedContent,
    NamespacedSnapshots,
    NamespaceStore,
)
from corral.plugins.metadata.sqlite import SqliteMetadata, open_metadata
from corral.plugins.snapshots.native import NativeSnapshotter

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
SPEC = AnyValue("types.containerd.io/opencontainers/runtime-spec/1/Spec", b'{"ociVersion":"1.1.0"}')
RUNC = ContainerRuntime("io.containerd.runc.v2")


class Recorder:
    """A publisher that keeps what it is given."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Event]] = []

    async def publish(
        self, event: Event, *, topic: str | None = None, namespace: str | None = None
    ) -> Envelope:
        self.events.append((namespace or "", event))
        return Envelope(datetime.now(UTC), namespace or "", topic or "", event)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def run(
    tmp_path: Path, body: Callable[[SqliteMetadata, Recorder], Awaitable[None]], *, snapshots: bool = False
) -> None:
    async def main() -> None:
        recorder = Recorder()
        snapshotters = {"native": NativeSnapshotter(tmp_path / "snaps")} if snapshots else {}
        md = open_metadata(
            tmp_path / "meta.db", content=MemoryContentStore(), snapshotters=snapshotters, publisher=recorder
        )
        try:
            with namespace("default"):
                await body(md, recorder)
        finally:
            md.close()

    anyio.run(main)


async def ingest(md: SqliteMetadata, data: bytes, labels: dict[str, str] | None = None) -> str:
    w = await md.view(NamespacedContent).writer(f"ref-{digest_of(data)}")
    await w.write(data)
    return (await w.commit(len(data), digest_of(data), labels)).digest


def image(name: str = "docker.io/library/busybox:latest", digest: str = "", **labels: str) -> Image:
    return Image(name, Descriptor(MANIFEST, digest or digest_of(name.encode()), 100), labels)


def container(cid: str = "c1", **fields: object) -> Container:
    values: dict[str, object] = {"id": cid, "runtime": RUNC, "spec": SPEC}
    values.update(fields)
    return Container(**values)  # type: ignore[arg-type]


# -- images -------------------------------------------------------------------------------------


def test_an_image_is_created_once_with_store_times_and_listed_by_name(tmp_path: Path) -> None:
    async def body(md: SqliteMetadata, events: Recorder) -> None:
        store = md.view(ImageStore)
        given = Image("b:1", Descriptor(MANIFEST, digest_of(b"b"), 7), {"k": "v", "empty": ""},
                      created_at=datetime(2001, 1, 1, tzinfo=UTC))  # fmt: skip
        created = await store.create(given)
        assert created.created_at == created.updated_at
        assert created.created_at is not None and created.created_at.year > 2001
        assert created.labels == {"k": "v"}
        await store.create(image("a:1"))
        with pytest.raises(AlreadyExists, match='image "b:1": already exists'):
            await store.create(image("b:1"))
        assert [i.name for i in await store.list()] == ["a:1", "b:1"]
        got = await store.get("b:1")
        assert got.target == Descriptor(MANIFEST, digest_of(b"b"), 7)
        assert got.created_at == created.created_at
        with pytest.raises(NotFound, match='image "nope": not found'):
            await store.get("nope")
        assert [e for _, e in events.events] == [
            ImageCreate(name="b:1", labels={"k": "v"}),
            ImageCreate(name="a:1", labels={}),
        ]

    run(tmp_path, body)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (Descriptor(MANIFEST, "", 1), 'target.Digest "" invalid: invalid checksum digest format'),
        (Descriptor(MANIFEST, "sha256:abc", 1), 'target.Digest "sha256:abc" invalid: invalid checksum digest length'),
        (Descriptor(MANIFEST, digest_of(b"x"), 0), "target.Size must be greater than zero"),
        (Descriptor("", digest_of(b"x"), 1), "target.MediaType must be set"),
    ],
)  # fmt: skip
def test_an_image_needs_a_valid_target(tmp_path: Path, target: Descriptor, message: str) -> None:
    async def body(md: SqliteMetadata, events: Recorder) -> None:
        store = md.view(ImageStore)
        with pytest.raises(InvalidArgument, match=message):
            await store.create(Image("x", target))
        with pytest.raises(InvalidArgument, match="image name must not be empty"):
            await store.create(Image("", Descriptor(MANIFEST, digest_of(b"x"), 1)))
        with pytest.raises(InvalidArgument, match=re.escape("image.Labels: label key and value length")):
            await store.create(image("x", big="v" * 5000))
        assert await store.list() == []
        assert events.events == []

    run(tmp_path, body)


def test_image_update_follows_containerds_field_mask(tmp_path: Path) -> None:
    async def body(md: SqliteMetadata, events: Recorder) -> None:
        store = md.view(ImageStore)
        created = await store.create(image("img", a="1", b="2"))
        other = Descriptor(MANIFEST, digest_of(b"other"), 42, {"note": "x"})
        sent = Image("img", other, {"a": "changed", "c": "3"})

        one = await store.update(sent, ["labels.c", "labels.b"])
        assert one.labels == {"a": "1", "c": "3"}  # b is absent from what was sent: removed
        assert one.target == created.target
        assert one.created_at == created.created_at
        assert one.updated_at is not None and created.updated_at is not None
        assert one.updated_at >= created.updated_at

        two = await store.update(sent, ["target"])
        assert two.target == other and two.labels == {"a": "1", "c": "3"}
        three = await store.update(Image("img", Descriptor("", "", 0, {"more": "y"})), ["annotations.more"])
        assert three.target.annotations == {"note": "x", "more": "y"}
        four = await store.update(Image("img", Descriptor(MANIFEST, digest_of(b"new"), 9), {"only": "me"}))
        assert four.labels == {"only": "me"} and four.target.digest == digest_of(b"new")
        assert four.target.annotations == {}

        with pytest.raises(InvalidArgument, match='cannot update "name" field on image "img"'):
            await store.update(sent, ["name"])
        with pytest.raises(InvalidArgument, match=re.escape("target.Size must be greater than zero")):
            await store.update(Image("img", Descriptor(MANIFEST, digest_of(b"x"), 0)), ["target"])
        with pytest.raises(NotFound, match='image "absent"'):
            await store.update(image("absent"))
        with pytest.raises(InvalidArgument, match="image name is required for update"):
            await store.update(image(""))
        assert (await store.get("img")) == four
        assert [type(e).__name__ for _, e in events.events] == ["ImageCreate"] + ["ImageUpdate"] * 4
        assert events.events[-1][1] == ImageUpdate(name="img", labels={"only": "me"})

    run(tmp_path, body)


def test_a_source_date_epoch_sets_the_image_times(tmp_path: Path) -> None:
    async def body(md: SqliteMetadata, events: Recorder) -> None:
        store = md.view(ImageStore)
        epoch = datetime(2020, 2, 2, 2, 2, 2, tzinfo=UTC)
        created = await store.create(image("e"), epoch=epoch)
        assert created.created_at == epoch == created.updated_at
        later = datetime(2021, 1, 1, tzinfo=UTC)
        updated = await store.update(image("e", x="1"), ["labels.x"], epoch=later)
        assert (updated.created_at, updated.updated_at) == (epoch, later)

    run(tmp_path, body)


def test_image_filters_are_containerds(tmp_path: Path) -> None:
    async def body(md: SqliteMetadata, events: Recorder) -> None:
        store = md.view(ImageStore)
        await store.create(image("docker.io/library/a:1", digest_of(b"a"), team="x"))
        await store.create(image("docker.io/library/b:1", digest_of(b"b"), team="y"))
        await store.create(
            Image("c", Descriptor("application/vnd.oci.image.index.v1+json", digest_of(b"c"), 3))
        )

        async def names(*filters: str) -> list[str]:
            return [i.name for i in await store.list(filters)]

        assert await names("name==docker.io/library/a:1") == ["docker.io/library/a:1"]
        assert await names("name~=library") == ["docker.io/library/a:1", "docker.io/library/b:1"]
        assert await names(f"target.digest=={digest_of(b'b')}") == ["docker.io/library/b:1"]
        assert await names("target.mediatype==application/vnd.oci.image.index.v1+json") == ["c"]
        assert await names("labels.team==x", "labels.team==y") == [
            "docker.io/library/a:1",
            "docker.io/library/b:1",
        ]
        assert await names("labels.team") == ["docker.io/library/a:1", "docker.io/library/b:1"]
        assert await names("labels.team!=x") == ["c", "docker.io/library/b:1"]
        with pytest.raises(InvalidArgument, match="filters: parse error"):
            await names("name==")
        with pytest.raises(InvalidArgument, match="invalid argument: invalid argument"):
            await names("name==")

    run(tmp_path, body)  # fmt: skip


def test_image_delete_checks_the_target_and_publishes(tmp_path: Path) -> None:
    async def body(md: SqliteMetadata, events: Recorder) -> None:
        store = md.view(ImageStore)
        created = await store.create(image("d"))
        with pytest.raises(NotFound, match=f'image "d" has target {created.target.digest}, not sha256:'):
            await store.delete("d", target=Descriptor(MANIFEST, digest_of(b"other"), 1))
        await store.delete("d", target=created.target)
        with pytest.raises(NotFound, match='image "d": not found'):
            await store.delete("d")
        assert events.events[-1] == ("default", ImageDelete(name="d"))
        assert await store.list() == []

    run(tmp_path, body)


def test_images_are_per_namespace_and_keep_their_namespace(tmp_path: Path) -> None:
    async def body(md: SqliteMetadata, events: Recorder) -> None:
        store = md.view(ImageStore)
        await store.create(image("mine"))
        with namespace("other"):
            assert await store.list() == []
            with pytest.raises(NotFound):
                await store.get("mine")
        with pytest.raises(Exception, match='namespace "default" must be empty, but it still has images'):
            await md.view(NamespaceStore).delete("default")

    run(tmp_path, body)


def test_an_image_holds_its_target_and_what_its_labels_reference(tmp_path: Path) -> None:
    async def body(md: SqliteMetadata, events: Recorder) -> None:
        store, content = md.view(ImageStore), md.view(NamespacedContent)
        snaps = md.view(NamespacedSnapshots).get("native")
        layer = await ingest(md, b"layer")
        config = await ingest(md, b"config")
        manifest_bytes = b"manifest"
        manifest = await ingest(
            md,
            manifest_bytes,
            {"containerd.io/gc.ref.content.config": config, "containerd.io/gc.ref.content.l.0": layer},
        )
        await snaps.prepare("unpacking")
        await snaps.commit("sha256:chain", "unpacking")
        await content.update(config, {"containerd.io/gc.ref.snapshot.native": "sha256:chain"}, [])
        stray = await ingest(md, b"stray")
        await store.create(Image("img", Descriptor(MANIFEST, manifest, len(manifest_bytes))))

        result = await md.garbage_collect()
        assert result.removed.get("content") == [f"default/{stray}"]
        assert {i.digest for i in await content.list()} == {layer, config, manifest}
        assert (await snaps.stat("sha256:chain")).name == "sha256:chain"

        await store.delete("img")
        result = await md.garbage_collect()
        assert await content.list() == []
        assert [info async for info in snaps.walk()] == []
        assert result.swept.get("snapshots/native") == 1

    run(tmp_path, body, snapshots=True)


def test_an_image_referenced_by_a_gc_ref_image_label_survives(tmp_path: Path) -> None:
    async def body(md: SqliteMetadata, events: Recorder) -> None:
        store = md.view(ImageStore)
        target = await ingest(md, b"target")
        past = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        await store.create(Image("expired", Descriptor(MANIFEST, target, 6), {GC_EXPIRE: past}))
        await ingest(md, b"holder", {"containerd.io/gc.root": "1", "containerd.io/gc.ref.image": "expired"})
        await md.garbage_collect()
        assert [i.name for i in await store.list()] == ["expired"]
        assert await md.view(NamespacedContent).info(target)

    run(tmp_path, body)


def test_an_expired_image_is_collected_unless_a_lease_holds_it(tmp_path: Path) -> None:
    async def body(md: SqliteMetadata, events: Recorder) -> None:
        store, leases = md.view(ImageStore), md.view(LeaseStore)
        target = await ingest(md, b"target")
        past = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        future = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        await store.create(Image("soon", Descriptor(MANIFEST, target, 6), {GC_EXPIRE: future}))
        await leases.create("hold")
        with bound_lease("hold"):
            await store.create(Image("held", Descriptor(MANIFEST, target, 6), {GC_EXPIRE: past}))
            await store.create(Image("unexpiring", Descriptor(MANIFEST, target, 6)))
        await store.create(Image("gone", Descriptor(MANIFEST, target, 6), {GC_EXPIRE: past}))
        assert [(r.type, r.id) for r in await leases.list_resources("hold")] == [("images", "held")]
        result = await md.garbage_collect()
        assert result.removed.get("images") == ["default/gone"]
        assert events.events[-1] == ("default", ImageDelete(name="gone"))
        assert [i.name for i in await store.list()] == ["held", "soon", "unexpiring"]
        await leases.delete("hold")
        await md.garbage_collect()
        assert [i.name for i in await store.list()] == ["soon", "unexpiring"]
        with bound_lease("missing"), pytest.raises(NotFound, match='lease "missing"'):
            await store.create(Image("x", Descriptor(MANIFEST, target, 6), {GC_EXPIRE: future}))
        assert [i.name for i in await store.list()] == ["soon", "unexpiring"]

    run(tmp_path, body)


# -- containers ---------------------------------------------------------------------------------


def test_a_container_is_created_with_containerds_validation(tmp_path: Path) -> None:
    async def body(md: SqliteMetadata, events: Recorder) -> None:
        store = md.view(ContainerStore)
        opts = AnyValue("containerd.runc.v1.Options", b"\x08\x01")
        c = await store.create(
            container(
                "web",
                image="docker.io/library/busybox:latest",
                runtime=ContainerRuntime("io.containerd.runc.v2", opts),
                labels={"a": "1"},
                snapshotter="native",
                snapshot_key="web",
                extensions={"ext": AnyValue("x.Ext", b"\x01")},
            )
        )
        assert c.created_at == c.updated_at
        got = await store.get("web")
        assert got == c
        assert got.runtime.options == opts and got.spec == SPEC
        assert events.events == [
            ("default", ContainerCreate(id="web", image="docker.io/library/busybox:latest",
                                        runtime=events.events[0][1].runtime)),  # type: ignore[union-attr]
        ]  # fmt: skip
        created_event = events.events[0][1]
        assert isinstance(created_event, ContainerCreate) and created_event.runtime is not None
        assert created_event.runtime.name == "io.containerd.runc.v2"
        assert created_event.runtime.options == opts
        with pytest.raises(AlreadyExists, match='container "web": already exists'):
            await store.create(container("web"))
        cases = {
            "create container failed validation: container.ID: identifier must not be empty": container(""),
            'container.ID: identifier "a/b" must match': container("a/b"),
            "container.Runtime.Name must be set": container("x", runtime=ContainerRuntime("")),
            "container.Spec must be set": container("x", spec=None),
            "container.Snapshotter must be set if container.SnapshotKey is set": container("x", snapshot_key="k"),
            "container.Extension keys must not be zero-length": container("x", extensions={"": SPEC}),
        }  # fmt: skip
        for message, bad in cases.items():
            with pytest.raises(InvalidArgument, match=message):
                await store.create(bad)
        assert [x.id for x in await store.list()] == ["web"]
        with pytest.raises(NotFound, match='container "nope" in namespace "default": not found'):
            await store.get("nope")

    run(tmp_path, body)


def test_container_update_follows_containerds_field_mask(tmp_path: Path) -> None:
    async def body(md: SqliteMetadata, events: Recorder) -> None:
        store = md.view(ContainerStore)
        with pytest.raises(NotFound, match='cannot update container "c1" in namespace "default"'):
            await store.update(container("c1"))
        created = await store.create(
            container(labels={"a": "1", "b": "2"}, snapshotter="native", snapshot_key="k", image="img")
        )
        spec2 = AnyValue(SPEC.type_url, b"{}")
        sent = container(labels={"a": "x"}, spec=spec2, image="img2", snapshotter="native", snapshot_key="k2")
        one = await store.update(sent, ["labels.a", "labels.b"])
        assert one.labels == {"a": "x"} and one.spec == SPEC and one.image == "img"
        assert one.created_at == created.created_at
        assert events.events[-1][1] == ContainerUpdate(
            id="c1", image="img", labels={"a": "x"}, snapshot_key="k"
        )
        two = await store.update(sent)
        assert (two.labels, two.spec, two.image, two.snapshot_key) == ({"a": "x"}, spec2, "img2", "k2")
        with pytest.raises(InvalidArgument, match=re.escape("container.Snapshotter field is immutable")):
            await store.update(container(snapshotter="other"))
        with pytest.raises(InvalidArgument, match=re.escape("container.Runtime.Name field is immutable")):
            await store.update(container(runtime=ContainerRuntime("other"), snapshotter="native"))
        with pytest.raises(InvalidArgument, match='cannot update "runtime" field on "c1"'):
            await store.update(sent, ["runtime"])
        with pytest.raises(
            InvalidArgument, match=re.escape("update failed validation: container.Spec must be set")
        ):
            await store.update(container(spec=None), ["spec"])
        with pytest.raises(InvalidArgument, match="must specify a container id"):
            await store.update(container(""))
        ext = await store.update(container(extensions={"e": SPEC}), ["extensions.e"])
        assert ext.extensions == {"e": SPEC}
        assert (await store.update(container(), ["extensions.e"])).extensions == {"e": AnyValue("")}
        assert await store.get("c1") == (await store.list(["id==c1"]))[0]

    run(tmp_path, body)  # fmt: skip


def test_container_filters_and_delete(tmp_path: Path) -> None:
    async def body(md: SqliteMetadata, events: Recorder) -> None:
        store = md.view(ContainerStore)
        with pytest.raises(NotFound, match='cannot delete container "a" in namespace "default"'):
            await store.delete("a")
        await store.create(container("a", image="busybox", labels={"role": "web"}))
        await store.create(container("b", runtime=ContainerRuntime("io.containerd.runsc.v1")))

        async def ids(*filters: str) -> list[str]:
            return [c.id for c in await store.list(filters)]

        assert await ids() == ["a", "b"]
        assert await ids("image==busybox") == ["a"]
        assert await ids("runtime.name==io.containerd.runsc.v1") == ["b"]
        assert await ids("labels.role==web") == ["a"]
        assert await ids("id~=^b") == ["b"]
        with pytest.raises(Exception, match="still has containers"):
            await md.view(NamespaceStore).delete("default")
        await store.delete("a")
        with pytest.raises(NotFound, match="container a: not found"):
            await store.delete("a")
        assert events.events[-1] == ("default", ContainerDelete(id="a"))
        assert await ids() == ["b"]

    run(tmp_path, body)


def test_a_container_holds_its_snapshot_but_not_its_image(tmp_path: Path) -> None:
    async def body(md: SqliteMetadata, events: Recorder) -> None:
        images, containers = md.view(ImageStore), md.view(ContainerStore)
        snaps = md.view(NamespacedSnapshots).get("native")
        target = await ingest(md, b"manifest")
        await images.create(Image("img", Descriptor(MANIFEST, target, 8)))
        await snaps.prepare("layer")
        await snaps.commit("sha256:layer", "layer")
        await snaps.prepare("rootfs", "sha256:layer")
        await containers.create(container("c", image="img", snapshotter="native", snapshot_key="rootfs"))
        await images.delete("img")
        await md.garbage_collect()
        assert await md.view(NamespacedContent).list() == []  # the image's blobs go
        assert {i.name async for i in snaps.walk()} == {"rootfs", "sha256:layer"}  # the rootfs stays
        await containers.delete("c")
        await md.garbage_collect()
        assert [i async for i in snaps.walk()] == []

    run(tmp_path, body, snapshots=True)
