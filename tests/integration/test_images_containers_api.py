"""The Images and Containers services call by call, against corrald and Debian's containerd with
the same client: the same answers, error kinds and messages, and bad requests change nothing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import pytest
from containerd_daemon import Containerd
from harness import Daemon
from tooling import require_root, require_tool

from corral.api.client import Client, connect
from corral.api.types.containerd import types as ctypes
from corral.api.types.containerd.services.containers import v1 as cpb
from corral.api.types.containerd.services.images import v1 as ipb
from corral.api.types.google import protobuf

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DIGEST = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64
SPEC = protobuf.Any(type_url="types.containerd.io/opencontainers/runtime-spec/1/Spec", value=b"{}")


@pytest.fixture(scope="module")
def sockets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    require_root()
    require_tool("containerd")
    base = tmp_path_factory.mktemp("api")
    corral = Daemon(base / "corral").start()
    try:
        containerd = Containerd(base / "containerd").start()
        try:
            yield corral.socket, containerd.socket
        finally:
            containerd.stop()
    finally:
        corral.stop()


def outcome(socket: str, namespace: str, body: Callable[[Client], Awaitable[Any]]) -> Any:
    """What ``body`` returned, or the error's kind and message."""

    async def main() -> Any:
        async with connect(socket, namespace) as client:
            try:
                return await body(client)
            except Exception as exc:
                return (type(exc).__name__, str(exc))

    return anyio.run(main)


# Where containerd 2 (whose messages corral follows) words an error unlike Debian's 1.6.
WORDING_1_6 = (
    ("Target.", "target."),
    ("label key and value greater than maximum size (4096 bytes), key: k",
     "label key and value length (5001 bytes) greater than maximum size (4096 bytes)"),
)  # fmt: skip


def same(sockets: tuple[str, str], namespace: str, body: Callable[[Client], Awaitable[Any]]) -> Any:
    ours, theirs = (outcome(s, namespace, body) for s in sockets)
    if isinstance(theirs, tuple) and len(theirs) == 2 and isinstance(theirs[1], str):
        message = theirs[1]
        for old, new in WORDING_1_6:
            message = message.replace(old, new)
        theirs = (theirs[0], message)
    assert ours == theirs
    return ours


def target(digest: str = DIGEST, size: int = 10, media_type: str = MANIFEST) -> ctypes.Descriptor:
    return ctypes.Descriptor(media_type=media_type, digest=digest, size=size)


def shape(image: ipb.Image) -> tuple[str, dict[str, str], str, int, str, dict[str, str]]:
    assert image.target is not None
    t = image.target
    return image.name, dict(image.labels), t.digest, t.size, t.media_type, dict(t.annotations)


@pytest.mark.parametrize(
    ("name", "desc"),
    [
        ("", target()),
        ("bad-digest", target(digest="sha256:abc")),
        ("no-digest", target(digest="")),
        ("zero-size", target(size=0)),
        ("no-media-type", target(media_type="")),
    ],
)
def test_invalid_images_are_refused_alike(
    sockets: tuple[str, str], name: str, desc: ctypes.Descriptor
) -> None:
    kind, _ = same(sockets, "invalid", lambda c: c.create_image(name, desc))
    assert kind == "InvalidArgument"
    assert same(sockets, "invalid", lambda c: c.list_images()) == []


def test_image_calls_answer_alike(sockets: tuple[str, str]) -> None:
    ns = "images-api"

    async def create(c: Client) -> Any:
        return shape(await c.create_image("img:1", target(), {"a": "1", "empty": ""}))

    assert same(sockets, ns, create) == ("img:1", {"a": "1"}, DIGEST, 10, MANIFEST, {})
    assert same(sockets, ns, create)[0] == "AlreadyExists"
    assert same(sockets, ns, lambda c: c.get_image("nope"))[0] == "NotFound"

    async def label(c: Client) -> Any:
        return shape(await c.label_image("img:1", {"b": "2", "a": ""}))

    assert same(sockets, ns, label)[1] == {"b": "2"}

    async def update(paths: list[str], image: ipb.Image) -> Callable[[Client], Awaitable[Any]]:
        async def body(c: Client) -> Any:
            return shape(await c.update_image(image, paths))

        return body

    retarget = ipb.Image(name="img:1", target=target(OTHER, 20), labels={"c": "3"})
    for paths in (["target"], ["annotations.x"], ["labels"], ["name"], ["created_at"], []):
        body = anyio.run(update, paths, retarget)
        same(sockets, ns, body)
    absent = anyio.run(update, [], ipb.Image(name="absent", target=target()))
    assert same(sockets, ns, absent)[0] == "NotFound"
    nameless = anyio.run(update, [], ipb.Image(name="", target=target()))
    assert same(sockets, ns, nameless)[0] == "InvalidArgument"

    async def names(c: Client, *filters: str) -> list[str]:
        return [i.name for i in await c.list_images(filters)]

    for filters in ((), ("name==img:1",), (f"target.digest=={OTHER}",), ("labels.c==3",), ("name~=^x",)):
        same(sockets, ns, lambda c, f=filters: names(c, *f))  # type: ignore[misc]
    assert same(sockets, ns, lambda c: names(c, "name=="))[0] == "InvalidArgument"

    # Delete's target is containerd 2's (1.6 ignores the field): corrald alone refuses a stale one.
    wrong = outcome(sockets[0], ns, lambda c: c.delete_image("img:1", target=target(DIGEST)))
    assert wrong == ("NotFound", f'image "img:1" has target {OTHER}, not {DIGEST}: not found')
    assert same(sockets, ns, lambda c: c.delete_image("img:1", sync=True, target=target(OTHER))) is None
    assert same(sockets, ns, lambda c: c.delete_image("img:1"))[0] == "NotFound"
    assert same(sockets, ns, lambda c: names(c)) == []


def container(cid: str, **fields: Any) -> cpb.Container:
    values: dict[str, Any] = {
        "id": cid,
        "runtime": cpb.ContainerRuntime(name="io.containerd.runc.v2"),
        "spec": SPEC,
    }
    values.update(fields)
    return cpb.Container(**values)


def cshape(c: cpb.Container) -> tuple[Any, ...]:
    assert c.runtime is not None
    return (
        c.id, dict(c.labels), c.image, c.runtime.name, c.runtime.options, c.spec, c.snapshotter,
        c.snapshot_key, dict(c.extensions), c.created_at == c.updated_at,
    )  # fmt: skip


@pytest.mark.parametrize(
    "bad",
    [
        container(""),
        container("a/b"),
        container("x" * 77),
        container("no-runtime", runtime=None),
        container("no-spec", spec=None),
        container("key-only", snapshot_key="k"),
        container("empty-ext", extensions={"": SPEC}),
        container("big-label", labels={"k": "v" * 5000}),
    ],
)
def test_invalid_containers_are_refused_alike(sockets: tuple[str, str], bad: cpb.Container) -> None:
    kind, _ = same(sockets, "invalid-containers", lambda c: c.create_container(bad))
    assert kind == "InvalidArgument"
    assert same(sockets, "invalid-containers", lambda c: c.list_containers()) == []


def test_container_calls_answer_alike(sockets: tuple[str, str]) -> None:
    ns = "containers-api"
    assert same(sockets, ns, lambda c: c.get_container("web"))[0] == "NotFound"
    assert same(sockets, ns, lambda c: c.delete_container("web"))[0] == "NotFound"
    assert same(sockets, ns, lambda c: c.update_container(container("web")))[0] == "NotFound"

    web = container(
        "web",
        labels={"role": "web"},
        image="docker.io/library/busybox:latest",
        runtime=cpb.ContainerRuntime(
            name="io.containerd.runc.v2", options=protobuf.Any(type_url="x.Options")
        ),
        snapshotter="overlayfs",
        snapshot_key="web",
        extensions={"ext": protobuf.Any(type_url="x.Ext", value=b"\x01")},
    )

    async def create(c: Client) -> Any:
        return cshape(await c.create_container(web))

    created = same(sockets, ns, create)
    assert created[0] == "web" and created[-1] is True
    assert same(sockets, ns, create)[0] == "AlreadyExists"

    async def create_db(c: Client) -> Any:
        return cshape(await c.create_container(container("db", image="db")))

    assert same(sockets, ns, create_db)[0] == "db"

    async def update(c: Client, sent: cpb.Container, paths: list[str]) -> Any:
        return cshape(await c.update_container(sent, paths))

    for sent, paths in [
        (container("web", labels={"team": "a"}), ["labels.team"]),
        (container("web", image="other"), ["image"]),
        (container("web", snapshot_key="k2"), ["snapshotkey"]),
        (container("web", extensions={"more": SPEC}), ["extensions.more"]),
        (container("web"), ["extensions.ext"]),
        (container("web"), ["runtime"]),
        (container("web"), ["snapshotter"]),
        (container("web", spec=None), ["spec"]),
        (container("web", snapshotter="native"), []),
        (container("web", snapshotter="overlayfs"), []),
        (container("web", snapshotter="overlayfs", runtime=cpb.ContainerRuntime(name="other")), []),
        (container(""), ["labels"]),
    ]:
        same(sockets, ns, lambda c, s=sent, p=paths: update(c, s, p))  # type: ignore[misc]

    async def ids(c: Client, *filters: str) -> list[str]:
        listed = [
            x.id
            for x in (await c.containers.list(cpb.ListContainersRequest(filters=list(filters)))).containers
        ]
        streamed = [x.id for x in await c.list_containers(filters)]
        assert listed == streamed
        return streamed

    for filters in (
        (),
        ("id==web",),
        ("image==db",),
        ("runtime.name==io.containerd.runc.v2",),
        ("labels.team",),
    ):
        same(sockets, ns, lambda c, f=filters: ids(c, *f))  # type: ignore[misc]
    assert same(sockets, ns, lambda c: c.delete_container("web")) is None
    assert same(sockets, ns, lambda c: c.delete_container("web"))[0] == "NotFound"
    assert same(sockets, ns, lambda c: ids(c)) == ["db"]


def test_a_namespace_with_images_and_containers_is_not_removed_alike(sockets: tuple[str, str]) -> None:
    ns = "holding"

    async def create(c: Client) -> Any:
        return cshape(await c.create_container(container("c")))

    assert same(sockets, ns, create)[0] == "c"
    busy = same(sockets, ns, lambda c: c.delete_namespace(ns))
    assert busy == (
        "FailedPrecondition",
        f'namespace "{ns}" must be empty, but it still has containers: failed precondition',
    )

    async def image(c: Client) -> Any:
        return shape(await c.create_image("i", target()))

    same(sockets, ns, image)
    busy = same(sockets, ns, lambda c: c.delete_namespace(ns))
    assert "still has images, containers" in busy[1]
    same(sockets, ns, lambda c: c.delete_image("i"))
    same(sockets, ns, lambda c: c.delete_container("c"))
    assert same(sockets, ns, lambda c: c.delete_namespace(ns)) is None
