"""An async client for corrald (and containerd): what the CLI, the tests and plugin authors use.

One ``Client`` is one connection; its calls are organised per service (``_content``,
``_snapshots``, …) and combined here. Importing it loads neither the daemon, the kernel's
machinery nor sqlite.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType

from corral.api.client._connection import DEFAULT_NAMESPACE, Connection, default_address, rfc3339
from corral.api.client._containers import ContainerCalls
from corral.api.client._content import WRITE_CHUNK, ContentCalls, IngestSource
from corral.api.client._events import EventCalls
from corral.api.client._images import ImageCalls
from corral.api.client._introspection import IntrospectionCalls
from corral.api.client._leases import LeaseCalls
from corral.api.client._namespaces import NamespaceCalls
from corral.api.client._snapshots import SnapshotCalls
from corral.api.client._tasks import TaskCalls
from corral.api.client._transfer import (
    ImportOptions,
    PullOptions,
    RegistryOptions,
    TransferCalls,
    TransferProgress,
)

__all__ = [
    "DEFAULT_NAMESPACE",
    "WRITE_CHUNK",
    "Client",
    "Connection",
    "ImportOptions",
    "IngestSource",
    "PullOptions",
    "RegistryOptions",
    "TransferProgress",
    "connect",
    "default_address",
    "rfc3339",
]


class Client(
    IntrospectionCalls,
    NamespaceCalls,
    ContentCalls,
    LeaseCalls,
    EventCalls,
    SnapshotCalls,
    ImageCalls,
    ContainerCalls,
    TransferCalls,
    TaskCalls,
):
    """Every service's calls on one connection to a daemon's socket."""

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@asynccontextmanager
async def connect(address: str | None = None, namespace: str = DEFAULT_NAMESPACE) -> AsyncIterator[Client]:
    client = Client(address, namespace)
    try:
        yield client
    finally:
        client.close()
