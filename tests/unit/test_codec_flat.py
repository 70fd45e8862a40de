"""The codec's own coding of flat messages gives betterproto2's messages and bytes exactly."""

from __future__ import annotations

import importlib
import pkgutil
import random
from typing import Any

import betterproto2
import pytest

import corral.api.types
from corral.api.grpc.codec import RequestCodec, _flat, put_varint
from corral.api.types.containerd.services.content import v1 as content_pb
from corral.api.types.containerd.services.introspection import v1 as introspection_pb
from corral.api.types.containerd.services.version import v1 as version_pb


def _message_types() -> list[type[betterproto2.Message]]:
    found = []
    for info in pkgutil.walk_packages(corral.api.types.__path__, corral.api.types.__name__ + "."):
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, betterproto2.Message)
                and value.__module__ == module.__name__
            ):
                found.append(value)
    return found


FLAT = [t for t in _message_types() if _flat(t) is not None]
_INT_RANGES = {
    "int32": (-(1 << 31), (1 << 31) - 1),
    "int64": (-(1 << 63), (1 << 63) - 1),
    "uint32": (0, (1 << 32) - 1),
    "uint64": (0, (1 << 64) - 1),
}


def _value(rng: random.Random, kind: str) -> Any:
    if rng.random() < 0.25:  # defaults are left out of the encoding
        return {"string": "", "bytes": b"", "bool": False}.get(kind, 0)
    if kind == "string":
        return "".join(rng.choice("az09:/-é€😀\x00") for _ in range(rng.randint(1, 40)))
    if kind == "bytes":
        return rng.randbytes(rng.randint(1, 300))
    if kind == "bool":
        return True
    low, high = _INT_RANGES[kind]
    return rng.choice([low, high, -1 if low else 1, 1, 127, 128, 300, rng.randint(low, high)])


def _same(a: Any, b: Any) -> None:
    assert type(a) is type(b)
    assert a == b
    for name in a._betterproto.meta_by_field_name:
        assert type(getattr(a, name)) is type(getattr(b, name)), name
    assert a._unknown_fields == b._unknown_fields


def test_most_requests_are_flat() -> None:
    assert len(FLAT) > 300
    assert content_pb.ReadContentRequest in FLAT and version_pb.VersionResponse in FLAT
    assert introspection_pb.ServerResponse in FLAT  # its repeated deprecations are coded while empty
    assert _flat(content_pb.WriteContentRequest) is None  # an enum (action)


def test_a_nested_repeated_or_map_field_with_something_in_it_goes_to_betterproto2() -> None:
    codec = RequestCodec()
    cases: list[Any] = [
        introspection_pb.ServerResponse(
            uuid="u", pid=1, deprecations=[introspection_pb.DeprecationWarning(id="x")]
        ),
        content_pb.InfoResponse(info=content_pb.Info(digest="sha256:x", size=1)),
        content_pb.InfoResponse(info=content_pb.Info()),  # set, though all its fields are defaults
        content_pb.Info(digest="d", labels={"a": "b"}),
        content_pb.ListContentRequest(filters=["a", "b"]),
    ]
    for message in cases:
        assert _flat(type(message)) is not None
        expected = bytes(message)
        assert codec.encode(message, type(message)) == expected
        _same(codec.decode(expected, type(message)), type(message).FromString(expected))
    assert bytes(content_pb.InfoResponse(info=content_pb.Info())) != b""  # presence is coded


@pytest.mark.parametrize(
    "message_type", FLAT, ids=lambda t: f"{t.__module__.rsplit('.', 2)[-2]}.{t.__name__}"
)
def test_flat_messages_code_as_betterproto2_does(message_type: type[betterproto2.Message]) -> None:
    codec = RequestCodec()
    flat = _flat(message_type)
    assert flat is not None
    rng = random.Random(message_type.__name__)
    for _ in range(30):
        values = {name: _value(rng, kind) for name, kind, _ in flat.in_order}
        message = message_type(**values)
        expected = bytes(message)
        assert codec.encode(message, message_type) == expected
        _same(codec.decode(expected, message_type), message_type.FromString(expected))
        # The same field twice (the last wins), and a field the type does not know (kept).
        doubled = expected + expected
        _same(codec.decode(doubled, message_type), message_type.FromString(doubled))
        unknown = bytearray(expected)
        put_varint(unknown, 999 << 3)
        unknown.append(1)
        _same(codec.decode(bytes(unknown), message_type), message_type.FromString(bytes(unknown)))
    # Integers as other encoders write them: 32-bit values not sign-extended, any 64-bit varint.
    for _name, kind, key in flat.in_order:
        if kind in ("string", "bytes"):
            continue
        for raw in (0xFFFFFFFF, 0x80000000, 1 << 40, (1 << 64) - 1, 2, rng.getrandbits(64)):
            wire = bytearray(key)
            put_varint(wire, raw)
            _same(codec.decode(bytes(wire), message_type), message_type.FromString(bytes(wire)))


def test_values_of_another_type_go_to_betterproto2() -> None:
    codec = RequestCodec()
    for odd in (
        content_pb.ReadContentRequest(digest="d", offset=True),  # type: ignore[arg-type]
        content_pb.ReadContentRequest(digest="d", offset=1 << 70),
    ):
        try:
            expected: Any = bytes(odd)
        except Exception as exc:  # betterproto2 refuses it: so must the codec
            with pytest.raises(type(exc)):
                codec.encode(odd, content_pb.ReadContentRequest)
        else:
            assert codec.encode(odd, content_pb.ReadContentRequest) == expected
