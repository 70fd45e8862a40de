"""Mounts: containerd's Mount record, and mounting what snapshotters hand out (bind, overlay, …).

The kernel caps mount options at one page (4096 bytes). A long ``lowerdir=`` list is mounted
from the layers' common parent directory with relative paths, as containerd's mount package does.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio

from corral.kernel import FailedPrecondition, InvalidArgument


@dataclass(frozen=True)
class Mount:
    """What to mount to see a snapshot: containerd's Mount (type, source, target, options)."""

    type: str
    source: str
    options: tuple[str, ...] = ()
    target: str = ""


PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _option_length(options: Sequence[str]) -> int:
    return len(",".join(options))


def compact_lowerdir(options: Sequence[str]) -> tuple[str | None, tuple[str, ...]]:
    """(directory to mount from, options with relative layer paths), when the options are too long."""
    if _option_length(options) < PAGE_SIZE - 1:
        return None, tuple(options)
    lower = next((o for o in options if o.startswith("lowerdir=")), None)
    if lower is None:
        return None, tuple(options)
    dirs = lower[len("lowerdir=") :].split(":")
    common = os.path.commonpath(
        dirs + [o.split("=", 1)[1] for o in options if o.startswith(("upperdir=", "workdir="))]
    )
    out = []
    for o in options:
        key, _, value = o.partition("=")
        if key == "lowerdir":
            out.append("lowerdir=" + ":".join(os.path.relpath(d, common) for d in dirs))
        elif key in ("upperdir", "workdir"):
            out.append(f"{key}={os.path.relpath(value, common)}")
        else:
            out.append(o)
    if _option_length(out) >= PAGE_SIZE - 1:
        raise InvalidArgument(
            f"overlay mount options are {_option_length(out)} bytes even relative to {common}"
        )
    return common, tuple(out)


async def _run(argv: Sequence[str], cwd: str | None = None) -> None:
    result = await anyio.run_process(list(argv), cwd=cwd, check=False)
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip() or f"exit status {result.returncode}"
        raise FailedPrecondition(f"{' '.join(argv[:3])}: {message}")


async def mount(m: Mount, target: Path) -> None:
    """Mount one containerd Mount at ``target`` with the system's mount(8)."""
    mount_bin = shutil.which("mount") or "/bin/mount"
    cwd, options = compact_lowerdir(m.options) if m.type == "overlay" else (None, tuple(m.options))
    argv = [mount_bin, "-t", m.type] if m.type != "bind" else [mount_bin]
    flags = list(options)
    if m.type == "bind" and "bind" not in flags and "rbind" not in flags:
        flags.append("bind")
    if flags:
        argv += ["-o", ",".join(flags)]
    await _run([*argv, m.source, str(target)], cwd=cwd)
    # A read-only bind mount needs a remount to take effect on older kernels and mount(8)s.
    if m.type == "bind" and "ro" in flags:
        await _run([mount_bin, "-o", "remount,ro,bind", str(target)])


async def unmount(target: Path) -> None:
    await _run([shutil.which("umount") or "/bin/umount", str(target)])


async def mount_all(mounts: Sequence[Mount], target: Path) -> None:
    for m in mounts:
        await mount(m, target)


@asynccontextmanager
async def temporary_mount(mounts: Sequence[Mount], *, base: Path | None = None) -> AsyncIterator[Path]:
    """Mount ``mounts`` on a fresh directory for the block; unmounted and removed afterwards."""
    where = Path(tempfile.mkdtemp(prefix="corral-mount-", dir=base))
    mounted = 0
    try:
        for m in mounts:
            await mount(m, where)
            mounted += 1
        yield where
    finally:
        with anyio.CancelScope(shield=True):
            for _ in range(mounted):
                await unmount(where)
            where.rmdir()
