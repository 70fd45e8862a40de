"""io.corral.audit.v1.plugins — records every plugin the kernel initialises, through a pluggy hook."""

from __future__ import annotations

from corral.kernel import InitContext, PluginRecord, Registration, Status, hookimpl
from corral_greeter import types


class PluginAudit:
    """The hook object and the plugin's instance: each plugin's URI and status, in load order.

    The kernel registers ``Registration.hooks`` when it loads the registration, before any plugin
    starts, so the audit also sees the plugins that initialise before it does.
    """

    def __init__(self) -> None:
        self.loaded: dict[str, Status] = {}

    @hookimpl
    def corral_plugin_loaded(self, record: PluginRecord) -> None:
        self.loaded[record.uri] = record.status

    @property
    def count(self) -> int:
        return len(self.loaded)


async def init(ic: InitContext) -> PluginAudit:
    audit = ic.registration.hooks
    assert isinstance(audit, PluginAudit)
    # ``after`` is an ordering hint, not a requirement: with no greeter, or a skipped one, this is
    # simply empty and the audit still starts.
    ic.meta.exports["greeters"] = ",".join(sorted(ic.get_by_type(types.GREETER)))
    return audit


registration = Registration(
    type=types.AUDIT,
    id="plugins",
    init=init,
    after=(types.GREETER,),
    hooks=PluginAudit(),
    description="records the status of every plugin the kernel initialises",
)
