"""corral's ttrpc client and server over a real unix socket: calls, concurrency, errors, deadlines,
closing, size limits and the peer-credential check."""

from __future__ import annotations

import os
import socket
import stat
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
import structlog.testing
from tooling import require_root

from corral.api.ttrpc import (
    MAX_PAYLOAD,
    NAMESPACE_HEADER,
    NAMESPACE_TTRPC_HEADER,
    MessageType,
    TTRPCClient,
    TTRPCContext,
    TTRPCServer,
    envelope,
    error_for_status,
)
from corral.api.ttrpc.framing import FrameDecoder, encode_frame
from corral.api.types.containerd.services.namespaces import v1 as namespaces
from corral.kernel import (
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
    Unimplemented,
)
from corral.plugins.core import current_namespace

pytestmark = pytest.mark.anyio

SERVICE = "corral.test.v1.Probe"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    return tmp_path / "run" / "t.sock"


async def echo(payload: bytes, ctx: TTRPCContext) -> bytes:
    return payload


def probe_server(**options: bool | float) -> TTRPCServer:
    server = TTRPCServer(**options)  # type: ignore[arg-type]
    server.register(SERVICE, "Echo", echo)
    return server


class RawConnection:
    """Frames written and read by hand, to see exactly what the server puts on the wire."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)

    async def request(self, stream_id: int, request: envelope.Request) -> None:
        await self.send(encode_frame(stream_id, MessageType.REQUEST, envelope.encode_request(request)))

    async def response(self) -> tuple[int, envelope.Response]:
        with anyio.fail_after(5):
            while (frame := self.decoder.next_frame()) is None:
                self.decoder.feed(await self.stream.receive())
        assert frame.type == MessageType.RESPONSE
        assert frame.flags == 0
        return frame.stream_id, envelope.decode_response(frame.payload)


@asynccontextmanager
async def raw(path: Path) -> AsyncIterator[RawConnection]:
    async with await anyio.connect_unix(path) as stream:
        yield RawConnection(stream)


async def test_unary_call_returns_the_handlers_payload(sock: Path) -> None:
    async with probe_server().serve(sock), TTRPCClient.connect(sock) as client:
        assert await client.call(SERVICE, "Echo", b"hello") == b"hello"
        assert await client.call(SERVICE, "Echo", b"") == b""


async def test_large_payloads_from_concurrent_calls_arrive_whole(sock: Path) -> None:
    """Each is bigger than the socket buffer, so writes are partial and must not interleave."""
    payloads = [bytes([i]) * (3 << 20) for i in range(6)]
    results: dict[int, bytes] = {}
    async with probe_server().serve(sock), TTRPCClient.connect(sock) as client:

        async def one(i: int) -> None:
            results[i] = await client.call(SERVICE, "Echo", payloads[i])

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for i in range(len(payloads)):
                    tg.start_soon(one, i)
    assert results == dict(enumerate(payloads))


async def test_handler_sees_metadata_deadline_peer_and_bound_namespace(sock: Path) -> None:
    seen: list[tuple[TTRPCContext, str | None]] = []

    async def record(payload: bytes, ctx: TTRPCContext) -> bytes:
        seen.append((ctx, current_namespace()))
        return b""

    server = TTRPCServer()
    server.register(SERVICE, "Record", record)
    async with server.serve(sock), TTRPCClient.connect(sock) as client:
        before = anyio.current_time()
        await client.call(SERVICE, "Record", timeout=30, metadata={NAMESPACE_TTRPC_HEADER: "pyns", "x": "1"})
        await client.call(SERVICE, "Record", metadata={NAMESPACE_HEADER: "grpc-style"})
        await client.call(SERVICE, "Record")
    (first, ns1), (second, ns2), (third, ns3) = seen
    assert dict(first.metadata) == {NAMESPACE_TTRPC_HEADER: "pyns", "x": "1"}
    assert (ns1, ns2, ns3) == ("pyns", "grpc-style", None)
    assert first.deadline is not None
    assert before + 29 < first.deadline <= anyio.current_time() + 30
    assert first.request.timeout_nano == 30_000_000_000
    assert second.deadline is None
    assert (first.peer.pid, first.peer.uid, first.peer.gid) == (os.getpid(), os.geteuid(), os.getegid())
    assert (first.stream_id, second.stream_id, third.stream_id) == (1, 3, 5)


async def test_a_hundred_concurrent_calls_share_one_connection_and_complete_out_of_order(sock: Path) -> None:
    release = {i: anyio.Event() for i in range(100)}
    completed: list[int] = []
    stream_ids: list[int] = []
    peers: set[int] = set()
    all_arrived = anyio.Event()

    async def staged(payload: bytes, ctx: TTRPCContext) -> bytes:
        i = int(payload)
        stream_ids.append(ctx.stream_id)
        peers.add(ctx.peer.pid)
        if len(stream_ids) == 100:
            all_arrived.set()
        await release[i].wait()
        completed.append(i)
        if i:
            release[i - 1].set()  # the last call sent finishes first, then each one before it
        return b"reply-%d" % i

    server = TTRPCServer()
    server.register(SERVICE, "Staged", staged)
    results: dict[int, bytes] = {}
    async with server.serve(sock), TTRPCClient.connect(sock) as client:

        async def one(i: int) -> None:
            results[i] = await client.call(SERVICE, "Staged", b"%d" % i)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for i in range(100):
                    tg.start_soon(one, i)
                await all_arrived.wait()
                assert server.connections == 1
                release[99].set()
    assert results == {i: b"reply-%d" % i for i in range(100)}
    assert completed == list(range(99, -1, -1))
    assert sorted(stream_ids) == list(range(1, 200, 2))
    assert peers == {os.getpid()}


async def test_kernel_errors_cross_the_wire_as_their_codes_and_come_back_as_their_kinds(sock: Path) -> None:
    async def missing(payload: bytes, ctx: TTRPCContext) -> bytes:
        raise NotFound("container c1")

    async def refused(payload: bytes, ctx: TTRPCContext) -> bytes:
        raise FailedPrecondition("task must be stopped")

    server = TTRPCServer()
    server.register(SERVICE, "Missing", missing)
    server.register(SERVICE, "Refused", refused)
    async with server.serve(sock):
        async with raw(sock) as conn:
            await conn.request(1, envelope.Request(SERVICE, "Missing"))
            assert await conn.response() == (
                1,
                envelope.Response(status=envelope.Status(5, "container c1: not found")),
            )
            await conn.request(3, envelope.Request(SERVICE, "Refused"))
            _, response = await conn.response()
            assert response.status == envelope.Status(9, "task must be stopped: failed precondition")
        async with TTRPCClient.connect(sock) as client:
            with pytest.raises(NotFound) as info:
                await client.call(SERVICE, "Missing")
            assert str(info.value) == "container c1: not found"
            with pytest.raises(FailedPrecondition):
                await client.call(SERVICE, "Refused")


async def test_other_exceptions_are_unknown_with_a_one_line_message_and_are_logged(sock: Path) -> None:
    async def broken(payload: bytes, ctx: TTRPCContext) -> bytes:
        raise ValueError("bad\nthing")

    server = TTRPCServer()
    server.register(SERVICE, "Broken", broken)
    async with server.serve(sock), raw(sock) as conn:
        with structlog.testing.capture_logs() as logs:
            await conn.request(1, envelope.Request(SERVICE, "Broken"))
            _, response = await conn.response()
    # The edge's one wording for an exception no plugin mapped; the traceback goes to the log.
    assert response.status == envelope.Status(2, "internal error: ValueError: bad (logged by corrald)")
    failures = [e for e in logs if e["event"] == "handler_failed"]
    assert failures
    assert failures[0]["method"] == f"/{SERVICE}/Broken"
    assert failures[0]["log_level"] == "error"


async def test_status_codes_the_client_does_not_know_raise_the_kernel_kind_or_runtime_error(
    sock: Path,
) -> None:
    async def weird(payload: bytes, ctx: TTRPCContext) -> bytes:
        raise InvalidArgument("bad id")

    server = TTRPCServer()
    server.register(SERVICE, "Weird", weird)
    async with server.serve(sock), TTRPCClient.connect(sock) as client:
        with pytest.raises(InvalidArgument, match="bad id"):
            await client.call(SERVICE, "Weird")
    unknown = error_for_status(envelope.Status(2, "OCI runtime create failed"))
    assert type(unknown) is RuntimeError
    assert str(unknown) == "OCI runtime create failed"
    assert type(error_for_status(envelope.Status(99, "from the future"))) is RuntimeError


async def test_unknown_service_and_method_are_unimplemented_with_ttrpcs_words(sock: Path) -> None:
    async with probe_server().serve(sock):
        async with raw(sock) as conn:
            await conn.request(1, envelope.Request(SERVICE, "Nope"))
            assert (await conn.response())[1].status == envelope.Status(12, "method Nope")
            await conn.request(3, envelope.Request("no.such.Service", "Echo"))
            assert (await conn.response())[1].status == envelope.Status(12, "service no.such.Service")
        async with TTRPCClient.connect(sock) as client:
            with pytest.raises(Unimplemented, match="method Nope"):
                await client.call(SERVICE, "Nope")
            assert await client.call(SERVICE, "Echo", b"still fine") == b"still fine"


async def test_client_timeout_raises_deadline_exceeded_and_the_connection_stays_usable(sock: Path) -> None:
    async def slow(payload: bytes, ctx: TTRPCContext) -> bytes:
        await anyio.sleep(float(payload))
        return payload

    server = TTRPCServer()
    server.register(SERVICE, "Slow", slow)
    async with server.serve(sock), TTRPCClient.connect(sock) as client:
        with anyio.fail_after(5), pytest.raises(DeadlineExceeded) as info:
            await client.call(SERVICE, "Slow", b"30", timeout=0.2)
        assert str(info.value) == f"ttrpc: /{SERVICE}/Slow after 0.2s: deadline exceeded"
        assert await client.call(SERVICE, "Slow", b"0", timeout=5) == b"0"


async def test_server_honours_the_requests_timeout_with_deadline_exceeded(sock: Path) -> None:
    cancelled = anyio.Event()

    async def forever(payload: bytes, ctx: TTRPCContext) -> bytes:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()
        return b""

    server = TTRPCServer()
    server.register(SERVICE, "Forever", forever)
    async with server.serve(sock), raw(sock) as conn:
        await conn.request(1, envelope.Request(SERVICE, "Forever", timeout_nano=100_000_000))
        stream_id, response = await conn.response()
    assert stream_id == 1
    assert response.status == envelope.Status(4, "context deadline exceeded")
    assert cancelled.is_set()


async def test_server_shutdown_fails_pending_calls_with_unavailable(sock: Path) -> None:
    started = anyio.Event()

    async def forever(payload: bytes, ctx: TTRPCContext) -> bytes:
        started.set()
        await anyio.sleep_forever()
        return b""

    server = TTRPCServer()
    server.register(SERVICE, "Forever", forever)
    async with server.serve(sock), TTRPCClient.connect(sock) as client:
        outcome: list[BaseException] = []

        async def pending() -> None:
            try:
                await client.call(SERVICE, "Forever")
            except Unavailable as exc:
                outcome.append(exc)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(pending)
                await started.wait()
                await server.shutdown(grace=0.1)
        assert len(outcome) == 1
        assert "ttrpc: closed" in str(outcome[0])
        assert client.closed
        with pytest.raises(Unavailable, match="ttrpc: closed"):
            await client.call(SERVICE, "Echo")


async def test_client_close_fails_its_pending_calls_with_unavailable(sock: Path) -> None:
    async def forever(payload: bytes, ctx: TTRPCContext) -> bytes:
        await anyio.sleep_forever()
        return b""

    server = TTRPCServer()
    server.register(SERVICE, "Forever", forever)
    async with server.serve(sock), TTRPCClient.connect(sock) as client:
        errors: list[str] = []

        async def pending() -> None:
            with pytest.raises(Unavailable) as info:
                await client.call(SERVICE, "Forever")
            errors.append(info.value.detail)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(pending)
                await anyio.sleep(0.1)
                await client.close()
        assert errors == ["ttrpc: closed"] * 3


async def test_graceful_shutdown_lets_in_flight_handlers_finish(sock: Path) -> None:
    started = anyio.Event()

    async def brief(payload: bytes, ctx: TTRPCContext) -> bytes:
        started.set()
        await anyio.sleep(0.3)
        return b"done"

    server = TTRPCServer()
    server.register(SERVICE, "Brief", brief)
    result: list[bytes] = []
    async with server.serve(sock), TTRPCClient.connect(sock) as client:

        async def call() -> None:
            result.append(await client.call(SERVICE, "Brief"))

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                await started.wait()
                await server.shutdown(grace=5)
        assert not sock.exists() or stat.S_ISSOCK(sock.lstat().st_mode)
        with pytest.raises(Unavailable):
            async with TTRPCClient.connect(sock) as late:
                await late.call(SERVICE, "Brief")
    assert result == [b"done"]


async def test_graceful_shutdown_also_waits_for_requests_that_arrive_while_draining(sock: Path) -> None:
    first_started = anyio.Event()

    async def brief(payload: bytes, ctx: TTRPCContext) -> bytes:
        first_started.set()
        await anyio.sleep(0.3)
        return payload

    server = TTRPCServer()
    server.register(SERVICE, "Brief", brief)
    results: list[bytes] = []
    took: list[float] = []
    async with server.serve(sock), TTRPCClient.connect(sock) as client:

        async def call(payload: bytes) -> None:
            results.append(await client.call(SERVICE, "Brief", payload))

        async def shutdown() -> None:
            start = anyio.current_time()
            await server.shutdown(grace=10)
            took.append(anyio.current_time() - start)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call, b"first")
                await first_started.wait()
                tg.start_soon(shutdown)
                await anyio.sleep(0.1)
                tg.start_soon(call, b"second")
    assert sorted(results) == [b"first", b"second"]
    assert took[0] < 2


async def test_oversized_request_is_resource_exhausted_and_the_connection_survives(sock: Path) -> None:
    async with probe_server().serve(sock):
        async with raw(sock) as conn:
            await conn.send(
                struct.pack(">IIBB", MAX_PAYLOAD + 1, 1, MessageType.REQUEST, 0) + bytes(MAX_PAYLOAD + 1)
            )
            stream_id, response = await conn.response()
            assert stream_id == 1
            assert response.status == envelope.Status(
                8, f"message length {MAX_PAYLOAD + 1} exceed maximum message size of {MAX_PAYLOAD}"
            )
            await conn.request(3, envelope.Request(SERVICE, "Echo", b"after"))
            assert await conn.response() == (3, envelope.Response(b"after"))
        async with TTRPCClient.connect(sock) as client:
            with pytest.raises(ResourceExhausted):
                await client.call(SERVICE, "Echo", bytes(MAX_PAYLOAD))
            assert await client.call(SERVICE, "Echo", b"ok") == b"ok"


async def test_oversized_reply_is_resource_exhausted_and_the_connection_survives(sock: Path) -> None:
    async def huge(payload: bytes, ctx: TTRPCContext) -> bytes:
        return bytes(MAX_PAYLOAD)

    server = probe_server()
    server.register(SERVICE, "Huge", huge)
    async with server.serve(sock), TTRPCClient.connect(sock) as client:
        with pytest.raises(ResourceExhausted, match="exceed maximum message size"):
            await client.call(SERVICE, "Huge")
        assert await client.call(SERVICE, "Echo", b"ok") == b"ok"


async def test_stream_ids_must_be_odd_and_increasing(sock: Path) -> None:
    async with probe_server().serve(sock), raw(sock) as conn:
        await conn.request(2, envelope.Request(SERVICE, "Echo"))
        assert await conn.response() == (
            2,
            envelope.Response(status=envelope.Status(3, "StreamID must be odd for client initiated streams")),
        )
        await conn.request(5, envelope.Request(SERVICE, "Echo", b"a"))
        assert await conn.response() == (5, envelope.Response(b"a"))
        await conn.request(3, envelope.Request(SERVICE, "Echo", b"b"))
        assert await conn.response() == (
            3,
            envelope.Response(status=envelope.Status(3, "StreamID cannot be re-used and must increment")),
        )


async def test_a_request_that_is_not_protobuf_is_invalid_argument(sock: Path) -> None:
    async with probe_server().serve(sock), raw(sock) as conn:
        await conn.send(encode_frame(1, MessageType.REQUEST, b"\x0a\x09short"))
        _, response = await conn.response()
        assert response.status is not None
        assert response.status.code == 3
        assert response.status.message.startswith("unmarshal request error:")


async def test_register_unary_serves_betterproto_messages(sock: Path) -> None:
    async def get(
        request: namespaces.GetNamespaceRequest, ctx: TTRPCContext
    ) -> namespaces.GetNamespaceResponse:
        if request.name == "absent":
            raise NotFound(f'namespace "{request.name}"')
        return namespaces.GetNamespaceResponse(
            namespace=namespaces.Namespace(name=request.name, labels={"a": "b"})
        )

    server = TTRPCServer()
    server.register_unary(SERVICE, "Get", namespaces.GetNamespaceRequest, get)
    async with server.serve(sock), TTRPCClient.connect(sock) as client:
        reply = await client.call_message(
            SERVICE, "Get", namespaces.GetNamespaceRequest(name="pyns"), namespaces.GetNamespaceResponse
        )
        assert reply.namespace.name == "pyns"
        assert reply.namespace.labels == {"a": "b"}
        with pytest.raises(NotFound, match='namespace "absent": not found'):
            await client.call_message(
                SERVICE, "Get", namespaces.GetNamespaceRequest(name="absent"), namespaces.GetNamespaceResponse
            )
        with pytest.raises(Internal, match="error unmarshalling payload"):
            await client.call(SERVICE, "Get", b"\x0a\x02\xff\xfe")


def test_registering_a_path_twice_is_an_error() -> None:
    server = probe_server()
    with pytest.raises(ValueError, match="already registered"):
        server.register(SERVICE, "Echo", echo)
    assert server.methods == [f"/{SERVICE}/Echo"]


async def test_socket_gets_its_mode_parent_dirs_and_replaces_a_stale_socket(sock: Path) -> None:
    sock.parent.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock))
    stale.close()
    async with probe_server().serve(sock, mode=0o660), TTRPCClient.connect(sock) as client:
        assert stat.S_IMODE(sock.stat().st_mode) == 0o660
        assert await client.call(SERVICE, "Echo", b"x") == b"x"
    assert not sock.exists()


async def test_connect_to_a_missing_socket_is_unavailable(sock: Path) -> None:
    with pytest.raises(Unavailable, match="ttrpc: connect"):
        async with TTRPCClient.connect(sock):
            pass


def _probe_as(directory: Path, name: str, *, uid: int | None = None, gid: int | None = None) -> int:
    """Fork a child that switches to uid/gid, connects and sends a request; its exit code says what happened:
    0 the server answered, 1 it closed the connection unanswered, 2 the child could not connect."""
    frame = encode_frame(
        1, MessageType.REQUEST, envelope.encode_request(envelope.Request(SERVICE, "Echo", b"hi"))
    )
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 3
        try:
            os.chdir(directory)  # relative connect: the path's other parents need no access
            if gid is not None:
                os.setgid(gid)
            if uid is not None:
                os.setuid(uid)
            client = socket.socket(socket.AF_UNIX)
            client.settimeout(5)
            try:
                client.connect(name)
            except OSError:
                code = 2
            else:
                try:
                    client.sendall(frame)
                    code = 0 if client.recv(64) else 1
                except OSError:  # reset: closed with the request unread
                    code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.root
async def test_peer_with_another_uid_or_gid_is_refused_as_ttrpc_requires_the_same_user(sock: Path) -> None:
    require_root()
    async with probe_server().serve(sock, mode=0o666):
        os.chmod(sock.parent, 0o711)
        with structlog.testing.capture_logs() as logs:
            same = await anyio.to_thread.run_sync(lambda: _probe_as(sock.parent, sock.name))
            other_uid = await anyio.to_thread.run_sync(lambda: _probe_as(sock.parent, sock.name, uid=65534))
            other_gid = await anyio.to_thread.run_sync(lambda: _probe_as(sock.parent, sock.name, gid=65534))
    assert (same, other_uid, other_gid) == (0, 1, 1)
    refused = [e for e in logs if e["event"] == "ttrpc_peer_refused"]
    assert [(e["uid"], e["gid"]) for e in refused] == [(65534, 0), (0, 65534)]


@pytest.mark.root
async def test_peer_check_can_be_turned_off(sock: Path) -> None:
    require_root()
    async with probe_server(require_same_user=False).serve(sock, mode=0o666):
        os.chmod(sock.parent, 0o711)
        other = await anyio.to_thread.run_sync(
            lambda: _probe_as(sock.parent, sock.name, uid=65534, gid=65534)
        )
    assert other == 0
