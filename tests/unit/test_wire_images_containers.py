"""Images, containers and their events to the wire and back, as containerd encodes them."""

from __future__ import annotations

from datetime import UTC, datetime

from corral.api.types.containerd import events as events_pb
from corral.api.types.containerd.services.images import v1 as images_pb
from corral.api.wire import (
    container_from_wire,
    container_to_wire,
    event_from_any,
    event_to_any,
    image_from_wire,
    image_to_wire,
)
from corral.plugins.core import Descriptor
from corral.plugins.events.types import (
    ContainerCreate,
    ContainerCreateRuntime,
    ContainerDelete,
    ContainerUpdate,
    ImageCreate,
    ImageDelete,
    ImageUpdate,
)
from corral.plugins.metadata import AnyValue, Container, ContainerRuntime, Image

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_an_image_round_trips_without_its_times() -> None:
    image = Image("a:1", Descriptor("m", "sha256:" + "a" * 64, 3, {"x": "y"}), {"l": "v"}, NOW, NOW)
    wire = image_to_wire(image)
    assert wire.target is not None and wire.target.annotations == {"x": "y"}
    assert wire.created_at == NOW
    assert image_from_wire(wire) == Image(image.name, image.target, image.labels)
    # A request without a target is an empty one, for the store to refuse.
    assert image_from_wire(images_pb.Image(name="n")).target == Descriptor("", "", 0)


def test_a_container_round_trips_with_its_anys() -> None:
    c = Container(
        id="c",
        runtime=ContainerRuntime(
            "io.containerd.runc.v2", AnyValue("containerd.runc.v1.Options", b"\x08\x01")
        ),
        labels={"a": "b"},
        image="img",
        spec=AnyValue("types.containerd.io/opencontainers/runtime-spec/1/Spec", b"{}"),
        snapshotter="overlayfs",
        snapshot_key="c",
        extensions={"e": AnyValue("x.E", b"\x01")},
        sandbox="s",
    )
    wire = container_to_wire(c)
    assert (
        wire.spec is not None
        and wire.spec.type_url == "types.containerd.io/opencontainers/runtime-spec/1/Spec"
    )
    assert container_from_wire(wire) == c
    assert container_from_wire(container_to_wire(Container("d", ContainerRuntime("r")))).spec is None


def test_image_and_container_events_are_containerds_messages() -> None:
    options = AnyValue("containerd.runc.v1.Options", b"\x08\x01")
    create = ContainerCreate(
        id="c", image="img", runtime=ContainerCreateRuntime("io.containerd.runc.v2", options)
    )
    encoded = event_to_any(create)
    assert encoded.type_url == "containerd.events.ContainerCreate"
    message = events_pb.ContainerCreate.parse(encoded.value)
    assert message.runtime is not None and message.runtime.name == "io.containerd.runc.v2"
    assert message.runtime.options is not None and message.runtime.options.value == b"\x08\x01"
    back = event_from_any(encoded)
    assert isinstance(back, ContainerCreate) and back.runtime is not None
    assert (back.runtime.name, back.runtime.options.type_url) == ("io.containerd.runc.v2", options.type_url)  # type: ignore[union-attr]
    for event, url in [
        (ImageCreate(name="n", labels={"a": "b"}), "containerd.services.images.v1.ImageCreate"),
        (ImageUpdate(name="n", labels={"a": "b"}), "containerd.services.images.v1.ImageUpdate"),
        (ImageDelete(name="n"), "containerd.services.images.v1.ImageDelete"),
        (
            ContainerUpdate(id="c", image="i", labels={"x": "y"}, snapshot_key="k"),
            "containerd.events.ContainerUpdate",
        ),
        (ContainerDelete(id="c"), "containerd.events.ContainerDelete"),
    ]:
        assert event_to_any(event).type_url == url
        assert event_from_any(event_to_any(event)) == event
