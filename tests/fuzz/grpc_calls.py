"""The RPCs corrald serves, and raw calls to them: bodies are bytes, sent as any cardinality.

A call is made with a pass-through codec, so a body is exactly the bytes on the wire, and always as
a client-and-server stream, so a unary method can be sent no message, or two, and a streaming one
can be ended early or written to after the daemon has answered.
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import betterproto2
from betterproto2.grpclib.grpclib_server import ServiceBase
from grpclib.client import Channel
from grpclib.const import Cardinality, Handler, Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

import corral.api.types

CALL_TIMEOUT = 10.0
"""The deadline every call carries; a call still open a little after it is a hang."""
OPEN_BY_DESIGN = frozenset(
    {"/containerd.services.events.v1.Events/Subscribe", "/grpc.health.v1.Health/Watch"}
)
"""Streams that stay open until the client leaves: called with a short deadline."""
OPEN_TIMEOUT = 0.5


@dataclass(frozen=True)
class RPC:
    path: str
    cardinality: Cardinality
    request_type: type[betterproto2.Message]

    @property
    def client_streaming(self) -> bool:
        return self.cardinality in (Cardinality.STREAM_UNARY, Cardinality.STREAM_STREAM)


def generated_rpcs() -> list[RPC]:
    """Every method of every service base generated in ``corral.api.types``."""
    found: dict[str, RPC] = {}
    for info in pkgutil.walk_packages(corral.api.types.__path__, corral.api.types.__name__ + "."):
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, ServiceBase) and value is not ServiceBase:
                handlers: dict[str, Handler] = value().__mapping__()  # type: ignore[attr-defined]
                for path, handler in handlers.items():
                    found[path] = RPC(path, handler.cardinality, handler.request_type)
    return sorted(found.values(), key=lambda rpc: rpc.path)


def message_types() -> list[type[betterproto2.Message]]:
    """Every request type of every generated service, for bodies of the wrong type."""
    return sorted({rpc.request_type for rpc in generated_rpcs()}, key=lambda t: t.__qualname__)


class PassThrough(CodecBase):
    """Bodies are bytes already; replies are kept as bytes."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        assert isinstance(message, bytes)
        return message

    def decode(self, data: bytes, message_type: Any) -> Any:
        return data


@dataclass(frozen=True)
class Outcome:
    """How a call ended: its status (OK for none), its message, and how many replies came."""

    status: Status
    message: str
    replies: int
    hung: bool = False
    """The call outlived its deadline by more than the grace: the daemon never answered."""
    transport: str = ""
    """Set when the call ended without a gRPC status (the connection or stream broke)."""


@dataclass(frozen=True)
class Plan:
    """What one call sends: the bodies, then ``end`` (half-close and read the answer), ``abandon``
    (leave without ending: the daemon must clean up after a client that went away), or ``after``
    (end, read the answer, then send once more on the closed stream)."""

    bodies: Sequence[bytes]
    mode: str = "end"
    max_replies: int = 50


def channel(socket: str) -> Channel:
    return Channel(path=socket, codec=PassThrough())


async def call(ch: Channel, rpc: RPC, plan: Plan, metadata: Mapping[str, str]) -> Outcome:
    """Make one call as ``plan`` says, within the call deadline plus a grace; never raises."""
    open_by_design = rpc.path in OPEN_BY_DESIGN
    timeout = OPEN_TIMEOUT if open_by_design else CALL_TIMEOUT
    replies = 0
    with anyio.move_on_after(timeout + 5.0) as scope:
        try:
            async with ch.request(
                rpc.path, Cardinality.STREAM_STREAM, bytes, bytes, timeout=timeout, metadata=dict(metadata)
            ) as stream:
                await stream.send_request()
                last = len(plan.bodies) - 1
                for i, body in enumerate(plan.bodies):
                    await stream.send_message(body, end=plan.mode != "abandon" and i == last)
                if plan.mode == "abandon":
                    with anyio.move_on_after(0.2):
                        if await stream.recv_message() is not None:
                            replies += 1
                    await stream.cancel()
                    return Outcome(Status.CANCELLED, "client went away", replies)
                if not plan.bodies:
                    await stream.end()
                while await stream.recv_message() is not None:
                    replies += 1
                    if replies >= plan.max_replies:
                        await stream.cancel()
                        return Outcome(Status.CANCELLED, "client stopped reading", replies)
                if plan.mode == "after":
                    with contextlib.suppress(ProtocolError, StreamTerminatedError):
                        # The stream is closed: the client library refuses, or the daemon resets it.
                        await stream.send_message(b"", end=True)
                await stream.recv_trailing_metadata()
        except GRPCError as exc:
            return Outcome(exc.status, exc.message or "", replies)
        except TimeoutError:
            return Outcome(Status.DEADLINE_EXCEEDED, "client deadline", replies, hung=not open_by_design)
        except (StreamTerminatedError, ProtocolError, ConnectionError, OSError) as exc:
            return Outcome(Status.UNKNOWN, str(exc), replies, transport=type(exc).__name__)
        return Outcome(Status.OK, "", replies)
    assert scope.cancelled_caught
    return Outcome(Status.DEADLINE_EXCEEDED, "no answer within the deadline", replies, hung=True)
