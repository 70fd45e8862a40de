"""io.containerd.grpc.v1.transfer — containerd.services.transfer.v1.Transfer (Transfer).

Source and destination arrive as ``Any``-wrapped ``containerd.types.transfer`` messages; streams
they name are taken from the stream manager and turned into bytes with containerd's flow control
(``Data`` messages of at most 32 KiB, sent only while the receiver's ``WindowUpdate`` grants
allow). Progress goes to the client's progress stream as ``Progress`` messages. Each
transferrer is asked in turn; Unimplemented from all is Unimplemented.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, suppress
from typing import Any

import anyio
import anyio.abc
import structlog

from corral.api.grpc import GRPCServices
from corral.api.grpc.streaming import bare_type_url
from corral.api.types.containerd import types as ctypes
from corral.api.types.containerd.services.transfer import v1 as pb
from corral.api.types.containerd.types import transfer as tt
from corral.api.types.google import protobuf
from corral.api.wire import descriptor_to_wire
from corral.kernel import InitContext, NotFound, Registration, Unavailable, Unimplemented
from corral.plugins import types
from corral.plugins.images.oci import Platform
from corral.plugins.metadata import AnyValue
from corral.plugins.streaming import Stream, StreamManager
from corral.plugins.transfer import (
    ImageExportStream,
    ImageImportStream,
    ImageLookup,
    ImageReference,
    ImageStoreTarget,
    OCIRegistry,
    Progress,
    Transferrer,
    UnpackRequest,
)

log = structlog.get_logger("corral.transfer")

MAX_DATA = 32 * 1024
"""Bytes in one ``Data`` message, as containerd sends them."""
RECEIVE_WINDOW = 1 << 20
"""What an import grants its sender at a time (containerd grants 64 KiB; any grant is honoured)."""

_PREFIX = "containerd.types.transfer."
DATA = _PREFIX + "Data"
WINDOW_UPDATE = _PREFIX + "WindowUpdate"
PROGRESS = _PREFIX + "Progress"
AUTH_REQUEST = _PREFIX + "AuthRequest"
AUTH_RESPONSE = _PREFIX + "AuthResponse"
AUTH_TIMEOUT = 30.0
"""Seconds a client has to answer a credentials request; no answer is anonymous access."""


def _any(type_url: str, message: Any) -> AnyValue:
    return AnyValue(type_url, bytes(message))


async def receive_bytes(stream: Stream) -> AsyncIterator[bytes]:
    """The bytes a client sends on ``stream``, granting window as they are consumed."""
    window = 0
    try:
        while True:
            if window < RECEIVE_WINDOW // 2:
                await stream.send(_any(WINDOW_UPDATE, tt.WindowUpdate(update=RECEIVE_WINDOW)))
                window += RECEIVE_WINDOW
            message = await stream.recv()
            if message is None:
                return
            if message.type_url != DATA:
                log.warning("stream_message_ignored", type_url=message.type_url)
                continue
            data = tt.Data.parse(message.value).data
            window -= len(data)
            if data:
                yield data
    finally:
        with anyio.CancelScope(shield=True):
            await stream.close()


class WindowedSink:
    """Bytes sent to a client on ``stream`` no faster than its ``WindowUpdate`` grants allow."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._remaining = 0
        self._granted = anyio.Event()
        self._gone = False

    async def follow_grants(self) -> None:
        while (message := await self._stream.recv()) is not None:
            if message.type_url == WINDOW_UPDATE:
                self._remaining += tt.WindowUpdate.parse(message.value).update
                self._granted.set()
        self._gone = True
        self._granted.set()

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            while self._remaining <= 0:
                if self._gone:
                    raise Unavailable("the client stopped reading the export stream")
                self._granted = anyio.Event()
                await self._granted.wait()
            n = min(MAX_DATA, len(view), self._remaining)
            try:
                await self._stream.send(_any(DATA, tt.Data(data=bytes(view[:n]))))
            except EOFError:
                raise Unavailable("the export stream is closed") from None
            self._remaining -= n
            view = view[n:]


def _platforms(values: list[ctypes.Platform]) -> tuple[Platform, ...]:
    return tuple(Platform(p.os, p.architecture, p.variant, p.os_version) for p in values)


def _references(values: list[tt.ImageReference]) -> tuple[ImageReference, ...]:
    return tuple(
        ImageReference(r.name, r.is_prefix, r.allow_overwrite, r.add_digest, r.skip_named_digest)
        for r in values
    )


def _progress_to_wire(p: Progress) -> AnyValue:
    return _any(
        PROGRESS,
        tt.Progress(
            event=p.event,
            name=p.name,
            parents=list(p.parents),
            progress=p.progress,
            total=p.total,
            desc=descriptor_to_wire(p.desc) if p.desc is not None else None,
        ),
    )


class TransferGRPC(pb.TransferBase):
    def __init__(self, transferrers: list[Transferrer], streams: StreamManager) -> None:
        self._transferrers = transferrers
        self._streams = streams

    async def transfer(self, message: pb.TransferRequest) -> protobuf.Empty:
        try:
            return await self._transfer(message)
        except BaseExceptionGroup as group:
            raise _leaf(group) from None

    async def _transfer(self, message: pb.TransferRequest) -> protobuf.Empty:
        async with AsyncExitStack() as stack:
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)
            progress = None
            if message.options is not None and message.options.progress_stream:
                progress = await self._progress(message.options.progress_stream, tg, stack)
            source = await self._convert(message.source, tg, stack, as_source=True)
            destination = await self._convert(message.destination, tg, stack, as_source=False)
            for transferrer in self._transferrers:
                try:
                    await transferrer.transfer(source, destination, progress)
                except Unimplemented as exc:
                    log.debug("transfer_not_implemented", reason=str(exc))
                    continue
                return protobuf.Empty()
        raise Unimplemented(
            f"method Transfer not implemented for {_url(message.source)} to {_url(message.destination)}"
        )

    async def _progress(self, name: str, tg: anyio.abc.TaskGroup, stack: AsyncExitStack) -> Any:
        stream = await self._streams.get(name)
        send, receive = anyio.create_memory_object_stream[Progress](math.inf)

        drained = anyio.Event()

        async def pump() -> None:
            try:
                async with receive:
                    async for item in receive:
                        try:
                            await stream.send(_progress_to_wire(item))
                        except EOFError:
                            return
            finally:
                drained.set()

        async def finish() -> None:
            send.close()
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(5):
                    await drained.wait()
                await stream.close()

        tg.start_soon(pump)
        stack.push_async_callback(finish)

        def report(p: Progress) -> None:
            with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                send.send_nowait(p)

        return report

    async def _registry(self, message: tt.OciRegistry, stack: AsyncExitStack) -> OCIRegistry:
        """The registry a client names, asking its auth stream for each host's credentials
        (containerd's ``credCallback``: one ``AuthRequest`` answered by one ``AuthResponse``)."""
        resolver = message.resolver or tt.RegistryResolver()
        credentials = None
        if resolver.auth_stream:
            stream = await self._streams.get(resolver.auth_stream)

            async def close_auth() -> None:
                with anyio.CancelScope(shield=True):
                    await stream.close()

            stack.push_async_callback(close_auth)
            lock = anyio.Lock()

            async def ask(reference: str, host: str) -> tuple[str, str] | None:
                answer = None
                async with lock:
                    with anyio.move_on_after(AUTH_TIMEOUT):
                        try:
                            await stream.send(
                                _any(AUTH_REQUEST, tt.AuthRequest(host=host, reference=reference))
                            )
                            answer = await stream.recv()
                        except EOFError:
                            return None
                if answer is None or answer.type_url != AUTH_RESPONSE:
                    return None
                response = tt.AuthResponse.parse(answer.value)
                if response.auth_type == tt.AuthType.CREDENTIALS:
                    return response.username, response.secret
                if response.auth_type == tt.AuthType.REFRESH and response.secret:
                    return "", response.secret
                return None

            credentials = ask
        return OCIRegistry(
            reference=message.reference,
            host_dir=resolver.host_dir,
            default_scheme=resolver.default_scheme,
            headers=dict(resolver.headers),
            credentials=credentials,
        )

    async def _convert(
        self, value: protobuf.Any | None, tg: anyio.abc.TaskGroup, stack: AsyncExitStack, *, as_source: bool
    ) -> object:
        url = _url(value)
        assert value is not None or not url
        data = value.value if value is not None else b""
        if url == _PREFIX + "ImageImportStream":
            imp = tt.ImageImportStream.parse(data)
            stream = await self._streams.get(imp.stream)

            async def close_import() -> None:
                # a transfer that fails before reading ends the client's stream all the same
                with anyio.CancelScope(shield=True):
                    await stream.close()

            stack.push_async_callback(close_import)
            return ImageImportStream(receive_bytes(stream), imp.media_type, imp.force_compress)
        if url == _PREFIX + "ImageExportStream":
            exp = tt.ImageExportStream.parse(data)
            stream = await self._streams.get(exp.stream)
            sink = WindowedSink(stream)
            tg.start_soon(sink.follow_grants)

            async def close_export() -> None:
                with anyio.CancelScope(shield=True):
                    await stream.close()

            stack.push_async_callback(close_export)
            return ImageExportStream(
                sink,
                exp.media_type,
                _platforms(exp.platforms),
                exp.all_platforms,
                exp.skip_compatibility_manifest,
                exp.skip_non_distributable,
            )
        if url == _PREFIX + "OCIRegistry":
            return await self._registry(tt.OciRegistry.parse(data), stack)
        if url == _PREFIX + "ImageStore":
            store = tt.ImageStore.parse(data)
            if as_source:
                return ImageLookup(
                    store.name, _references(store.extra_references), _platforms(store.platforms)
                )
            return ImageStoreTarget(
                name=store.name,
                labels=dict(store.labels),
                platforms=_platforms(store.platforms),
                all_metadata=store.all_metadata,
                manifest_limit=store.manifest_limit,
                extra_references=_references(store.extra_references),
                unpacks=tuple(
                    UnpackRequest(_platforms([u.platform])[0] if u.platform else None, u.snapshotter)
                    for u in store.unpacks
                ),
            )
        if url in _KNOWN_ELSEWHERE:
            return _Unsupported(url)
        raise NotFound(f"type with url {url}: not found")


_KNOWN_ELSEWHERE = frozenset(_PREFIX + name for name in ("ReadStream", "WriteStream", "ContainerPath"))
"""containerd's other transfer types: understood, not moved by corral's transferrers."""


class _Unsupported:
    def __init__(self, url: str) -> None:
        self.url = url


def _leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that ended a transfer, out of the task group that ran it."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _leaf(exc)
        if not isinstance(exc, anyio.get_cancelled_exc_class()):
            return exc
    return group.exceptions[0]


def _url(value: protobuf.Any | None) -> str:
    return bare_type_url(value.type_url) if value is not None else ""


async def init(ic: InitContext) -> GRPCServices:
    transferrers = list(ic.get_by_type(types.TRANSFER, Transferrer).values())
    streams = ic.get_by_id(types.STREAMING, "manager", StreamManager)
    return GRPCServices((TransferGRPC(transferrers, streams),))


registration = Registration(
    type=types.GRPC, id="transfer", init=init, requires=(types.TRANSFER, types.STREAMING)
)
