"""The few protobuf wire-format primitives the ttrpc envelope needs: varints and length-delimited fields.

Hand-written because the envelope is decoded and encoded for every call; a generic codec costs
more than these few lines. Unknown fields of any wire type are skipped.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

VARINT = 0
FIXED64 = 1
LENGTH_DELIMITED = 2
START_GROUP = 3
END_GROUP = 4
FIXED32 = 5

_MASK64 = (1 << 64) - 1


class DecodeError(ValueError):
    """Bytes that are not a well-formed protobuf message."""


def encode_varint(value: int) -> bytes:
    """Unsigned LEB128; negative int64 values take their ten-byte two's complement form, as protobuf does."""
    if 0 <= value < 0x80:
        return bytes((value,))
    value &= _MASK64
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it."""
    result = 0
    shift = 0
    end = len(data)
    while True:
        if pos >= end:
            raise DecodeError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise DecodeError("varint longer than 10 bytes")


def as_int64(value: int) -> int:
    """A decoded varint read as a signed int64."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


def as_int32(value: int) -> int:
    """A decoded varint read as a signed int32 (negative ones are sent sign-extended to 64 bits)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def tag(field: int, wire_type: int) -> bytes:
    return encode_varint((field << 3) | wire_type)


def varint_field(field: int, value: int) -> bytes:
    """A varint field; proto3 leaves zero unset, so zero encodes to nothing."""
    if not value:
        return b""
    return tag(field, VARINT) + encode_varint(value)


def bool_field(field: int, value: bool) -> bytes:
    return (tag(field, VARINT) + b"\x01") if value else b""


def bytes_field(field: int, value: bytes, *, always: bool = False) -> bytes:
    """A length-delimited field; empty values are left unset unless ``always`` (repeated elements)."""
    if not value and not always:
        return b""
    return tag(field, LENGTH_DELIMITED) + encode_varint(len(value)) + value


def string_field(field: int, value: str, *, always: bool = False) -> bytes:
    return bytes_field(field, value.encode("utf-8"), always=always)


def skip_field(data: bytes | memoryview, pos: int, field: int, wire_type: int) -> int:
    """The position after the value of a field whose key was just read; how unknown fields are skipped."""
    end = len(data)
    if field == 0:
        raise DecodeError("field number 0")
    if wire_type == VARINT:
        _, pos = decode_varint(data, pos)
    elif wire_type == LENGTH_DELIMITED:
        length, pos = decode_varint(data, pos)
        pos += length
    elif wire_type == FIXED64:
        pos += 8
    elif wire_type == FIXED32:
        pos += 4
    elif wire_type == START_GROUP:
        while True:
            if pos >= end:
                raise DecodeError("truncated group")
            key, pos = decode_varint(data, pos)
            if key & 7 == END_GROUP:
                if key >> 3 != field:
                    raise DecodeError("mismatched end of group")
                return pos
            pos = skip_field(data, pos, key >> 3, key & 7)
    else:
        raise DecodeError(f"unexpected wire type {wire_type}")
    if pos > end:
        raise DecodeError(f"truncated field {field}")
    return pos


def iter_fields(data: bytes | memoryview) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) for every field in order: an int for varint and fixed
    fields, bytes for length-delimited ones. Groups are skipped whole."""
    view = data if isinstance(data, memoryview) else memoryview(data)
    pos, end = 0, len(view)
    while pos < end:
        key, pos = decode_varint(view, pos)
        field, wire_type = key >> 3, key & 7
        if field == 0:
            raise DecodeError("field number 0")
        if wire_type == VARINT:
            value, pos = decode_varint(view, pos)
            yield field, wire_type, value
        elif wire_type == LENGTH_DELIMITED:
            length, pos = decode_varint(view, pos)
            stop = pos + length
            if stop > end:
                raise DecodeError(f"truncated field {field}")
            yield field, wire_type, bytes(view[pos:stop])
            pos = stop
        elif wire_type == FIXED64:
            if pos + 8 > end:
                raise DecodeError(f"truncated field {field}")
            yield field, wire_type, struct.unpack_from("<Q", view, pos)[0]
            pos += 8
        elif wire_type == FIXED32:
            if pos + 4 > end:
                raise DecodeError(f"truncated field {field}")
            yield field, wire_type, struct.unpack_from("<I", view, pos)[0]
            pos += 4
        else:
            pos = skip_field(view, pos, field, wire_type)
