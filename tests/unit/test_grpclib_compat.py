"""The grpclib/h2 workarounds in ``corral.api.grpc._grpclib`` and the fast paths of the read RPC.

An upgrade of grpclib, h2 or hyperframe fails the first test: check every workaround listed in
``_grpclib``'s docstring against the new code, then move the pins.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.metadata
import os
import selectors
from pathlib import Path
from typing import Any

import anyio
import pytest

from corral.api.grpc import _grpclib
from corral.api.grpc.content import _ReadChunk
from corral.api.types.containerd.services.content import v1 as pb
from corral.plugins.content import local


def test_installed_versions_are_the_pinned_ones() -> None:
    installed = {name: importlib.metadata.version(name) for name in _grpclib.PINNED}
    assert installed == _grpclib.PINNED


def test_hooks_still_exist() -> None:
    import hyperframe.frame
    from grpclib.protocol import H2Protocol
    from grpclib.server import Server

    assert hasattr(hyperframe.frame, "_raw_data_repr")
    assert callable(getattr(Server, "_protocol_factory", None))
    assert callable(getattr(H2Protocol, "connection_made", None))
    assert pb.ContentBase._call_rpc_handler_server_stream is _grpclib._closing_server_stream


def test_a_streaming_handler_is_closed_as_soon_as_sending_its_response_fails() -> None:
    """Its ``finally`` (an ingest's ref lock) runs in the call, not when the collector finds it."""
    closed: list[str] = []

    class GoneClient:
        async def send_message(self, message: Any) -> None:
            raise ConnectionResetError("the client went away")

    async def handler(request: Any) -> Any:
        try:
            yield pb.WriteContentResponse(offset=1)
            yield pb.WriteContentResponse(offset=2)
        finally:
            closed.append("released")

    async def main() -> None:
        with pytest.raises(ConnectionResetError):
            await pb.ContentBase._call_rpc_handler_server_stream(object(), handler, GoneClient(), None)
        assert closed == ["released"]

    gc.disable()
    try:
        anyio.run(main)
    finally:
        gc.enable()


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return "peer" if name == "peername" else default


def test_corked_transport_sends_one_turns_writes_at_once() -> None:
    async def main() -> None:
        raw = _Transport()
        corked = _grpclib._CorkedTransport(raw, asyncio.get_running_loop())
        corked.write(b"ping-ack")  # written while a request is received
        await asyncio.sleep(0)  # the turn in which the handler it started runs
        corked.write(b"headers")
        corked.write(b"")
        corked.write(b"data")
        corked.write(b"trailers")
        assert raw.writes == []  # nothing leaves before the turn after the first write ends
        await asyncio.sleep(0)
        assert raw.writes == [b"ping-ackheadersdatatrailers"]
        corked.write(b"next")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert raw.writes == [b"ping-ackheadersdatatrailers", b"next"]
        assert corked.get_extra_info("peername") == "peer"  # everything else is the transport's

    asyncio.run(main())


def test_corked_transport_flushes_before_closing() -> None:
    async def main() -> None:
        raw = _Transport()
        corked = _grpclib._CorkedTransport(raw, asyncio.get_running_loop())
        corked.write(b"goaway")
        corked.close()
        assert raw.writes == [b"goaway"] and raw.closed
        corked.write(b"late")
        await asyncio.sleep(0)
        assert raw.writes == [b"goaway"]  # nothing is written to a closed transport

    asyncio.run(main())


@pytest.mark.parametrize(
    ("offset", "data"),
    [(0, b""), (0, b"x"), (7, b""), (300, b"abc" * 20000), (1 << 40, b"\0"), ((1 << 63) - 1, b"q")],
)
def test_read_chunk_encodes_as_betterproto2_does(offset: int, data: bytes) -> None:
    expected = bytes(pb.ReadContentResponse(offset=offset, data=data))
    chunk = _ReadChunk(offset, data)
    assert chunk.SerializeToString() == expected == bytes(chunk)
    assert isinstance(chunk, pb.ReadContentResponse)  # what grpclib's codec checks
    back = pb.ReadContentResponse.FromString(expected)
    assert (back.offset, back.data) == (offset, data)


def test_cached_read_is_all_or_nothing(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(bytes(range(256)) * 64)
    fd = os.open(path, os.O_RDONLY)
    try:
        got = local._read_cached(fd, 1000, 100)
        if got is not None:  # the file was just written, so cached, where RWF_NOWAIT exists
            assert got == (bytes(range(256)) * 64)[100:1100]
        assert local._read_cached(fd, 1000, len(bytes(range(256)) * 64) - 10) is None  # short
    finally:
        os.close(fd)


def test_store_reads_the_same_bytes_with_and_without_the_cached_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(3 * local.READ_CHUNK + 123)

    async def read_all(store: local.LocalContentStore, digest: str, offset: int, size: int) -> bytes:
        return b"".join([chunk async for chunk in store.read(digest, offset, size)])

    async def main() -> list[bytes]:
        store = local.LocalContentStore(tmp_path / "root")
        writer = await store.writer("ref", len(data))
        await writer.write(data)
        info = await writer.commit(len(data), "")
        return [
            await read_all(store, info.digest, 0, 0),
            await read_all(store, info.digest, 5, 2 * local.READ_CHUNK),
            await read_all(store, info.digest, len(data), 0),
        ]

    fast = anyio.run(main)
    monkeypatch.setattr(local, "_NOWAIT", 0)
    (tmp_path / "root").rename(tmp_path / "first")
    slow = anyio.run(main)
    assert fast == slow == [data, data[5 : 5 + 2 * local.READ_CHUNK], b""]


def test_spinning_selector_catches_an_event_that_comes_during_the_spin() -> None:
    import socket
    import threading
    import time

    from corral.api import _spin

    a, b = socket.socketpair()
    selector = _spin.SpinningSelector()
    try:
        selector.register(a, selectors.EVENT_READ)
        assert selector.select(0.01) == []  # idle: blocks for the timeout, nothing to spin after
        assert not selector._busy
        b.send(b"x")
        assert len(selector.select(1.0)) == 1 and selector._busy
        a.recv(1)
        # Busy now: the next event, sent while the selector spins, is returned without a sleep.
        timer = threading.Timer(_spin.SPIN_SECONDS / 4, b.send, (b"y",))
        timer.start()
        assert len(selector.select(5.0)) == 1
        timer.join()
        a.recv(1)
        # Nothing comes: after the spin it blocks for the rest, and it is idle again.
        start = time.perf_counter()
        assert selector.select(0.05) == []
        assert time.perf_counter() - start >= 0.05 and not selector._busy
    finally:
        selector.close()
        a.close()
        b.close()


def test_corrald_runs_on_the_spinning_loop() -> None:
    from corral.api import _spin

    loop = _spin.new_event_loop()
    try:
        assert isinstance(loop._selector, _spin.SpinningSelector)  # type: ignore[attr-defined]
    finally:
        loop.close()


def test_a_burst_of_connections_all_wait_in_the_listen_queue(tmp_path: Path) -> None:
    """300 clients that connect before the server accepts any all get in (grpclib's backlog of
    100 refused the rest with EAGAIN)."""
    import socket

    from corral.api.grpc.server import build_mapping, listen_backlog, serve_unix

    assert listen_backlog() >= 128
    address = str(tmp_path / "s.sock")

    async def main() -> int:
        async with serve_unix(build_mapping(()), address):
            clients = []
            try:
                for _ in range(300):  # connected synchronously: the loop accepts none meanwhile
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    sock.setblocking(False)
                    clients.append(sock)
                    sock.connect(address)
                await asyncio.sleep(0.1)
                return len(clients)
            finally:
                for c in clients:
                    c.close()

    assert asyncio.run(main()) == 300


def _h2_pair(**client_config: Any) -> tuple[Any, Any]:
    """A client and a server H2Connection (the server with the caching coders), handshake done."""
    import h2.config
    import h2.connection

    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, **client_config))
    flags = dict.fromkeys(  # as grpclib's server configures h2
        (
            "validate_inbound_headers",
            "validate_outbound_headers",
            "normalize_inbound_headers",
            "normalize_outbound_headers",
        ),
        False,
    )
    server = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding="ascii", **flags)
    )
    _grpclib.install_header_caches(server)
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    return client, server


def _request(path: str, extra: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    return [
        (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "localhost"),
        ("content-type", "application/grpc"), ("te", "trailers"), *(extra or []),
    ]  # fmt: skip


def test_cached_request_headers_decode_as_the_real_decoder_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests that repeat, that add to the table, that evict and that resize it: each stream's
    headers as sent, the cache hit for blocks seen before while the table stood still."""
    import h2.events
    import h2.settings
    import hpack

    real_decodes: list[bytes] = []
    real_decode = hpack.Decoder.decode

    def counting_decode(self: Any, data: bytes, raw: bool = False) -> Any:
        if self is server.decoder:
            real_decodes.append(data)
        return real_decode(self, data, raw)

    monkeypatch.setattr(hpack.Decoder, "decode", counting_decode)
    client, server = _h2_pair()
    paths = ["/a.A/One", "/a.A/Two", "/a.A/One", "/a.A/One", "/b.B/Three", "/a.A/Two"]
    paths += [f"/c.C/M{i}" for i in range(200)]  # 200 new paths: evictions from the 4 KiB table
    paths += ["/a.A/One", "/a.A/One", "/a.A/One"]
    for n, path in enumerate(paths):
        extra = [("grpc-timeout", f"{n}m")] if n % 7 == 5 and n < 200 else []  # a literal: the table changes
        if n == 100:  # the server shrinks the table the client may use: a size update comes
            server.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 512})
            client.receive_data(server.data_to_send())
            server.receive_data(client.data_to_send())
        stream_id = client.get_next_available_stream_id()
        client.send_headers(stream_id, _request(path, extra), end_stream=True)
        events = server.receive_data(client.data_to_send())
        server.send_headers(stream_id, [(":status", "200")], end_stream=True)
        client.receive_data(server.data_to_send())
        received = [e for e in events if isinstance(e, h2.events.RequestReceived)]
        assert len(received) == 1
        assert [tuple(h) for h in received[0].headers] == _request(path, extra)
    # The fourth request and the last repeat a block seen (and cached) with the table as it is.
    assert 2 <= len(paths) - len(real_decodes) < 10


def test_cached_response_headers_keep_the_peer_table_in_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Responses sent again from the cache, mixed with ones the real encoder writes (lists past
    the cache's bound, a table-size change the client asks for): the client decodes every one
    as it was sent, so the cached bytes never touched its table."""
    import h2.events
    import h2.settings

    monkeypatch.setattr(_grpclib, "CACHED_BLOCKS", 4)
    client, server = _h2_pair()
    for n in range(40):
        if n == 20:
            client.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 256})
            server.receive_data(client.data_to_send())
            client.receive_data(server.data_to_send())
        stream_id = client.get_next_available_stream_id()
        client.send_headers(stream_id, _request("/a.A/One"), end_stream=True)
        server.receive_data(client.data_to_send())
        initial = [(":status", "200"), ("content-type", "application/grpc+proto")]
        if n % 4 == 0:
            initial.append(("x-extra", str(n)))  # new each time: past the bound, the real encoder
        trailers = [("grpc-status", "0")] if n % 3 else [("grpc-status", "2"), ("grpc-message", f"e{n % 6}")]
        server.send_headers(stream_id, initial)
        server.send_headers(stream_id, trailers, end_stream=True)
        events = client.receive_data(server.data_to_send())
        response = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
        ended = [e for e in events if isinstance(e, h2.events.TrailersReceived)]
        assert [(k.decode(), v.decode()) for k, v in response[0].headers] == initial
        assert [(k.decode(), v.decode()) for k, v in ended[0].headers] == trailers
    assert len(server.encoder._cache) == 4
    assert server.encoder.header_table.dynamic_entries  # the real encoder's entries, in step


def test_the_same_block_after_a_table_change_is_decoded_again() -> None:
    """All-indexed blocks whose indices point at different entries once the table has changed."""
    import h2.events

    client, server = _h2_pair(validate_outbound_headers=False)
    blocks = []
    for path in ("/p.P/One", "/p.P/One", "/p.P/Two", "/p.P/Two"):
        stream_id = client.get_next_available_stream_id()
        headers = [(":method", "POST"), (":scheme", "http"), (":path", path)]
        client.send_headers(stream_id, headers, end_stream=True)
        data = client.data_to_send()
        blocks.append(data[9:])
        events = server.receive_data(data)
        server.send_headers(stream_id, [(":status", "200")], end_stream=True)
        client.receive_data(server.data_to_send())
        received = [e for e in events if isinstance(e, h2.events.RequestReceived)]
        assert [tuple(h) for h in received[0].headers] == headers
    assert blocks[1] == blocks[3]  # the same bytes, two meanings


def test_received_frames_are_not_formatted() -> None:
    import h2.connection

    assert h2.connection.repr is _grpclib._no_repr  # type: ignore[attr-defined]
    assert repr(object())  # the builtin elsewhere
