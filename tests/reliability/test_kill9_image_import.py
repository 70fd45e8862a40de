"""corrald killed with SIGKILL while the real ctr imports and unpacks an image, then started again:
no image is listed whose blobs are not all there, the import can be repeated, and once the images
and the imports' leases are removed a collection leaves no blob and no snapshot on disk."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

from harness import Daemon
from tooling import require_root, require_tool

from corral.plugins.images.build import build_busybox_image

ROUNDS = 6


def listed(d: Daemon, *args: str) -> list[list[str]]:
    return [line.split() for line in d.ctr(*args).stdout.splitlines()[1:] if line.strip()]


def test_an_import_killed_at_any_point_leaves_no_half_image(tmp_path: Path) -> None:
    require_root()
    require_tool("ctr")
    names = [f"docker.io/library/busybox:k{i}" for i in range(3)]
    archive = build_busybox_image(tmp_path / "busybox.tar", names=names).path
    assert archive is not None
    rng = random.Random(20261203)
    d = Daemon(tmp_path / "corral").start()
    try:
        for _ in range(ROUNDS):
            importer = subprocess.Popen(
                ["ctr", "-a", d.socket, "images", "import", str(archive)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            try:
                time.sleep(rng.uniform(0.05, 1.2))
                assert d.proc is not None
                d.proc.send_signal(signal.SIGKILL)
                d.proc.wait()
                importer.wait(timeout=60)
            finally:
                # Never leave a ctr behind, whatever happened to the round.
                if importer.poll() is None:
                    importer.kill()
                    importer.wait()
            d.proc = None
            d.start()
            # Whatever is listed is whole: an image record exists only once its content does.
            for row in listed(d, "images", "check"):
                assert row[3] == "complete", row
            d.ctr("images", "import", str(archive))
            checked = listed(d, "images", "check")
            assert [r[0] for r in checked] == names
            assert all(r[3] == "complete" and r[-1] == "true" for r in checked), checked

        # Leases the killed imports left behind hold what they had written, as in containerd.
        for lease in listed(d, "leases", "ls"):
            d.ctr("leases", "rm", lease[0])
        d.ctr("images", "rm", "--sync", *names)
        root = d.base / "root"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            blobs = list(root.glob("io.containerd.content.v1.content/blobs/*/*"))
            snaps = list(root.glob("io.containerd.snapshotter.v1.overlayfs/snapshots/*"))
            if not blobs and not snaps:
                break
            time.sleep(0.2)
        assert listed(d, "content", "ls") == []
        assert listed(d, "snapshots", "ls") == []
        assert blobs == [] and snaps == []
        assert list(root.glob("io.containerd.content.v1.content/ingest/*")) == []
    finally:
        d.stop()
