"""io.containerd.streaming.v1.manager — the open streams of each namespace, by name."""

from __future__ import annotations

from corral.kernel import AlreadyExists, InitContext, NotFound, Registration
from corral.plugins import types
from corral.plugins.core import namespace_required
from corral.plugins.metadata import AnyValue
from corral.plugins.streaming import Stream


class _Managed:
    """A registered stream: closing it forgets it."""

    def __init__(self, manager: StreamRegistry, namespace: str, name: str, stream: Stream) -> None:
        self._manager = manager
        self._namespace = namespace
        self._name = name
        self._stream = stream

    async def send(self, message: AnyValue) -> None:
        await self._stream.send(message)

    async def recv(self) -> AnyValue | None:
        return await self._stream.recv()

    async def close(self) -> None:
        self._manager.forget(self._namespace, self._name, self)
        await self._stream.close()


class StreamRegistry:
    def __init__(self) -> None:
        self._streams: dict[str, dict[str, _Managed]] = {}

    async def register(self, name: str, stream: Stream) -> Stream:
        ns = namespace_required()
        streams = self._streams.setdefault(ns, {})
        if name in streams:
            raise AlreadyExists(f"stream {name}")
        managed = streams[name] = _Managed(self, ns, name, stream)
        return managed

    async def get(self, name: str) -> Stream:
        ns = namespace_required()
        found = self._streams.get(ns, {}).get(name)
        if found is None:
            raise NotFound(f"stream {name}")
        return found

    def forget(self, namespace: str, name: str, stream: _Managed | None = None) -> None:
        streams = self._streams.get(namespace, {})
        if name in streams and (stream is None or streams[name] is stream):
            del streams[name]
            if not streams:
                del self._streams[namespace]

    def open_streams(self) -> int:
        return sum(len(s) for s in self._streams.values())


async def init(ic: InitContext) -> StreamRegistry:
    return StreamRegistry()


registration = Registration(
    type=types.STREAMING,
    id="manager",
    init=init,
    requires=(types.METADATA,),
    description="named streams clients open for transfers (archive bytes, progress)",
)
