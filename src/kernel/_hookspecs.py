"""pluggy hooks: events that many plugins may want to observe."""

from __future__ import annotations

from collections.abc import Sequence

import pluggy

from corral.kernel._records import PluginRecord

PROJECT = "corral"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class CorralHooks:
    """Hook specifications; implement them on the object given as ``Registration.hooks``."""

    @hookspec
    def corral_plugin_loaded(self, record: PluginRecord) -> None:
        """Called once per plugin after its init finished, whatever its status."""

    @hookspec
    def corral_ready(self, records: Sequence[PluginRecord]) -> None:
        """Called once every enabled plugin has finished initialising."""

    @hookspec
    def corral_stopping(self) -> None:
        """Called before plugins are closed."""
