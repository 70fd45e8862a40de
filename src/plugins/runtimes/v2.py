"""io.containerd.runtime.v2.task — tasks run by runtime v2 shims (``containerd-shim-runc-v2`` …).

A runtime name such as ``io.containerd.runc.v2`` resolves to its shim binary
(``containerd-shim-runc-v2``) beside corrald or on PATH; an absolute path is used as is. Bundles
live under this plugin's state directory (``<state>/io.containerd.runtime.v2.task/<ns>/<id>``),
work directories under its root. Shims left running by a previous corrald are reconnected at
start-up; those that are gone are cleaned up.
"""

from __future__ import annotations

from corral.kernel import PROPERTY_GRPC_ADDRESS, PROPERTY_TTRPC_ADDRESS, InitContext, Registration
from corral.plugins import types
from corral.plugins.events.types import Publisher, optional_publisher
from corral.plugins.runtimes.shim import ShimProtocol, ShimSettings, TaskManager


async def init(ic: InitContext) -> TaskManager:
    protocols = {p.protocol: p for p in ic.get_by_type(types.SHIM_CLIENT, ShimProtocol).values()}
    publisher: Publisher | None = optional_publisher(ic.get_by_type(types.EVENT))
    settings = ShimSettings(
        root=ic.root,
        state=ic.state,
        grpc_address=ic.properties.get(PROPERTY_GRPC_ADDRESS, ""),
        ttrpc_address=ic.properties.get(PROPERTY_TTRPC_ADDRESS, ""),
    )
    manager = TaskManager(settings, protocols, publisher)
    manager.serve_in(await ic.task_group("shims"))
    await manager.load_existing()
    return manager


registration = Registration(
    type=types.RUNTIME_V2,
    id="task",
    init=init,
    requires=(types.SHIM_CLIENT,),
    after=(types.EVENT,),
    description="tasks run by runtime v2 shims over ttrpc",
)
