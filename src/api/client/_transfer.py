"""Transfer calls: an image archive imported on the daemon's side, images exported from it.

As containerd's Go client does it: a named stream per byte flow and one for progress, opened on
the Streaming service before the Transfer call names them; bytes move as ``Data`` messages of at
most 32 KiB within the windows the receiver grants.
"""

from __future__ import annotations

import base64
import functools
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from typing import Any, ParamSpec

import anyio
import anyio.abc
from grpclib.client import Stream
from grpclib.const import Cardinality
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from corral.api.client._connection import Connection
from corral.api.types.containerd import types as ctypes
from corral.api.types.containerd.services.streaming import v1 as streaming_pb
from corral.api.types.containerd.services.transfer import v1 as pb
from corral.api.types.containerd.types import transfer as tt
from corral.api.types.google import protobuf
from corral.plugins.images.oci import Platform

STREAM_PATH = "/containerd.services.streaming.v1.Streaming/Stream"
MAX_DATA = 32 * 1024
WINDOW = 1 << 20
_T = "containerd.types.transfer."
_TRANSPORT_ERRORS = (GRPCError, StreamTerminatedError, ProtocolError, ConnectionError)
"""Failures of a side stream once the Transfer call has its own answer, which is what matters."""


@dataclass(frozen=True)
class TransferProgress:
    """One progress message from the daemon (containerd's ``transfer.Progress``)."""

    event: str
    name: str = ""
    parents: tuple[str, ...] = ()
    progress: int = 0
    total: int = 0
    digest: str = ""


@dataclass(frozen=True)
class ImportOptions:
    """``ctr images import``'s choices: naming, platforms and where to unpack."""

    base_name: str = ""
    index_name: str = ""
    digests: bool = False
    skip_digest_for_named: bool = False
    platform: ctypes.Platform | None = None
    """Import and unpack this platform (None: this host's)."""
    all_platforms: bool = False
    unpack: bool = True
    snapshotter: str = ""
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PullOptions:
    """``ctr images pull``'s choices through the transfer service."""

    platforms: tuple[ctypes.Platform, ...] = ()
    """Pull (and unpack) these platforms; none and not ``all_platforms``: this host's."""
    all_platforms: bool = False
    unpack: bool = True
    snapshotter: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    skip_metadata: bool = False
    """Leave out the other platforms' manifests and configs (ctr pulls them by default)."""


@dataclass(frozen=True)
class RegistryOptions:
    """How the daemon reaches the registry: ``user`` ``NAME[:SECRET]``, plain HTTP, a hosts dir."""

    user: str = ""
    secret: str = ""
    plain_http: bool = False
    hosts_dir: str = ""


def stream_id(prefix: str) -> str:
    """containerd's ``<prefix>-<nanoseconds>-<random>``."""
    return f"{prefix}-{time.time_ns() % 1_000_000_000}-{base64.urlsafe_b64encode(secrets.token_bytes(3)).decode()}"


def _any(type_url: str, message: object) -> protobuf.Any:
    return protobuf.Any(type_url=type_url, value=bytes(message))  # type: ignore[call-overload]


P = ParamSpec("P")


def _unwrap_groups(fn: Callable[P, Awaitable[None]]) -> Callable[P, Coroutine[Any, Any, None]]:
    """The error that ended a call, out of the task group that ran its streams."""

    @functools.wraps(fn)
    async def call(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            await fn(*args, **kwargs)
        except BaseExceptionGroup as group:
            raise _leaf(group) from None

    return call


class TransferCalls(Connection):
    async def _open_stream(self, stack: AsyncExitStack, name: str) -> Stream[protobuf.Any, protobuf.Any]:
        stream: Stream[protobuf.Any, protobuf.Any] = await stack.enter_async_context(
            self.channel.request(
                STREAM_PATH, Cardinality.STREAM_STREAM, protobuf.Any, protobuf.Any, metadata=self._metadata()
            )
        )
        await stream.send_message(
            _any("containerd.services.streaming.v1.StreamInit", streaming_pb.StreamInit(id=name))
        )
        await stream.recv_message()  # the daemon's acknowledgement: the stream is registered
        return stream

    async def _follow_progress(
        self,
        stack: AsyncExitStack,
        tg: anyio.abc.TaskGroup,
        progress: Callable[[TransferProgress], None],
        done: list[anyio.Event],
    ) -> str:
        name = stream_id("progress")
        stream = await self._open_stream(stack, name)
        await stream.end()  # the daemon only sends on a progress stream

        async def follow() -> None:
            with suppress(*_TRANSPORT_ERRORS):
                while (message := await stream.recv_message()) is not None:
                    if message.type_url.rpartition("/")[2] != _T + "Progress":
                        continue
                    p = tt.Progress.parse(message.value)
                    digest = p.desc.digest if p.desc is not None else ""
                    progress(TransferProgress(p.event, p.name, tuple(p.parents), p.progress, p.total, digest))

        _until_done(tg, follow, done)
        return name

    async def _transfer(self, source: protobuf.Any, destination: protobuf.Any, progress_stream: str) -> None:
        stub = pb.TransferStub(self.channel)
        request = pb.TransferRequest(
            source=source,
            destination=destination,
            options=pb.TransferOptions(progress_stream=progress_stream) if progress_stream else None,
        )
        await self.call(stub.transfer(request, metadata=self._metadata()))

    @_unwrap_groups
    async def import_archive(
        self,
        chunks: AsyncIterator[bytes],
        options: ImportOptions | None = None,
        *,
        progress: Callable[[TransferProgress], None] | None = None,
        sent: Callable[[int], None] | None = None,
    ) -> None:
        """Import an image archive read from ``chunks`` into the daemon's image store (unpacked
        unless ``options.unpack`` is off); ``sent`` is told the bytes handed over so far."""
        opts = options or ImportOptions()
        prefix = opts.base_name or f"import-{time.strftime('%Y-%m-%d')}"
        overwrite = not opts.base_name
        if opts.digests:
            references = [
                tt.ImageReference(
                    name=prefix,
                    is_prefix=True,
                    allow_overwrite=overwrite,
                    add_digest=True,
                    skip_named_digest=opts.skip_digest_for_named,
                )
            ]
        else:
            references = [tt.ImageReference(name=prefix, is_prefix=True, allow_overwrite=overwrite)]
        platform = opts.platform or _host_platform()
        store = tt.ImageStore(
            name=opts.index_name,
            labels=dict(opts.labels),
            platforms=[] if opts.all_platforms else [platform],
            extra_references=references,
            unpacks=[tt.UnpackConfiguration(platform=platform, snapshotter=opts.snapshotter)]
            if opts.unpack
            else [],
        )
        done: list[anyio.Event] = []
        async with AsyncExitStack() as stack:
            tg = await stack.enter_async_context(anyio.create_task_group())
            progress_name = await self._follow_progress(stack, tg, progress, done) if progress else ""
            name = stream_id("import")
            stream = await self._open_stream(stack, name)

            async def send() -> None:
                with suppress(*_TRANSPORT_ERRORS):
                    await _send_chunks(stream, chunks, sent)

            _until_done(tg, send, done)
            await self._transfer(
                _any(_T + "ImageImportStream", tt.ImageImportStream(stream=name)),
                _any(_T + "ImageStore", store),
                progress_name,
            )
            await _settle(done)

    async def _registry(
        self, stack: AsyncExitStack, tg: anyio.abc.TaskGroup, ref: str, options: RegistryOptions
    ) -> protobuf.Any:
        """containerd's ``OCIRegistry`` with an auth stream answering each host's request."""
        name = stream_id("creds")
        stream = await self._open_stream(stack, name)

        async def answer() -> None:
            try:
                await _answer_credentials(stream, ref, options)
            finally:
                with anyio.CancelScope(shield=True), suppress(*_TRANSPORT_ERRORS, ProtocolError):
                    await stream.end()

        tg.start_soon(answer)
        resolver = tt.RegistryResolver(
            auth_stream=name,
            host_dir=options.hosts_dir,
            default_scheme="http" if options.plain_http else "",
        )
        return _any(_T + "OCIRegistry", tt.OciRegistry(reference=ref, resolver=resolver))

    @_unwrap_groups
    async def pull_image(
        self,
        ref: str,
        options: PullOptions | None = None,
        registry: RegistryOptions | None = None,
        *,
        progress: Callable[[TransferProgress], None] | None = None,
    ) -> None:
        """Pull ``ref`` into the daemon's image store through its transfer service, unpacked
        while it downloads (as ``ctr images pull`` of containerd 2.x asks)."""
        opts = options or PullOptions()
        platforms = list(opts.platforms)
        if not platforms and not opts.all_platforms:
            platforms = [_host_platform()]
        store = tt.ImageStore(
            name=ref,
            labels=dict(opts.labels),
            platforms=platforms,
            all_metadata=not opts.skip_metadata,
            unpacks=[tt.UnpackConfiguration(platform=p, snapshotter=opts.snapshotter) for p in platforms]
            if opts.unpack
            else [],
        )
        done: list[anyio.Event] = []
        async with AsyncExitStack() as stack:
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)
            progress_name = await self._follow_progress(stack, tg, progress, done) if progress else ""
            source = await self._registry(stack, tg, ref, registry or RegistryOptions())
            await self._transfer(source, _any(_T + "ImageStore", store), progress_name)
            await _settle(done)

    @_unwrap_groups
    async def push_image(
        self,
        ref: str,
        local: str = "",
        registry: RegistryOptions | None = None,
        *,
        platforms: Sequence[ctypes.Platform] = (),
        progress: Callable[[TransferProgress], None] | None = None,
    ) -> None:
        """Push the image ``local`` (default ``ref``) of the daemon's store to ``ref``."""
        store = tt.ImageStore(name=local or ref, platforms=list(platforms))
        done: list[anyio.Event] = []
        async with AsyncExitStack() as stack:
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)
            progress_name = await self._follow_progress(stack, tg, progress, done) if progress else ""
            destination = await self._registry(stack, tg, ref, registry or RegistryOptions())
            await self._transfer(_any(_T + "ImageStore", store), destination, progress_name)
            await _settle(done)

    @_unwrap_groups
    async def export_images(
        self,
        names: Sequence[str],
        write: Callable[[bytes], Awaitable[None]],
        *,
        platforms: Sequence[ctypes.Platform] = (),
        all_platforms: bool = False,
        skip_manifest_json: bool = False,
        skip_non_distributable: bool = False,
        progress: Callable[[TransferProgress], None] | None = None,
    ) -> None:
        """Export the images ``names`` as an OCI archive, handing its bytes to ``write`` in order."""
        lookup = tt.ImageStore(extra_references=[tt.ImageReference(name=n) for n in names])
        done: list[anyio.Event] = []
        async with AsyncExitStack() as stack:
            tg = await stack.enter_async_context(anyio.create_task_group())
            progress_name = await self._follow_progress(stack, tg, progress, done) if progress else ""
            name = stream_id("export")
            stream = await self._open_stream(stack, name)

            async def receive() -> None:
                with suppress(*_TRANSPORT_ERRORS):
                    await _receive_chunks(stream, write)

            _until_done(tg, receive, done)
            await self._transfer(
                _any(_T + "ImageStore", lookup),
                _any(
                    _T + "ImageExportStream",
                    tt.ImageExportStream(
                        stream=name,
                        platforms=list(platforms),
                        all_platforms=all_platforms,
                        skip_compatibility_manifest=skip_manifest_json,
                        skip_non_distributable=skip_non_distributable,
                    ),
                ),
                progress_name,
            )
            await _settle(done)


def _leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _leaf(exc)
        if not isinstance(exc, anyio.get_cancelled_exc_class()):
            return exc
    return group.exceptions[0]


def _until_done(tg: anyio.abc.TaskGroup, fn: Callable[[], Awaitable[None]], done: list[anyio.Event]) -> None:
    """Run ``fn`` in ``tg``; ``done`` gets the event set when it ends."""
    event = anyio.Event()
    done.append(event)

    async def run() -> None:
        try:
            await fn()
        finally:
            event.set()

    tg.start_soon(run)


SETTLE_SECONDS = 30.0


async def _settle(done: list[anyio.Event]) -> None:
    """After the Transfer call: the streams' last messages are still arriving; wait for them."""
    with anyio.move_on_after(SETTLE_SECONDS):
        for event in done:
            await event.wait()


async def _send_chunks(
    stream: Stream[protobuf.Any, protobuf.Any],
    chunks: AsyncIterator[bytes],
    sent: Callable[[int], None] | None,
) -> None:
    """containerd's ``SendStream``: send only what the daemon's window grants allow."""
    remaining = 0
    total = 0
    pending = b""
    while True:
        while not pending:
            chunk = await anext(chunks, None)
            if chunk is None:
                break
            pending = bytes(chunk)
        if not pending:
            break
        while remaining <= 0:
            message = await stream.recv_message()
            if message is None:
                return  # the daemon ended the stream (the transfer failed or finished)
            if message.type_url.rpartition("/")[2] == _T + "WindowUpdate":
                remaining += tt.WindowUpdate.parse(message.value).update
        n = min(MAX_DATA, remaining, len(pending))
        await stream.send_message(_any(_T + "Data", tt.Data(data=pending[:n])))
        pending = pending[n:]
        remaining -= n
        total += n
        if sent:
            sent(total)
    await stream.end()
    while await stream.recv_message() is not None:
        pass


async def _receive_chunks(
    stream: Stream[protobuf.Any, protobuf.Any], write: Callable[[bytes], Awaitable[None]]
) -> None:
    """containerd's ``ReceiveStream``: grant window as the bytes are written."""
    window = 0
    while True:
        if window < WINDOW // 2:
            await stream.send_message(_any(_T + "WindowUpdate", tt.WindowUpdate(update=WINDOW)))
            window += WINDOW
        message = await stream.recv_message()
        if message is None:
            await stream.end()
            return
        if message.type_url.rpartition("/")[2] == _T + "Data":
            data = tt.Data.parse(message.value).data
            window -= len(data)
            await write(data)


async def _answer_credentials(
    stream: Stream[protobuf.Any, protobuf.Any], ref: str, options: RegistryOptions
) -> None:
    """containerd's static credentials: the user's for the reference pulled, none otherwise."""
    with suppress(*_TRANSPORT_ERRORS):
        while (message := await stream.recv_message()) is not None:
            if message.type_url.rpartition("/")[2] != _T + "AuthRequest":
                continue
            request = tt.AuthRequest.parse(message.value)
            if options.user and request.reference == ref:
                response = tt.AuthResponse(
                    auth_type=tt.AuthType.CREDENTIALS, username=options.user, secret=options.secret
                )
            else:
                response = tt.AuthResponse(auth_type=tt.AuthType.REFRESH)
            await stream.send_message(_any(_T + "AuthResponse", response))


def _host_platform() -> ctypes.Platform:
    host = Platform.host()
    return ctypes.Platform(os=host.os, architecture=host.architecture, variant=host.variant)
