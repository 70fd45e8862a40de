"""Every reliance on grpclib's and betterproto2's internals, in one place, for the versions in ``PINNED``.

corrald serves gRPC with its own HTTP/2 transport (``corral.api.grpc._http2``); what it still takes
from grpclib is the handler vocabulary the generated service bases are written in (``Handler``,
``Cardinality``, ``Status``, ``GRPCError``) and the protobuf codec's base class.

- A lazily started gRPC plugin (``corral.api.grpc.lazy``) learns its message types only once its
  module is imported, after the call's stream was made: ``retype`` sets the stream's
  ``_recv_type`` and ``_send_type``.
- An unknown path is answered as grpc-go answers it (Unimplemented naming the service or the
  method), the answer clients (``ctr containers ls``) fall back on: ``UnimplementedMapping``.
- betterproto2's service base drives a streaming handler's async generator with a bare
  ``async for``: when sending a response fails (the client went away), the generator is left
  suspended at its ``yield`` and its ``finally`` (which releases an ingest's ref lock, a lease,
  a subscription) runs only when the garbage collector finds it, seconds or minutes later; a
  retried ``ctr content ingest`` waits on the lock all that time. ``_closing_server_stream``
  closes the generator as the call ends, whatever ended it.
- That base class is all the generated modules need of betterproto2's server module, which
  imports grpclib's server (and h2 with it): ``install_service_base`` puts a module holding
  ``ServiceBase`` in its place before any generated module is imported.

``tests/unit/test_grpclib_compat.py`` fails when the installed versions differ from ``PINNED``,
so an upgrade is a conscious step: check each point against the new code, then move the pins.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Coroutine, Mapping
from typing import Any

from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError

from corral.api.grpc._http2 import ServerStream

PINNED = {"grpclib": "0.4.9", "betterproto2": "0.10.0"}

StreamHandler = Callable[[Any], Coroutine[Any, Any, None]]


def _unimplemented(message: str) -> Handler:
    from corral.api.types.google import protobuf

    async def reply(stream: Any) -> None:
        raise GRPCError(Status.UNIMPLEMENTED, message)

    return Handler(reply, Cardinality.UNARY_UNARY, protobuf.Empty, protobuf.Empty)


def retype(stream: Any, request_type: Any, reply_type: Any) -> None:
    """Set the message types of a server stream (seen through any wrappers that keep it as ``_stream``)."""
    while not isinstance(stream, ServerStream):
        stream = stream._stream
    stream._recv_type = request_type
    stream._send_type = reply_type


class UnimplementedMapping(dict[str, Handler]):
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


async def _closing_server_stream(self: Any, handler: Callable[..., Any], stream: Any, request: Any) -> None:
    responses = handler(request)
    if not isinstance(responses, AsyncIterable):
        responses.close()  # a coroutine: the handler returned without yielding
        return
    if not isinstance(responses, AsyncGenerator):
        async for message in responses:
            await stream.send_message(message)
        return
    async with contextlib.aclosing(responses):
        async for message in responses:
            await stream.send_message(message)


_SERVER_MODULE = "betterproto2.grpclib.grpclib_server"


class ServiceBase:
    """What betterproto2's generated service bases derive from, without grpclib's server."""

    _call_rpc_handler_server_stream = _closing_server_stream


def install_service_base() -> bool:
    """Give the generated service bases ``ServiceBase``; True if betterproto2's own module (and
    with it grpclib's server, h2 and its state machines) was never imported for it.

    The generated modules import ``betterproto2.grpclib``, whose ``__init__`` imports its server
    module for one small ABC, and that module imports ``grpclib.server``: 30 ms of corrald's
    start-up for a server it does not run. Installed before the first generated module is
    imported, this module stands in for it; if betterproto2's is loaded already (a process that
    imported the generated clients first), its ``ServiceBase`` gets ``_closing_server_stream``."""
    real = sys.modules.get(_SERVER_MODULE)
    if real is not None:
        setattr(real.ServiceBase, "_call_rpc_handler_server_stream", _closing_server_stream)  # noqa: B010
        return False
    stand_in = types.ModuleType(_SERVER_MODULE)
    stand_in.ServiceBase = ServiceBase  # type: ignore[attr-defined]
    sys.modules[_SERVER_MODULE] = stand_in
    return True


install_service_base()
