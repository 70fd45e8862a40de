"""The plugin list ``ctr plugins ls`` reads: each plugin's bytes made once per distinct state, and
the same bytes betterproto2 writes for the whole response."""

from __future__ import annotations

import asyncio

from corral.api import wire
from corral.api.grpc.introspection import IntrospectionService
from corral.api.types.containerd.services.introspection import v1 as pb
from corral.kernel import InvalidArgument, PluginMeta, PluginRecord, Registration, Status
from corral.kernel import Platform as KernelPlatform


async def _init(ic: object) -> None:
    return None


def _records() -> list[PluginRecord]:
    reg = Registration(
        type="io.t.v1", id="a", init=_init, requires=("io.x.v1", "io.y.v1"), after=("io.z.v1",)
    )
    meta = PluginMeta(
        platforms=[KernelPlatform("linux", "amd64", ""), KernelPlatform("linux", "arm", "v7")],
        exports={"root": "/var/lib/x", "other": "é"},
        capabilities=["remap-ids", "only-remap-ids"],
    )
    return [
        PluginRecord("io.t.v1.a", "io.t.v1", "a", None, Status.OK, registration=reg, meta=meta),
        PluginRecord("io.t.v1.b", "io.t.v1", "b", None, Status.SKIP, reason="no btrfs here"),
        PluginRecord("io.t.v1.c", "io.t.v1", "c", None, Status.ERROR, error=InvalidArgument("bad config")),
        PluginRecord("io.t.v1.d", "io.t.v1", "d", None, Status.ERROR, error=RuntimeError("boom")),
    ]


class _Local:
    def __init__(self, records: list[PluginRecord]) -> None:
        self.records = records

    def plugins(self, filters: object) -> list[PluginRecord]:
        return self.records


def test_each_plugins_bytes_are_betterproto2s_and_follow_its_state() -> None:
    records = _records()
    for rec in records:
        assert wire.plugin_bytes(rec) == bytes(wire.plugin(rec))
    ok = records[0]
    assert pb.Plugin.FromString(wire.plugin_bytes(ok)).requires == ["io.x.v1", "io.y.v1", "io.z.v1"]
    ok.meta.exports["root"] = "/elsewhere"  # the meta changed in place: new bytes
    assert pb.Plugin.FromString(wire.plugin_bytes(ok)).exports["root"] == "/elsewhere"
    assert wire.plugin_bytes(ok) == bytes(wire.plugin(ok))


def test_the_response_is_the_same_bytes_as_betterproto2s() -> None:
    records = _records()
    service = IntrospectionService(_Local(records))  # type: ignore[arg-type]
    response = asyncio.run(service.plugins(pb.PluginsRequest()))
    expected = pb.PluginsResponse(plugins=[wire.plugin(r) for r in records])
    assert bytes(response) == bytes(expected) == response.SerializeToString()
    back = pb.PluginsResponse.FromString(bytes(response))
    assert [p.id for p in back.plugins] == ["a", "b", "c", "d"]
    assert (
        back.plugins[1].init_err is not None
        and back.plugins[1].init_err.message == "no btrfs here: skip plugin"
    )
    assert back.plugins[2].init_err is not None and back.plugins[2].init_err.code == 3
    assert isinstance(response, pb.PluginsResponse)  # what the codec checks
