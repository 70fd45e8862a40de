"""The server's request decoding: what grpc-go's codec refuses, refused with a status, not a crash.

betterproto2 parses whatever bytes it is given: a string field sent as a varint comes out as an int,
a truncated message or invalid UTF-8 as a Python exception deep in a handler. Requests are checked
against their message's fields first, as containerd's generated unmarshalers check them (wrong wire
type, truncation, integer overflow, illegal tags), and strings must be UTF-8; what fails is
``UndecodableRequest``, which the server answers with Internal and grpc-go's words.

Flat messages (every field that holds anything a singular string, bytes, integer or bool: most
requests, many small responses, and messages whose nested, repeated and map fields are empty)
are decoded and encoded here without betterproto2's generic machinery, which spends 20 µs on a
three-field ``ReadContentRequest`` and 15 µs on a ``VersionResponse``, against a microsecond or
two here; the result is the same message and the same bytes (unknown fields, a value of the
wrong Python type, a nested, repeated or map field with something in it, oneofs and proto3
``optional`` fields go through betterproto2).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import betterproto2
from grpclib.encoding.proto import ProtoCodec

_VARINT, _FIXED64, _LENGTH, _START_GROUP, _END_GROUP, _FIXED32 = 0, 1, 2, 3, 4, 5
_WIRE_TYPES = {
    "int32": _VARINT, "int64": _VARINT, "uint32": _VARINT, "uint64": _VARINT, "sint32": _VARINT,
    "sint64": _VARINT, "bool": _VARINT, "enum": _VARINT,
    "fixed64": _FIXED64, "sfixed64": _FIXED64, "double": _FIXED64,
    "fixed32": _FIXED32, "sfixed32": _FIXED32, "float": _FIXED32,
    "string": _LENGTH, "bytes": _LENGTH, "message": _LENGTH, "map": _LENGTH,
}  # fmt: skip
_MAX_DEPTH = 100
"""How deeply messages may nest, as Go's protobuf limits recursion."""


class UndecodableRequest(ValueError):
    """A request body that is not a valid encoding of its message; the text is the decoder's."""


class RequestCodec(ProtoCodec):
    """grpclib's protobuf codec, checking each request before it is parsed."""

    def decode(self, data: bytes, message_type: Any) -> Any:
        view = memoryview(data)
        check_message(view, message_type)
        flat = _flat(message_type)
        if flat is not None:
            message = decode_flat(view, message_type, flat)
            if message is not None:
                return message
        try:
            return message_type.FromString(data)
        except Exception as exc:  # a value betterproto2 cannot hold (a timestamp out of range, …)
            raise UndecodableRequest(f"proto: {message_type.__name__}: {exc}") from None

    def encode(self, message: Any, message_type: Any) -> bytes:
        if type(message) is message_type:
            flat = _flat(message_type)  # type: ignore[arg-type]  # mypy: type[Any] is not Hashable
            if flat is not None:
                encoded = encode_flat(message, flat)
                if encoded is not None:
                    return encoded
        return super().encode(message, message_type)


_FLAT_KINDS = frozenset(("string", "bytes", "int32", "int64", "uint32", "uint64", "bool"))
_DEFAULTS: dict[str, Any] = {"string": "", "bytes": b"", "bool": False}
_TYPES: dict[str, type] = {"string": str, "bytes": bytes, "bool": bool}


@dataclass(frozen=True)
class _Flat:
    by_number: Mapping[int, tuple[str, str]]
    """Field number → (attribute, kind) of the singular scalar fields."""
    in_order: tuple[tuple[str, str, bytes], ...]
    """(attribute, kind, encoded key) in betterproto2's serialisation order."""
    messages: tuple[str, ...] = ()
    """Singular message fields: coded here only while unset (None)."""
    collections: tuple[str, ...] = ()
    """Repeated and map fields: coded here only while empty."""


@functools.cache
def _flat(message_type: type[betterproto2.Message]) -> _Flat | None:
    """How a message type's singular scalar fields are coded, or None if it has a field this
    codec never codes (oneof members, proto3 ``optional``, groups). Its other fields (messages,
    repeated and map fields) leave a message to betterproto2 whenever they hold anything."""
    if not (isinstance(message_type, type) and issubclass(message_type, betterproto2.Message)):
        return None
    pydantic: Any = getattr(betterproto2, "pydantic", None)
    if pydantic is not None and pydantic.dataclasses.is_pydantic_dataclass(message_type):
        return None
    meta: Any = message_type._betterproto  # type: ignore[arg-type]
    by_number: dict[int, tuple[str, str]] = {}
    in_order: list[tuple[str, str, bytes]] = []
    messages: list[str] = []
    collections: list[str] = []
    for name, field in meta.meta_by_field_name.items():
        kind = field.proto_type
        if field.group:
            return None
        if field.repeated or field.map_meta or kind == "map":
            collections.append(name)
            continue
        if kind == "message":  # (betterproto2 marks these optional: they may be None)
            messages.append(name)
            continue
        if field.optional or kind not in _FLAT_KINDS:
            return None
        by_number[field.number] = (name, kind)
        key = bytearray()
        put_varint(key, field.number << 3 | _WIRE_TYPES[kind])
        in_order.append((name, kind, bytes(key)))
    return _Flat(by_number, tuple(in_order), tuple(messages), tuple(collections))


def decode_flat(data: memoryview, message_type: Any, flat: _Flat) -> Any:
    """The message ``data`` (already checked) encodes, as betterproto2 would parse it; None when
    it holds a field the type does not know (betterproto2 keeps those)."""
    values: dict[str, Any] = {}
    pos, end = 0, len(data)
    by_number = flat.by_number
    while pos < end:
        key, pos = _varint(data, pos)
        found = by_number.get(key >> 3)
        if found is None:
            return None
        name, kind = found
        if kind == "string" or kind == "bytes":
            length, pos = _varint(data, pos)
            raw = bytes(data[pos : pos + length])
            pos += length
            values[name] = raw if kind == "bytes" else raw.decode("utf-8")
            continue
        value, pos = _varint(data, pos)
        if kind == "bool":
            values[name] = value > 0
        elif kind == "uint64":
            values[name] = value & 0xFFFFFFFFFFFFFFFF
        elif kind == "uint32":
            values[name] = value & 0xFFFFFFFF
        else:
            bits = 32 if kind == "int32" else 64
            value &= (1 << bits) - 1
            sign = 1 << (bits - 1)
            values[name] = (value ^ sign) - sign
    return message_type(**values)


def encode_flat(message: Any, flat: _Flat) -> bytes | None:
    """The bytes betterproto2 would write for a flat message; None if a value is not what its
    field holds (betterproto2 decides) or the message carries unknown fields."""
    if getattr(message, "_unknown_fields", b""):
        return None
    for name in flat.messages:
        if getattr(message, name) is not None:
            return None
    for name in flat.collections:
        held = getattr(message, name)
        if type(held) not in (list, dict) or held:
            return None
    out = bytearray()
    for name, kind, key in flat.in_order:
        found: Any = getattr(message, name)
        if type(found) is not _TYPES.get(kind, int):
            return None
        value: Any = found  # mypy narrows ``found`` to object
        if value == _DEFAULTS.get(kind, 0):
            continue
        out += key
        if kind == "string":
            raw = value.encode("utf-8")
            put_varint(out, len(raw))
            out += raw
        elif kind == "bytes":
            put_varint(out, len(value))
            out += value
        elif -(1 << 63) <= value < 1 << 64:
            put_varint(out, value + (1 << 64) if value < 0 else value)
        else:
            return None
    return bytes(out)


def put_varint(out: bytearray, value: int) -> None:
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


@dataclass(frozen=True)
class _Field:
    name: str
    """As Go's generated code names it in errors: ``media_type`` is ``MediaType``."""
    kind: str
    wire_type: int
    repeated: bool
    nested: type[betterproto2.Message] | None = None
    entry: Mapping[int, _Field] | None = None
    """A map's entry: key (1) and value (2)."""


def check_message(data: memoryview, message_type: type[betterproto2.Message]) -> None:
    """UndecodableRequest unless ``data`` is well-formed for ``message_type``; unknown fields pass."""
    _check(data, _fields(message_type), 0)


@functools.cache
def _fields(message_type: type[betterproto2.Message]) -> Mapping[int, _Field]:
    meta: Any = message_type._betterproto  # type: ignore[arg-type]  # a classproperty mypy cannot bind
    out: dict[int, _Field] = {}
    for name, field in meta.meta_by_field_name.items():
        out[field.number] = _field(name, field, lambda n: meta.cls_by_field[n])
    return out


def _field(name: str, field: Any, cls_by_field: Callable[[str], Any]) -> _Field:
    kind = field.proto_type
    nested = entry = None
    if kind == "message":
        nested = field.unwrap() if field.unwrap is not None else cls_by_field(name)
    elif kind == "map":
        key, value = field.map_meta
        entry = {1: _field(f"{name}.key", key, cls_by_field), 2: _field(f"{name}.value", value, cls_by_field)}
    go_name = "".join(part[:1].upper() + part[1:] for part in name.split(".")[0].split("_"))
    return _Field(go_name, kind, _WIRE_TYPES[kind], field.repeated, nested, entry)


def _check(data: memoryview, fields: Mapping[int, _Field], depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise UndecodableRequest("proto: exceeded maximum recursion depth")
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if number <= 0:
            raise UndecodableRequest(f"proto: illegal tag {number} (wire type {wire_type})")
        if wire_type in (_START_GROUP, _END_GROUP) or wire_type > _FIXED32:
            raise UndecodableRequest(f"proto: illegal wireType {wire_type}")
        field = fields.get(number)
        if field is not None and wire_type != field.wire_type:
            packed = field.repeated and field.wire_type != _LENGTH and wire_type == _LENGTH
            if not packed:
                raise UndecodableRequest(f"proto: wrong wireType = {wire_type} for field {field.name}")
        if wire_type == _VARINT:
            _, pos = _varint(data, pos)
        elif wire_type == _FIXED64:
            pos += 8
        elif wire_type == _FIXED32:
            pos += 4
        else:
            length, pos = _varint(data, pos)
            if length > end - pos:
                raise UndecodableRequest("unexpected EOF")
            if field is not None:
                _check_value(data[pos : pos + length], field, depth)
            pos += length
        if pos > end:
            raise UndecodableRequest("unexpected EOF")


def _check_value(value: memoryview, field: _Field, depth: int) -> None:
    if field.kind == "string":
        try:
            bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise UndecodableRequest(f"proto: field {field.name} contains invalid UTF-8") from None
    elif field.nested is not None:
        _check(value, _fields(field.nested), depth + 1)
    elif field.entry is not None:
        _check(value, field.entry, depth + 1)


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    end = len(data)
    while True:
        if pos >= end:
            raise UndecodableRequest("unexpected EOF")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise UndecodableRequest("proto: integer overflow")
