"""The shared tar header codec (corral.plugins.core.tar), as Go's archive/tar reads headers,
and the two stream framings built on it agreeing member for member."""

from __future__ import annotations

import io
import tarfile

import pytest

from corral.kernel import InvalidArgument
from corral.plugins.core.tar import (
    END_OF_ARCHIVE,
    REGULAR,
    SYMLINK,
    Extensions,
    decode_block,
    decode_member,
    encode_header,
    padding,
    parse_number,
    pax_record,
)
from corral.plugins.differs._tar import TarReader
from corral.plugins.images._tar import Event, TarParser


def test_base_256_numbers_carry_their_sign_in_the_second_bit() -> None:
    assert parse_number(b"\x80" + (1234).to_bytes(11, "big")) == 1234
    assert parse_number(b"\xff" * 12) == -1
    assert parse_number(b"\xc0" + bytes(11)) == -(1 << 94)  # negative, though not 0xff-led
    assert parse_number(b"\0\0 0000644\0") == 0o644  # leading NULs and spaces, as Go trims them
    with pytest.raises(InvalidArgument):
        parse_number(b"12x\0", "size")


def member(name: bytes, typeflag: bytes = REGULAR, **pax: bytes) -> bytes:
    records = b"".join(pax_record(key.encode(), value) for key, value in pax.items())
    head = (
        encode_header(b"PaxHeaders.0/x", b"x", size=len(records)) + records + padding(len(records))
        if pax
        else b""
    )
    return head + encode_header(name, typeflag)


def entry_of(stream: bytes) -> tuple[bytes, bytes]:
    extensions = Extensions()
    pos = 0
    while True:
        decoded = decode_block(stream[pos : pos + 512])
        assert decoded is not None
        typeflag, size, fields = decoded
        pos += 512
        if typeflag in (b"x", b"L", b"K", b"g"):
            extensions.add(typeflag, stream[pos : pos + size])
            pos += size + (-size % 512)
            continue
        entry = decode_member(typeflag, size, fields, extensions)
        return entry.name, entry.linkname


def test_a_nul_in_a_pax_name_is_refused_as_go_does() -> None:
    with pytest.raises(InvalidArgument, match="NUL"):
        entry_of(member(b"short", path=b"evil\0name"))
    assert entry_of(member(b"short", path=b"long" * 40)) == (b"long" * 40, b"")


def test_an_empty_gnu_long_name_leaves_the_members_own_name() -> None:
    stream = encode_header(b"././@LongLink", b"L", size=0) + encode_header(b"own", SYMLINK, linkname=b"t")
    assert entry_of(stream) == (b"own", b"t")


def test_a_global_header_describes_nothing_and_resets_what_came_before() -> None:
    records = b"16 path=ignored\n"
    stream = (
        encode_header(b"PaxHeaders.0/a", b"x", size=len(records)) + records + padding(len(records))
        + encode_header(b"pax_global_header", b"g", size=0)
        + encode_header(b"own")
    )  # fmt: skip
    assert entry_of(stream) == (b"own", b"")


def both_framings(raw: bytes) -> tuple[list[tuple[bytes, int]], list[tuple[bytes, int]]]:
    reader = TarReader(io.BytesIO(raw))
    pulled = []
    while (e := reader.next()) is not None:
        pulled.append((e.name, e.size))
    parser = TarParser()
    pushed = [(h.name, h.size) for kind, h in parser.feed(raw) if kind is Event.HEADER]  # type: ignore[union-attr]
    parser.close()
    return pulled, pushed


def test_a_member_of_an_unknown_type_has_its_data_skipped_not_read_as_headers() -> None:
    data = b"not a header " * 100
    raw = (
        encode_header(b"volume-ish", b"A", size=len(data)) + data + padding(len(data))
        + encode_header(b"after", size=2) + b"ok" + padding(2)
        + END_OF_ARCHIVE
    )  # fmt: skip
    pulled, pushed = both_framings(raw)
    assert pulled == pushed == [(b"volume-ish", len(data)), (b"after", 2)]


def test_what_tarfile_writes_both_framings_read_alike() -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in ("a", "d/" + "x" * 150, "é/ü"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
    pulled, pushed = both_framings(out.getvalue())
    assert pulled == pushed == [(b"a", 3), (("d/" + "x" * 150).encode(), 3), ("é/ü".encode(), 3)]
