"""corral-snapshotter-example: an example third-party corral snapshotter distribution.

``io.containerd.snapshotter.v1.hardlink`` copies a parent for every writable snapshot (reflinked
where the filesystem can) and builds read-only views from hard links. ``hardlink`` is the
snapshotter, ``plugin`` its registration, listed in this distribution's ``corral.plugins`` entry
points.
"""

from corral_snapshotter_example.hardlink import HardlinkSnapshotter
from corral_snapshotter_example.plugin import HardlinkConfig, registration

__all__ = ["HardlinkConfig", "HardlinkSnapshotter", "registration"]
