"""io.containerd.grpc.v1.corral-introspection — corral.introspection.v1: origins, timings, edges.

containerd's Introspection messages stay as they are; what corral adds is served here.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Protocol, runtime_checkable

import anyio

from corral.api import wire
from corral.api.grpc import GRPCServices
from corral.api.types.corral.introspection import v1 as pb
from corral.kernel import InitContext, PluginRecord, PluginSet, Registration, Status, encode
from corral.plugins import types
from corral.plugins.services.introspection import Introspection


def config_json(config: Any) -> str:
    if config is None:
        return ""
    data = encode(config) if dataclasses.is_dataclass(config) else config
    return json.dumps(data, sort_keys=True, default=str)


def detail(rec: PluginRecord, dependents: tuple[str, ...]) -> pb.PluginDetail:
    origin = rec.origin
    err = wire.init_error(rec)
    return pb.PluginDetail(
        type=rec.type,
        id=rec.id,
        status=rec.status.value,
        reason=rec.reason,
        requires=list(rec.requires),
        after=list(rec.after),
        dependents=list(dependents),
        blocked_by=list(rec.blocked_by),
        origin=pb.Origin(
            distribution=origin.distribution,
            version=origin.version,
            entry_point=origin.entry_point,
            value=origin.value,
            builtin=origin.builtin,
        )
        if origin
        else None,
        init_seconds=rec.init_seconds,
        config_json=config_json(rec.config),
        platforms=wire.platforms(rec),
        exports=dict(rec.meta.exports),
        capabilities=list(rec.meta.capabilities),
        error_code=err.code if err else 0,
        order=max(rec.order, 0),
    )


CONDITION_TIMEOUT = 2.0


@runtime_checkable
class ReportsCondition(Protocol):
    """A plugin instance that can be ok yet unusable right now (a proxy whose process is down):
    ``condition()`` is "" while usable, else why not. Shown as the reason of an ok plugin."""

    async def condition(self) -> str: ...


async def _conditions(records: list[PluginRecord]) -> dict[str, str]:
    found: dict[str, str] = {}

    async def ask(rec: PluginRecord, instance: ReportsCondition) -> None:
        with anyio.move_on_after(CONDITION_TIMEOUT):
            found[rec.uri] = await instance.condition()
            return
        found[rec.uri] = f"did not report its condition within {CONDITION_TIMEOUT:g}s"

    async with anyio.create_task_group() as tg:
        for rec in records:
            if rec.ok and isinstance(rec.instance, ReportsCondition):
                tg.start_soon(ask, rec, rec.instance)
    return {uri: why for uri, why in found.items() if why}


class CorralIntrospection(pb.IntrospectionBase):
    def __init__(self, local: Introspection, plugins: PluginSet) -> None:
        self._local = local
        self._plugins = plugins

    async def plugins(self, message: pb.PluginsRequest) -> pb.PluginsResponse:
        records = self._local.plugins(message.filters, include_not_started=True)
        if not message.all:
            records = [r for r in records if r.status is not Status.DISABLED]
        conditions = await _conditions(list(records))
        records = [
            dataclasses.replace(r, reason=conditions[r.uri]) if r.uri in conditions else r for r in records
        ]
        return pb.PluginsResponse(plugins=[detail(r, self._plugins.dependents(r.uri)) for r in records])


async def init(ic: InitContext) -> GRPCServices:
    local = ic.get_by_id(types.SERVICE, "introspection-service", Introspection)
    return GRPCServices((CorralIntrospection(local, ic.plugins),))


registration = Registration(type=types.GRPC, id="corral-introspection", init=init, requires=(types.SERVICE,))
