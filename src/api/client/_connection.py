"""The connection every per-service part of the client shares: one channel, one namespace."""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Mapping
from datetime import UTC, datetime
from typing import TypeVar

from grpclib.client import Channel
from grpclib.exceptions import GRPCError

from corral.api.edge import LEASE_HEADER, NAMESPACE_HEADER, error_for

T = TypeVar("T")

DEFAULT_NAMESPACE = "default"


def default_address() -> str:
    """$CORRAL_ADDRESS, else where corrald listens by default for this user."""
    env = os.environ.get("CORRAL_ADDRESS")
    if env:
        return env
    if os.geteuid() == 0:
        return "/run/corral/corral.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    state = os.path.join(runtime, "corral") if runtime else f"/tmp/corral-{os.getuid()}"
    return os.path.join(state, "corral.sock")


class Connection:
    """One connection to a daemon's socket; every call carries the client's namespace."""

    def __init__(self, address: str | None = None, namespace: str = DEFAULT_NAMESPACE) -> None:
        self.address = address or default_address()
        self.namespace = namespace
        self.channel = Channel(path=self.address)

    def _metadata(self) -> Mapping[str, str]:
        return {NAMESPACE_HEADER: self.namespace}

    def _lease_metadata(self, lease: str | None) -> Mapping[str, str]:
        """The namespace header, plus ``containerd-lease``: what the call creates is held by ``lease``."""
        metadata = dict(self._metadata())
        if lease:
            metadata[LEASE_HEADER] = lease
        return metadata

    def close(self) -> None:
        self.channel.close()

    # Each call turns a gRPC status back into the kernel's error kind, so callers catch
    # NotFound, AlreadyExists, ... rather than status codes.
    @staticmethod
    async def call(awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except GRPCError as exc:
            raise error_for(exc.status.value, exc.message or "") from None

    # Server streams get the same translation, and are closed when the caller stops early.
    @staticmethod
    async def call_stream(responses: AsyncIterator[T]) -> AsyncGenerator[T, None]:
        try:
            async for response in responses:
                yield response
        except GRPCError as exc:
            raise error_for(exc.status.value, exc.message or "") from None
        finally:
            await _aclose(responses)


def rfc3339(moment: datetime) -> str:
    """RFC 3339 in UTC to the second, as containerd's gc.expire label carries it."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def _aclose(iterator: object) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()
