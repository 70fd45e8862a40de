"""corrald's HTTP/2 gRPC transport (``corral.api.grpc._http2``), driven over a real unix socket by
an independent HTTP/2 implementation (``h2``, as a client): framing, flow control both ways,
request checks, deadlines, resets, size limits and the header coders.

Everything ``ctr`` does against corrald goes through this transport too (tests/integration)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError

from corral.api.grpc import _http2
from corral.api.grpc._grpclib import UnimplementedMapping
from corral.api.grpc.codec import RequestCodec
from corral.api.types.containerd.services.content import v1 as pb

Req, Resp = pb.ReadContentRequest, pb.ReadContentResponse


def _message(message: Any) -> bytes:
    body = bytes(message)
    return b"\x00" + struct.pack(">L", len(body)) + body


def _headers(path: str, extra: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    return [
        (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "localhost"),
        ("content-type", "application/grpc"), ("te", "trailers"), *(extra or []),
    ]  # fmt: skip


class Client:
    """An h2 client connection to the server's socket, pumped by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, **settings: int) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.conn.local_settings = h2.settings.Settings(client=True, initial_values=settings or None)  # type: ignore[arg-type]
        self.conn.initiate_connection()
        self.events: list[Any] = []
        self.flush()

    def flush(self) -> None:
        self.writer.write(self.conn.data_to_send())

    async def pump(self, until: Callable[[], bool], within: float = 5.0, ack: bool = True) -> None:
        """Read and handle frames until ``until()`` holds; received data is acknowledged if ``ack``."""
        async with asyncio.timeout(within):
            while not until():
                self.flush()
                await self.writer.drain()
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("the server closed the connection")
                for event in self.conn.receive_data(data):
                    self.events.append(event)
                    if ack and isinstance(event, h2.events.DataReceived):
                        self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                self.flush()

    def of(self, kind: type, stream_id: int) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind) and getattr(e, "stream_id", 0) == stream_id]

    def ended(self, stream_id: int) -> bool:
        return bool(self.of(h2.events.StreamEnded, stream_id) or self.of(h2.events.StreamReset, stream_id))

    def trailers(self, stream_id: int) -> dict[str, str]:
        found = self.of(h2.events.TrailersReceived, stream_id) or self.of(
            h2.events.ResponseReceived, stream_id
        )
        return dict(found[-1].headers)

    def body(self, stream_id: int) -> bytes:
        return b"".join(e.data for e in self.of(h2.events.DataReceived, stream_id))

    def request(
        self, path: str, *messages: Any, end: bool = True, extra: list[tuple[str, str]] | None = None
    ) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, _headers(path, extra), end_stream=not messages and end)
        for n, message in enumerate(messages):
            self.conn.send_data(stream_id, _message(message), end_stream=end and n == len(messages) - 1)
        self.flush()
        return stream_id


Handlers = dict[str, Handler]


async def _serve(
    tmp_path: Path, handlers: Handlers, test: Callable[[Client], Awaitable[None]], **settings: int
) -> None:
    server = _http2.GRPCServer(UnimplementedMapping(handlers).get, RequestCodec())
    path = str(tmp_path / "s.sock")
    await server.start(path=path, backlog=16)
    try:
        reader, writer = await asyncio.open_unix_connection(path)
        client = Client(reader, writer, **settings)
        try:
            await test(client)
        finally:
            writer.close()
    finally:
        server.close()
        await server.wait_closed()


def run(
    tmp_path: Path, handlers: Handlers, test: Callable[[Client], Awaitable[None]], **settings: int
) -> None:
    asyncio.run(_serve(tmp_path, handlers, test, **settings))


def unary(func: Callable[[Any], Awaitable[Any]]) -> Handler:
    async def handle(stream: Any) -> None:
        await stream.send_message(await func(await stream.recv_message()))

    return Handler(handle, Cardinality.UNARY_UNARY, Req, Resp)


def test_installed_hpack_is_the_pinned_one() -> None:
    import importlib.metadata

    assert {name: importlib.metadata.version(name) for name in _http2.PINNED} == _http2.PINNED


def test_a_unary_call_and_a_ping(tmp_path: Path) -> None:
    async def echo(request: Any) -> Any:
        return Resp(offset=request.offset + 1, data=request.digest.encode())

    async def test(client: Client) -> None:
        client.conn.ping(b"12345678")
        sid = client.request("/t.T/Echo", Req(digest="sha256:x", offset=41))
        await client.pump(lambda: client.ended(sid) and bool(client.of(h2.events.PingAckReceived, 0)))
        response = dict(client.of(h2.events.ResponseReceived, sid)[0].headers)
        assert response == {":status": "200", "content-type": "application/grpc+proto"}
        assert client.trailers(sid) == {"grpc-status": "0"}
        body = client.body(sid)
        assert Resp.FromString(body[5:]) == Resp(offset=42, data=b"sha256:x")
        assert client.of(h2.events.PingAckReceived, 0)[0].ping_data == b"12345678"

    run(tmp_path, {"/t.T/Echo": unary(echo)}, test)


def test_errors_are_trailers_only_with_the_message_percent_encoded(tmp_path: Path) -> None:
    async def refuse(request: Any) -> Any:
        raise GRPCError(Status.NOT_FOUND, "blob sha256:x: not found — 100%")

    async def test(client: Client) -> None:
        sid = client.request("/t.T/Refuse", Req())
        await client.pump(lambda: client.ended(sid))
        got = client.trailers(sid)
        assert got[":status"] == "200" and got["grpc-status"] == "5"
        assert got["grpc-message"] == "blob sha256:x: not found %E2%80%94 100%25"
        assert client.body(sid) == b""

    run(tmp_path, {"/t.T/Refuse": unary(refuse)}, test)


def test_requests_grpc_does_not_accept(tmp_path: Path) -> None:
    async def test(client: Client) -> None:
        plain = [h for h in _headers("/t.T/Echo") if h[0] != "content-type"]
        cases = {
            "no content-type": (
                plain,
                {":status": "415", "grpc-status": "2", "grpc-message": "Missing content-type header"},
            ),
            "json": (
                [*plain, ("content-type", "application/json")],
                {":status": "415", "grpc-status": "2", "grpc-message": "Unacceptable content-type header"},
            ),
            "GET": ([(":method", "GET"), *_headers("/t.T/Echo")[1:]], {":status": "405"}),
            "no te": (
                [h for h in _headers("/t.T/Echo") if h[0] != "te"],
                {
                    ":status": "400",
                    "grpc-status": "2",
                    "grpc-message": 'Required "te: trailers" header is missing',
                },
            ),
            "bad timeout": (
                _headers("/t.T/Echo", [("grpc-timeout", "soon")]),
                {":status": "200", "grpc-status": "2"},
            ),
        }
        for name, (headers, expected) in cases.items():
            sid = client.conn.get_next_available_stream_id()
            client.conn.send_headers(sid, headers, end_stream=True)
            await client.pump(lambda s=sid: client.ended(s))  # type: ignore[misc]
            got = client.trailers(sid)
            assert {k: got.get(k) for k in expected} == expected, name
        unknown_service = client.request("/u.U/Echo", Req())
        unknown_method = client.request("/t.T/Nope", Req())
        await client.pump(lambda: client.ended(unknown_service) and client.ended(unknown_method))
        assert client.trailers(unknown_service)["grpc-status"] == "12"
        assert client.trailers(unknown_service)["grpc-message"] == "unknown service u.U"
        assert client.trailers(unknown_method)["grpc-message"] == "unknown method Nope for service t.T"

    async def echo(request: Any) -> Any:
        return Resp()

    run(tmp_path, {"/t.T/Echo": unary(echo)}, test)


def test_a_unary_request_without_its_message_is_internal(tmp_path: Path) -> None:
    async def echo(request: Any) -> Any:
        return Resp()

    async def test(client: Client) -> None:
        sid = client.request("/t.T/Echo")  # headers with END_STREAM, no message
        await client.pump(lambda: client.ended(sid))
        assert client.trailers(sid)["grpc-status"] == "13"
        assert client.trailers(sid)["grpc-message"] == "grpc: the client sent no request message"

    run(tmp_path, {"/t.T/Echo": unary(echo)}, test)


def _until_cancelled(seen: list[str], started: asyncio.Event) -> Callable[[Any], Awaitable[Any]]:
    """A handler that sets ``started``, waits until it is cancelled and notes that in ``seen``."""

    async def slow(request: Any) -> Any:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        return Resp()

    return slow


def test_a_deadline_cancels_the_handler_and_answers_deadline_exceeded(tmp_path: Path) -> None:
    seen: list[str] = []
    slow = _until_cancelled(seen, asyncio.Event())

    async def test(client: Client) -> None:
        sid = client.request("/t.T/Slow", Req(), extra=[("grpc-timeout", "100m")])
        await client.pump(lambda: client.ended(sid))
        assert client.trailers(sid)["grpc-status"] == "4"

    run(tmp_path, {"/t.T/Slow": unary(slow)}, test)
    assert seen == ["cancelled"]


def test_a_reset_stream_cancels_its_handler_and_the_connection_goes_on(tmp_path: Path) -> None:
    started, seen = asyncio.Event(), list[str]()
    slow = _until_cancelled(seen, started)

    async def echo(request: Any) -> Any:
        return Resp(offset=7)

    async def go(client: Client) -> None:
        # pump until the handler started: the client has nothing to read meanwhile
        async def until_started() -> None:
            while not started.is_set():
                client.flush()
                await client.writer.drain()
                await asyncio.sleep(0.01)

        sid = client.request("/t.T/Slow", Req())
        await asyncio.wait_for(until_started(), 5)
        client.conn.reset_stream(sid)
        nxt = client.request("/t.T/Echo", Req())
        await client.pump(lambda: client.ended(nxt))
        assert Resp.FromString(client.body(nxt)[5:]).offset == 7
        for _ in range(10):
            if seen:
                break
            await asyncio.sleep(0.01)
        assert seen == ["cancelled"]
        assert not client.of(h2.events.DataReceived, sid)

    run(tmp_path, {"/t.T/Slow": unary(slow), "/t.T/Echo": unary(echo)}, go)


def _streaming(messages: Callable[[Any], AsyncIterator[Any]]) -> Handler:
    async def handle(stream: Any) -> None:
        async for message in messages(await stream.recv_message()):
            await stream.send_message(message)

    return Handler(handle, Cardinality.UNARY_STREAM, Req, Resp)


def test_responses_wait_for_a_slow_clients_window(tmp_path: Path) -> None:
    """3 MiB of responses to a client whose windows are 64 KiB and who acknowledges only what it
    has read: h2 refuses any frame past its window, so finishing at all proves the server waited."""
    chunk = bytes(range(256)) * 4096  # 1 MiB

    async def blob(request: Any) -> AsyncIterator[Any]:
        for n in range(3):
            yield Resp(offset=n, data=chunk)

    async def test(client: Client) -> None:
        sid = client.request("/t.T/Blob", Req())
        await client.pump(lambda: client.ended(sid), within=20)
        assert client.trailers(sid) == {"grpc-status": "0"}
        body, got = client.body(sid), []
        while body:
            (length,) = struct.unpack_from(">L", body, 1)
            got.append(Resp.FromString(body[5 : 5 + length]))
            body = body[5 + length :]
        assert [(m.offset, m.data) for m in got] == [(0, chunk), (1, chunk), (2, chunk)]
        sizes = {len(e.data) for e in client.of(h2.events.DataReceived, sid)}
        assert max(sizes) <= 16_384  # the client's frame size

    run(tmp_path, {"/t.T/Blob": _streaming(blob)}, test)


def _collecting(received: list[Any], gate: asyncio.Event) -> Handler:
    async def handle(stream: Any) -> None:
        await gate.wait()
        async for message in stream:
            received.append(message)
        await stream.send_message(Resp(offset=len(received)))

    return Handler(handle, Cardinality.STREAM_UNARY, Req, Resp)


def test_a_handler_that_does_not_read_holds_its_client_back(tmp_path: Path) -> None:
    """Ten 1 MiB messages to a handler that reads none until told: the client's window runs out
    after about one window (4 MiB) plus one acknowledgement, not ten; once the handler reads,
    everything arrives."""
    received: list[Any] = []
    gate = asyncio.Event()
    chunk = b"x" * (1 << 20)
    data = b"".join(_message(Req(digest=chunk.decode(), offset=n)) for n in range(10))

    async def test(client: Client) -> None:
        sid = client.request("/t.T/Collect", end=False)
        sent = 0

        async def send_what_fits() -> None:
            nonlocal sent
            while sent < len(data):
                window = min(client.conn.local_flow_control_window(sid), client.conn.max_outbound_frame_size)
                if window <= 0:
                    return
                n = min(window, len(data) - sent)
                client.conn.send_data(sid, data[sent : sent + n], end_stream=sent + n == len(data))
                sent += n
                client.flush()

        for _ in range(40):  # let the server acknowledge what it will
            await send_what_fits()
            await client.writer.drain()
            with contextlib.suppress(TimeoutError):
                await client.pump(lambda: False, within=0.05)
        assert not received
        assert 4 << 20 <= sent <= (4 << 20) + 2 * _http2.ACK_THRESHOLD + 64  # bounded, not all ten
        gate.set()

        async with asyncio.timeout(20):
            while not client.ended(sid):
                await send_what_fits()
                await client.writer.drain()
                with contextlib.suppress(TimeoutError):
                    await client.pump(lambda: client.ended(sid), within=0.05)
        assert sent == len(data)
        assert client.trailers(sid) == {"grpc-status": "0"}

    run(tmp_path, {"/t.T/Collect": _collecting(received, gate)}, test)
    assert [m.offset for m in received] == list(range(10))
    assert all(m.digest == chunk.decode() for m in received)


def test_a_message_bigger_than_the_window_arrives(tmp_path: Path) -> None:
    """One 6 MiB message through a 4 MiB stream window: acknowledged while it is incomplete."""
    received: list[Any] = []
    gate = asyncio.Event()
    gate.set()
    big = _message(Req(digest="y" * (6 << 20), offset=3))

    async def test(client: Client) -> None:
        sid = client.request("/t.T/Collect", end=False)
        sent = 0
        async with asyncio.timeout(20):
            while not client.ended(sid):
                window = min(client.conn.local_flow_control_window(sid), client.conn.max_outbound_frame_size)
                while window > 0 and sent < len(big):
                    n = min(window, len(big) - sent)
                    client.conn.send_data(sid, big[sent : sent + n], end_stream=sent + n == len(big))
                    sent += n
                    window = min(
                        client.conn.local_flow_control_window(sid), client.conn.max_outbound_frame_size
                    )
                client.flush()
                await client.writer.drain()
                with contextlib.suppress(TimeoutError):
                    await client.pump(lambda: client.ended(sid), within=0.05)
        assert client.trailers(sid) == {"grpc-status": "0"}

    run(tmp_path, {"/t.T/Collect": _collecting(received, gate)}, test)
    assert len(received) == 1 and received[0].offset == 3 and len(received[0].digest) == 6 << 20


def test_a_message_past_the_limit_is_resource_exhausted(tmp_path: Path) -> None:
    async def echo(request: Any) -> Any:
        return Resp()

    async def test(client: Client) -> None:
        sid = client.request("/t.T/Echo", end=False)
        client.conn.send_data(sid, b"\x00" + struct.pack(">L", (16 << 20) + 1) + b"z" * 100)
        client.flush()
        await client.pump(lambda: client.ended(sid))
        got = client.trailers(sid)
        assert got["grpc-status"] == "8"
        assert got["grpc-message"] == "grpc: received message larger than max (16777217 vs. 16777216)"

    run(tmp_path, {"/t.T/Echo": unary(echo)}, test)


def test_a_malformed_frame_ends_the_connection_with_goaway(tmp_path: Path) -> None:
    async def test(client: Client) -> None:
        client.writer.write(struct.pack(">HBBBL", 0, 8, 6, 0, 0))  # a PING of 8 bytes says 8 but has 0
        client.writer.write(b"\x00\x00\x03\x06\x00\x00\x00\x00\x00abc")  # PING of 3 bytes
        with pytest.raises(ConnectionError):
            await client.pump(lambda: False)
        assert any(isinstance(e, h2.events.ConnectionTerminated) for e in client.events)

    run(tmp_path, {}, test)


def test_one_turns_writes_leave_in_one_send() -> None:
    class Transport:
        def __init__(self) -> None:
            self.writes: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.writes.append(data)

        def is_closing(self) -> bool:
            return False

        def close(self) -> None:
            pass

    async def main() -> None:
        server = _http2.GRPCServer(UnimplementedMapping({}).get, RequestCodec())
        conn = _http2._Connection(server)
        raw = Transport()
        conn.transport = raw  # type: ignore[assignment]
        conn._write(b"ping-ack")  # written while a request is received
        await asyncio.sleep(0)  # the turn in which the handler it started runs
        conn._write(b"headers")
        conn._write(b"data")
        assert raw.writes == []
        await asyncio.sleep(0)
        assert raw.writes == [b"ping-ackheadersdata"]
        conn._write(b"goaway")
        conn._close()
        assert raw.writes == [b"ping-ackheadersdata", b"goaway"]

    asyncio.run(main())


def test_cached_request_headers_decode_as_the_real_decoder_does() -> None:
    """Blocks that repeat, that add to the table, that evict and that resize it: the caching
    decoder gives what a fresh real decoder fed the same blocks gives, and hits for repeats."""
    encoder = hpack.Encoder()
    real, caching = hpack.Decoder(), _http2._CachingDecoder()
    misses: list[bytes] = []
    decode = hpack.Decoder.decode

    def counting(self: Any, data: bytes, raw: bool = False) -> Any:
        if self is caching:
            misses.append(data)
        return decode(self, data, raw)

    paths = ["/a.A/One", "/a.A/Two", "/a.A/One", "/a.A/One", "/b.B/Three", "/a.A/Two"]
    paths += [f"/c.C/M{i}" for i in range(200)] + ["/a.A/One"] * 3
    hpack.Decoder.decode = counting  # type: ignore[method-assign]
    try:
        for n, path in enumerate(paths):
            extra = [("grpc-timeout", f"{n}m")] if n % 7 == 5 and n < 200 else []
            if n == 100:
                encoder.header_table_size = 512
            block = encoder.encode(_headers(path, extra))
            expected = [tuple(h) for h in real.decode(block)]
            expected_any: Any = expected
            assert [tuple(h) for h in caching.decode(block)] == expected_any == _headers(path, extra)
    finally:
        hpack.Decoder.decode = decode  # type: ignore[method-assign]
    assert 2 <= len(paths) - len(misses) < 10


def test_response_blocks_never_touch_the_peers_table() -> None:
    decoder = hpack.Decoder()
    decoder.header_table_size = 256
    for n in range(50):
        headers = ((":status", "200"), ("content-type", "application/grpc+proto"), ("x-n", str(n % 5)))
        got: Any = [tuple(h) for h in decoder.decode(_http2.header_block(headers))]
        assert got == list(headers)
    assert len(decoder.header_table.dynamic_entries) == 0


@pytest.mark.parametrize(("value", "seconds"), [("1S", 1.0), ("250m", 0.25), ("3M", 180.0), ("7u", 7e-6)])
def test_grpc_timeouts(value: str, seconds: float) -> None:
    assert _http2.parse_timeout(value) == pytest.approx(seconds)


def test_metadata_keeps_custom_headers_and_decodes_binary_ones() -> None:
    got = _http2.decode_metadata(
        [*_headers("/a.A/B", [("grpc-timeout", "1S")]), ("containerd-namespace", "ns"), ("user-agent", "ctr"),
         ("containerd-namespace", "second"), ("trace-bin", "AAEC")]
    )  # fmt: skip
    assert got == {"containerd-namespace": "ns", "trace-bin": b"\x00\x01\x02"}


def _random_frames(rng: random.Random) -> bytes:
    """A connection's worth of frames, some well-formed, most not: every type (and unknown ones),
    random flags, stream ids, lengths that lie, truncated payloads, header blocks of noise."""
    out = bytearray(_http2.PREFACE if rng.random() < 0.9 else rng.randbytes(rng.randint(0, 30)))
    for _ in range(rng.randint(1, 12)):
        kind = rng.choice([0, 1, 1, 2, 3, 4, 4, 6, 7, 8, 9, 10, 0xFF])
        flags = rng.choice([0, 1, 4, 5, 8, 0x20, 0x2D, rng.randint(0, 255)])
        stream_id = rng.choice([0, 1, 3, 5, 2, 0x7FFFFFFF, rng.randint(0, 1 << 31)])
        if kind == 1 and rng.random() < 0.5:  # a real header block, sometimes for a real path
            payload = hpack.Encoder().encode(_headers(rng.choice(["/t.T/Echo", "/x.Y/Z"])))
        elif kind == 0 and rng.random() < 0.5:
            payload = _message(Req(digest="d", offset=rng.randint(0, 9)))[: rng.randint(0, 20)]
        else:
            payload = rng.randbytes(rng.choice([0, 1, 4, 5, 6, 8, 9, rng.randint(0, 300)]))
        length = len(payload) if rng.random() < 0.8 else rng.randint(0, 1 << 24)
        out += struct.pack(">HBBBL", length >> 8 & 0xFFFF, length & 0xFF, kind, flags, stream_id)[:9]
        out += payload if rng.random() < 0.9 else payload[: rng.randint(0, len(payload))]
    return bytes(out)


def test_random_frames_never_break_the_server(tmp_path: Path) -> None:
    """1,000 connections of random and malformed frames: no exception escapes the protocol (the
    event loop's exception handler sees none), and a well-formed call on a new connection after
    each batch is answered."""

    async def echo(request: Any) -> Any:
        return Resp(offset=request.offset)

    async def main() -> None:
        problems: list[Any] = []
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: problems.append(context))
        server = _http2.GRPCServer(UnimplementedMapping({"/t.T/Echo": unary(echo)}).get, RequestCodec())
        path = str(tmp_path / "s.sock")
        await server.start(path=path, backlog=64)
        rng = random.Random(20261204)
        try:
            for batch in range(20):
                for _ in range(50):
                    reader, writer = await asyncio.open_unix_connection(path)
                    writer.write(_random_frames(rng))
                    with contextlib.suppress(ConnectionError):
                        await writer.drain()
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(0.02):
                                while await reader.read(65536):
                                    pass
                    writer.close()
                reader, writer = await asyncio.open_unix_connection(path)
                client = Client(reader, writer)
                sid = client.request("/t.T/Echo", Req(offset=batch))
                await client.pump(lambda c=client, s=sid: c.ended(s))  # type: ignore[misc]
                assert Resp.FromString(client.body(sid)[5:]).offset == batch
                writer.close()
                assert not problems, problems[0]
        finally:
            server.close()
            await server.wait_closed()
        assert not problems, problems[0]

    asyncio.run(main())


def test_a_connections_first_blocks_are_decoded_once_for_every_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same first request block on fresh connections (``ctr`` makes one per process): decoded
    for real once; later connections get the same headers and the same table (entries and size),
    so their next blocks, which index into it, decode as the real decoder's do."""
    monkeypatch.setattr(_http2, "_shared_blocks", {})
    decode = hpack.Decoder.decode
    real: list[bytes] = []

    def counting(self: Any, data: bytes, raw: bool = False) -> Any:
        real.append(data)
        return decode(self, data, raw)

    first = hpack.Encoder().encode(_headers("/a.A/One", [("user-agent", "grpc-go/1.5")]))
    seconds: list[bytes] = []
    monkeypatch.setattr(hpack.Decoder, "decode", counting)
    for n in range(3):
        encoder = hpack.Encoder()
        assert encoder.encode(_headers("/a.A/One", [("user-agent", "grpc-go/1.5")])) == first
        second = encoder.encode(_headers("/a.A/Two", [("user-agent", "grpc-go/1.5"), ("x-n", str(n // 2))]))
        seconds.append(second)
        plain, caching = hpack.Decoder(), _http2._CachingDecoder()
        expected: Any = [tuple(h) for h in decode(plain, first)]
        assert [tuple(h) for h in caching.decode(first)] == expected
        assert caching.header_table.dynamic_entries == plain.header_table.dynamic_entries
        assert caching.header_table._current_size == plain.header_table._current_size
        assert [tuple(h) for h in caching.decode(second)] == [tuple(h) for h in decode(plain, second)]
    assert real.count(first) == 1  # the two later connections took it from the cache
    # The second block of the first two connections is the same bytes in the same state: decoded
    # once; the third connection's differs (x-n: 1) and is decoded for real.
    assert seconds[0] == seconds[1] != seconds[2]
    assert real.count(seconds[0]) == 1 and real.count(seconds[2]) == 1
    # A first block that resizes the table is never kept for others.
    resizing = hpack.Encoder()
    resizing.header_table_size = 256
    block = resizing.encode(_headers("/a.A/Three"))
    for _ in range(2):
        _http2._CachingDecoder().decode(block)
    assert real.count(block) == 2


def test_provides_agrees_with_isinstance_for_the_servers_protocols() -> None:
    from corral.api.edge import RequestObserver, RequestTracer, provides
    from corral.api.grpc.server import GRPCServicePlugin
    from corral.api.ttrpc.services import TTRPCServicePlugin

    class Observer:
        def request_started(self, method: str, kind: str) -> None: ...

        def request_finished(self, *args: Any) -> None: ...

    class Half:
        def request_started(self, method: str, kind: str) -> None: ...

        request_finished = "not callable"

    class Services:
        def grpc_services(self) -> list[Any]:
            return []

        def ttrpc_services(self) -> list[Any]:
            return []

    protocols = (RequestObserver, RequestTracer, GRPCServicePlugin, TTRPCServicePlugin)
    for instance in (Observer(), Half(), Services(), object(), None, 3):
        for protocol in protocols:
            assert provides(instance, protocol) == (
                isinstance(instance, protocol) and not isinstance(instance, Half)
            ), (instance, protocol)
    assert provides(Observer(), RequestObserver) and not provides(Half(), RequestObserver)
