"""The streaming contract (``io.containerd.streaming.v1``): named message streams a client opens
for a later call to use (a transfer's archive bytes, its progress).

A ``Stream`` carries opaque typed messages both ways; the ``StreamManager`` keeps the open ones
by the request's namespace and name, until they close. What the messages mean (data, window
updates) is the business of the side that uses the stream.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from corral.plugins.metadata import AnyValue

__all__ = ["Stream", "StreamManager"]


@runtime_checkable
class Stream(Protocol):
    async def send(self, message: AnyValue) -> None:
        """Send to the client; EOFError once the stream is closed or the client went away."""
        ...

    async def recv(self) -> AnyValue | None:
        """The client's next message; None once it has sent its last."""
        ...

    async def close(self) -> None:
        """End the stream (the client's receive ends); idempotent."""
        ...


@runtime_checkable
class StreamManager(Protocol):
    async def register(self, name: str, stream: Stream) -> Stream:
        """Keep ``stream`` as ``name`` in the request's namespace; the handle returned forgets it
        when closed. AlreadyExists when the namespace has an open stream of that name."""
        ...

    async def get(self, name: str) -> Stream:
        """NotFound when the namespace has no open stream of that name."""
        ...
