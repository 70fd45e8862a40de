"""The floor under corrald's start-up: the least a Python process does to answer ``ctr version``.

``python -m benchmarks.floor --address SOCKET`` imports what corrald imports first (asyncio, and
``corral.api._lean_imports``: structlog without rich, betterproto2 without ``importlib.metadata``)
and corral's own HTTP/2 transport (``corral.api.grpc._http2``, which logs with structlog), listens
on SOCKET and answers the two calls ``ctr version`` makes (``Version.Version`` and
``Introspection.Server``) with fixed, hand-encoded messages: no config, no kernel, no plugins, no
generated protobuf types, no logging set up. The ``startup-floor`` scenario times it as it times
corrald; whatever corrald adds to that is corral's own.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

from grpclib.const import Cardinality, Handler

import corral.api._lean_imports  # noqa: F401  # first, as corrald imports it: structlog without rich
from corral import __version__
from corral.api.grpc._http2 import GRPCServer


def _string(field: int, text: str) -> bytes:
    data = text.encode()
    return bytes([field << 3 | 2, len(data)]) + data


def _varint(field: int, value: int) -> bytes:
    out = bytearray([field << 3])
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


VERSION = _string(1, __version__) + _string(2, "floor")
SERVER = _string(1, "00000000-0000-0000-0000-000000000000") + _varint(2, os.getpid())


class _Bytes:
    """The codec of a server that answers fixed bytes and reads nothing it is sent."""

    def decode(self, data: bytes, _type: Any) -> bytes:
        return data

    def encode(self, message: bytes, _type: Any) -> bytes:
        return message


def _answer(reply: bytes) -> Handler:
    async def handle(stream: Any) -> None:
        await stream.recv_message()
        await stream.send_message(reply)

    return Handler(handle, Cardinality.UNARY_UNARY, None, None)


MAPPING = {
    "/containerd.services.version.v1.Version/Version": _answer(VERSION),
    "/containerd.services.introspection.v1.Introspection/Server": _answer(SERVER),
}


async def serve(address: str) -> None:
    server = GRPCServer(MAPPING.get, _Bytes())
    await server.start(path=address, backlog=128)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()
    await server.wait_closed()


def main(argv: list[str]) -> None:
    # The daemons' command line, of which only --address matters here.
    address = argv[argv.index("--address") + 1]
    asyncio.run(serve(address))


if __name__ == "__main__":
    main(sys.argv[1:])
