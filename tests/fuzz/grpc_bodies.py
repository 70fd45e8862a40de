"""Malformed and random request bodies for any generated message type, encoded by hand.

The encoder is written against the protobuf wire format rather than through betterproto2, so it can
send what a well-behaved encoder never would: invalid UTF-8 in string fields, unknown enum values,
a field under the wrong wire type, truncated messages, another message's bytes. Every body is
small (a few KiB at most), so a run measures the daemon's validation, not its throughput.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import betterproto2

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5

_WIRE_TYPES = {
    "int32": VARINT, "int64": VARINT, "uint32": VARINT, "uint64": VARINT, "sint32": VARINT,
    "sint64": VARINT, "bool": VARINT, "enum": VARINT,
    "fixed64": FIXED64, "sfixed64": FIXED64, "double": FIXED64,
    "fixed32": FIXED32, "sfixed32": FIXED32, "float": FIXED32,
    "string": LENGTH, "bytes": LENGTH, "message": LENGTH, "map": LENGTH,
}  # fmt: skip

MAX_DEPTH = 3
PAYLOADS = (b"", b"a", b"hello fuzz\n", bytes(range(256)) * 4)
"""Blob contents the fuzzer writes and names by digest, so reads and updates meet real blobs."""


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative numbers as protobuf writes them: ten bytes
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint((number << 3) | wire_type)


def length_delimited(number: int, payload: bytes) -> bytes:
    return tag(number, LENGTH) + varint(len(payload)) + payload


def proto_meta(message_type: type[betterproto2.Message]) -> Any:
    """betterproto2's metadata of a message type (a class property mypy cannot bind)."""
    return message_type._betterproto  # type: ignore[arg-type]


def fields_of(message_type: type[betterproto2.Message]) -> dict[str, Any]:
    """Field name -> betterproto2's FieldMetadata (number, proto_type, map_meta, repeated)."""
    return dict(proto_meta(message_type).meta_by_field_name)


def nested_type(message_type: type[betterproto2.Message], field: str) -> type[betterproto2.Message]:
    """The message type of a message field (or a map's message values); for the well-known types
    betterproto2 unwraps (Timestamp as datetime, …), the wire message itself."""
    meta = fields_of(message_type)[field]
    if meta.proto_type == "map":
        meta = meta.map_meta[1]
        field = f"{field}.value"
    if meta.unwrap is not None:
        return meta.unwrap()  # type: ignore[no-any-return]
    return proto_meta(message_type).cls_by_field[field]  # type: ignore[no-any-return]


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Values:
    """Hostile values by kind; ``sandbox`` is the only real directory a mount may name."""

    rng: random.Random
    sandbox: Path
    invalid_utf8: float = 0.0
    """The chance that a string is not UTF-8 (decoders must refuse it, not crash on it)."""

    def text(self, field: str) -> bytes:
        rng = self.rng
        name = field.lower()
        if rng.random() < self.invalid_utf8:
            return rng.choice((bytes([0xFF, 0xFE, 0xC3, 0x28]), b"\xed\xa0\x80", b"ok\xc3"))
        pool: list[Callable[[], bytes]] = [
            lambda: b"",
            lambda: b"x" * rng.choice((1, 255, 256, 1024, 4096)),
            lambda: b"../" * rng.randint(1, 8) + b"etc/passwd",
            lambda: b"/" + b"../" * 3,
            lambda: b"a\x00b",
            lambda: b"\x00",
            lambda: "snowman-\u2603-\U0001f600".encode(),
            lambda: b"default",
            lambda: b" ",
            lambda: b"-",
            lambda: b".",
            lambda: b"..",
            lambda: b"a/b/../../c",
            lambda: "".join(
                chr(rng.choice((rng.randint(1, 0x7F), rng.randint(0x80, 0xD7FF))))
                for _ in range(rng.randint(1, 20))
            ).encode(),
            lambda: b"%s" * 10,
            lambda: b"labels.x==y,name~=[",
            lambda: b"k" + str(rng.randint(0, 5)).encode(),
        ]
        if "digest" in name or (name in ("expected", "id") and rng.random() < 0.3):
            pool += [lambda: _sha256(rng.choice(PAYLOADS)).encode()] * 8
            pool += [
                lambda: _sha256(rng.randbytes(8)).encode(),
                lambda: b"sha256:" + b"0" * 64,
                lambda: b"sha256:" + b"A" * 64,
                lambda: b"sha256:" + b"0" * 63,
                lambda: b"sha512:" + b"0" * 64,
                lambda: b"md5:" + b"0" * 32,
                lambda: b"sha256:../../" + b"0" * 52,
                lambda: b"sha256:",
                lambda: b":",
                lambda: _sha256(b"").encode(),
            ]
        if name in ("type", "media_type", "type_url"):
            pool += [lambda: b"bind", lambda: b"overlay", lambda: b"tmpfs", lambda: b"nonsense"]
            pool += [lambda: b"application/vnd.oci.image.layer.v1.tar+gzip", lambda: b"snapshots/native"]
            pool += [lambda: b"content", lambda: b"ingests", lambda: b"snapshots/", lambda: b"containers"]
        if name == "source":
            pool += [lambda: str(self.sandbox).encode(), lambda: b"/nonexistent-fuzz-source", lambda: b"none"]
        if name == "snapshotter":
            pool += [lambda: b"overlayfs", lambda: b"native"] * 12
        if name in ("key", "parent", "name", "ref", "id"):
            # A few names over and over, so calls meet what earlier calls made.
            pool += [lambda: b"k" + str(rng.randint(0, 3)).encode()] * 12
        if name in ("topic",):
            pool += [lambda: b"/fuzz/topic", lambda: b"/" * 3, lambda: b"no-slash"]
        if name in ("filters", "filter"):
            pool += [
                lambda: b"name==x",
                lambda: b'labels."a"==b',
                lambda: b"==",
                lambda: b"name~=(",
                lambda: b",,,",
            ]
        if name in ("paths",):
            pool += [lambda: b"labels", lambda: b"labels.x", lambda: b"name", lambda: b"labels."]
        if name == "options":
            lower = f"lowerdir={self.sandbox}/a:{self.sandbox}/b".encode()
            pool += [lambda: b"ro", lambda: b"rbind", lambda: b"rw", lambda: lower, lambda: b"lowerdir="]
            pool += [
                lambda: f"upperdir={self.sandbox}/u".encode(),
                lambda: f"workdir={self.sandbox}/w".encode(),
            ]
        return rng.choice(pool)()

    def integer(self, proto_type: str) -> int:
        rng = self.rng
        choices = [0, 1, -1, 2, 7, 2**31 - 1, -(2**31), 2**32, 2**63 - 1, -(2**63), rng.randint(-1000, 1000)]
        if proto_type.startswith("uint"):
            choices += [2**64 - 1]
        return rng.choice(choices)

    def enum(self) -> int:
        return self.rng.choice([0, 1, 2, 3, 4, 5, 99, -1, 2**31 - 1, 2**32 + 1])

    def raw(self) -> bytes:
        if self.rng.random() < 0.5:
            return self.rng.choice(PAYLOADS)
        return self.rng.randbytes(self.rng.randint(0, 64))


class BodyMaker:
    """Bodies for a message type, by strategy: random, truncated, mistyped, or another message."""

    def __init__(self, rng: random.Random, sandbox: Path, all_types: Sequence[type[betterproto2.Message]]):
        self.rng = rng
        self.values = Values(rng, sandbox)
        self.all_types = list(all_types)

    def body(self, message_type: type[betterproto2.Message]) -> tuple[str, bytes]:
        """(strategy, body) for one request."""
        rng = self.rng
        strategy = rng.choices(
            [
                "random-bytes",
                "valid-random",
                "truncated",
                "wrong-wire-type",
                "other-message",
                "empty",
                "invalid-utf8",
            ],
            weights=[8, 64, 6, 6, 6, 5, 5],
        )[0]
        self.values.invalid_utf8 = 0.3 if strategy == "invalid-utf8" else 0.0
        if strategy == "random-bytes":
            return strategy, rng.randbytes(rng.choice((1, 2, 5, 17, 100, 1000)))
        if strategy == "empty":
            return strategy, b""
        if strategy == "other-message":
            return strategy, self.message(rng.choice(self.all_types), 0)
        valid = self.message(message_type, 0)
        if strategy == "truncated" and len(valid) > 1:
            return strategy, valid[: rng.randint(1, len(valid) - 1)]
        if strategy == "wrong-wire-type":
            return strategy, valid + self._mistyped(message_type)
        return strategy if strategy == "invalid-utf8" else "valid-random", valid

    def _mistyped(self, message_type: type[betterproto2.Message]) -> bytes:
        meta = fields_of(message_type)
        if not meta:
            return tag(self.rng.randint(1, 20), VARINT) + varint(1)
        field = self.rng.choice(list(meta.values()))
        wire = self.rng.choice(
            [w for w in (VARINT, FIXED64, LENGTH, FIXED32) if w != _WIRE_TYPES[field.proto_type]]
        )
        return (
            tag(field.number, wire)
            + {
                VARINT: varint(5),
                FIXED64: b"\x01" * 8,
                LENGTH: varint(3) + b"abc",
                FIXED32: b"\x01" * 4,
            }[wire]
        )

    def message(self, message_type: type[betterproto2.Message], depth: int) -> bytes:
        """A well-framed message whose field values are hostile; some fields left out at random."""
        out = bytearray()
        for name, meta in fields_of(message_type).items():
            if self.rng.random() < (0.05 if name == "snapshotter" else 0.3):
                continue
            count = self.rng.choice((1, 1, 2, 5, 40)) if meta.repeated or meta.proto_type == "map" else 1
            for _ in range(count):
                out += self._field(message_type, name, meta, depth)
        if self.rng.random() < 0.05:
            out += tag(self.rng.randint(50, 5000), VARINT) + varint(1)  # an unknown field
        return bytes(out)

    def _field(self, owner: type[betterproto2.Message], name: str, meta: Any, depth: int) -> bytes:
        number, kind = meta.number, meta.proto_type
        if kind == "map":
            key_meta, value_meta = meta.map_meta
            entry = self._scalar(name, key_meta.proto_type, 1)
            if value_meta.proto_type == "message":
                if depth < MAX_DEPTH:
                    entry += length_delimited(2, self.message(nested_type(owner, name), depth + 1))
            else:
                entry += self._scalar(name, value_meta.proto_type, 2)
            return length_delimited(number, entry)
        if kind == "message":
            if depth >= MAX_DEPTH:
                return b""
            return length_delimited(number, self.message(nested_type(owner, name), depth + 1))
        return self._scalar(name, kind, number)

    def _scalar(self, name: str, kind: str, number: int) -> bytes:
        values = self.values
        if kind == "string":
            return length_delimited(number, values.text(name))
        if kind == "bytes":
            return length_delimited(number, values.raw() if self.rng.random() < 0.7 else values.text(name))
        if kind == "bool":
            return tag(number, VARINT) + varint(self.rng.choice((0, 1, 2, 2**40)))
        if kind == "enum":
            return tag(number, VARINT) + varint(values.enum())
        if kind in ("sint32", "sint64"):
            n = values.integer(kind)
            return tag(number, VARINT) + varint((n << 1) ^ (n >> 63))
        if kind in ("int32", "int64", "uint32", "uint64"):
            return tag(number, VARINT) + varint(values.integer(kind))
        if kind in ("fixed64", "sfixed64", "double"):
            return tag(number, FIXED64) + self.rng.randbytes(8)
        if kind in ("fixed32", "sfixed32", "float"):
            return tag(number, FIXED32) + self.rng.randbytes(4)
        raise AssertionError(f"unhandled proto type {kind}")
