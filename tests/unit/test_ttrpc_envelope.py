"""The hand-written envelope codec against the official protobuf runtime, both directions."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory

from corral.api.ttrpc import envelope
from corral.api.ttrpc.protowire import DecodeError, encode_varint, iter_fields

F = descriptor_pb2.FieldDescriptorProto


def _field(name: str, number: int, kind: int, *, repeated: bool = False, type_name: str = "") -> F:
    label = F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL
    return F(name=name, number=number, type=kind, label=label, type_name=type_name or None)


def _message(name: str, *fields: F) -> descriptor_pb2.DescriptorProto:
    return descriptor_pb2.DescriptorProto(name=name, field=list(fields))


@pytest.fixture(scope="module")
def pb() -> dict[str, Any]:
    """ttrpc's request.proto and google.rpc.Status built as descriptors in a private pool, plus a
    Request with extra fields of every wire type, to produce bytes the codec must skip."""
    pool = descriptor_pool.DescriptorPool()
    any_file = descriptor_pb2.FileDescriptorProto()
    any_pb2.DESCRIPTOR.CopyToProto(any_file)
    pool.Add(any_file)
    pool.Add(
        descriptor_pb2.FileDescriptorProto(
            name="test/status.proto",
            package="google.rpc",
            syntax="proto3",
            dependency=["google/protobuf/any.proto"],
            message_type=[
                _message(
                    "Status",
                    _field("code", 1, F.TYPE_INT32),
                    _field("message", 2, F.TYPE_STRING),
                    _field("details", 3, F.TYPE_MESSAGE, repeated=True, type_name=".google.protobuf.Any"),
                )
            ],
        )
    )
    pool.Add(
        descriptor_pb2.FileDescriptorProto(
            name="test/request.proto",
            package="ttrpc",
            syntax="proto3",
            dependency=["test/status.proto"],
            message_type=[
                _message(
                    "Request",
                    _field("service", 1, F.TYPE_STRING),
                    _field("method", 2, F.TYPE_STRING),
                    _field("payload", 3, F.TYPE_BYTES),
                    _field("timeout_nano", 4, F.TYPE_INT64),
                    _field("metadata", 5, F.TYPE_MESSAGE, repeated=True, type_name=".ttrpc.KeyValue"),
                ),
                _message(
                    "Response",
                    _field("status", 1, F.TYPE_MESSAGE, type_name=".google.rpc.Status"),
                    _field("payload", 2, F.TYPE_BYTES),
                ),
                _message("KeyValue", _field("key", 1, F.TYPE_STRING), _field("value", 2, F.TYPE_STRING)),
                _message(
                    "FutureRequest",
                    _field("extra_first", 15, F.TYPE_STRING),
                    _field("service", 1, F.TYPE_STRING),
                    _field("method", 2, F.TYPE_STRING),
                    _field("payload", 3, F.TYPE_BYTES),
                    _field("timeout_nano", 4, F.TYPE_INT64),
                    _field("metadata", 5, F.TYPE_MESSAGE, repeated=True, type_name=".ttrpc.FutureKeyValue"),
                    _field("extra_varint", 6, F.TYPE_UINT64),
                    _field("extra_fixed64", 7, F.TYPE_FIXED64),
                    _field("extra_fixed32", 8, F.TYPE_FIXED32),
                    _field("extra_message", 9, F.TYPE_MESSAGE, type_name=".google.rpc.Status"),
                    _field("extra_big_field_number", 536870911, F.TYPE_STRING),
                ),
                _message(
                    "FutureKeyValue",
                    _field("key", 1, F.TYPE_STRING),
                    _field("value", 2, F.TYPE_STRING),
                    _field("extra", 3, F.TYPE_INT32),
                ),
                _message(
                    "FutureResponse",
                    _field("extra", 3, F.TYPE_BYTES),
                    _field("status", 1, F.TYPE_MESSAGE, type_name=".ttrpc.FutureStatus"),
                    _field("payload", 2, F.TYPE_BYTES),
                    _field("extra_flag", 4, F.TYPE_BOOL),
                ),
                _message(
                    "FutureStatus",
                    _field("code", 1, F.TYPE_INT32),
                    _field("message", 2, F.TYPE_STRING),
                    _field("details", 3, F.TYPE_MESSAGE, repeated=True, type_name=".google.protobuf.Any"),
                    _field("extra", 4, F.TYPE_DOUBLE),
                ),
            ],
        )
    )
    names = ["Request", "Response", "KeyValue", "FutureRequest", "FutureKeyValue", "FutureResponse"]
    classes = {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"ttrpc.{n}")) for n in names}
    classes["Any"] = message_factory.GetMessageClass(pool.FindMessageTypeByName("google.protobuf.Any"))
    return classes


def test_request_decodes_bytes_from_the_protobuf_runtime(pb: dict[str, Any]) -> None:
    msg = pb["Request"](
        service="containerd.task.v2.Task",
        method="State",
        payload=b"\x0a\x02c1",
        timeout_nano=2_000_000_000,
        metadata=[
            pb["KeyValue"](key="containerd-namespace-ttrpc", value="pyns"),
            pb["KeyValue"](key="k", value=""),
        ],
    )
    got = envelope.decode_request(msg.SerializeToString())
    assert got == envelope.Request(
        "containerd.task.v2.Task",
        "State",
        b"\x0a\x02c1",
        2_000_000_000,
        (("containerd-namespace-ttrpc", "pyns"), ("k", "")),
    )


def test_request_encoding_is_what_the_runtime_parses_and_produces(pb: dict[str, Any]) -> None:
    request = envelope.Request(
        "containerd.services.events.ttrpc.v1.Events",
        "Forward",
        bytes(range(200)),
        5_000_000_000,
        (("containerd-namespace-ttrpc", "default"), ("a", "é")),
    )
    data = envelope.encode_request(request)
    msg = pb["Request"].FromString(data)
    assert msg.service == request.service
    assert msg.method == request.method
    assert msg.payload == request.payload
    assert msg.timeout_nano == request.timeout_nano
    assert [(kv.key, kv.value) for kv in msg.metadata] == list(request.metadata)
    assert data == msg.SerializeToString()


def test_negative_timeout_round_trips_as_int64(pb: dict[str, Any]) -> None:
    data = envelope.encode_request(envelope.Request("s", "m", timeout_nano=-1))
    assert pb["Request"].FromString(data).timeout_nano == -1
    assert (
        envelope.decode_request(pb["Request"](service="s", timeout_nano=-7).SerializeToString()).timeout_nano
        == -7
    )


def test_empty_request_encodes_to_what_the_runtime_encodes(pb: dict[str, Any]) -> None:
    assert envelope.encode_request(envelope.Request("", "")) == b""
    assert envelope.decode_request(b"") == envelope.Request("", "")


def test_unknown_request_fields_of_every_wire_type_are_skipped(pb: dict[str, Any]) -> None:
    msg = pb["FutureRequest"](
        extra_first="ahead of everything",
        service="svc",
        method="M",
        payload=b"p",
        timeout_nano=1,
        metadata=[pb["FutureKeyValue"](key="k", value="v", extra=-5)],
        extra_varint=2**63,
        extra_fixed64=12345,
        extra_fixed32=7,
        extra_big_field_number="far away",
    )
    msg.extra_message.code = 3
    msg.extra_message.message = "nested"
    assert envelope.decode_request(msg.SerializeToString()) == envelope.Request(
        "svc", "M", b"p", 1, (("k", "v"),)
    )


def test_a_group_in_an_unknown_field_is_skipped() -> None:
    group = (
        encode_varint((20 << 3) | 3) + encode_varint((1 << 3) | 0) + b"\x05" + encode_varint((20 << 3) | 4)
    )
    data = group + b"\x0a\x03svc"
    assert envelope.decode_request(data).service == "svc"


def test_ok_response_from_the_runtime_has_no_status(pb: dict[str, Any]) -> None:
    got = envelope.decode_response(pb["Response"](payload=b"\x08\x01").SerializeToString())
    assert got == envelope.Response(b"\x08\x01", None)
    assert envelope.decode_response(b"") == envelope.Response(b"", None)


def test_error_response_decodes_status_and_details(pb: dict[str, Any]) -> None:
    msg = pb["Response"]()
    msg.status.code = 5
    msg.status.message = "container not created: not found"
    msg.status.details.append(pb["Any"](type_url="type.googleapis.com/x.Y", value=b"\x01\x02"))
    got = envelope.decode_response(msg.SerializeToString())
    assert got.payload == b""
    assert got.status == envelope.Status(
        5, "container not created: not found", (envelope.Detail("type.googleapis.com/x.Y", b"\x01\x02"),)
    )


def test_response_encoding_is_what_the_runtime_parses_and_produces(pb: dict[str, Any]) -> None:
    for response in (
        envelope.Response(b"answer"),
        envelope.Response(b""),
        envelope.Response(status=envelope.Status(12, "method Nope")),
        envelope.Response(status=envelope.Status(2, "boom", (envelope.Detail("t/u", b"v"),))),
        envelope.Response(status=envelope.Status(0)),
    ):
        data = envelope.encode_response(response)
        msg = pb["Response"].FromString(data)
        assert msg.payload == response.payload
        assert msg.HasField("status") == (response.status is not None)
        if response.status is not None:
            assert msg.status.code == response.status.code
            assert msg.status.message == response.status.message
            assert [(d.type_url, d.value) for d in msg.status.details] == [
                (d.type_url, d.value) for d in response.status.details
            ]
        assert data == msg.SerializeToString()
        assert envelope.decode_response(data) == response


def test_a_negative_status_code_round_trips_as_int32(pb: dict[str, Any]) -> None:
    msg = pb["Response"]()
    msg.status.code = -3
    assert envelope.decode_response(msg.SerializeToString()).status == envelope.Status(-3)
    data = envelope.encode_response(envelope.Response(status=envelope.Status(-3)))
    assert pb["Response"].FromString(data).status.code == -3


def test_unknown_response_fields_are_skipped_at_every_level(pb: dict[str, Any]) -> None:
    msg = pb["FutureResponse"](extra=b"zz", payload=b"p", extra_flag=True)
    msg.status.code = 9
    msg.status.message = "m"
    msg.status.extra = 1.5
    assert envelope.decode_response(msg.SerializeToString()) == envelope.Response(
        b"p", envelope.Status(9, "m")
    )


@pytest.mark.parametrize(
    "data",
    [
        b"\x0a\x05ab",  # length past the end
        b"\x20",  # varint key with no value
        b"\x20\xff\xff",  # truncated varint
        b"\x0f",  # wire type 7
        b"\x00",  # field number 0
        b"\x21\x00\x00",  # truncated fixed64
    ],
)
def test_malformed_bytes_raise_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        envelope.decode_request(data)
    with pytest.raises(DecodeError):
        list(iter_fields(data))


def test_a_string_field_that_is_not_utf8_raises_decode_error() -> None:
    with pytest.raises(DecodeError):
        envelope.decode_request(b"\x0a\x02\xff\xfe")
    with pytest.raises(DecodeError):
        envelope.decode_response(b"\x0a\x04\x12\x02\xff\xfe")
