"""File systems on loop devices for the tests that need one (btrfs), cleaned up whatever happens."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tooling import require_root, require_tool


def loop_devices_of(image: Path) -> list[str]:
    """The loop devices backed by ``image`` (``losetup -j``)."""
    result = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True, check=False)
    return [line.split(":", 1)[0] for line in result.stdout.splitlines() if line.strip()]


def loop_devices_under(directory: Path) -> set[str]:
    """The attached loop devices whose backing file is below ``directory``, as ``DEVICE FILE``."""
    result = subprocess.run(
        ["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"],
        capture_output=True,
        text=True,
        check=False,
    )
    prefix = os.path.realpath(directory) + "/"
    found = set()
    for line in result.stdout.splitlines():
        device, _, backing = line.strip().partition(" ")
        if backing.strip().startswith(prefix):
            found.add(f"{device} {backing.strip()}")
    return found


def assert_no_loop_device_under(directory: Path, timeout: float = 5.0) -> None:
    """No loop device is backed by a file below ``directory`` (waiting ``timeout`` seconds at most:
    the kernel detaches an autoclear loop device shortly after its last mount goes, not at once)."""
    deadline = time.monotonic() + timeout
    while (found := loop_devices_under(directory)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not found, f"loop devices were left attached: {sorted(found)}"


@contextlib.contextmanager
def loop_btrfs(directory: Path, size: int = 1 << 30) -> Iterator[Path]:
    """A fresh btrfs file system (an image in ``directory``, loop-mounted) mounted at ``directory/mnt``.

    Unmounted, its loop device detached and the image removed on the way out, failures included."""
    require_root()
    mkfs = require_tool("mkfs.btrfs")
    require_tool("btrfs")
    image = directory / "btrfs.img"
    target = directory / "mnt"
    target.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as f:
        f.truncate(size)
    try:
        subprocess.run([mkfs, "-q", "-f", str(image)], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(target)], check=True, capture_output=True)
        try:
            yield target
        finally:
            # Whatever was mounted from inside goes first (a lazy unmount where something is busy).
            points = [
                line.split()[4]
                for line in Path("/proc/self/mountinfo").read_text().splitlines()
                if line.split()[4].startswith(str(target))
            ]
            for point in sorted(points, key=len, reverse=True):
                if subprocess.run(["umount", point], capture_output=True).returncode != 0:
                    subprocess.run(["umount", "-l", point], capture_output=True)
    finally:
        for device in loop_devices_of(image):
            subprocess.run(["losetup", "-d", device], capture_output=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(image)
