"""Kernel and plugin records to wire messages and back: the one place conversions live.

Plugins never import the generated types; services, the client and the CLI convert through here.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import typing
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import betterproto2

from corral.api.edge import UNKNOWN, code_for
from corral.api.types.containerd import types as ctypes
from corral.api.types.google import protobuf, rpc
from corral.api.types.message_pool import default_message_pool
from corral.kernel import InvalidArgument, PluginRecord, Status
from corral.plugins.content import Info, IngestStatus
from corral.plugins.core import Descriptor, Mount
from corral.plugins.events.types import EVENT_TYPES, Envelope, Event, RawEvent
from corral.plugins.metadata import AnyValue, Container, ContainerRuntime, Image, Lease, Namespace
from corral.plugins.snapshots import Info as SnapshotInfo
from corral.plugins.snapshots import Kind

T = TypeVar("T")


class _OnFirstUse:
    """A service's generated module, imported when a conversion first reads from it, which then
    takes this stand-in's place in this module. corrald starts plugins that need a few of these
    conversions (the events service's envelopes) and not every service's messages."""

    def __init__(self, name: str, module: str) -> None:
        self._name = name
        self._module = module

    def __getattr__(self, attr: str) -> Any:
        module = importlib.import_module(self._module)
        globals()[self._name] = module
        return getattr(module, attr)


if TYPE_CHECKING:
    from corral.api.types.containerd.services.containers import v1 as containers_pb
    from corral.api.types.containerd.services.content import v1 as content_pb
    from corral.api.types.containerd.services.images import v1 as images_pb
    from corral.api.types.containerd.services.introspection import v1 as introspection
    from corral.api.types.containerd.services.leases import v1 as leases_pb
    from corral.api.types.containerd.services.namespaces import v1 as namespaces_pb
    from corral.api.types.containerd.services.snapshots import v1 as snapshots_pb
else:
    _SERVICES = "corral.api.types.containerd.services"
    containers_pb = _OnFirstUse("containers_pb", f"{_SERVICES}.containers.v1")
    content_pb = _OnFirstUse("content_pb", f"{_SERVICES}.content.v1")
    images_pb = _OnFirstUse("images_pb", f"{_SERVICES}.images.v1")
    introspection = _OnFirstUse("introspection", f"{_SERVICES}.introspection.v1")
    leases_pb = _OnFirstUse("leases_pb", f"{_SERVICES}.leases.v1")
    namespaces_pb = _OnFirstUse("namespaces_pb", f"{_SERVICES}.namespaces.v1")
    snapshots_pb = _OnFirstUse("snapshots_pb", f"{_SERVICES}.snapshots.v1")


# -- mounts and descriptors ---------------------------------------------------------------------
RUNC_OPTIONS_TYPE_URL = "containerd.runc.v1.Options"
"""The type URL of the runc shim's Options in a container's runtime options."""


def mounts_to_wire(mounts: Iterable[Mount]) -> list[ctypes.Mount]:
    return [
        ctypes.Mount(type=m.type, source=m.source, target=m.target, options=list(m.options)) for m in mounts
    ]


def mounts_from_wire(mounts: Iterable[ctypes.Mount]) -> list[Mount]:
    return [Mount(m.type, m.source, tuple(m.options), m.target) for m in mounts]


def descriptor_to_wire(desc: Descriptor) -> ctypes.Descriptor:
    return ctypes.Descriptor(
        media_type=desc.media_type, digest=desc.digest, size=desc.size, annotations=dict(desc.annotations)
    )


def descriptor_from_wire(desc: ctypes.Descriptor | None, what: str = "descriptor") -> Descriptor:
    if desc is None:
        raise InvalidArgument(f"{what} is required")
    return Descriptor(desc.media_type, desc.digest, desc.size, dict(desc.annotations))


# -- records ------------------------------------------------------------------------------------
def content_info(info: Info) -> content_pb.Info:
    return content_pb.Info(
        digest=info.digest,
        size=info.size,
        created_at=info.created_at,
        updated_at=info.updated_at,
        labels=dict(info.labels),
    )


def ingest_status(st: IngestStatus) -> content_pb.Status:
    return content_pb.Status(
        started_at=st.started_at,
        updated_at=st.updated_at,
        ref=st.ref,
        offset=st.offset,
        total=st.total,
        expected=st.expected,
    )


def snapshot_info(info: SnapshotInfo) -> snapshots_pb.Info:
    return snapshots_pb.Info(
        name=info.name,
        parent=info.parent,
        kind=snapshots_pb.Kind(info.kind.value),
        created_at=info.created_at,
        updated_at=info.updated_at,
        labels=dict(info.labels),
    )


def snapshot_info_from_wire(info: snapshots_pb.Info | None) -> SnapshotInfo:
    if info is None:
        raise InvalidArgument("info is required")
    return SnapshotInfo(info.name, Kind.UNKNOWN, labels=dict(info.labels))


def lease(lease: Lease) -> leases_pb.Lease:
    return leases_pb.Lease(id=lease.id, created_at=lease.created_at, labels=dict(lease.labels))


def namespace(ns: Namespace) -> namespaces_pb.Namespace:
    return namespaces_pb.Namespace(name=ns.name, labels=dict(ns.labels))


def image_to_wire(image: Image) -> images_pb.Image:
    return images_pb.Image(
        name=image.name,
        labels=dict(image.labels),
        target=descriptor_to_wire(image.target),
        created_at=image.created_at,
        updated_at=image.updated_at,
    )


def image_from_wire(image: images_pb.Image | None) -> Image:
    """An image as a request sends it; a missing target is an empty one (the store refuses it)."""
    if image is None:
        raise InvalidArgument("image is required")
    target = image.target
    desc = Descriptor("", "", 0) if target is None else descriptor_from_wire(target)
    return Image(image.name, desc, dict(image.labels))


def any_to_wire(value: AnyValue | None) -> protobuf.Any | None:
    return None if value is None else protobuf.Any(type_url=value.type_url, value=value.value)


def any_from_wire(value: protobuf.Any | None) -> AnyValue | None:
    return None if value is None else AnyValue(value.type_url, bytes(value.value))


def extensions_to_wire(extensions: Mapping[str, AnyValue]) -> dict[str, protobuf.Any]:
    return {k: protobuf.Any(type_url=v.type_url, value=v.value) for k, v in extensions.items()}


def extensions_from_wire(extensions: Mapping[str, protobuf.Any]) -> dict[str, AnyValue]:
    return {k: AnyValue(v.type_url, bytes(v.value)) for k, v in extensions.items()}


def container_to_wire(c: Container) -> containers_pb.Container:
    return containers_pb.Container(
        id=c.id,
        labels=dict(c.labels),
        image=c.image,
        runtime=containers_pb.ContainerRuntime(name=c.runtime.name, options=any_to_wire(c.runtime.options)),
        spec=any_to_wire(c.spec),
        snapshotter=c.snapshotter,
        snapshot_key=c.snapshot_key,
        created_at=c.created_at,
        updated_at=c.updated_at,
        extensions=extensions_to_wire(c.extensions),
        sandbox=c.sandbox,
    )


def container_from_wire(c: containers_pb.Container | None) -> Container:
    if c is None:
        raise InvalidArgument("container is required")
    runtime = c.runtime
    return Container(
        id=c.id,
        runtime=ContainerRuntime(
            runtime.name if runtime else "", any_from_wire(runtime.options if runtime else None)
        ),
        labels=dict(c.labels),
        image=c.image,
        spec=any_from_wire(c.spec),
        snapshotter=c.snapshotter,
        snapshot_key=c.snapshot_key,
        extensions=extensions_from_wire(c.extensions),
        sandbox=c.sandbox,
    )


def field_mask_paths(mask: protobuf.FieldMask | None) -> list[str]:
    return list(mask.paths) if mask else []


# -- plugins ------------------------------------------------------------------------------------
def platforms(rec: PluginRecord) -> list[ctypes.Platform]:
    return [
        ctypes.Platform(os=p.os, architecture=p.architecture, variant=p.variant) for p in rec.meta.platforms
    ]


def _init_error(rec: PluginRecord) -> tuple[int, str] | None:
    if rec.status is Status.OK:
        return None
    code = code_for(rec.error) if rec.error is not None else None
    message = str(rec.error) if rec.error is not None else rec.reason
    if rec.status is Status.SKIP and "skip plugin" not in message:
        message = f"{rec.reason}: skip plugin"
    return (code if code is not None else UNKNOWN, message)


def init_error(rec: PluginRecord) -> rpc.Status | None:
    """containerd's init_err: set iff the plugin is not ok; skips say "skip plugin"."""
    found = _init_error(rec)
    return None if found is None else rpc.Status(code=found[0], message=found[1])


_PluginKey = tuple[
    str,
    str,
    tuple[str, ...],
    tuple[tuple[str, str, str], ...],
    tuple[tuple[str, str], ...],
    tuple[str, ...],
    "tuple[int, str] | None",
]


def _plugin_key(rec: PluginRecord) -> _PluginKey:
    """Everything a plugin's wire form is made of, as a value."""
    return (
        rec.type,
        rec.id,
        rec.requires + tuple(t for t in rec.after if t not in rec.requires),
        tuple((p.os, p.architecture, p.variant) for p in rec.meta.platforms),
        tuple(rec.meta.exports.items()),
        tuple(rec.meta.capabilities),
        _init_error(rec),
    )


def _plugin_message(key: _PluginKey) -> introspection.Plugin:
    kind, ident, requires, plats, exports, capabilities, err = key
    return introspection.Plugin(
        type=kind,
        id=ident,
        requires=list(requires),
        platforms=[ctypes.Platform(os=o, architecture=a, variant=v) for o, a, v in plats],
        exports=dict(exports),
        capabilities=list(capabilities),
        init_err=None if err is None else rpc.Status(code=err[0], message=err[1]),
    )


def plugin(rec: PluginRecord) -> introspection.Plugin:
    return _plugin_message(_plugin_key(rec))


@functools.lru_cache(maxsize=1024)
def _plugin_bytes(key: _PluginKey) -> bytes:
    return bytes(_plugin_message(key))


def plugin_bytes(rec: PluginRecord) -> bytes:
    """``bytes(plugin(rec))``, made once per distinct state of the plugin: ``ctr plugins ls`` asks
    for every plugin, and betterproto2 took more time encoding the list than ctr takes to print it."""
    return _plugin_bytes(_plugin_key(rec))


# -- events -------------------------------------------------------------------------------------
_POOL_PREFIX = "type.googleapis.com/"


def proto_class(type_url: str) -> type[betterproto2.Message]:
    """The generated message for a bare containerd type_url such as ``containerd.events.NamespaceCreate``."""
    found = default_message_pool.url_to_type.get(_POOL_PREFIX + type_url)
    if found is None:
        # containerd's event messages register themselves in the pool when imported: on the
        # first event, not at start-up, where their hundred-odd classes would cost milliseconds.
        importlib.import_module("corral.api.types.containerd.events")
        found = default_message_pool.url_to_type.get(_POOL_PREFIX + type_url)
    if found is None:
        raise LookupError(f"no protobuf message is generated for {type_url}")
    return found


def event_to_any(event: Event) -> protobuf.Any:
    """An Any with containerd's bare type_url (no type.googleapis.com/ prefix, which ctr rejects)."""
    if isinstance(event, RawEvent):
        return protobuf.Any(type_url=event.type_url, value=event.value)
    return protobuf.Any(type_url=event.TYPE_URL, value=bytes(_message(proto_class(event.TYPE_URL), event)))


def _message(cls: type[betterproto2.Message], record: object) -> betterproto2.Message:
    """A record (an event or a part of one) as the message ``cls``; nested records become nested
    messages, and anything with ``type_url`` and ``value`` in an Any field a protobuf Any."""
    if cls is protobuf.Any:
        return protobuf.Any(type_url=getattr(record, "type_url", ""), value=getattr(record, "value", b""))
    field_classes: Mapping[str, Any] = cls._betterproto.cls_by_field  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for f in dataclasses.fields(record):  # type: ignore[arg-type]
        value = getattr(record, f.name)
        if isinstance(value, Mapping):
            value = dict(value)
        elif value is not None and (dataclasses.is_dataclass(value) or hasattr(value, "type_url")):
            value = _message(field_classes[f.name], value)
        elif isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
            value = [_message(field_classes[f.name], item) for item in value]
        elif isinstance(value, tuple):
            value = list(value)
        values[f.name] = value
    return cls(**values)


def event_from_any(value: protobuf.Any) -> Event:
    """The record type for a known type_url, else the encoded event as it came."""
    record = EVENT_TYPES.get(value.type_url)
    if record is None or not record.DECODE:
        return RawEvent(type_url=value.type_url, value=value.value)
    message = proto_class(value.type_url).parse(value.value)
    return _record(record, message)


def _record(record: type[T], message: betterproto2.Message) -> T:
    """The record for a message; a nested message becomes the nested record its field names
    (a protobuf Any is kept: it has the ``type_url`` and ``value`` a TypedValue needs)."""
    hints = typing.get_type_hints(record)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(record):  # type: ignore[arg-type]
        value = getattr(message, f.name)
        if isinstance(value, betterproto2.Message) and not isinstance(value, protobuf.Any):
            nested = next(
                (
                    t
                    for t in typing.get_args(hints[f.name]) or (hints[f.name],)
                    if isinstance(t, type) and dataclasses.is_dataclass(t)
                ),
                None,
            )
            if nested is not None:
                value = _record(nested, value)
        values[f.name] = value
    return record(**values)


def envelope_to_wire(envelope: Envelope) -> ctypes.Envelope:
    return ctypes.Envelope(
        timestamp=envelope.timestamp,
        namespace=envelope.namespace,
        topic=envelope.topic,
        event=event_to_any(envelope.event),
    )


def envelope_from_wire(envelope: ctypes.Envelope) -> Envelope:
    """A forwarded envelope, its event kept encoded so it reaches subscribers byte for byte."""
    if envelope.timestamp is None:
        raise InvalidArgument("timestamp must be set on forwarded event")
    if envelope.event is None:
        raise InvalidArgument("event must be set on forwarded event")
    return Envelope(
        timestamp=envelope.timestamp,
        namespace=envelope.namespace,
        topic=envelope.topic,
        event=RawEvent(type_url=envelope.event.type_url, value=envelope.event.value),
    )
