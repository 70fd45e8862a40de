"""One lazy gRPC connection per proxy address, and the one translation of its failures.

As containerd's proxy clients: the connection is made on the first call, not at start, so a
proxy process started after corrald is fine; while its socket is down, calls fail Unavailable.
"""

from __future__ import annotations

import errno
import inspect
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
SOCKET_WAIT = 0.5
SOCKET_POLL = 0.01


class _SocketMissing(OSError):
    """The proxy's socket did not appear within SOCKET_WAIT."""


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
            await self._await_socket()
        except _SocketMissing as exc:
            if inspect.iscoroutine(awaitable):
                awaitable.close()  # the call was never made
            raise self.unavailable(exc) from None
        try:
            return await awaitable
        except GRPCError as exc:
            raise error_for(exc.status.value, exc.message or "") from None
        except (OSError, StreamTerminatedError, ProtocolError) as exc:
            raise self.unavailable(exc) from None

    async def stream(self, responses: AsyncIterator[T]) -> AsyncGenerator[T, None]:
        try:
            await self._await_socket()
            async for response in responses:
                yield response
        except GRPCError as exc:
            raise error_for(exc.status.value, exc.message or "") from None
        except (OSError, StreamTerminatedError, ProtocolError) as exc:
            raise self.unavailable(exc) from None

    async def _await_socket(self) -> None:
        """As containerd's dialer: a socket not there yet is waited for a moment (a proxy starting)."""
        if os.path.exists(self.address):
            return
        # polled, as containerd's dialer polls: nothing would tell us the file appeared
        for _ in range(round(SOCKET_WAIT / SOCKET_POLL)):
            await anyio.sleep(SOCKET_POLL)
            if os.path.exists(self.address):
                return
        raise _SocketMissing

    def unavailable(self, exc: BaseException) -> Unavailable:
        """containerd 1.6's words (grpc-go's) for a proxy it cannot reach, as ``ctr`` prints them."""
        if isinstance(exc, _SocketMissing) or (isinstance(exc, OSError) and exc.errno == errno.ENOENT):
            detail = f"transport: Error while dialing dial unix://{self.address}: timeout"
        elif isinstance(exc, OSError):
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            detail = f"transport: Error while dialing dial unix {self.address}: connect: {reason}"
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
