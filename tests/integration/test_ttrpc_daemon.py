"""corrald's ttrpc socket at ``<grpc address>.ttrpc``: what shims call, Events/Forward, lands on
the exchange with the envelope's own namespace, topic and time, for gRPC subscribers to see."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest
from harness import Daemon

from corral.api.client import connect
from corral.api.ttrpc import NAMESPACE_TTRPC_HEADER, TTRPCClient
from corral.api.types.containerd import events as pb_events
from corral.api.types.containerd import types as ctypes
from corral.api.types.containerd.services.events.ttrpc import v1 as ttrpc_events
from corral.api.types.google import protobuf
from corral.kernel import InvalidArgument, Unimplemented

pytestmark = pytest.mark.anyio

SERVICE = "containerd.services.events.ttrpc.v1.Events"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def plain_daemon(tmp_path: Path) -> Daemon:
    d = Daemon(tmp_path / "corral").start()
    yield d  # type: ignore[misc]
    d.stop()


async def test_a_forwarded_shim_event_reaches_subscribers_as_sent(plain_daemon: Daemon) -> None:
    path = plain_daemon.socket + ".ttrpc"
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    sent_at = datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    event = pb_events.TaskOom(container_id="c-oom")
    envelope = ctypes.Envelope(
        timestamp=sent_at,
        namespace="shimns",
        topic="/tasks/oom",
        event=protobuf.Any(type_url="containerd.events.TaskOOM", value=bytes(event)),
    )
    async with connect(plain_daemon.socket) as client:
        received: list[ctypes.Envelope] = []
        arrived = anyio.Event()

        async def subscribe() -> None:
            async for got in client.subscribe(['topic=="/tasks/oom"']):
                received.append(got)
                arrived.set()
                return

        async with anyio.create_task_group() as tg:
            tg.start_soon(subscribe)
            await anyio.sleep(0.3)
            async with TTRPCClient.connect(path) as shim:
                reply = await shim.call(
                    SERVICE,
                    "Forward",
                    bytes(ttrpc_events.ForwardRequest(envelope=envelope)),
                    timeout=5,
                    metadata={NAMESPACE_TTRPC_HEADER: "shimns"},
                )
                assert reply == b""
                with anyio.fail_after(5):
                    await arrived.wait()
    [got] = received
    assert (got.namespace, got.topic, got.timestamp) == ("shimns", "/tasks/oom", sent_at)
    assert got.event is not None and got.event.type_url == "containerd.events.TaskOOM"
    assert pb_events.TaskOom.parse(got.event.value).container_id == "c-oom"


async def test_a_forward_without_an_envelope_or_to_an_unknown_method_is_refused(plain_daemon: Daemon) -> None:
    async with TTRPCClient.connect(plain_daemon.socket + ".ttrpc") as shim:
        with pytest.raises(InvalidArgument, match="envelope must be set"):
            await shim.call(SERVICE, "Forward", b"")
        with pytest.raises(Unimplemented):
            await shim.call(SERVICE, "Publish", b"")
        with pytest.raises(Unimplemented):
            await shim.call("containerd.services.tasks.v1.Tasks", "List", b"")
