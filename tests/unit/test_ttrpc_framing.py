"""ttrpc framing with bytes alone: the header layout, incremental decoding and the size limit."""

from __future__ import annotations

import struct

import pytest

from corral.api.ttrpc.framing import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    Flags,
    Frame,
    FrameDecoder,
    FrameTooLarge,
    MessageType,
    encode_frame,
)


def decode_all(decoder: FrameDecoder) -> list[Frame]:
    return list(decoder.frames())


def test_header_is_length_stream_type_flags_big_endian() -> None:
    data = encode_frame(0x01020304, MessageType.RESPONSE, b"abc", Flags.REMOTE_CLOSED | Flags.NO_DATA)
    assert data == b"\x00\x00\x00\x03" + b"\x01\x02\x03\x04" + b"\x02" + b"\x05" + b"abc"
    assert HEADER_SIZE == 10


def test_message_types_and_flags_have_ttrpcs_values() -> None:
    assert (MessageType.REQUEST, MessageType.RESPONSE, MessageType.DATA) == (1, 2, 3)
    assert (Flags.REMOTE_CLOSED, Flags.REMOTE_OPEN, Flags.NO_DATA) == (1, 2, 4)
    assert MAX_PAYLOAD == 4 * 1024 * 1024


@pytest.mark.parametrize("payload", [b"", b"x", bytes(range(256)) * 40])
def test_round_trip(payload: bytes) -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(7, MessageType.REQUEST, payload))
    assert decode_all(decoder) == [Frame(7, MessageType.REQUEST, 0, payload)]
    assert decoder.buffered == 0


def test_split_at_every_byte_boundary_yields_the_same_frames() -> None:
    frames = [
        Frame(1, MessageType.REQUEST, 0, b"first"),
        Frame(3, MessageType.REQUEST, 0, b""),
        Frame(5, MessageType.DATA, int(Flags.REMOTE_CLOSED), b"third payload"),
    ]
    stream = b"".join(encode_frame(f.stream_id, f.type, f.payload, f.flags) for f in frames)
    for cut in range(len(stream) + 1):
        decoder = FrameDecoder()
        decoder.feed(stream[:cut])
        got = decode_all(decoder)
        decoder.feed(stream[cut:])
        got += decode_all(decoder)
        assert got == frames, cut
        assert decoder.buffered == 0


def test_byte_at_a_time_yields_each_frame_once_complete() -> None:
    stream = encode_frame(1, MessageType.REQUEST, b"hello") + encode_frame(3, MessageType.REQUEST, b"!")
    decoder = FrameDecoder()
    seen: list[tuple[int, Frame]] = []
    for i in range(len(stream)):
        decoder.feed(stream[i : i + 1])
        seen += [(i, f) for f in decode_all(decoder)]
    assert seen == [
        (HEADER_SIZE + 5 - 1, Frame(1, 1, 0, b"hello")),
        (len(stream) - 1, Frame(3, 1, 0, b"!")),
    ]


def test_several_frames_in_one_chunk() -> None:
    chunk = b"".join(encode_frame(i, MessageType.RESPONSE, str(i).encode()) for i in range(1, 200, 2))
    decoder = FrameDecoder()
    decoder.feed(chunk + encode_frame(201, MessageType.RESPONSE, b"partial")[:-3])
    frames = decode_all(decoder)
    assert [f.stream_id for f in frames] == list(range(1, 200, 2))
    assert [f.payload for f in frames] == [str(i).encode() for i in range(1, 200, 2)]
    assert decoder.buffered == HEADER_SIZE + len(b"partial") - 3


def test_partial_header_waits_for_more_bytes() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\x00\x00\x00")
    assert decoder.next_frame() is None
    assert decoder.buffered == 3


def test_encoding_an_oversized_payload_is_refused() -> None:
    with pytest.raises(FrameTooLarge) as info:
        encode_frame(9, MessageType.RESPONSE, bytes(MAX_PAYLOAD + 1))
    assert info.value.stream_id == 9
    assert info.value.length == MAX_PAYLOAD + 1
    assert str(info.value) == f"message length {MAX_PAYLOAD + 1} exceed maximum message size of {MAX_PAYLOAD}"


def test_a_payload_of_exactly_the_limit_is_accepted() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(1, MessageType.REQUEST, bytes(MAX_PAYLOAD)))
    (frame,) = decode_all(decoder)
    assert len(frame.payload) == MAX_PAYLOAD


def test_oversized_header_is_rejected_once_and_decoding_resumes_after_its_payload() -> None:
    limit = 16
    big = struct.pack(">IIBB", limit + 5, 11, MessageType.REQUEST, 0) + b"B" * (limit + 5)
    after = encode_frame(13, MessageType.REQUEST, b"next", limit=limit)
    stream = encode_frame(9, MessageType.REQUEST, b"before", limit=limit) + big + after
    for cut in range(len(stream) + 1):
        decoder = FrameDecoder(limit)
        got: list[Frame] = []
        rejected: list[tuple[int, int]] = []
        for part in (stream[:cut], stream[cut:]):
            decoder.feed(part)
            while True:
                try:
                    frame = decoder.next_frame()
                except FrameTooLarge as exc:
                    rejected.append((exc.stream_id, exc.length))
                    continue
                if frame is None:
                    break
                got.append(frame)
        assert rejected == [(11, limit + 5)], cut
        assert [f.payload for f in got] == [b"before", b"next"], cut
        assert decoder.buffered == 0


def test_a_real_size_oversized_header_is_rejected_before_its_payload_arrives() -> None:
    decoder = FrameDecoder()
    decoder.feed(struct.pack(">IIBB", MAX_PAYLOAD + 1, 3, MessageType.REQUEST, 0))
    with pytest.raises(FrameTooLarge) as info:
        decoder.next_frame()
    assert (info.value.stream_id, info.value.length) == (3, MAX_PAYLOAD + 1)
    assert decoder.next_frame() is None


def test_the_ttrpc_facade_exports_exactly_its_all() -> None:
    import corral.api.ttrpc as facade

    public = {name for name in vars(facade) if not name.startswith("_")}
    modules = {"client", "envelope", "framing", "protowire", "server", "services", "shim"}
    assert public - modules == set(facade.__all__)
    for name in facade.__all__:
        assert getattr(facade, name) is not None
