"""ttrpc's envelope messages, encoded and decoded by hand on every call.

Field numbers follow ttrpc's request.proto and google/rpc/status.proto:
``ttrpc.Request{service=1, method=2, payload=3, timeout_nano=4, metadata=5 KeyValue{key=1, value=2}}``,
``ttrpc.Response{status=1 google.rpc.Status{code=1, message=2, details=3 Any{type_url=1, value=2}}, payload=2}``.
"""

from __future__ import annotations

from dataclasses import dataclass

from corral.api.ttrpc.protowire import (
    LENGTH_DELIMITED,
    VARINT,
    DecodeError,
    as_int32,
    as_int64,
    bytes_field,
    decode_varint,
    encode_varint,
    skip_field,
    string_field,
    tag,
    varint_field,
)

Metadata = tuple[tuple[str, str], ...]
"""Metadata pairs in wire order; a key may repeat."""


@dataclass(frozen=True, slots=True)
class Request:
    service: str
    method: str
    payload: bytes = b""
    timeout_nano: int = 0
    metadata: Metadata = ()


@dataclass(frozen=True, slots=True)
class Detail:
    """A ``google.protobuf.Any`` in a status's details."""

    type_url: str
    value: bytes = b""


@dataclass(frozen=True, slots=True)
class Status:
    """``google.rpc.Status``; code 0 is OK."""

    code: int
    message: str = ""
    details: tuple[Detail, ...] = ()


@dataclass(frozen=True, slots=True)
class Response:
    """A reply: ``status`` is None (or code 0) on success, and then ``payload`` is the answer."""

    payload: bytes = b""
    status: Status | None = None


def _length_delimited(data: memoryview, pos: int, field: int) -> tuple[bytes, int]:
    length, pos = decode_varint(data, pos)
    end = pos + length
    if end > len(data):
        raise DecodeError(f"truncated field {field}")
    return bytes(data[pos:end]), end


def _submessage(field: int, body: bytes) -> bytes:
    return tag(field, LENGTH_DELIMITED) + encode_varint(len(body)) + body


def encode_request(request: Request) -> bytes:
    parts = [
        string_field(1, request.service),
        string_field(2, request.method),
        bytes_field(3, request.payload),
        varint_field(4, request.timeout_nano),
    ]
    for key, value in request.metadata:
        parts.append(_submessage(5, string_field(1, key) + string_field(2, value)))
    return b"".join(parts)


def decode_request(data: bytes) -> Request:
    """A Request from its bytes; unknown fields are skipped, a malformed message raises DecodeError."""
    view = memoryview(data)
    service = method = ""
    payload = b""
    timeout = 0
    metadata: list[tuple[str, str]] = []
    pos, end = 0, len(view)
    try:
        while pos < end:
            key = view[pos]
            if key < 0x80:
                pos += 1
            else:
                key, pos = decode_varint(view, pos)
            field, wire_type = key >> 3, key & 7
            if wire_type == LENGTH_DELIMITED and field in (1, 2, 3, 5):
                raw, pos = _length_delimited(view, pos, field)
                if field == 1:
                    service = raw.decode("utf-8")
                elif field == 2:
                    method = raw.decode("utf-8")
                elif field == 3:
                    payload = raw
                else:
                    metadata.append(_decode_key_value(raw))
            elif wire_type == VARINT and field == 4:
                value, pos = decode_varint(view, pos)
                timeout = as_int64(value)
            else:
                pos = skip_field(view, pos, field, wire_type)
    except UnicodeDecodeError as exc:
        raise DecodeError(f"invalid UTF-8 in a string field: {exc.reason}") from None
    return Request(service, method, payload, timeout, tuple(metadata))


def _decode_key_value(data: bytes) -> tuple[str, str]:
    view = memoryview(data)
    name = value = ""
    pos, end = 0, len(view)
    while pos < end:
        key, pos = decode_varint(view, pos)
        field, wire_type = key >> 3, key & 7
        if wire_type == LENGTH_DELIMITED and field in (1, 2):
            raw, pos = _length_delimited(view, pos, field)
            if field == 1:
                name = raw.decode("utf-8")
            else:
                value = raw.decode("utf-8")
        else:
            pos = skip_field(view, pos, field, wire_type)
    return name, value


def encode_status(status: Status) -> bytes:
    parts = [varint_field(1, status.code), string_field(2, status.message)]
    for detail in status.details:
        parts.append(_submessage(3, string_field(1, detail.type_url) + bytes_field(2, detail.value)))
    return b"".join(parts)


def encode_response(response: Response) -> bytes:
    status = b"" if response.status is None else _submessage(1, encode_status(response.status))
    return status + bytes_field(2, response.payload)


def decode_response(data: bytes) -> Response:
    """A Response from its bytes; unknown fields are skipped, a malformed message raises DecodeError."""
    view = memoryview(data)
    payload = b""
    status: Status | None = None
    pos, end = 0, len(view)
    try:
        while pos < end:
            key = view[pos]
            if key < 0x80:
                pos += 1
            else:
                key, pos = decode_varint(view, pos)
            field, wire_type = key >> 3, key & 7
            if wire_type == LENGTH_DELIMITED and field == 2:
                payload, pos = _length_delimited(view, pos, field)
            elif wire_type == LENGTH_DELIMITED and field == 1:
                raw, pos = _length_delimited(view, pos, field)
                status = decode_status(raw)
            else:
                pos = skip_field(view, pos, field, wire_type)
    except UnicodeDecodeError as exc:
        raise DecodeError(f"invalid UTF-8 in a string field: {exc.reason}") from None
    return Response(payload, status)


def decode_status(data: bytes) -> Status:
    view = memoryview(data)
    code = 0
    message = ""
    details: list[Detail] = []
    pos, end = 0, len(view)
    while pos < end:
        key, pos = decode_varint(view, pos)
        field, wire_type = key >> 3, key & 7
        if wire_type == VARINT and field == 1:
            value, pos = decode_varint(view, pos)
            code = as_int32(value)
        elif wire_type == LENGTH_DELIMITED and field == 2:
            raw, pos = _length_delimited(view, pos, field)
            message = raw.decode("utf-8")
        elif wire_type == LENGTH_DELIMITED and field == 3:
            raw, pos = _length_delimited(view, pos, field)
            details.append(_decode_detail(raw))
        else:
            pos = skip_field(view, pos, field, wire_type)
    return Status(code, message, tuple(details))


def _decode_detail(data: bytes) -> Detail:
    view = memoryview(data)
    type_url = ""
    value = b""
    pos, end = 0, len(view)
    while pos < end:
        key, pos = decode_varint(view, pos)
        field, wire_type = key >> 3, key & 7
        if wire_type == LENGTH_DELIMITED and field == 1:
            raw, pos = _length_delimited(view, pos, field)
            type_url = raw.decode("utf-8")
        elif wire_type == LENGTH_DELIMITED and field == 2:
            value, pos = _length_delimited(view, pos, field)
        else:
            pos = skip_field(view, pos, field, wire_type)
    return Detail(type_url, value)
