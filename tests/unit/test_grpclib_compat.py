"""The grpclib/betterproto2 workarounds in ``corral.api.grpc._grpclib`` and the fast paths of the read RPC.

An upgrade of grpclib or betterproto2 fails the first test: check every workaround listed in
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
