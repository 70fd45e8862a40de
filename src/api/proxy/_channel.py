"""One lazy gRPC connection per proxy address, and the one translation of its failures.

As containerd's proxy clients: the connection is made on the first call, not at start, so a
proxy process started after corrald is fine; while its socket is down, calls fail Unavailable.
"""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Mapping
from typing import TypeVar

import anyio
from grpclib.client import Channel
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from corral.api.edge import NAMESPACE_HEADER, error_for
from corral.kernel import Unavailable
from corral.plugins.core import current_namespace

T = TypeVar("T")

PROBE_TIMEOUT = 1.0


class ProxyChannel:
    """The connection to one proxy process's unix socket, made on first use."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._channel: Channel | None = None

    @property
    def channel(self) -> Channel:
        if self._channel is None:
            self._channel = Channel(path=self.address)
        return self._channel

    def metadata(self) -> Mapping[str, str]:
        """The caller's namespace travels with each call, as containerd's context carries it (its
        lease does not: the proxy's own records are not the daemon's)."""
        ns = current_namespace()
        return {NAMESPACE_HEADER: ns} if ns else {}

    async def call(self, awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except GRPCError as exc:
            raise error_for(exc.status.value, exc.message or "") from None
        except (OSError, StreamTerminatedError, ProtocolError) as exc:
            raise self.unavailable(exc) from None

    async def stream(self, responses: AsyncIterator[T]) -> AsyncGenerator[T, None]:
        try:
            async for response in responses:
                yield response
        except GRPCError as exc:
            raise error_for(exc.status.value, exc.message or "") from None
        except (OSError, StreamTerminatedError, ProtocolError) as exc:
            raise self.unavailable(exc) from None

    def unavailable(self, exc: BaseException) -> Unavailable:
        """grpc-go's words for a proxy it cannot reach, so logs and clients read as with containerd."""
        if isinstance(exc, OSError):
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
                reason = reason.lower()
            detail = f"transport: Error while dialing: dial unix {self.address}: connect: {reason}"
        else:
            detail = f"transport: {type(exc).__name__}: {exc}"
        return Unavailable(f'connection error: desc = "{detail}"')

    async def probe(self) -> str:
        """ "" when something accepts connections on the socket, else why not (for introspection)."""
        try:
            with anyio.fail_after(PROBE_TIMEOUT):
                stream = await anyio.connect_unix(self.address)
        except TimeoutError:
            return f"proxy at {self.address} did not accept a connection within {PROBE_TIMEOUT:g}s"
        except OSError as exc:
            return (
                f"proxy at {self.address} is unreachable ({os.strerror(exc.errno) if exc.errno else exc});"
                " its calls fail with Unavailable until the proxy process listens there"
            )
        await stream.aclose()
        return ""

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
