"""io.containerd.service.v1.introspection-service — what the daemon is and which plugins it runs."""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from corral.kernel import (
    InitContext,
    PluginRecord,
    PluginSet,
    Registration,
    Status,
    adapt_mapping,
    parse_filters,
)
from corral.plugins import types

# Plugins that never ran are not part of containerd's plugin set; corral lists them on request.
_NOT_STARTED = (Status.DISABLED, Status.NOT_ENABLED)


@dataclass(frozen=True)
class ServerInfo:
    """What Server answers: the daemon's UUID, pid and pid namespace."""

    uuid: str
    pid: int
    pidns: int


def _fields(rec: PluginRecord) -> dict[str, object]:
    origin = rec.origin
    return {
        "type": rec.type,
        "id": rec.id,
        "status": rec.status.value,
        "origin": {"distribution": origin.distribution, "version": origin.version} if origin else {},
    }


class Introspection:
    """Lists plugins with the filter language and reports the server's identity."""

    def __init__(self, plugins: PluginSet, uuid_path: Path) -> None:
        self._plugins = plugins
        self._uuid_path = uuid_path
        self._uuid_seen: tuple[tuple[int, int, int], str] | None = None

    def plugins(
        self, filters: Sequence[str] = (), *, include_not_started: bool = False
    ) -> list[PluginRecord]:
        """Plugins in start order matching any of ``filters`` (fields: type, id, status, origin.*)."""
        match = parse_filters(list(filters))
        records = [
            r
            for r in self._plugins.records()
            if (include_not_started or r.status not in _NOT_STARTED) and r.status is not Status.PENDING
        ]
        if not filters:
            return records
        return [r for r in records if match.match(adapt_mapping(_fields(r)))]

    def get(self, uri: str) -> PluginRecord | None:
        return self._plugins.get(uri)

    def server(self) -> ServerInfo:
        return ServerInfo(self._uuid(), os.getpid(), _pidns())

    def _uuid(self) -> str:
        # Read at each call, as containerd reads it (a removed file means a new UUID), but the
        # text is kept while the file is the same one, unchanged.
        try:
            st = os.stat(self._uuid_path)
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
            if self._uuid_seen is not None and self._uuid_seen[0] == key:
                return self._uuid_seen[1]
            text = self._uuid_path.read_text().strip()
        except FileNotFoundError:
            text = ""
        if text:
            self._uuid_seen = (key, str(uuid.UUID(text)))
            return self._uuid_seen[1]
        value = str(uuid.uuid4())
        tmp = self._uuid_path.with_suffix(".tmp")
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600), "w") as f:
            f.write(value)
        tmp.replace(self._uuid_path)
        return value


def _pidns() -> int:
    try:
        return os.stat(f"/proc/{os.getpid()}/ns/pid").st_ino
    except OSError:
        return 0


async def init(ic: InitContext) -> Introspection:
    return Introspection(ic.plugins, ic.root / "uuid")


registration = Registration(
    type=types.SERVICE,
    id="introspection-service",
    init=init,
    description="plugin listing and server identity",
)
