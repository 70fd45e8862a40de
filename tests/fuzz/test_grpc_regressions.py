"""What the fuzzer found, pinned: each request once crashed a handler into Unknown (status 2).

Undecodable requests are answered as containerd 1.6's grpc-go and gogo-generated unmarshalers
answer them: Internal, "grpc: error unmarshalling request: …" for a unary request and "grpc: failed
to unmarshal the received message …" for a stream's message.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from grpc_bodies import length_delimited, tag, varint
from grpc_calls import Outcome, Plan, call, channel, generated_rpcs
from grpclib.const import Status
from harness import Daemon
from tooling import require_root

CONTENT = "/containerd.services.content.v1.Content"
NAMESPACES = "/containerd.services.namespaces.v1.Namespaces"
EVENTS = "/containerd.services.events.v1.Events"
DIFF = "/containerd.services.diff.v1.Diff/Diff"
UNMARSHAL = "grpc: error unmarshalling request: "


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("regressions") / "corral").start()
    try:
        yield d
    finally:
        d.stop()


def send(d: Daemon, path: str, *bodies: bytes, mode: str = "end") -> Outcome:
    rpc = next(r for r in generated_rpcs() if r.path == path)

    async def go() -> Outcome:
        ch = channel(d.socket)
        try:
            return await call(ch, rpc, Plan(list(bodies), mode), {"containerd-namespace": "default"})
        finally:
            ch.close()

    outcome = anyio.run(go)
    assert "handler_failed" not in d.log()
    return outcome


def test_a_truncated_request_is_internal_unexpected_eof(daemon: Daemon) -> None:
    outcome = send(daemon, f"{CONTENT}/Info", tag(1, 2) + varint(5) + b"ab")
    assert (outcome.status, outcome.message) == (Status.INTERNAL, UNMARSHAL + "unexpected EOF")


def test_a_field_of_the_wrong_wire_type_is_refused_as_gogo_refuses_it(daemon: Daemon) -> None:
    # A string sent as a varint once reached the handler as an int.
    outcome = send(daemon, f"{CONTENT}/Info", tag(1, 0) + varint(7))
    assert outcome.status is Status.INTERNAL
    assert outcome.message == UNMARSHAL + "proto: wrong wireType = 0 for field Digest"


def test_unknown_fields_of_any_wire_type_are_skipped_as_protobuf_does(daemon: Daemon) -> None:
    unknown = (
        tag(99, 0)
        + varint(1)
        + tag(98, 1)
        + b"\0" * 8
        + length_delimited(97, b"\xff")
        + tag(96, 5)
        + b"\0" * 4
    )
    outcome = send(daemon, f"{NAMESPACES}/List", length_delimited(1, b"name==x") + unknown)
    assert outcome.status is Status.OK


def test_invalid_utf8_in_a_string_field_is_internal_not_a_crash(daemon: Daemon) -> None:
    outcome = send(daemon, f"{NAMESPACES}/Get", length_delimited(1, b"\xff\xfe"))
    assert outcome.status is Status.INTERNAL
    assert outcome.message == UNMARSHAL + "proto: field Name contains invalid UTF-8"
    nested = length_delimited(
        1, length_delimited(1, b"ns") + length_delimited(2, length_delimited(1, b"\xc3"))
    )
    outcome = send(daemon, f"{NAMESPACES}/Create", nested)
    assert outcome.message == UNMARSHAL + "proto: field Labels contains invalid UTF-8"


@pytest.mark.parametrize("wire_type", [3, 4, 6, 7])
def test_illegal_wire_types_are_internal(daemon: Daemon, wire_type: int) -> None:
    outcome = send(daemon, f"{CONTENT}/Status", tag(1, wire_type))
    assert (outcome.status, outcome.message) == (
        Status.INTERNAL,
        UNMARSHAL + f"proto: illegal wireType {wire_type}",
    )


def test_a_varint_longer_than_ten_bytes_is_an_integer_overflow(daemon: Daemon) -> None:
    outcome = send(daemon, f"{CONTENT}/Read", tag(2, 0) + b"\xff" * 11 + b"\x01")
    assert (outcome.status, outcome.message) == (Status.INTERNAL, UNMARSHAL + "proto: integer overflow")


def test_a_timestamp_out_of_range_is_internal(daemon: Daemon) -> None:
    timestamp = length_delimited(1, tag(1, 0) + varint(2**62))
    envelope = length_delimited(1, timestamp + length_delimited(3, b"/x"))
    outcome = send(daemon, f"{EVENTS}/Forward", envelope)
    assert outcome.status is Status.INTERNAL
    assert outcome.message.startswith(UNMARSHAL)


def test_a_unary_call_without_its_request_message_is_internal(daemon: Daemon) -> None:
    outcome = send(daemon, f"{NAMESPACES}/List")
    assert (outcome.status, outcome.message) == (Status.INTERNAL, "grpc: the client sent no request message")


def test_an_undecodable_message_on_a_stream_is_internal_in_grpc_gos_stream_words(daemon: Daemon) -> None:
    outcome = send(daemon, f"{CONTENT}/Write", length_delimited(2, b"ref") + tag(1, 2))
    assert outcome.status is Status.INTERNAL
    assert outcome.message.startswith("grpc: failed to unmarshal the received message ")


def test_an_unknown_enum_value_is_decoded_and_refused_by_the_service(daemon: Daemon) -> None:
    # As with gogo, an enum value the schema does not name is not a decoding error.
    outcome = send(daemon, f"{CONTENT}/Write", tag(1, 0) + varint(99) + length_delimited(2, b"enum-ref"))
    assert outcome.status is Status.INVALID_ARGUMENT
    assert "unknown write action" in outcome.message


def test_a_nul_byte_in_a_diff_mount_is_invalid_argument_before_anything_is_mounted(
    daemon: Daemon, tmp_path: Path
) -> None:
    require_root()
    bad = length_delimited(
        1, length_delimited(1, b"bind") + length_delimited(2, str(tmp_path).encode() + b"\x00x")
    )
    good = length_delimited(2, length_delimited(1, b"bind") + length_delimited(2, str(tmp_path).encode()))
    outcome = send(daemon, DIFF, bad + good)
    assert outcome.status is Status.INVALID_ARGUMENT
    assert "contains a NUL byte" in outcome.message
    assert str(tmp_path) not in Path("/proc/self/mountinfo").read_text()
