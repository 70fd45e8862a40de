"""gRPC plugins started by name, their modules imported at the first call to one of their services.

Importing a gRPC plugin's module imports its generated protobuf types and the wire conversions
with it, for services most daemons answer rarely or never. Every gRPC plugin whose instance is a
plain ``GRPCServices`` and whose registration has no config, migration, aliases or hooks is
served lazily once corrald has seen it. After a start, the index beside corral's bytecode keeps,
for each such plugin, what it registered (type, id, requires, after, description), what its init
declared (platforms, exports, capabilities), which plugins of the types it requires or starts
after were ok, the paths it serves (with their cardinality), and the size and mtime of every
module file it was built from (the plugin's module, its services' classes, their message types).

At the next start a plugin whose files are unchanged is registered from the index without
importing anything. The kernel orders, checks and starts it as before: a required type with no
ok plugin still skips it, and if a plugin it could look up that was ok then is not ok now, its
own init runs at start, so it skips or fails as it would without the index. Otherwise its init
records the declared metadata and its paths go into the server's mapping; the first call to one
of them imports the module, runs the plugin's own init with the same InitContext and answers with
the real handler (calls that arrive meanwhile wait for it). Any difference (an edited file, a new
version, a plugin that no longer qualifies) makes the entry stale: that plugin starts eagerly and
the index is rewritten after start-up. No plugin needs to know: a new gRPC plugin gets this from
its second start on.

The index is written as bytecode is (not under ``PYTHONDONTWRITEBYTECODE``, nor where the
directory is not writable); ``corrald`` without it starts every plugin eagerly, as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
import structlog
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError

from corral import __version__
from corral.api.grpc import GRPCServices
from corral.api.grpc._grpclib import StreamHandler, retype
from corral.kernel import ALL_TYPES, Candidate, InitContext, Platform, PluginMeta, PluginRecord, Registration

log = structlog.get_logger("corral.grpc")

GRPC_TYPE = "io.containerd.grpc.v1"
FORMAT = 2


def index_path() -> Path:
    cache = Path(__file__).resolve().parent.parent.parent / "__pycache__"
    return cache / f"grpc-services.{sys.implementation.cache_tag}.json"


@dataclass
class _Entry:
    value: str
    version: str
    files: dict[str, list[int]]
    registration: dict[str, Any]
    meta: dict[str, Any]
    paths: list[list[Any]]

    def fresh(self, cand: Candidate) -> bool:
        if cand.origin.value != self.value or cand.origin.version != self.version:
            return False
        for name, (mtime, size) in self.files.items():
            try:
                st = os.stat(name)
            except OSError:
                return False
            if st.st_mtime_ns != mtime or st.st_size != size:
                return False
        return True


def read_index(path: Path) -> dict[str, _Entry]:
    """The index's entries by plugin URI; empty if missing, unreadable or from another corral."""
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT or data.get("corral") != __version__:
            return {}
        return {uri: _Entry(**entry) for uri, entry in data["plugins"].items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}


def _write_index(path: Path, entries: Mapping[str, _Entry]) -> bool:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    data = {
        "format": FORMAT,
        "corral": __version__,
        "plugins": {uri: vars(entry) for uri, entry in sorted(entries.items())},
    }
    try:
        path.parent.mkdir(exist_ok=True)
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        return False
    return True


class LazyServices:
    """A lazily started gRPC plugin's instance: its paths now, its module at the first call."""

    def __init__(self, cand: Candidate, ic: InitContext, paths: Sequence[tuple[str, Cardinality]]) -> None:
        self._candidate = cand
        self._ic = ic
        self._paths = paths
        self._lock = anyio.Lock()
        self._handlers: dict[str, Handler] | None = None
        self.instance: Any = None

    @property
    def loaded(self) -> bool:
        return self._handlers is not None

    def grpc_services(self) -> Iterable[Any]:
        return (self,)

    def __mapping__(self) -> dict[str, Handler]:
        return {path: Handler(self._handler_for(path), kind, None, None) for path, kind in self._paths}

    def _handler_for(self, path: str) -> StreamHandler:
        async def handle(stream: Any) -> None:
            handler = (await self._load()).get(path)
            if handler is None:
                raise GRPCError(Status.UNIMPLEMENTED, f"{path}: no longer served by {self._candidate.uri}")
            retype(stream, handler.request_type, handler.reply_type)
            await handler.func(stream)

        return handle

    async def _load(self) -> dict[str, Handler]:
        if self._handlers is not None:
            return self._handlers
        async with self._lock:
            if self._handlers is not None:
                return self._handlers
            uri = self._candidate.uri
            try:
                assert self._candidate.entry_point is not None
                reg = self._candidate.entry_point.load()
                if not isinstance(reg, Registration) or reg.uri != uri:
                    raise RuntimeError(f"entry point {uri} no longer names its registration")
                # The plugin's own init declares its metadata again, as at an eager start.
                self._ic.meta.platforms.clear()
                self._ic.meta.exports.clear()
                self._ic.meta.capabilities.clear()
                instance = await reg.init(self._ic)
                handlers: dict[str, Handler] = {}
                for service in instance.grpc_services():
                    handlers.update(service.__mapping__())
            except GRPCError:
                raise
            except Exception as exc:
                log.warning("grpc_plugin_load_failed", plugin=uri, error=f"{type(exc).__name__}: {exc}")
                raise GRPCError(Status.UNAVAILABLE, f"plugin {uri}: {type(exc).__name__}: {exc}") from None
            log.debug("grpc_plugin_loaded", plugin=uri)
            self.instance = instance
            self._handlers = handlers
            return handlers

    async def aclose(self) -> None:
        closer = getattr(self.instance, "aclose", None) or getattr(self.instance, "close", None)
        if closer is not None:
            result = closer()
            if hasattr(result, "__await__"):
                await result


def _lazy_registration(cand: Candidate, entry: _Entry) -> Registration:
    paths = [(str(path), Cardinality[str(kind)]) for path, kind in entry.paths]
    meta = entry.meta
    r = entry.registration

    async def init(ic: InitContext) -> Any:
        # The plugin's init may look up any plugin of the types it requires or starts after;
        # the index holds those that were ok when it was written. One that is not ok now (disabled,
        # skipped, failed) may make the init skip or fail: then it runs now, as without the index.
        for uri in r.get("ok_dependencies", ()):
            rec = ic.plugins.get(uri)
            if rec is None or not rec.ok:
                assert cand.entry_point is not None
                real = cand.entry_point.load()
                if not isinstance(real, Registration) or real.uri != cand.uri:
                    raise RuntimeError(f"entry point {cand.uri} no longer names its registration")
                return await real.init(ic)
        ic.meta.platforms.extend(Platform(**p) for p in meta.get("platforms", ()))
        ic.meta.exports.update(meta.get("exports", {}))
        ic.meta.capabilities.extend(meta.get("capabilities", ()))
        return LazyServices(cand, ic, paths)

    return Registration(
        type=cand.type,
        id=cand.id,
        init=init,
        requires=tuple(r.get("requires", ())),
        after=tuple(r.get("after", ())),
        description=str(r.get("description", "")),
    )


def lazy_candidates(candidates: Sequence[Candidate], path: Path | None = None) -> list[Candidate]:
    """``candidates`` with every gRPC plugin the index knows, unchanged since, registered from it."""
    entries = read_index(index_path() if path is None else path)
    if not entries:
        return list(candidates)
    out = []
    for cand in candidates:
        entry = entries.get(cand.uri)
        if (
            entry is not None
            and cand.type == GRPC_TYPE
            and cand.registration is None
            and cand.entry_point is not None
            and entry.fresh(cand)
        ):
            cand = replace(cand, registration=_lazy_registration(cand, entry))
        out.append(cand)
    return out


def _of_type(ok_by_type: Mapping[str, list[str]], wanted: str, own: str) -> list[str]:
    if wanted == ALL_TYPES:
        return [uri for t, uris in ok_by_type.items() if t != own for uri in uris]
    return ok_by_type.get(wanted, [])


def _module_files(*objects: Any) -> dict[str, list[int]]:
    files: dict[str, list[int]] = {}
    for obj in objects:
        module = sys.modules.get(obj if isinstance(obj, str) else getattr(obj, "__module__", ""))
        name = getattr(module, "__file__", None)
        if not name:
            continue
        with contextlib.suppress(OSError):
            st = os.stat(name)
            files[name] = [st.st_mtime_ns, st.st_size]
    return files


def _entry_of(rec: PluginRecord, ok_by_type: Mapping[str, list[str]]) -> _Entry | None:
    """What the index keeps of an eagerly started gRPC plugin, or None if it cannot start lazily."""
    reg, origin = rec.registration, rec.origin
    if not rec.ok or rec.type != GRPC_TYPE or reg is None or origin is None or not origin.value:
        return None
    if type(rec.instance) is not GRPCServices:
        return None
    if reg.config is not None or reg.migrate is not None or reg.config_aliases or reg.hooks is not None:
        return None
    paths: list[list[Any]] = []
    sources: list[Any] = [origin.value.partition(":")[0]]
    for service in rec.instance.grpc_services():
        sources.extend(type(service).__mro__)
        for path, handler in service.__mapping__().items():
            paths.append([path, handler.cardinality.name])
            sources.extend((handler.request_type, handler.reply_type))
    meta: PluginMeta = rec.meta
    return _Entry(
        value=origin.value,
        version=origin.version,
        files=_module_files(*sources),
        registration={
            "requires": list(reg.requires),
            "after": list(reg.after),
            "description": reg.description,
            "ok_dependencies": sorted(
                {uri for t in reg.ordering_types for uri in _of_type(ok_by_type, t, reg.type)}
            ),
        },
        meta={
            "platforms": [vars(p) for p in meta.platforms],
            "exports": dict(meta.exports),
            "capabilities": list(meta.capabilities),
        },
        paths=sorted(paths),
    )


def save_index(records: Iterable[PluginRecord], path: Path | None = None, *, force: bool = False) -> bool:
    """Add the eagerly started gRPC plugins that can start lazily to the index (when anything changed)."""
    if sys.dont_write_bytecode and not force:
        return False
    path = index_path() if path is None else path
    entries = read_index(path)
    records = list(records)
    ok_by_type: dict[str, list[str]] = {}
    for rec in records:
        if rec.ok:
            ok_by_type.setdefault(rec.type, []).append(rec.uri)
    changed = False
    for rec in records:
        if isinstance(rec.instance, LazyServices) or rec.type != GRPC_TYPE:
            continue
        entry = _entry_of(rec, ok_by_type)
        if entry is None:
            changed |= entries.pop(rec.uri, None) is not None
        elif entries.get(rec.uri) != entry:
            entries[rec.uri] = entry
            changed = True
    return changed and _write_index(path, entries)


__all__ = ["LazyServices", "index_path", "lazy_candidates", "read_index", "save_index"]
