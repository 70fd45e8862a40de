"""Every reliance on grpclib's and h2's internals, in one place, for the versions in ``PINNED``.

- h2 formats each received frame for a trace log line it then discards, and hyperframe hexes the
  whole payload (16 KiB per DATA frame) to keep 20 characters of it: a quarter of the event loop's
  time during a large ingest. ``_raw_data_repr`` is replaced by one that hexes only what is shown.
- grpclib answers an unknown path without a ``content-type`` header, which grpc-go reads as a
  transport error, losing the Unimplemented status that clients (``ctr containers ls``) fall back
  on; the server's private ``_mapping`` is replaced by one that answers as grpc-go does.

``tests/unit/test_grpclib_compat.py`` fails when the installed versions differ from ``PINNED``,
so an upgrade is a conscious step: check both points against the new code, then move the pins.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import hyperframe.frame
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server, Stream

from corral.api.grpc.codec import RequestCodec
from corral.api.types.google import protobuf

PINNED = {"grpclib": "0.4.9", "h2": "4.4.1", "hyperframe": "6.1.0"}

StreamHandler = Callable[[Stream[Any, Any]], Coroutine[Any, Any, None]]


def _short_data_repr(data: bytes | None) -> str:
    if not data:
        return "None"
    shown = binascii.hexlify(data[:11]).decode("ascii")
    return "<hex:" + (shown[:20] + "..." if len(shown) > 20 else shown) + ">"


def patch_frame_repr() -> bool:
    """Install the cheap payload repr; False if hyperframe no longer has the hook."""
    if not hasattr(hyperframe.frame, "_raw_data_repr"):
        return False
    hyperframe.frame._raw_data_repr = _short_data_repr
    return True


def _unimplemented(message: str) -> Handler:
    async def reply(stream: Stream[Any, Any]) -> None:
        raise GRPCError(Status.UNIMPLEMENTED, message)

    return Handler(reply, Cardinality.UNARY_UNARY, protobuf.Empty, protobuf.Empty)


class _Mapping(dict[str, Handler]):
    """Known paths map to their handlers; unknown ones to grpc-go's Unimplemented answers."""

    def __init__(self, handlers: Mapping[str, Handler]) -> None:
        super().__init__(handlers)
        self._services = {p.lstrip("/").rpartition("/")[0] for p in handlers}

    def get(self, key: str, default: Any = None) -> Handler:
        found = super().get(key)
        if found is not None:
            return found
        service, _, method = key.lstrip("/").rpartition("/")
        if service not in self._services:
            return _unimplemented(f"unknown service {service}")
        return _unimplemented(f"unknown method {method} for service {service}")


class MappedServer(Server):
    """A grpclib server over a ready path → handler mapping, with grpc-go's unknown-path answers."""

    def __init__(self, mapping: Mapping[str, Handler]) -> None:
        super().__init__([], codec=RequestCodec())
        self._mapping = _Mapping(mapping)


patch_frame_repr()
