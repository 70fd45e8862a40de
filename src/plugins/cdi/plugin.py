"""io.corral.cdi.v1.cdi — the host's CDI devices, for the tasks service, CRI and NRI.

containerd configures CDI inside its CRI plugin (``enable_cdi``, ``cdi_spec_dirs``); corral makes it
a plugin of its own so that every container path — ``ctr run``, ``corral run --device``, CRI — gets
the same devices from the same specs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog

from corral.kernel import InitContext, Registration, SkipPlugin
from corral.plugins import types
from corral.plugins.cdi._registry import Registry


@dataclass
class CDIConfig:
    """The ``io.corral.cdi.v1.cdi`` section: where CDI spec files are read from."""

    disable: bool = False
    """No CDI device injection at all."""
    spec_dirs: list[str] = field(default_factory=lambda: ["/etc/cdi", "/var/run/cdi"])
    """Where specs are read from; a later directory's devices override an earlier one's."""


async def init(ic: InitContext) -> Registry:
    config: CDIConfig = ic.config
    if config.disable:
        raise SkipPlugin("CDI is disabled by configuration")
    registry = Registry(config.spec_dirs, log=structlog.get_logger("corral.cdi"))
    registry.refresh(force=True)
    ic.meta.exports["spec_dirs"] = ",".join(config.spec_dirs)
    return registry


registration = Registration(
    type=types.CDI,
    id="cdi",
    init=init,
    config=CDIConfig,
    description="Container Device Interface devices from the CDI spec directories",
)
