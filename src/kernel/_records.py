"""What the kernel knows about each plugin: where it came from, its state, why."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any

from corral.kernel._registration import Platform, Registration

_URI = re.compile(r"^(?P<type>.+\.v\d+)\.(?P<id>[^.].*)$")


def split_uri(uri: str) -> tuple[str, str]:
    """``io.containerd.snapshotter.v1.overlayfs`` -> (type, id); the type ends in ``.vN``."""
    m = _URI.match(uri)
    if m:
        return m["type"], m["id"]
    plugin_type, _, plugin_id = uri.rpartition(".")
    return plugin_type, plugin_id


class Status(enum.Enum):
    """A plugin's state. Skipped ("not for this machine") and failed ("broken") differ."""

    OK = "ok"
    SKIP = "skip"
    ERROR = "error"
    DISABLED = "disabled"
    NOT_ENABLED = "not-enabled"
    PENDING = "pending"


class SkipPlugin(Exception):
    """Raised by a plugin's init to say it does not apply here; the reason is shown to operators."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        # ctr marks a plugin "skip" when its error message contains "skip plugin".
        super().__init__(f"{reason}: skip plugin")


@dataclass(frozen=True)
class Origin:
    """Where a plugin came from: its distribution and entry point."""

    distribution: str
    version: str
    entry_point: str
    value: str
    builtin: bool


@dataclass
class PluginMeta:
    """What a plugin tells the world during init: platforms, exports, capabilities."""

    platforms: list[Platform] = field(default_factory=list)
    exports: dict[str, str] = field(default_factory=dict)
    capabilities: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PluginRecord:
    """One plugin as the kernel sees it, whatever its state."""

    uri: str
    type: str
    id: str
    origin: Origin | None
    status: Status
    reason: str = ""
    error: BaseException | None = None
    registration: Registration | None = None
    instance: Any = None
    config: Any = None
    meta: PluginMeta = field(default_factory=PluginMeta)
    init_seconds: float = 0.0
    order: int = -1
    blocked_by: tuple[str, ...] = ()
    """URIs of the plugins whose state caused this one's skip or failure."""

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    @property
    def requires(self) -> tuple[str, ...]:
        return self.registration.requires if self.registration else ()

    @property
    def after(self) -> tuple[str, ...]:
        return self.registration.after if self.registration else ()
