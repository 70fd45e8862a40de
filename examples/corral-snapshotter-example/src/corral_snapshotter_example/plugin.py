"""io.containerd.snapshotter.v1.hardlink — the registration: typed config, and how the plugin starts."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread
from corral.kernel import InitContext, Platform, Registration
from corral.plugins import types

from corral_snapshotter_example.hardlink import HardlinkSnapshotter


@dataclass(frozen=True)
class HardlinkConfig:
    """``[plugins."io.containerd.snapshotter.v1.hardlink"]`` in config.toml."""

    root_path: str = ""
    """Where snapshots live; empty means the plugin's directory under the daemon root."""

    def __post_init__(self) -> None:
        # The kernel reports a ValueError here as a ConfigError naming this plugin's section.
        if self.root_path and not os.path.isabs(self.root_path):
            raise ValueError(f"root_path must be an absolute path, got {self.root_path!r}")


async def init(ic: InitContext) -> HardlinkSnapshotter:
    config: HardlinkConfig = ic.config
    root = Path(config.root_path) if config.root_path else ic.root
    ic.meta.platforms.append(Platform.host())  # snapshots hold the host's files
    ic.meta.exports["root"] = str(root)
    return await anyio.to_thread.run_sync(HardlinkSnapshotter, root)  # it opens its database


registration = Registration(
    type=types.SNAPSHOTTER,
    id="hardlink",
    init=init,
    config=HardlinkConfig,
    description="snapshots as copies of their parent (reflinked where possible); views as hard links",
)
